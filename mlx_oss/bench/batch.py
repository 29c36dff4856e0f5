"""Batched decode (issue 28): decode tokens/s and peak memory of B sequences advanced together, one
forward pass per step, by `mlx_oss.batch.BatchGenerator`, or by mlx-lm's `BatchGenerator` on its own
gpt_oss model (`peer=True`). For `mlx-oss bench --batch 1,2,4,8` and benchmarks/batch_decode_bench.py.

B sequences with different random prompts (16 + 3 i tokens, ordinary ids, the same for both engines given
the seed) are prefilled, `warmup` batched steps run, then `steps` steps are timed (greedy, no stop tokens).
Per B: aggregate tok/s = tokens generated in the timed steps / seconds (counted from what the batch
reported, so B x per-sequence only if every step really advanced B sequences), per-sequence tok/s =
steps / seconds, ms per step, the aggregate against B = 1's, and the peak memory of that B's run
(`mx.reset_peak_memory` before, `mx.get_peak_memory` after: the weights included).
"""

from __future__ import annotations

import gc
import time
from typing import Callable

import mlx.core as mx
import numpy as np

Progress = Callable[[str], None]

ORDINARY_TOKENS = 199998  # o200k_harmony: ids below this are ordinary text tokens (as runners.random_tokens)


def prompts(B: int, vocab: int, seed: int = 0) -> list[list[int]]:
    """B prompts of 16 + 3 i random ordinary token ids (i = 0 .. B-1): different lengths, so every
    sequence sits at its own cache offset."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, min(vocab, ORDINARY_TOKENS), 16 + 3 * i).tolist() for i in range(B)]


def time_batch(model, B: int, steps: int, warmup: int, seed: int = 0) -> tuple[float, int, int]:
    """`steps` steps of our `BatchGenerator` with B sequences (after `warmup` steps).
    -> (seconds, tokens generated in the timed steps, distinct sequences that generated them)."""
    from mlx_oss.batch import BatchGenerator
    from mlx_oss.sampling import Sampler, SamplingConfig

    batch = BatchGenerator(model)
    for p in prompts(B, model.args.vocab_size, seed):
        batch.add(p, Sampler(SamplingConfig(temperature=0)), max_tokens=warmup + steps + 1, stop_tokens=())
    for _ in range(warmup):
        batch.step()
    tokens, seqs = 0, set()
    t = time.perf_counter()
    for _ in range(steps):
        events = batch.step()
        tokens += sum(e.token is not None for e in events)
        seqs.update(e.seq_id for e in events)
    dt = time.perf_counter() - t
    if any(e.done is not None for e in events):
        raise RuntimeError(f"B = {B}: a sequence ended during the timed steps: {events}")
    while len(batch):  # the last token of each: nothing lazy outlives the run
        batch.step()
    return dt, tokens, len(seqs)


def time_engine(model, steps: int, warmup: int, seed: int = 0) -> float:
    """Seconds for `steps` tokens of `Engine.generate` alone (after `warmup` tokens), on the first prompt:
    what the B = 1 row should match."""
    from mlx_oss.engine import Engine
    from mlx_oss.sampling import Sampler, SamplingConfig

    prompt = prompts(1, model.args.vocab_size, seed)[0]
    gen = Engine(model).generate(prompt, Sampler(SamplingConfig(temperature=0)), max_tokens=warmup + steps + 1, stop_tokens=())
    it = iter(gen)
    for _ in range(warmup + 1):  # the first token comes with the prefill
        next(it)
    t = time.perf_counter()
    for _ in range(steps):
        next(it)
    dt = time.perf_counter() - t
    list(it)
    return dt


def time_mlx_lm(peer, B: int, steps: int, warmup: int, seed: int = 0) -> tuple[float, int, int]:
    """`steps` decode steps of mlx-lm's `BatchGenerator` on its own model `peer` with all B sequences
    generating (after its prefill and `warmup` steps). -> as `time_batch`."""
    from mlx_lm.generate import BatchGenerator as PeerBatch

    gen = PeerBatch(peer, stop_tokens=[], completion_batch_size=max(B, 1), prefill_batch_size=B)
    gen.insert(prompts(B, peer.args.vocab_size, seed), max_tokens=[10 * (warmup + steps) + 64] * B)
    ready = 0
    while ready < B:  # prefill, then every sequence in the generation batch
        _, responses = gen.next()
        ready = len(responses)
    for _ in range(warmup):
        gen.next()
    tokens, seqs = 0, set()
    t = time.perf_counter()
    for _ in range(steps):
        _, responses = gen.next()
        tokens += len(responses)
        seqs.update(r.uid for r in responses)
    dt = time.perf_counter() - t
    if hasattr(gen, "close"):
        gen.close()
    return dt, tokens, len(seqs)


def measure_batch(model, batches: list[int], steps: int, warmup: int = 3, say: Progress | None = None, *,
                  peer: bool = False, seed: int = 0, name: str | None = None) -> list[dict]:  # fmt: skip
    """One row per B in `batches`: {"B", "steps", "warmup", "seconds", "tokens", "sequences",
    "tokens_per_step", "aggregate_tps", "per_sequence_tps", "ms_per_step", "x_b1" (aggregate / B = 1's;
    None without a B = 1 row), "peak_memory_bytes"}. `peer`: `model` is mlx-lm's and runs its own
    `BatchGenerator`."""
    say = say or (lambda _m: None)
    name = name or ("mlx-lm" if peer else "mlx-oss")
    out = []
    for B in batches:
        if B < 1:
            raise ValueError(f"batch sizes must be >= 1, got {B}")
        gc.collect()
        mx.clear_cache()
        mx.reset_peak_memory()
        dt, tokens, seqs = (time_mlx_lm if peer else time_batch)(model, B, steps, warmup, seed)
        peak = mx.get_peak_memory()
        row = {"B": B, "steps": steps, "warmup": warmup, "seconds": dt, "tokens": tokens, "sequences": seqs,
               "tokens_per_step": tokens / steps, "aggregate_tps": tokens / dt, "per_sequence_tps": steps / dt,
               "ms_per_step": 1e3 * dt / steps, "x_b1": None, "peak_memory_bytes": peak}  # fmt: skip
        out.append(row)
        say(f"{name}: batch of {B}, {steps} steps: {row['aggregate_tps']:.2f} tok/s aggregate, "
            f"{row['per_sequence_tps']:.2f} per sequence, peak {peak / 2**20:.1f} MiB")  # fmt: skip
    one = next((r["aggregate_tps"] for r in out if r["B"] == 1), None)
    for r in out:
        r["x_b1"] = r["aggregate_tps"] / one if one else None
    return out
