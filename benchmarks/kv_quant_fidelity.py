#!/usr/bin/env python
"""Quantized KV cache fidelity: 8-bit and 4-bit caches against the unquantized one, float32 compute.

    .venv/bin/python benchmarks/kv_quant_fidelity.py [--long 4096] [--new 64] [--group-size 64]

Two synthetic checkpoints (the `tiny` preset at the real head_dim 64: the golden `tiny` has head_dim 16,
which MLX's affine quantization cannot group, its smallest group being 32 values):

- short: the tiny layers with their 8-slot window, the golden test's 40-token prompt;
- long: the same layers with gpt-oss's 128-slot window, a random prompt of `--long` tokens (4096: the
  window wraps 32 times), prefilled in 512-token chunks.

For each, the unquantized cache takes the prompt in chunks (the banded sliding masks bite in every
chunk after the first) and decodes `--new` greedy tokens one per step (the ring path, no mask). Each
quantized cache takes the same prompt and tokens (teacher forcing), and from a clone of its state after
the prompt decodes its own greedy tokens. Reported, over all prompt + new positions: relative error of
the logits and median / max per-position KL(unquantized || quantized); at the `--new` generation steps:
how often the quantized cache's argmax is the unquantized token (teacher-forced), and how many of its
own free-running tokens equal the unquantized ones before the first difference (one flipped near-tie
changes every later token: the smallest top-2 gap of the unquantized steps is printed too). A last row
per case rounds the cache to bfloat16 instead (no quantization), for scale. tests/test_kv_quant.py
asserts bounds on the same numbers (`measure`).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mlx_oss.convert.synthetic import preset, write_checkpoint  # noqa: E402
from mlx_oss.engine import prefill_chunks  # noqa: E402
from mlx_oss.loader import load_model  # noqa: E402
from mlx_oss.nn.cache import KVCache, RotatingKVCache  # noqa: E402

HEAD_DIM = 64  # gpt-oss's


@dataclass(frozen=True)
class Case:
    name: str
    window: int
    prompt: np.ndarray
    chunk: int  # prefill / teacher-forcing chunk


def golden_prompt() -> np.ndarray:
    g = np.load(ROOT / "tests" / "fixtures" / "golden_tiny.npz")
    return g["tokens"][: int(g["prompt_len"])].astype(np.int32)


def short_case() -> Case:
    return Case("short (window 8, golden prompt)", 8, golden_prompt(), 32)


def long_case(n: int = 4096, chunk: int = 512) -> Case:
    prompt = np.random.default_rng(30).integers(0, 512, n).astype(np.int32)
    return Case(f"long (window 128, {n}-token prompt)", 128, prompt, chunk)


class _Bf16KVCache(KVCache):
    """Keys and values rounded to bfloat16 and back: the error of a bfloat16 cache, for scale."""

    def _encode(self, x):
        return x.astype(mx.bfloat16).astype(x.dtype)


class _Bf16RotatingKVCache(RotatingKVCache):
    _encode = _Bf16KVCache._encode


def make_cache(model, setting: int | str | None, group_size: int = 64) -> list:
    """The model's caches: unquantized (None); 8 or 4: `kv_bits` as the commands set it (the full layers
    quantized, the sliding window in full precision); "8+window" / "4+window": the window quantized too;
    "bf16": rounded to bfloat16."""
    if setting is None:
        return model.make_cache()
    if setting != "bf16":
        bits, _, window = str(setting).partition("+")
        return model.make_cache(kv_bits=int(bits), kv_group_size=group_size, quantize_window=bool(window))
    a = model.args
    return [_Bf16RotatingKVCache(a.sliding_window) if t == "sliding_attention" else _Bf16KVCache() for t in a.layer_types]


def checkpoint(root: Path, window: int) -> Path:
    """The tiny preset at head_dim 64 with this window (original layout, seed 0)."""
    return write_checkpoint(root / f"tiny-hd64-w{window}", preset("tiny", head_dim=HEAD_DIM, sliding_window=window), "original", seed=0)


def prefill_logits(model, prompt: np.ndarray, cache: list, chunk: int) -> np.ndarray:
    """Logits [P, vocab] (float64) of every prompt position, fed into `cache` `chunk` tokens per call."""
    out = []
    for s in range(0, len(prompt), chunk):
        lg = model(mx.array(prompt[None, s : s + chunk]), cache)
        mx.eval(lg)
        out.append(np.array(lg[0], dtype=np.float64))
    return np.concatenate(out)


def decode(model, cache: list, last: np.ndarray, n: int, follow: list[int] | None = None) -> tuple[list[int], np.ndarray]:
    """n decode steps, one token each: greedy from `last` (the logits before them), or the tokens of
    `follow` (teacher forcing). -> (tokens fed, logits [n, vocab] after each)."""
    tokens, out = [], []
    for i in range(n):
        t = follow[i] if follow is not None else int(np.argmax(last))
        tokens.append(t)
        lg = model(mx.array([[t]], dtype=mx.int32), cache, last_only=True)
        last = np.array(lg[0, -1], dtype=np.float64)
        out.append(last)
    return tokens, np.stack(out)


def kl(ref: np.ndarray, ours: np.ndarray) -> np.ndarray:
    lp = ref - np.logaddexp.reduce(ref, -1, keepdims=True)
    lq = ours - np.logaddexp.reduce(ours, -1, keepdims=True)
    return (np.exp(lp) * (lp - lq)).sum(-1)


def same_prefix(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def measure(model, case: Case, n_new: int, bits: tuple[int | str, ...] = (8, 4), group_size: int = 64, free: bool = True) -> dict:
    """The unquantized cache decodes `n_new` greedy tokens after the prompt; each quantized cache is
    fed the same prompt and tokens (teacher forcing) and, from a clone of its state after the prompt,
    decodes its own greedy tokens (`free`). Logits compared at all prompt + n_new positions.

    -> {"greedy": the unquantized tokens, "margin": their smallest top-2 logit gap, bits: {rel,
    kl_median, kl_max, forced (argmax = the unquantized token at the n_new generation steps), same
    (free-running tokens equal before the first difference; None without `free`), n, positions}}."""
    cache = model.make_cache()
    P = prefill_logits(model, case.prompt, cache, case.chunk)
    ref_gen, D = decode(model, cache, P[-1], n_new)
    ref = np.concatenate([P, D])
    steps = ref[len(case.prompt) - 1 : -1]  # the logits each greedy token was picked from
    top2 = np.sort(steps, -1)[:, -2:]
    out: dict = {"greedy": ref_gen, "margin": float((top2[:, 1] - top2[:, 0]).min())}
    for b in bits:
        cache = make_cache(model, b, group_size)
        Pq = prefill_logits(model, case.prompt, cache, case.chunk)
        twin = [c.clone() for c in cache]
        _, Dq = decode(model, cache, Pq[-1], n_new, follow=ref_gen)
        q = np.concatenate([Pq, Dq])
        k = kl(ref, q)
        out[b] = {
            "rel": float(np.linalg.norm(q - ref) / np.linalg.norm(ref)),
            "kl_median": float(np.median(k)),
            "kl_max": float(k.max()),
            "forced": int((q[len(case.prompt) - 1 : -1].argmax(-1) == np.array(ref_gen)).sum()),
            "same": same_prefix(decode(model, twin, Pq[-1], n_new)[0], ref_gen) if free else None,
            "n": n_new,
            "positions": len(ref),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--long", type=int, default=4096, help="prompt tokens of the long case")
    ap.add_argument("--new", type=int, default=64, help="greedy tokens decoded")
    ap.add_argument("--group-size", type=int, default=64)
    a = ap.parse_args(argv)
    print(f"mlx {mx.__version__}, float32, group size {a.group_size}\n")
    print("| case | cache | positions | logits rel. error | median KL | max KL | greedy, teacher-forced | greedy, free-running |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    notes = []
    with tempfile.TemporaryDirectory() as tmp:
        for case in (short_case(), long_case(a.long)):
            model = load_model(checkpoint(Path(tmp), case.window), "float32")
            t0 = time.perf_counter()
            settings = (8, 4, "8+window", "4+window", "bf16")
            r = measure(model, case, a.new, settings, a.group_size)
            for b in settings:
                m = r[b]
                label = {"bf16": "bfloat16-rounded (for scale)", "8+window": "8-bit, window quantized too",
                         "4+window": "4-bit, window quantized too"}.get(b, f"{b}-bit (`--kv-bits {b}`)")  # fmt: skip
                print(f"| {case.name} | {label} | {m['positions']} | {m['rel']:.2e} | {m['kl_median']:.2e} | "
                      f"{m['kl_max']:.2e} | {m['forced']}/{m['n']} | {m['same']}/{m['n']} |")  # fmt: skip
            notes.append(f"{case.name}: smallest top-2 gap of the unquantized greedy steps {r['margin']:.3g}, "
                         f"{time.perf_counter() - t0:.0f} s")  # fmt: skip
    print()
    for n in notes:
        print(f"- {n}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
