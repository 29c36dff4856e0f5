#!/usr/bin/env python
"""Measurements behind the model's speed choices (docs/MODEL.md), at gpt-oss-20b layer sizes.

    /tmp/venv/bin/python benchmarks/model_speed.py [section ...]

Sections: moe_sort, gate_up, swiglu, attention, lm_head, dtype, prefill_chunk, decode.
Weights are random bytes of the right formats (MXFP4 words and e8m0 scales), built in memory: timing
does not depend on the values. Each number is the median of several runs after a warm-up.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mlx_oss.nn import moe as moe_mod  # noqa: E402
from mlx_oss.config import ModelArgs  # noqa: E402
from mlx_oss.engine import prefill_chunks  # noqa: E402
from mlx_oss.nn.model import Model  # noqa: E402

H, I, E, K = 2880, 2880, 32, 4


def bench(fn, reps: int = 5, warmup: int = 1) -> float:
    """Median milliseconds of fn() (which must return arrays to evaluate)."""
    for _ in range(warmup):
        mx.eval(fn())
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        mx.eval(fn())
        ts.append(time.perf_counter() - t)
    return 1e3 * float(np.median(ts))


def mx_words(shape) -> mx.array:
    return mx.random.randint(0, 2**31, shape).astype(mx.uint32)


def e8m0(shape) -> mx.array:
    return mx.random.randint(118, 124, shape).astype(mx.uint8)


def random_model(layers: int = 2, vocab: int = 201088, dtype=mx.float32) -> Model:
    args = ModelArgs(num_hidden_layers=layers, vocab_size=vocab)
    m = Model(args)
    for layer in m.layers:
        for ex, (o, i) in ((layer.mlp.gate_up, (2 * I, H)), (layer.mlp.down, (H, I))):
            ex.weight = mx_words((E, o, i // 8))
            ex.scales = e8m0((E, o, i // 32))
            ex.bias = mx.random.normal((E, o)) * 0.1
    params = nn.utils.tree_flatten(m.parameters())
    new = []
    for name, p in params:
        if p.dtype in (mx.uint32, mx.uint8) or name.endswith(".bias") and ".mlp." in name:
            new.append((name, p))
        elif name.endswith("norm.weight"):
            new.append((name, mx.ones(p.shape, dtype=mx.float32)))
        else:
            new.append((name, (mx.random.normal(p.shape) * 0.02).astype(dtype)))
    m.load_weights(new)
    mx.eval(m.parameters())
    return m


def moe_layer(dtype=mx.float32):
    m = random_model(1, vocab=16, dtype=dtype)
    return m.layers[0].mlp


def sec_moe_sort() -> None:
    print("## MoE: sort (token, expert) pairs by expert before gather_qmm?  [ms per MoE layer]")
    mlp = moe_layer()
    print("| tokens | unsorted | sorted |")
    for n in (1, 4, 16):
        x = mx.random.normal((1, n, H))
        res = []
        for thr in (10**9, 0):
            moe_mod.SORT_MIN_PAIRS = thr
            res.append(bench(lambda: mlp(x), reps=3 if n < 16 else 1))
        print(f"| {n} | {res[0]:.1f} | {res[1]:.1f} |")
    moe_mod.SORT_MIN_PAIRS = 64


def sec_gate_up() -> None:
    print("## gate and up: one gather_qmm on [gate; up] halves vs two  [ms]")
    w, s = mx_words((E, 2 * I, H // 8)), e8m0((E, 2 * I, H // 32))
    wg, wu = mx.contiguous(w[:, :I]), mx.contiguous(w[:, I:])
    sg, su = mx.contiguous(s[:, :I]), mx.contiguous(s[:, I:])
    mx.eval(w, s, wg, wu, sg, su)
    q = dict(transpose=True, group_size=32, bits=4, mode="mxfp4")
    print("| tokens | one (2I rows) | two (I rows each) |")
    for n in (1, 4):
        x = mx.random.normal((n, 1, 1, H))
        idx = mx.random.randint(0, E, (n, K)).astype(mx.uint32)
        one = bench(lambda: mx.gather_qmm(x, w, s, None, rhs_indices=idx, **q), reps=5)
        two = bench(
            lambda: [mx.gather_qmm(x, wg, sg, None, rhs_indices=idx, **q), mx.gather_qmm(x, wu, su, None, rhs_indices=idx, **q)],
            reps=5,
        )
        print(f"| {n} | {one:.1f} | {two:.1f} |")


def sec_swiglu() -> None:
    print("## clamped SwiGLU: mx.compile vs plain ops  [ms]")
    a, lim = mx.array(1.702), mx.array(7.0)

    def plain(h):
        i = h.shape[-1] // 2
        glu = mx.minimum(h[..., :i], lim)
        lin = mx.clip(h[..., i:], -lim, lim)
        return glu * mx.sigmoid(a * glu) * (lin + 1)

    print("| rows | plain | compiled |")
    for n in (4, 8192):
        h = mx.random.normal((n, 1, 2 * I)) * 5
        print(f"| {n} | {bench(lambda: plain(h), reps=9):.2f} | {bench(lambda: moe_mod.swiglu(h, a, lim), reps=9):.2f} |")


def _manual_sdpa(q, k, v, scale, mask, sinks):
    B, nq, T, d = q.shape
    nkv = k.shape[1]
    qg = q.reshape(B, nkv, nq // nkv, T, d)
    s = (qg * scale) @ mx.expand_dims(k, 2).swapaxes(-1, -2)  # [B, nkv, m, T, S]
    if mask is not None:
        s = mx.where(mask, s, -mx.inf)
    s = mx.concatenate([s, mx.broadcast_to(sinks.reshape(1, nkv, nq // nkv, 1, 1), (*s.shape[:-1], 1))], -1)
    w = mx.softmax(s, -1, precise=True)[..., :-1]
    return (w @ mx.expand_dims(v, 2)).reshape(B, nq, T, d)


def sec_attention() -> None:
    print("## attention with sinks: fused mx.fast.scaled_dot_product_attention vs unfused ops  [ms per layer]")
    sinks = mx.random.normal((64,))
    print("| queries x keys | fused | unfused |")
    for T, S in ((1, 4096), (1, 32768), (512, 512 + 127), (2048, 2048 + 127)):
        q = mx.random.normal((1, 64, T, 64))
        k, v = mx.random.normal((1, 8, S, 64)), mx.random.normal((1, 8, S, 64))
        if T == 1:
            mask_f, mask_u = None, None
        else:
            qp, kp = mx.arange(S - T, S)[:, None], mx.arange(S)[None]
            mask_f = mask_u = (kp <= qp) & (kp > qp - 128)
        r = 3 if T == 1 else 1
        f = bench(lambda: mx.fast.scaled_dot_product_attention(q, k, v, scale=0.125, mask=mask_f, sinks=sinks), reps=r)
        u = bench(lambda: _manual_sdpa(q, k, v, 0.125, mask_u, sinks), reps=r)
        print(f"| {T} x {S} | {f:.1f} | {u:.1f} |")


def sec_lm_head() -> None:
    print("## lm_head (201088 x 2880): cost grows with the positions sent through it  [ms]")
    m = random_model(0, vocab=201088)
    h = mx.random.normal((1, 16, H))
    print(f"| 16 positions | {bench(lambda: m.logits(h), reps=2):.1f} |")
    print(f"| last position only | {bench(lambda: m.logits(h[:, -1:]), reps=3):.1f} |")


def sec_dtype() -> None:
    print("## compute dtype on this backend: one MoE layer  [ms]")
    print("| tokens | float32 | bfloat16 |")
    mlps = {dt: moe_layer(dt) for dt in (mx.float32, mx.bfloat16)}
    for n in (1,):
        row = []
        for dt, mlp in mlps.items():
            x = mx.random.normal((1, n, H)).astype(dt)
            row.append(bench(lambda: mlp(x), reps=3))
        print(f"| {n} | {row[0]:.1f} | {row[1]:.1f} |")


def sec_prefill_chunk() -> None:
    print("## prefill chunk size: real attention (64 q / 8 kv heads, hidden 2880), tiny experts; 2 layers, 1024-token prompt")
    args = ModelArgs(num_hidden_layers=2, vocab_size=1024, num_experts=4, intermediate_size=64)
    m = Model(args)
    m.update(nn.utils.tree_map(lambda p: p * 0.02 if p.dtype == mx.float32 and p.ndim == 2 else p, m.parameters()))
    mx.eval(m.parameters())
    tokens = mx.random.randint(0, 1024, (1, 1024))
    print("| chunk | time [s] | peak memory [GiB] |")
    for chunk in (128, 256, 512, 1024):
        mx.reset_peak_memory()
        t = bench(lambda: prefill_chunks(m, m.make_cache(), tokens, chunk=chunk), reps=1, warmup=0)
        print(f"| {chunk} | {t / 1e3:.2f} | {mx.get_peak_memory() / 2**30:.2f} |")


def sec_decode() -> None:
    print("## decode step, 2 real-size layers (1 sliding + 1 full) + 201088 lm_head, after a 16-token prompt  [ms]")
    m = random_model(2)
    cache = m.make_cache()
    mx.eval(m(mx.random.randint(0, 1000, (1, 16)), cache, last_only=True))
    tok = mx.array([[5]])
    print(f"| per token | {bench(lambda: m(tok, cache), reps=10):.1f} |")


SECTIONS = {f.__name__[4:]: f for f in (sec_moe_sort, sec_gate_up, sec_swiglu, sec_attention, sec_lm_head, sec_dtype, sec_prefill_chunk, sec_decode)}


def main(argv: list[str]) -> int:
    mx.random.seed(0)
    print(f"mlx {mx.__version__}, device {mx.default_device()}")
    for name in argv or list(SECTIONS):
        SECTIONS[name]()
        print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
