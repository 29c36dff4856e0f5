"""Grouped-query attention with learned sinks, as OpenAI's `AttentionBlock` (minus its norm and residual).

One fused QKV projection (rows q, k, v: the checkpoint's own layout), half-split YaRN RoPE, and MLX's
fused `scaled_dot_product_attention(..., sinks=)`: each head's sink is one extra, unscaled softmax
column whose probability mass is dropped, exactly the reference's `torch.cat([QK, S])`.
Query head h reads kv head h // (n_heads / n_kv_heads), as the reference's `view(-1, n_kv, q_mult, d)`.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from mlx_oss.config import ModelArgs
from mlx_oss.nn.rope import YarnRoPE

Mask = None | str | mx.array


class Attention(nn.Module):
    def __init__(self, args: ModelArgs, rope: YarnRoPE) -> None:
        super().__init__()
        self.n_heads = args.num_attention_heads
        self.n_kv_heads = args.num_key_value_heads
        self.head_dim = args.head_dim
        self.qkv = nn.Linear(args.hidden_size, args.qkv_dim, bias=True)
        self.out = nn.Linear(self.n_heads * self.head_dim, args.hidden_size, bias=True)
        self.sinks = mx.zeros((self.n_heads,))
        # YaRN concentration c multiplies cos and sin, i.e. q and k, i.e. the logits by c**2 (rope.py).
        self._scale = args.sm_scale * rope.concentration**2
        self._rope = rope  # shared by all layers; holds no parameters

    def __call__(self, x: mx.array, mask: Mask, cache=None, offset: int = 0) -> mx.array:
        """x [B, T, H] (already normed), positions offset..offset+T-1 -> [B, T, H]."""
        B, T, _ = x.shape
        nq, nkv, d = self.n_heads, self.n_kv_heads, self.head_dim
        qkv = self.qkv(x)  # [B, T, (nq + 2 nkv) d]
        q = qkv[..., : nq * d].reshape(B, T, nq, d).transpose(0, 2, 1, 3)  # [B, nq, T, d]
        k = qkv[..., nq * d : (nq + nkv) * d].reshape(B, T, nkv, d).transpose(0, 2, 1, 3)  # [B, nkv, T, d]
        v = qkv[..., (nq + nkv) * d :].reshape(B, T, nkv, d).transpose(0, 2, 1, 3)  # [B, nkv, T, d]
        q = self._rope(q, offset)
        k = self._rope(k, offset)
        if cache is not None:
            k, v = cache.update_and_fetch(k, v)  # [B, nkv, S, d]
        o = self.attend(q, k, v, mask)
        return self.out(o.transpose(0, 2, 1, 3).reshape(B, T, nq * d))  # [B, T, H]

    def attend(self, q: mx.array, k: mx.array, v: mx.array, mask: Mask) -> mx.array:
        """q [B, nq, T, d], k/v [B, nkv, S, d] -> [B, nq, T, d]: MLX's fused kernel (a backend may
        swap in its own, `mlx_oss.backend.cpu.CPUAttention`)."""
        return mx.fast.scaled_dot_product_attention(q, k, v, scale=self._scale, mask=mask, sinks=self.sinks)


def sliding_mask(T: int, retained: int, window: int) -> Mask:
    """Mask for T queries over `retained` earlier keys followed by the T new ones.

    Query i (key index retained+i) sees key j iff retained+i-window < j <= retained+i: itself and the
    window-1 keys before it. Returns "causal" (no array at all) when the band cannot bite.
    """
    if T == 1:
        return None
    if retained + T <= window:
        return "causal"
    qpos = mx.arange(retained, retained + T)[:, None]  # [T, 1]
    kpos = mx.arange(retained + T)[None]  # [1, retained+T]
    return (kpos <= qpos) & (kpos > qpos - window)  # bool [T, retained+T]


def full_mask(T: int) -> Mask:
    """Causal over all cached keys; MLX's "causal" is lower-right aligned, so cached prefixes need no array."""
    return None if T == 1 else "causal"
