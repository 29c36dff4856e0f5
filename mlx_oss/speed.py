"""Backend-specific speedups applied at load time, each measured (docs/BENCH.md) and exact.

- CPU backend: the lm_head is held transposed, [hidden, vocab], so a decode step is `x @ W` instead of
  `x @ W.T`: the reference BLAS bundled with MLX's Linux wheel runs the former 2.2x faster
  (201088x2880 float32: 338 vs 739 ms; OpenBLAS 390 vs 752 ms). Same products, same sums.
- CPU backend with an optimized BLAS in the process (`device.fast_blas()`, e.g. OpenBLAS preloaded,
  see docs/BENCH.md): long prefill steps dequantize each used expert once and run its rows as one
  GEMM (`moe.DENSE_MIN_PAIRS`); with the reference BLAS that GEMM is slower than `gather_qmm`.
- Metal: nothing; bfloat16 kernels and `gather_qmm` are already what the GPU wants.
"""

from __future__ import annotations

from typing import Iterable, Iterator

import mlx.core as mx
import mlx.nn as nn

from mlx_oss import device
from mlx_oss.moe import DENSE_MIN_PAIRS, MoE


class TransposedUnembed(nn.Module):
    """lm_head with its weight stored [hidden, vocab] (loaded from the usual [vocab, hidden]).

    A weight later set in the usual layout (e.g. `model.load_weights(..., strict=False)` with
    checkpoint tensors) still works, at the untransposed speed: the layout is read off the shape
    (`prepare` never transposes a square lm_head).
    """

    def __init__(self, hidden: int, vocab: int) -> None:
        super().__init__()
        self.weight = mx.zeros((hidden, vocab))

    def __call__(self, x: mx.array) -> mx.array:
        w = self.weight
        return x @ w if w.shape[0] == x.shape[-1] else x @ w.T


def prepare(model, *, metal: bool | None = None, blas: str | None | bool = False) -> dict:
    """Set up `model` (built, weights not yet loaded) for this backend. -> what was applied.

    `blas`: the optimized BLAS loaded in the process; False (default) asks `device.fast_blas()`.
    """
    if metal is None:
        metal = device.metal_available()
    applied: dict = {}
    if metal:
        return applied
    if isinstance(model.unembed, nn.Linear) and type(model.unembed) is nn.Linear:
        vocab, hidden = model.unembed.weight.shape
        if vocab != hidden:
            model.unembed = TransposedUnembed(hidden, vocab)
            applied["lm_head"] = "transposed"
    if blas is False:
        blas = device.fast_blas()
    if blas:
        for layer in model.layers:
            if isinstance(layer.mlp, MoE):
                layer.mlp.dense_min_pairs = DENSE_MIN_PAIRS
        applied["dense_prefill"] = blas
    return applied


def adapt_weights(model, weights: Iterable[tuple[str, mx.array]], dtype: mx.Dtype | None = None) -> Iterator[tuple[str, mx.array]]:
    """Checkpoint tensors in the layout `prepare` chose. The transposed lm_head is written block by
    block into its final buffer (cast to `dtype` on the way), so loading holds the source and the
    result but never a second full-size copy (peak as without the transposition)."""
    transposed = isinstance(getattr(model, "unembed", None), TransposedUnembed)
    for name, a in weights:
        if transposed and name == "unembed.weight":
            a = _transpose_blocked(a, dtype or a.dtype)
        yield name, a


def _transpose_blocked(a: mx.array, dtype: mx.Dtype, block_bytes: int = 64 << 20) -> mx.array:
    """[V, H] -> contiguous [H, V] in `dtype`, at most `block_bytes` of temporaries at a time."""
    V, H = a.shape
    out = mx.zeros((H, V), dtype=dtype)
    step = max(1, block_bytes // (H * dtype.size))
    for s in range(0, V, step):
        out = mx.slice_update(out, a[s : s + step].T.astype(dtype), mx.array([0, s]), [0, 1])
        mx.eval(out)
    return out
