"""Mixture of experts as OpenAI's `MLPBlock` (minus its norm and residual), on MXFP4 weights.

Router: linear with bias, top-k logits, softmax over those k only. Experts: `gather_qmm(mode="mxfp4")`
straight on the checkpoint's bytes (no dequantization); gate and up are one matmul because the
converter stores them as contiguous halves (docs/FORMAT.md). Clamped SwiGLU:
`glu = min(gate, limit); lin = clip(up, -limit, limit); glu * sigmoid(alpha * glu) * (lin + 1)`.
The down-projection bias is added per expert before the weighted sum, as in the reference.
"""

from __future__ import annotations

from functools import partial

import mlx.core as mx
import mlx.nn as nn

from mlx_oss.config import ModelArgs

# Prefill sorts (token, expert) pairs by expert so each expert's rows are contiguous for gather_qmm.
# Below this many pairs the argsorts cost more than they save (benchmarks/model_speed.py moe_sort:
# CPU, one 20b MoE layer, 4 tokens 268 ms unsorted vs 350 sorted; 16 tokens 1277 vs 1002).
SORT_MIN_PAIRS = 64

_NIBBLE_SHIFTS = mx.arange(0, 32, 4, dtype=mx.uint32)


@mx.compile
def _fp4_values(w: mx.array) -> mx.array:
    """uint32 words [..., K/8] -> float32 e2m1 values [..., K/8, 8] (low nibble first).

    An e2m1 nibble s|ee|m placed at bits 31 | 24..23 | 22 is a float32 with exponent field ee and
    mantissa m/2: exactly the e2m1 value times 2^-126 (ee = 0 lands on the subnormal 0.5 m 2^-126).
    """
    n = (w[..., None] >> _NIBBLE_SHIFTS) & 0xF
    return (((n & 8) << 28) | ((n & 7) << 22)).view(mx.float32) * (2.0**126)


def dequantize_mxfp4(w: mx.array, scales: mx.array, group_size: int = 32) -> mx.array:
    """MXFP4 [out, in/8] uint32 + e8m0 [out, in/32] uint8 -> float32 [out, in], bit-identical to
    `mx.dequantize(mode="mxfp4")` and ~3x faster on the CPU."""
    O, K8 = w.shape
    f = _fp4_values(w).reshape(O, K8 * 8 // group_size, group_size)
    e = scales.astype(mx.uint32)
    s = mx.where(e == 0, 1 << 22, e << 23).view(mx.float32)  # 2^(e-127); e = 0 is the subnormal 2^-127
    return (f * s[..., None]).reshape(O, K8 * 8)


@partial(mx.compile, shapeless=True)
def _swiglu(gate: mx.array, up: mx.array, alpha: float, limit: float) -> mx.array:
    glu = mx.minimum(gate, limit)
    lin = mx.clip(up, -limit, limit)
    return glu * mx.sigmoid(alpha * glu) * (lin + 1)


def swiglu(h: mx.array, alpha: float, limit: float) -> mx.array:
    """h [..., 2I] = [gate | up] halves -> [..., I]. Compiled: one fused kernel instead of ~8.

    alpha/limit are Python floats: compile-time constants that keep h's dtype (no per-call casts).
    """
    i = h.shape[-1] // 2
    return _swiglu(h[..., :i], h[..., i:], alpha, limit)


class MXFP4Experts(nn.Module):
    """E stacked [out, in] matrices in MXFP4 (uint32 words, uint8 e8m0 scales per 32) plus biases."""

    def __init__(self, num_experts: int, in_dims: int, out_dims: int, group_size: int = 32) -> None:
        super().__init__()
        self.group_size = group_size
        self.weight = mx.zeros((num_experts, out_dims, in_dims // 8), dtype=mx.uint32)
        self.scales = mx.zeros((num_experts, out_dims, in_dims // group_size), dtype=mx.uint8)
        self.bias = mx.zeros((num_experts, out_dims))

    def __call__(self, x: mx.array, idx: mx.array, sorted_indices: bool = False) -> mx.array:
        """x [..., 1, in] rows, idx [...] expert per row -> [..., 1, out] (bias included)."""
        y = mx.gather_qmm(
            x, self.weight, self.scales, None, rhs_indices=idx, transpose=True,
            group_size=self.group_size, bits=4, mode="mxfp4", sorted_indices=sorted_indices,
        )  # fmt: skip
        return y + mx.expand_dims(self.bias[idx], -2)


class MoE(nn.Module):
    """Router + experts. Backends change how the experts' work is run by subclassing
    (`backend.cpu.CPUMoE` overrides `expert_outputs` / `_apply`), never by attributes set from outside."""

    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.k = args.experts_per_token
        self.router = nn.Linear(args.hidden_size, args.num_experts, bias=True)
        self.gate_up = MXFP4Experts(args.num_experts, args.hidden_size, 2 * args.intermediate_size, args.expert_group_size)
        self.down = MXFP4Experts(args.num_experts, args.intermediate_size, args.hidden_size, args.expert_group_size)
        self._alpha = float(args.swiglu_alpha)
        self._limit = float(args.swiglu_limit)

    def route(self, x: mx.array) -> tuple[mx.array, mx.array]:
        """x [N, H] -> (expert indices [N, k] uint32, weights [N, k] float32)."""
        g = self.router(x)  # [N, E]
        idx = mx.argpartition(g, kth=-self.k, axis=-1)[..., -self.k :]  # top-k, unordered
        vals = mx.take_along_axis(g, idx, axis=-1)
        w = mx.softmax(vals.astype(mx.float32), axis=-1, precise=True)
        return idx.astype(mx.uint32), w

    def __call__(self, x: mx.array) -> mx.array:
        """x [B, T, H] (already normed) -> [B, T, H]."""
        B, T, H = x.shape
        xf = x.reshape(B * T, H)  # [N, H]
        idx, w = self.route(xf)  # [N, k]
        y = self.expert_outputs(xf, idx)  # [N, k, H]
        out = mx.expand_dims(w.astype(x.dtype), 1) @ y  # [N, 1, k] @ [N, k, H] -> [N, 1, H]
        return out.reshape(B, T, H)

    def expert_outputs(self, xf: mx.array, idx: mx.array) -> mx.array:
        """xf [N, H], idx [N, k] -> each token's k expert outputs [N, k, H] (bias included)."""
        N, k = idx.shape
        H = xf.shape[-1]
        if N * k >= SORT_MIN_PAIRS:
            flat = idx.reshape(-1)  # [N k]
            order = mx.argsort(flat)
            inv = mx.argsort(order)
            xs = mx.expand_dims(xf[order // k], 1)  # [N k, 1, H], grouped by expert
            e = flat[order]  # [N k] sorted expert ids
            y = self._apply(xs, e, axis=0, sorted_indices=True)  # [N k, 1, H]
            return y[inv].reshape(N, k, H)  # back to token order
        xs = xf.reshape(N, 1, 1, H)  # [N, 1, 1, H] broadcast over the k experts
        return self._apply(xs, idx, axis=1).reshape(N, k, H)  # [N, k, 1, H] -> [N, k, H]

    def _apply(self, xs: mx.array, idx: mx.array, axis: int, sorted_indices: bool = False) -> mx.array:
        """`_experts(xs, idx)`. `axis` is the one along which the rows are independent (decode: a
        token's k experts; prefill: the sorted rows), where a backend may cut the work in shares."""
        return self._experts(xs, idx, sorted_indices)

    def _experts(self, xs: mx.array, idx: mx.array, sorted_indices: bool = False) -> mx.array:
        """gate_up -> clamped SwiGLU -> down for rows `xs` and their experts `idx` (bias included)."""
        h = self.gate_up(xs, idx, sorted_indices)  # [..., 1, 2I]
        return self.down(swiglu(h, self._alpha, self._limit), idx, sorted_indices)  # [..., 1, H]
