"""Grouped-query attention with learned sinks, as OpenAI's `AttentionBlock` (minus its norm and residual).

One fused QKV projection (rows q, k, v: the checkpoint's own layout), half-split YaRN RoPE, and MLX's
fused `scaled_dot_product_attention(..., sinks=)`: each head's sink is one extra, unscaled softmax
column whose probability mass is dropped, exactly the reference's `torch.cat([QK, S])`.
Query head h reads kv head h // (n_heads / n_kv_heads), as the reference's `view(-1, n_kv, q_mult, d)`.
A quantized cache (`mlx_oss.nn.cache.QArray` keys/values) is attended by `quantized_attention`: the
same steps with both products as `mx.quantized_matmul` on the stored codes, the same sinks and masks.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from mlx_oss.config import SCORE_BLOCK_BYTES, ModelArgs
from mlx_oss.nn.cache import QArray, map_kv
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
        """x [B, T, H] (already normed), positions offset..offset+T-1 -> [B, T, H].

        `cache` a list of B caches (one per row, each its own sequence) with `offset` an array of their
        B offsets: a batched decode step, `decode_rows` (through `__call__`, so a subclass that wraps
        the output, e.g. the sharded one's all-sum, wraps it too)."""
        if isinstance(cache, list):
            return self.decode_rows(x, cache, offset)
        B, T, _ = x.shape
        nq, nkv, d = self.n_heads, self.n_kv_heads, self.head_dim
        qkv = self.qkv(x)  # [B, T, (nq + 2 nkv) d]
        q = qkv[..., : nq * d].reshape(B, T, nq, d).transpose(0, 2, 1, 3)  # [B, nq, T, d]
        k = qkv[..., nq * d : (nq + nkv) * d].reshape(B, T, nkv, d).transpose(0, 2, 1, 3)  # [B, nkv, T, d]
        v = qkv[..., (nq + nkv) * d :].reshape(B, T, nkv, d).transpose(0, 2, 1, 3)  # [B, nkv, T, d]
        q = self._rope(q, offset)
        k = self._rope(k, offset)
        if cache is not None:
            k, v = cache.update_and_fetch(k, v)  # [B, nkv, S, d] (QArrays from a quantized cache)
        o = self.attend_quantized(q, k, v, mask) if isinstance(k, QArray) else self.attend(q, k, v, mask)
        return self.out(o.transpose(0, 2, 1, 3).reshape(B, T, nq * d))  # [B, T, H]

    def decode_rows(self, x: mx.array, caches: list, offsets: mx.array) -> mx.array:
        """x [B, 1, H], row b one new token of its own sequence at position offsets[b] with cache
        caches[b] -> [B, 1, H]. The projections and RoPE (per-row offsets) run once for all rows, so
        their weights are read once per step; only the attention itself runs row by row, each against
        its own cache (full or ring, plain or quantized: one new token needs no mask on either)."""
        B, T, _ = x.shape
        if T != 1 or len(caches) != B:
            raise ValueError(
                f"a batched step takes one token per row and one cache per row, got x {x.shape}, {len(caches)} caches"
            )
        nq, nkv, d = self.n_heads, self.n_kv_heads, self.head_dim
        qkv = self.qkv(x)  # [B, 1, (nq + 2 nkv) d]
        q = self._rope(qkv[..., : nq * d].reshape(B, 1, nq, d).transpose(0, 2, 1, 3), offsets)  # [B, nq, 1, d]
        k = self._rope(qkv[..., nq * d : (nq + nkv) * d].reshape(B, 1, nkv, d).transpose(0, 2, 1, 3), offsets)
        v = qkv[..., (nq + nkv) * d :].reshape(B, 1, nkv, d).transpose(0, 2, 1, 3)  # [B, nkv, 1, d]
        outs = []
        for b, c in enumerate(caches):
            kb, vb = c.update_and_fetch(k[b : b + 1], v[b : b + 1])
            qb = q[b : b + 1]
            attend = self.attend_quantized if isinstance(kb, QArray) else self.attend
            outs.append(attend(qb, kb, vb, None))
        o = mx.concatenate(outs, axis=0) if B > 1 else outs[0]  # [B, nq, 1, d]
        return self.out(o.transpose(0, 2, 1, 3).reshape(B, 1, nq * d))

    def attend(self, q: mx.array, k: mx.array, v: mx.array, mask: Mask) -> mx.array:
        """q [B, nq, T, d], k/v [B, nkv, S, d] -> [B, nq, T, d]: MLX's fused kernel (a backend may
        swap in its own, `mlx_oss.backend.cpu.CPUAttention`)."""
        return mx.fast.scaled_dot_product_attention(q, k, v, scale=self._scale, mask=mask, sinks=self.sinks)

    def attend_quantized(self, q: mx.array, k: QArray, v: QArray, mask: Mask) -> mx.array:
        """`attend` on a quantized cache's keys/values (a backend may swap in its own)."""
        return quantized_attention(q, k, v, self._scale, mask, self.sinks)


def quantized_attention(q: mx.array, k: QArray, v: QArray, scale: float, mask: Mask, sinks: mx.array) -> mx.array:
    """q [B, nq, T, d], quantized k/v [B, nkv, S, d] -> [B, nq, T, d]: the sink attention of `attend`
    (scaled q, scores, mask, each head's unscaled sink as one extra softmax column whose mass is
    dropped, precise softmax) with q @ K^T and p @ V as `mx.quantized_matmul` on the stored codes, as
    mlx-lm's `quantized_scaled_dot_product_attention` (nothing dequantized; the rep query heads of a kv
    head are one [rep*T, d] operand). Bits and group size follow from the shapes and d. The queries go
    in blocks whose scores fit `SCORE_BLOCK_BYTES` (a decode step is one block)."""
    B, nq, T, d = q.shape
    S = k.data.shape[2]
    block = max(1, score_block_bytes() // (4 * B * nq * S))
    if block >= T:
        return _quantized_block(q, k, v, scale, mask, sinks)
    outs = []
    for a in range(0, T, block):
        b = min(a + block, T)
        if isinstance(mask, str):  # causal, lower-right aligned: the block's last query sees keys < S - T + b
            keys = S - T + b
            kb, vb = (map_kv(lambda t, n=keys: t[:, :, :n], x) for x in (k, v))
            outs.append(_quantized_block(q[:, :, a:b], kb, vb, scale, "causal", sinks))
        else:  # an array mask: its rows of the block (None: every key visible)
            mb = mask if mask is None else mask[..., a:b, :]
            outs.append(_quantized_block(q[:, :, a:b], k, v, scale, mb, sinks))
        mx.eval(outs[-1])  # MLX would otherwise schedule every block's scores at once: then no bound
    return mx.concatenate(outs, axis=2)


def score_block_bytes() -> int:
    """`SCORE_BLOCK_BYTES` (a function, so that tests can make the blocks small)."""
    return SCORE_BLOCK_BYTES


def _quantized_block(q: mx.array, k: QArray, v: QArray, scale: float, mask: Mask, sinks: mx.array) -> mx.array:
    B, nq, T, d = q.shape
    nkv, S = k.data.shape[1], k.data.shape[2]
    rep = nq // nkv
    group_size = d // k.scales.shape[-1]
    bits = 32 * k.data.shape[-1] // d
    q = (mx.array(scale, q.dtype) * q).reshape(B, nkv, rep * T, d)
    scores = mx.quantized_matmul(q, *k, transpose=True, group_size=group_size, bits=bits).reshape(B, nkv, rep, T, S)
    p = sink_softmax(scores, mask, sinks)
    o = mx.quantized_matmul(p.reshape(B, nkv, rep * T, S), *v, transpose=False, group_size=group_size, bits=bits)
    return o.reshape(B, nq, T, d)


def sink_softmax(scores: mx.array, mask: Mask, sinks: mx.array) -> mx.array:
    """scores [B, nkv, rep, T, S] (scaled q @ K^T) -> probabilities [B, nkv, rep, T, S]: the mask applied
    ("causal" lower-right aligned like MLX's; a bool mask, or an additive one), each head's unscaled sink
    as one extra softmax column whose mass is dropped, a precise softmax (float32 inside)."""
    B, nkv, rep, T, S = scores.shape
    if isinstance(mask, str):
        mask = mx.arange(S - T, S)[:, None] >= mx.arange(S)[None]
    if mask is not None:
        if mask.dtype == mx.bool_:
            scores = mx.where(mask, scores, mx.array(mx.finfo(scores.dtype).min, scores.dtype))
        else:
            scores = scores + mask
    col = mx.broadcast_to(sinks.astype(scores.dtype).reshape(1, nkv, rep, 1, 1), (B, nkv, rep, T, 1))
    return mx.softmax(mx.concatenate([col, scores], axis=-1), axis=-1, precise=True)[..., 1:]


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
