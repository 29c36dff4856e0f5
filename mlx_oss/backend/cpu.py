"""Backend-specific speedups applied at load time, each measured (docs/BENCH.md) and exact up to
float rounding (the same dot products; golden tests hold).

- CPU backend: one MLX CPU stream runs on one core, so the work of a step is split over one stream per
  core (`CPUStreams`, at most `MAX_STREAMS`). Dense linears (qkv, out, lm_head) become `SplitLinear`:
  the weight is held as column blocks of W.T, [blocks, in, n], and each stream multiplies its share of
  the blocks; `x @ W_block` is the BLAS loop the reference BLAS bundled with MLX's Linux wheel runs
  fastest, and ~1024-column blocks keep its output row in L1 (201088x2880 lm_head, one token: `x @ W.T`
  633 ms, `x @ W` 252 ms, blocks on two streams ~140-200 ms). The MoE runs half of a token's experts
  (decode) or half of the sorted (token, expert) rows (prefill) on each stream (`MoE.streams`).
- CPU backend with an optimized BLAS in the process (`device.fast_blas()`, e.g. OpenBLAS preloaded,
  see docs/BENCH.md): long prefill steps dequantize each used expert once and run its rows as one
  GEMM (`moe.DENSE_MIN_PAIRS`); with the reference BLAS that GEMM is slower than `gather_qmm`.
- Metal: nothing; bfloat16 kernels and `gather_qmm` are already what the GPU wants.

MLX streams belong to the thread that created them, so `CPUStreams` makes them per thread, on first
use. A thread that ran the model should call `mx.clear_streams()` before it ends (MLX 0.32 aborts at
exit otherwise); the TUI's worker does.
"""

from __future__ import annotations

import math
import os
from typing import Iterable, Iterator

import mlx.core as mx
import mlx.nn as nn

from mlx_oss.backend import device
from mlx_oss.nn.moe import DENSE_MIN_PAIRS, MoE
from mlx_oss.backend.streams import CPUStreams, cpu_cores, per_stream

MAX_STREAMS = 8  # measured with 2 (this machine); more cores share the same memory bandwidth
BLOCK_COLUMNS = 1024  # lm_head, one token, reference BLAS: 256 cols 282 ms, 1024 257 ms, 4096 392 ms
SPLIT_MIN_OUT = 256  # linears with fewer outputs (the 32-expert router) stay whole: too little work to share


class SplitLinear(nn.Module):
    """A linear layer whose output columns are computed in shares on several CPU streams.

    `weight` is W.T cut into column blocks, [blocks, in, n] (the last block zero-padded), `bias`
    [out]. A weight later set in the usual [out, in] layout still works, on one stream.
    """

    def __init__(self, in_dims: int, out_dims: int, bias: bool, streams: CPUStreams, block: int = BLOCK_COLUMNS) -> None:
        super().__init__()
        blocks = streams.n * math.ceil(out_dims / (streams.n * block))
        self.weight = mx.zeros((blocks, in_dims, math.ceil(out_dims / blocks)))
        if bias:
            self.bias = mx.zeros((out_dims,))
        self.out_dims = out_dims
        self.streams = streams

    def __call__(self, x: mx.array) -> mx.array:
        w = self.weight
        if w.ndim == 2:
            y = x @ w.T
        else:
            lead, x2 = x.shape[:-1], x.reshape(-1, x.shape[-1])  # [N, in]
            parts = per_stream(self.streams.get(), w.shape[0], lambda a, b: x2 @ w[a:b])  # [b - a, N, n] each
            y = mx.concatenate(parts).transpose(1, 0, 2).reshape(x2.shape[0], -1)  # [N, blocks n]
            y = y[:, : self.out_dims].reshape(*lead, self.out_dims)
        return y + self.bias if "bias" in self else y

    @staticmethod
    def blocked(a: mx.array, blocks: int, dtype: mx.Dtype, block_bytes: int = 64 << 20) -> mx.array:
        """[out, in] -> [blocks, in, n] column blocks of a.T in `dtype`, zero-padded, built at most
        `block_bytes` at a time (loading never holds a second full-size copy)."""
        O, K = a.shape
        n = math.ceil(O / blocks)
        out = mx.zeros((blocks, K, n), dtype=dtype)
        step = max(1, block_bytes // (K * n * dtype.size))
        for b in range(0, blocks, step):
            e = min(blocks, b + step)
            rows = a[b * n : e * n]
            if rows.shape[0] < (e - b) * n:
                rows = mx.concatenate([rows, mx.zeros(((e - b) * n - rows.shape[0], K), dtype=rows.dtype)])
            chunk = rows.reshape(e - b, n, K).transpose(0, 2, 1).astype(dtype)
            out = mx.slice_update(out, chunk, mx.array([b, 0, 0]), [0, 1, 2])
            mx.eval(out)
        return out


def prepare(
    model, *, metal: bool | None = None, blas: str | None | bool = False, streams: int | None = None
) -> dict:
    """Set up `model` (built, weights not yet loaded) for this backend. -> what was applied.

    `blas`: the optimized BLAS loaded in the process; False (default) asks `device.fast_blas()`.
    `streams`: CPU streams per step; default one per core (at most `MAX_STREAMS`), env MLX_OSS_CPU_STREAMS.
    """
    if metal is None:
        metal = device.metal_available()
    applied: dict = {}
    if metal:
        return applied
    if streams is None:
        streams = int(os.environ.get("MLX_OSS_CPU_STREAMS") or min(cpu_cores(), MAX_STREAMS))
    cs = CPUStreams(max(1, streams))
    owners = [model] + [layer.attn for layer in model.layers]
    for owner in owners:
        for name, lin in list(owner.children().items()):
            if type(lin) is nn.Linear and lin.weight.shape[0] >= SPLIT_MIN_OUT:
                out_dims, in_dims = lin.weight.shape
                setattr(owner, name, SplitLinear(in_dims, out_dims, "bias" in lin, cs))
    for layer in model.layers:
        if isinstance(layer.mlp, MoE):
            layer.mlp.streams = cs
    applied["cpu_streams"] = cs.n
    if blas is False:
        blas = device.fast_blas()
    if blas:
        for layer in model.layers:
            if isinstance(layer.mlp, MoE):
                layer.mlp.dense_min_pairs = DENSE_MIN_PAIRS
        applied["dense_prefill"] = blas
    if blas == "openblas" and cs.n > 1 and device.openblas_threads(1) is not None:
        applied["blas_threads"] = 1  # one core per stream (20b slice decode step: 580 -> 332 ms)
    return applied


def adapt_weights(model, weights: Iterable[tuple[str, mx.array]], dtype: mx.Dtype | None = None) -> Iterator[tuple[str, mx.array]]:
    """Checkpoint tensors in the layouts `prepare` chose (`SplitLinear` weights as column blocks,
    cast to `dtype` on the way)."""
    split = {f"{path}.weight": m for path, m in model.named_modules() if isinstance(m, SplitLinear)}
    for name, a in weights:
        m = split.get(name)
        if m is not None and a.ndim == 2:
            a = SplitLinear.blocked(a, m.weight.shape[0], dtype or a.dtype)
        yield name, a
