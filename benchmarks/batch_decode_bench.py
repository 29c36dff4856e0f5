#!/usr/bin/env python
"""Aggregate decode throughput of `BatchGenerator` for B = 1, 2, 4, 8 sequences (issue 28).

    python benchmarks/batch_decode_bench.py                                  # tiny-chat, built in a temp folder
    python benchmarks/batch_decode_bench.py --model /tmp/bench/20b-slice-mlx --tokens 6 --warmup 1

B sequences with different random prompts (16 + 3 i tokens) are prefilled, then `--tokens` batched
steps are timed after `--warmup` steps (greedy, no stop tokens): aggregate tok/s = B x steps / seconds,
per-sequence tok/s = steps / seconds. `Engine.generate` alone is timed the same way as the baseline the
B = 1 row must match, and mlx-lm's `BatchGenerator` (its own gpt_oss model on the Hugging Face checkpoint
the folder was converted from; `--peer`, `--no-peer`) for the same B, prompts and steps. float32 compute
(what the exactness tests use); `--dtype` changes it. Numbers: docs/ENGINE.md, "Batched decode".
"""

from __future__ import annotations

import argparse
import atexit
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import mlx_oss  # noqa: E402
from mlx_oss.batch import BatchGenerator  # noqa: E402
from mlx_oss.engine import Engine  # noqa: E402
from mlx_oss.sampling import Sampler, SamplingConfig  # noqa: E402

GREEDY = SamplingConfig(temperature=0)


def tiny_chat(dtype: str):
    """-> (model, the Hugging Face source folder mlx-lm reads)."""
    from mlx_oss.convert.convert import convert_checkpoint
    from mlx_oss.convert.synthetic import preset, write_checkpoint

    root = Path(tempfile.mkdtemp(prefix="batch-bench-"))
    atexit.register(shutil.rmtree, root, True)
    print(f"  building tiny-chat in {root} (removed at exit)", file=sys.stderr, flush=True)
    src = write_checkpoint(root / "src", preset("tiny-chat"), "hf", seed=0)
    return mlx_oss.load(convert_checkpoint(src, root / "converted", progress=False).dst, dtype)[0], src


def prompts(B: int, vocab: int) -> list[list[int]]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, min(vocab, 199_000), 16 + 3 * i).tolist() for i in range(B)]


def time_batch(model, B: int, steps: int, warmup: int) -> float:
    """Seconds for `steps` batched steps of B sequences (after `warmup` steps)."""
    batch = BatchGenerator(model)
    for p in prompts(B, model.args.vocab_size):
        batch.add(p, Sampler(GREEDY), max_tokens=warmup + steps + 1, stop_tokens=())
    for _ in range(warmup):
        batch.step()
    t = time.perf_counter()
    for _ in range(steps):
        events = batch.step()
    dt = time.perf_counter() - t
    assert len(events) == B and all(e.done is None for e in events)
    return dt


def time_engine(model, steps: int, warmup: int) -> float:
    """Seconds for `steps` tokens of `Engine.generate` alone (after `warmup` tokens)."""
    prompt = prompts(1, model.args.vocab_size)[0]
    gen = Engine(model).generate(prompt, Sampler(GREEDY), max_tokens=warmup + steps + 1, stop_tokens=())
    it = iter(gen)
    for _ in range(warmup + 1):  # the first token comes with the prefill
        next(it)
    t = time.perf_counter()
    for _ in range(steps):
        next(it)
    dt = time.perf_counter() - t
    list(it)
    return dt


def time_mlx_lm(peer, B: int, steps: int, warmup: int) -> float:
    """Seconds for `steps` decode steps of mlx-lm's `BatchGenerator` with all B sequences generating."""
    from mlx_lm.generate import BatchGenerator as PeerBatch

    gen = PeerBatch(peer, stop_tokens=[], completion_batch_size=max(B, 1), prefill_batch_size=B)
    gen.insert(prompts(B, peer.args.vocab_size), max_tokens=[10 * (warmup + steps) + 64] * B)
    ready = 0
    while ready < B:  # prefill, then every sequence in the generation batch
        _, responses = gen.next()
        ready = len(responses)
    for _ in range(warmup):
        gen.next()
    t = time.perf_counter()
    for _ in range(steps):
        _, responses = gen.next()
        assert len(responses) == B
    return time.perf_counter() - t


def load_peer(path: Path, dtype: str):
    """mlx-lm's own gpt_oss model on the Hugging Face checkpoint (as `mlx-oss bench --compare mlx-lm`)."""
    import mlx.core as mx
    from mlx_lm.utils import load_model

    model, _ = load_model(Path(path))
    model.set_dtype(getattr(mx, dtype))  # float32: mlx-lm's best setting on the CPU backend
    mx.eval(model.parameters())
    return model


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", help="a converted folder (default: tiny-chat, built in a temp folder)")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--batches", default="1,2,4,8")
    ap.add_argument("--tokens", type=int, default=32, help="timed steps per batch size")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--peer", help="the Hugging Face checkpoint for mlx-lm's BatchGenerator (tiny-chat: its own "
                    "source; a converted folder: the source it records)")
    ap.add_argument("--no-peer", action="store_true", help="skip mlx-lm")
    a = ap.parse_args(argv)
    if a.model:
        from mlx_oss.bench.runners import mlx_lm_source

        model, src = mlx_oss.load(a.model, a.dtype)[0], mlx_lm_source(Path(a.model))
    else:
        model, src = tiny_chat(a.dtype)
    peer_path = None if a.no_peer else (Path(a.peer) if a.peer else src)
    peer = load_peer(peer_path, a.dtype) if peer_path else None
    name = a.model or "tiny-chat (synthetic)"
    print(f"model {name}: {model.args.num_hidden_layers} layers, vocab {model.args.vocab_size}, {a.dtype}")
    base = time_engine(model, a.tokens, a.warmup)
    print(f"Engine.generate alone: {a.tokens / base:.2f} tok/s ({1e3 * base / a.tokens:.1f} ms/token)")
    cols = "| B | aggregate tok/s | per-sequence tok/s | ms/step | x B=1 |"
    print(cols + (" mlx-lm BatchGenerator aggregate tok/s | ours / mlx-lm |" if peer else ""))
    print("| ---: " * (7 if peer else 5) + "|")
    one = None
    for B in (int(b) for b in a.batches.split(",")):
        dt = time_batch(model, B, a.tokens, a.warmup)
        agg = B * a.tokens / dt
        one = one or agg
        row = f"| {B} | {agg:.2f} | {a.tokens / dt:.2f} | {1e3 * dt / a.tokens:.1f} | {agg / one:.2f}x |"
        if peer is not None:
            pagg = B * a.tokens / time_mlx_lm(peer, B, a.tokens, a.warmup)
            row += f" {pagg:.2f} | {agg / pagg:.2f}x |"
        print(row, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
