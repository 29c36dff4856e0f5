"""What `mlx-oss bench` measures (a `Runner`: ours, its Metal twin, mlx-lm), behind one interface, and
the measurements themselves. (Runners, not engines: `mlx_oss.engine.Engine` is the generation engine.)

Every runner gets the same token ids, the same greedy decode loop (pipelined as in mlx-lm's
`generate_step`: the step for token i is queued before token i is read) and the same timers, so a
ratio compares models, not harnesses. Prefill runs each runner's own way: ours through
`mlx_oss.engine.prefill_chunks` (the engine's chunk loop, lm_head on the last position only), mlx-lm's
as its `generate_step` does it (2048-token chunks evaluating only the caches, then the last token
through the model).
"""

from __future__ import annotations

import gc
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Protocol

import mlx.core as mx
import numpy as np

Progress = Callable[[str], None]

ORDINARY_TOKENS = 199998  # o200k_harmony: ids below this are ordinary text tokens


class Runner(Protocol):
    name: str
    model: object

    def make_cache(self) -> list: ...
    def prefill(self, tokens: list[int], cache: list) -> mx.array: ...
    def step(self, y: mx.array, cache: list) -> mx.array: ...
    def named_bytes(self) -> list[tuple[str, int]]: ...


def random_tokens(n: int, vocab: int, seed: int = 0) -> list[int]:
    """The benchmark's prompt: n ordinary token ids, identical for every runner given the seed."""
    hi = min(vocab, ORDINARY_TOKENS)
    return np.random.default_rng(seed).integers(0, hi, size=n).tolist()


def _named_bytes(model) -> list[tuple[str, int]]:
    from mlx.utils import tree_flatten

    return [(n, int(p.nbytes)) for n, p in tree_flatten(model.parameters())]


class OursRunner:
    """mlx-oss: `mlx_oss.load` (backend speedups included, mlx_oss/backend/cpu.py)."""

    name = "mlx-oss"

    def __init__(self, path: str | Path, dtype: str | None = None, kv_bits: int | None = None, kv_group_size: int = 64) -> None:
        import mlx_oss

        self.path = Path(path)
        self.model, self.tokenizer = mlx_oss.load(path, dtype, kv_bits=kv_bits, kv_group_size=kv_group_size)

    def make_cache(self) -> list:
        return self.model.make_cache()

    def prefill(self, tokens: list[int], cache: list) -> mx.array:
        from mlx_oss.engine import prefill_chunks

        return prefill_chunks(self.model, cache, mx.array([tokens], dtype=mx.int32)).reshape(1, -1)

    def step(self, y: mx.array, cache: list) -> mx.array:
        return self.model(y.reshape(1, 1), cache, last_only=True).reshape(1, -1)

    def named_bytes(self) -> list[tuple[str, int]]:
        return _named_bytes(self.model)


class MetalTwin(OursRunner):
    """Our model laid out as on Metal (`cpu.prepare(metal=True)`: no CPU stream splitting), at small
    sizes with the same layers, routing and dense format: what one decode step dispatches on an Apple
    GPU. The count of operations does not depend on the sizes, only the work in each. With `kv_bits` its
    caches are quantized as the real model's (head_dim kept then: a group must divide it)."""

    def __init__(self, args, kv_bits: int | None = None, kv_group_size: int = 64) -> None:
        from dataclasses import replace

        from mlx_oss.backend import cpu
        from mlx_oss.nn.model import build_model

        q_per_kv = args.num_attention_heads // args.num_key_value_heads
        small = replace(
            args, hidden_size=128, intermediate_size=128, head_dim=args.head_dim if kv_bits else 16,
            num_attention_heads=2 * q_per_kv, num_key_value_heads=2, vocab_size=512,
        )  # fmt: skip
        self.path = None
        self.model = build_model(small)
        self.model.set_kv_quant(kv_bits, kv_group_size)
        cpu.prepare(self.model, metal=True)
        mx.eval(self.model.parameters())


class MlxLmRunner:
    """mlx-lm's own `gpt_oss` model on the same checkpoint (Hugging Face layout), dense weights cast
    to `dtype` (float32: its best setting on the CPU backend, ~5x its bfloat16 speed there)."""

    name = "mlx-lm"
    prefill_step = 2048  # mlx-lm's generate_step default

    def __init__(self, hf_path: str | Path, dtype: str = "float32") -> None:
        from mlx_lm.utils import load_model

        self.path = Path(hf_path)
        self.model, _ = load_model(self.path)
        self.model.set_dtype(getattr(mx, dtype))
        mx.eval(self.model.parameters())

    def make_cache(self) -> list:
        return self.model.make_cache()

    def prefill(self, tokens: list[int], cache: list) -> mx.array:
        y = mx.array(tokens, dtype=mx.int32)
        while y.size > 1:
            n = min(self.prefill_step, y.size - 1)
            self.model(y[:n][None], cache=cache)
            mx.eval([c.state for c in cache])
            y = y[n:]
        return self.model(y[None], cache=cache)[:, -1, :]

    def step(self, y: mx.array, cache: list) -> mx.array:
        return self.model(y.reshape(1, 1), cache=cache)[:, -1, :]

    def named_bytes(self) -> list[tuple[str, int]]:
        return _named_bytes(self.model)


def mlx_lm_source(converted: Path) -> Path | None:
    """The Hugging Face checkpoint a converted folder came from (mlx-lm reads that layout)."""
    import json

    try:
        src = json.loads((Path(converted) / "config.json").read_text()).get("source") or {}
    except (OSError, ValueError):
        return None
    p = Path(src["path"]) if src.get("layout") == "hf" and src.get("path") else None
    return p if p is not None and (p / "config.json").is_file() else None


# ----------------------------------------------------------------------------- measurements


def mean_std(xs: Iterable[float]) -> tuple[float, float]:
    xs = list(xs)
    if not xs:
        return float("nan"), float("nan")
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def _greedy(logits: mx.array) -> mx.array:
    return mx.argmax(logits, axis=-1).astype(mx.int32)


def time_prefill(runner: Runner, tokens: list[int]) -> tuple[float, float]:
    """-> (prefill seconds, time to first token seconds) on a fresh cache."""
    cache = runner.make_cache()
    t0 = time.perf_counter()
    logits = runner.prefill(tokens, cache)
    mx.eval(logits)
    t1 = time.perf_counter()
    int(_greedy(logits).item())
    return t1 - t0, time.perf_counter() - t0


def cache_nbytes(cache: list) -> int:
    """Bytes the caches hold allocated (ours and mlx-lm's: both have an `nbytes` property)."""
    return sum(int(c.nbytes) for c in cache)


def cache_kind(cache: list) -> dict:
    """What a runner's caches really are: {"bits": 8|4|None, "group_size"} of the full-attention
    (growing) layers' caches and "window_bits" of the sliding-window ones (ours: `window`, mlx-lm's:
    `max_size`; quantized ones, ours or mlx-lm's, carry `bits` and `group_size`)."""

    def kinds(cs: list) -> set:
        return {(getattr(c, "bits", None), getattr(c, "group_size", None)) for c in cs} or {(None, None)}

    ring = [hasattr(c, "window") or hasattr(c, "max_size") for c in cache]
    full, window = kinds([c for c, r in zip(cache, ring) if not r]), kinds([c for c, r in zip(cache, ring) if r])
    if len(full) != 1 or len(window) != 1:
        raise ValueError(f"layers of one kind with different caches: {sorted(map(str, full | window))}")
    (bits, group), ((window_bits, _),) = full.pop(), window
    return {"bits": bits, "group_size": group, "window_bits": window_bits}


def time_decode(runner: Runner, context: list[int], n: int, kv: dict | None = None) -> float:
    """Decode `n` greedy tokens after `context` (prefilled untimed) -> seconds for the n steps. `kv`: a
    dict to receive the cache after the prefill (`positions`, allocated `bytes`, and `cache_kind`'s keys)."""
    cache = runner.make_cache()
    y = _greedy(runner.prefill(context, cache))
    mx.eval(y)
    if kv is not None:
        kv.update(positions=len(context), bytes=cache_nbytes(cache), **cache_kind(cache))
    t0 = time.perf_counter()
    for _ in range(n):
        logits = runner.step(y, cache)
        nxt = _greedy(logits)
        mx.async_eval(nxt)
        int(y.item())
        y = nxt
    int(y.item())
    return time.perf_counter() - t0


@dataclass
class Stat:
    mean: float
    std: float
    runs: list[float] = field(default_factory=list)

    @classmethod
    def of(cls, runs: list[float]) -> "Stat":
        m, s = mean_std(runs)
        return cls(m, s, list(runs))


def measure_runner(
    runner: Runner,
    prompts: list[int],
    depths: list[int],
    gen: int,
    reps: int,
    vocab: int,
    seed: int = 0,
    progress: Progress | None = None,
) -> dict:
    """Prefill tokens/s and TTFT at each prompt size, decode tokens/s at each depth; `reps` runs
    each after one warm-up. -> {"prefill": [...], "decode": [...]}; each decode entry also has
    "kv_cache": the cache right after the prefill to that depth (`time_decode`'s `kv`)."""
    say = progress or (lambda _m: None)
    base = random_tokens(max(prompts + depths + [1]) + 1, vocab, seed)
    # warm-up: compile, first touch of every weight, allocator pools
    time_prefill(runner, base[:16])
    time_decode(runner, base[:4], 2)
    out: dict = {"prefill": [], "decode": []}
    for p in prompts:
        tps, ttft = [], []
        for r in range(reps):
            s, t = time_prefill(runner, base[:p])
            tps.append(p / s)
            ttft.append(t)
            say(f"{runner.name}: prefill {p} tokens, run {r + 1}/{reps}: {p / s:.2f} tok/s, TTFT {t:.2f} s")
        out["prefill"].append({"tokens": p, "tps": Stat.of(tps).__dict__, "ttft_s": Stat.of(ttft).__dict__})
    for d in depths:
        tps, kv = [], {}
        for r in range(reps):
            s = time_decode(runner, base[: max(d, 1)], gen, kv)
            tps.append(gen / s)
            say(f"{runner.name}: decode {gen} tokens at depth {d}, run {r + 1}/{reps}: {gen / s:.2f} tok/s")
        out["decode"].append({"depth": d, "tokens": gen, "tps": Stat.of(tps).__dict__, "kv_cache": kv})
    return out


class _KVWriter:
    """Stands in for the model in `engine.prefill_chunks`: each call writes keys and values of the
    model's attention shape into every layer's cache, no weights involved."""

    def __init__(self, dims, dtype: str) -> None:
        self.heads, self.head_dim, self.dtype = dims.num_key_value_heads, dims.head_dim, getattr(mx, dtype)

    def __call__(self, tokens: mx.array, cache: list, last_only: bool = True) -> mx.array:
        kv = mx.random.normal((tokens.shape[0], self.heads, tokens.shape[1], self.head_dim)).astype(self.dtype)
        for c in cache:
            c.update_and_fetch(kv, kv)
        return mx.zeros((tokens.shape[0], 1, 1))


def cache_bytes_at(dims, positions: int, dtype: str = "float32", kv_bits: int | None = None, kv_group_size: int = 64,
                   quantize_window: bool = False) -> int:  # fmt: skip
    """The caches' allocated bytes after a prefill of `positions` tokens, without running the model:
    the same caches (`mlx_oss.nn.cache.make_cache`) filled by the same chunk loop and reserve as a
    bench prefill (`engine.prefill_chunks`), so the result equals what `bench -d positions` reports
    for a model with these attention dimensions, at depths a CPU cannot prefill in minutes."""
    from mlx_oss.config import check_kv_quant
    from mlx_oss.engine import prefill_chunks
    from mlx_oss.nn.cache import make_cache

    check_kv_quant(kv_bits, kv_group_size, dims.head_dim)
    cache = make_cache(dims.layer_types, dims.sliding_window, kv_bits, kv_group_size, quantize_window)
    prefill_chunks(_KVWriter(dims, dtype), cache, mx.zeros((1, positions), dtype=mx.int32))
    return cache_nbytes(cache)


def count_graph_nodes(runner: Runner, depth: int = 8, vocab: int = 201088) -> dict:
    """MLX operations (graph nodes) one decode step dispatches, at a cache of `depth` tokens: what a
    Metal command buffer gets, the cost per token that does not shrink with faster kernels.
    -> {"total": n, "by_op": {primitive: count}}."""
    import os
    import re
    import tempfile

    cache = runner.make_cache()
    mx.eval(runner.prefill(random_tokens(depth, vocab), cache))
    mx.eval([c.state for c in cache])
    logits = runner.step(mx.array([[1]], dtype=mx.int32), cache)
    with tempfile.TemporaryDirectory() as tmp:
        f = os.path.join(tmp, "step.dot")
        mx.export_to_dot(f, logits)
        text = open(f).read()
    mx.eval(logits)
    ops = re.findall(r'\[label ="([^"]+)", shape=rectangle\]', text)
    by: dict[str, int] = {}
    for o in ops:
        by[o] = by.get(o, 0) + 1
    return {"total": len(ops), "by_op": dict(sorted(by.items(), key=lambda kv: -kv[1]))}


def release() -> None:
    """After the caller dropped its runner: free the weights before the next one loads."""
    gc.collect()
    mx.clear_cache()
