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
        N, k = idx.shape
        alpha, limit = self._alpha, self._limit
        if N * k >= SORT_MIN_PAIRS:
            flat = idx.reshape(-1)  # [N k]
            order = mx.argsort(flat)
            inv = mx.argsort(order)
            xs = mx.expand_dims(xf[order // k], 1)  # [N k, 1, H], grouped by expert
            e = flat[order]  # [N k] sorted expert ids
            h = self.gate_up(xs, e, sorted_indices=True)  # [N k, 1, 2I]
            y = self.down(swiglu(h, alpha, limit), e, sorted_indices=True)  # [N k, 1, H]
            y = y[inv].reshape(N, k, H)  # back to token order
        else:
            xs = xf.reshape(N, 1, 1, H)  # [N, 1, 1, H] broadcast over the k experts
            h = self.gate_up(xs, idx)  # [N, k, 1, 2I]
            y = self.down(swiglu(h, alpha, limit), idx).reshape(N, k, H)  # [N, k, H]
        out = mx.expand_dims(w.astype(x.dtype), 1) @ y  # [N, 1, k] @ [N, k, H] -> [N, 1, H]
        return out.reshape(B, T, H)
