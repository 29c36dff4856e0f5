#!/usr/bin/env python
"""Aggregate decode throughput of `BatchGenerator` for B = 1, 2, 4, 8 sequences (issue 28).

    python benchmarks/batch_decode_bench.py                                  # tiny-chat, built in a temp folder
    python benchmarks/batch_decode_bench.py --model /tmp/bench/20b-slice-mlx --tokens 6 --warmup 1

B sequences with different random prompts (16 + 3 i tokens) are prefilled, then `--tokens` batched
steps are timed after `--warmup` steps (greedy, no stop tokens): aggregate tok/s = B x steps / seconds,
per-sequence tok/s = steps / seconds. `Engine.generate` alone is timed the same way as the baseline the
B = 1 row must match, and mlx-lm's `BatchGenerator` (its own gpt_oss model on the Hugging Face checkpoint
the folder was converted from; `--peer`, `--no-peer`) for the same B, prompts and steps, with the peak
memory of each B's run. float32 compute (what the exactness tests use); `--dtype` changes it. The measuring
is `mlx_oss.bench.batch` (also `mlx-oss bench --batch 1,2,4,8`); this script adds the `Engine.generate`
baseline and builds tiny-chat when no model is given. Numbers: docs/ENGINE.md, "Batched decode".
"""

from __future__ import annotations

import argparse
import atexit
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import mlx_oss  # noqa: E402
from mlx_oss.bench.batch import measure_batch, time_engine  # noqa: E402
from mlx_oss.bench.runners import MlxLmRunner, mlx_lm_source  # noqa: E402


def tiny_chat(dtype: str):
    """-> (model, the Hugging Face source folder mlx-lm reads)."""
    from mlx_oss.convert.convert import convert_checkpoint
    from mlx_oss.convert.synthetic import preset, write_checkpoint

    root = Path(tempfile.mkdtemp(prefix="batch-bench-"))
    atexit.register(shutil.rmtree, root, True)
    print(f"  building tiny-chat in {root} (removed at exit)", file=sys.stderr, flush=True)
    src = write_checkpoint(root / "src", preset("tiny-chat"), "hf", seed=0)
    return mlx_oss.load(convert_checkpoint(src, root / "converted", progress=False).dst, dtype)[0], src


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
    ap.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    a = ap.parse_args(argv)
    say = (lambda m: None) if a.quiet else (lambda m: print(f"  {m}", file=sys.stderr, flush=True))
    if a.model:
        model, src = mlx_oss.load(a.model, a.dtype)[0], mlx_lm_source(Path(a.model))
    else:
        model, src = tiny_chat(a.dtype)
    peer_path = None if a.no_peer else (Path(a.peer) if a.peer else src)
    peer = MlxLmRunner(peer_path, a.dtype).model if peer_path else None  # as `mlx-oss bench --compare mlx-lm`
    name = a.model or "tiny-chat (synthetic)"
    print(f"model {name}: {model.args.num_hidden_layers} layers, vocab {model.args.vocab_size}, {a.dtype}")
    base = time_engine(model, a.tokens, a.warmup)
    print(f"Engine.generate alone: {a.tokens / base:.2f} tok/s ({1e3 * base / a.tokens:.1f} ms/token)")
    batches = [int(b) for b in a.batches.split(",")]
    ours = measure_batch(model, batches, a.tokens, a.warmup, say)
    theirs = measure_batch(peer, batches, a.tokens, a.warmup, say, peer=True) if peer is not None else [None] * len(ours)
    cols = "| B | aggregate tok/s | per-sequence tok/s | ms/step | x B=1 | peak memory MiB |"
    print(cols + (" mlx-lm BatchGenerator aggregate tok/s | mlx-lm peak MiB | ours / mlx-lm |" if peer is not None else ""))
    print("| ---: " * (9 if peer is not None else 6) + "|")
    for r, p in zip(ours, theirs):
        x1 = f"{r['x_b1']:.2f}x" if r["x_b1"] else "-"
        row = (f"| {r['B']} | {r['aggregate_tps']:.2f} | {r['per_sequence_tps']:.2f} | {r['ms_per_step']:.1f} | {x1} "
               f"| {r['peak_memory_bytes'] / 2**20:.1f} |")  # fmt: skip
        if p is not None:
            ratio = r["aggregate_tps"] / p["aggregate_tps"]
            row += f" {p['aggregate_tps']:.2f} | {p['peak_memory_bytes'] / 2**20:.1f} | {ratio:.2f}x |"
        print(row, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
