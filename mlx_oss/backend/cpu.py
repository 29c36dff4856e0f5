"""The CPU backend's layouts, swapped in by class at load time, each measured (docs/BENCH.md) and exact up to
float rounding (the same dot products; golden tests hold).

- CPU backend: one MLX CPU stream runs on one core, so the work of a step is split over one stream per
  core (`CPUStreams`, at most `MAX_STREAMS`). Dense linears (qkv, out, lm_head) become `SplitLinear`:
  the weight is held as column blocks of W.T, [blocks, in, n], and each stream multiplies its share of
  the blocks; `x @ W_block` is the BLAS loop the reference BLAS bundled with MLX's Linux wheel runs
  fastest, and ~1024-column blocks keep its output row in L1 (201088x2880 lm_head, one token: `x @ W.T`
  633 ms, `x @ W` 252 ms, blocks on two streams ~140-200 ms). The MoE becomes `CPUMoE`, which runs half
  of a token's experts (decode) or half of the sorted (token, expert) rows (prefill) on each stream.
  Attention becomes `CPUAttention`: MLX's own sink-attention steps, but with K^T made contiguous
  before the scores product (the reference BLAS runs `q @ k.T` on a transposed view ~3x slower) and
  the kv heads shared among the streams. On this backend attention is the cost that grows with the
  context: through the server, tiny-chat's time to first token for a 71-token step goes from ~0.32 s
  at 400 tokens of context to ~0.46 s at 2000, with the same tokens prefilled (docs/SERVER.md,
  "Benchmark").
- CPU backend with an optimized BLAS in the process (`fast_blas()`, e.g. OpenBLAS preloaded, see
  docs/BENCH.md): long prefill steps of `CPUMoE` dequantize each used expert once and run its rows as
  one GEMM (`DENSE_MIN_PAIRS`); with the reference BLAS that GEMM is slower than `gather_qmm`.
- Metal: nothing; bfloat16 kernels and `gather_qmm` are already what the GPU wants.

MLX streams belong to the thread that created them, so `CPUStreams` makes them per thread, on first
use. A thread that ran the model should call `mx.clear_streams()` before it ends (MLX 0.32 aborts at
exit otherwise); the TUI's worker does.
"""

from __future__ import annotations

import math
import os
import threading
from typing import Callable, Iterable, Iterator

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from mlx_oss.backend import device
from mlx_oss.config import ModelArgs
from mlx_oss.nn.attention import Attention, Mask, quantized_attention, sink_softmax
from mlx_oss.nn.cache import QArray, map_kv
from mlx_oss.nn.moe import MoE, dequantize_mxfp4, swiglu

MAX_STREAMS = 8  # measured with 2 (this machine); more cores share the same memory bandwidth
BLOCK_COLUMNS = 1024  # lm_head, one token, reference BLAS: 256 cols 282 ms, 1024 257 ms, 4096 392 ms
SPLIT_MIN_OUT = 256  # linears with fewer outputs (the 32-expert router) stay whole: too little work to share

# Dense prefill (an optimized BLAS in the process): from this many (token, expert) pairs a layer
# dequantizes each used expert once and runs its rows as one BLAS GEMM. One 20b gate_up expert, 64
# rows, OpenBLAS: gather_qmm ~4800 ms vs dequantize 119 ms + GEMM 70 ms (docs/BENCH.md); with the
# reference BLAS the GEMM alone is slower than gather_qmm.
DENSE_MIN_PAIRS = 512


# ---------------------------------------------------------------------------------- streams
# One MLX CPU stream runs on one core, so independent shares of a step's work go to one stream each.
# MLX streams cannot be used outside the thread that made them, hence one set per thread, made on first use.

def cpu_cores() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def split_points(n: int, parts: int) -> list[int]:
    """Boundaries of `parts` near-equal consecutive shares of range(n)."""
    return [i * n // parts for i in range(parts + 1)]


def per_stream(streams: tuple[mx.Stream, ...], size: int, part: Callable[[int, int], mx.array]) -> list[mx.array]:
    """part(a, b) for each of len(streams) consecutive near-equal shares [a, b) of range(size), each
    built on its own stream."""
    cuts = split_points(size, len(streams))
    out = []
    for s, a, b in zip(streams, cuts, cuts[1:]):
        with mx.stream(s):
            out.append(part(a, b))
    return out


class CPUStreams:
    """`n` CPU streams for the calling thread, made on first use."""

    def __init__(self, n: int) -> None:
        self.n = n
        self._local = threading.local()

    def get(self) -> tuple[mx.Stream, ...]:
        s = getattr(self._local, "streams", None)
        if s is None:
            s = self._local.streams = tuple(mx.new_stream(mx.cpu) for _ in range(self.n))
        return s


# ---------------------------------------------------------------------------------- layers


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


def attention_with_sinks(q: mx.array, k: mx.array, v: mx.array, scale: float, mask: Mask, sinks: mx.array) -> mx.array:
    """q [B, nq, T, d], k/v [B, nkv, S, d] -> [B, nq, T, d]: the same operations, in the same order,
    as MLX's CPU fallback of `mx.fast.scaled_dot_product_attention(..., sinks=)` (scaled q, scores,
    mask, sink column in front, precise softmax, drop the sink), so the result is the same, except that
    the scores are `q @ K^T` with K^T made contiguous first: MLX's fallback multiplies by a transposed
    view, the loop the reference BLAS runs slowest (560x64 @ 64x1000: 176 ms vs 51 ms, docs/BENCH.md).
    The copy is S*d per kv head, 1/(rep*T) of the product's work."""
    B, nq, T, d = q.shape
    nkv, S = k.shape[1], k.shape[2]
    rep = nq // nkv
    q = (mx.array(scale, q.dtype) * q).reshape(B, nkv, rep * T, d)
    kt = mx.contiguous(k.swapaxes(-1, -2))  # [B, nkv, d, S]
    p = sink_softmax((q @ kt).reshape(B, nkv, rep, T, S), mask, sinks)
    return (p.reshape(B, nkv, rep * T, S) @ v).reshape(B, nq, T, d)


class CPUAttention(Attention):
    """`Attention` whose attention itself (scores, softmax, values) runs as `attention_with_sinks`,
    the kv heads shared among the CPU streams (each stream its heads and their query groups)."""

    def __init__(self, args: ModelArgs, rope, streams: CPUStreams) -> None:
        super().__init__(args, rope)
        self.streams = streams

    @classmethod
    def of(cls, attn: Attention, args: ModelArgs, streams: CPUStreams) -> "CPUAttention":
        """A CPUAttention holding `attn`'s own projections and sinks."""
        new = cls(args, attn._rope, streams)  # its fresh zeros are lazy: never allocated
        new.qkv, new.out, new.sinks = attn.qkv, attn.out, attn.sinks
        return new

    def attend(self, q: mx.array, k: mx.array, v: mx.array, mask: Mask) -> mx.array:
        return self._by_kv_heads(attention_with_sinks, q, k, v, mask)

    def attend_quantized(self, q: mx.array, k: QArray, v: QArray, mask: Mask) -> mx.array:
        """A quantized cache: `quantized_attention`, its kv heads shared among the streams alike."""
        return self._by_kv_heads(quantized_attention, q, k, v, mask)

    def _by_kv_heads(self, attention: Callable, q: mx.array, k, v, mask: Mask) -> mx.array:
        """attention(q, k, v, scale, mask, sinks), each stream its kv heads and their query groups."""
        streams = self.streams.get()
        nkv = (k.data if isinstance(k, QArray) else k).shape[1]
        rep = q.shape[1] // nkv
        n = min(len(streams), nkv)
        if n < 2:
            return attention(q, k, v, self._scale, mask, self.sinks)

        def part(a: int, b: int) -> mx.array:
            qs = slice(a * rep, b * rep)
            heads = lambda t: t[:, a:b]  # noqa: E731
            return attention(q[:, qs], map_kv(heads, k), map_kv(heads, v), self._scale, mask, self.sinks[qs])

        return mx.concatenate(per_stream(streams[:n], nkv, part), axis=1)


class CPUMoE(MoE):
    """`MoE` with the experts' work shared among CPU streams and, with an optimized BLAS
    (`dense_min_pairs`), long prefill steps run as one dense GEMM per used expert."""

    def __init__(self, args: ModelArgs, streams: CPUStreams, dense_min_pairs: int | None = None) -> None:
        super().__init__(args)
        self.streams = streams
        self.dense_min_pairs = dense_min_pairs  # None: always gather_qmm

    @classmethod
    def of(cls, moe: MoE, args: ModelArgs, streams: CPUStreams, dense_min_pairs: int | None = None) -> "CPUMoE":
        """A CPUMoE holding `moe`'s own router and experts (a router quantized by the folder stays so)."""
        new = cls(args, streams, dense_min_pairs)  # its fresh zeros are lazy: never allocated
        new.router, new.gate_up, new.down = moe.router, moe.gate_up, moe.down
        return new

    def expert_outputs(self, xf: mx.array, idx: mx.array) -> mx.array:
        N, k = idx.shape
        if self.dense_min_pairs is not None and N * k >= self.dense_min_pairs:
            return self._dense_experts(xf, idx)
        return super().expert_outputs(xf, idx)

    def _dense_experts(self, xf: mx.array, idx: mx.array) -> mx.array:
        """xf [N, H], idx [N, k] -> [N, k, H]: each used expert dequantized once, its rows as one GEMM.

        Reads the routing on the host (one sync per layer), so it is for prefill, not decode.
        """
        N, k = idx.shape
        flat = idx.reshape(-1)
        order = mx.argsort(flat)
        counts = np.bincount(np.array(flat), minlength=self.gate_up.weight.shape[0])
        xs = xf[order // k]  # [N k, H] grouped by expert
        g, d, outs, s = self.gate_up, self.down, [], 0
        streams = self.streams.get()
        for i, e in enumerate(np.flatnonzero(counts)):
            rows = xs[s : s + int(counts[e])]
            s += int(counts[e])
            with mx.stream(streams[i % len(streams)]):  # experts take turns on the CPU streams
                wg = dequantize_mxfp4(g.weight[e], g.scales[e], g.group_size).astype(xf.dtype)
                h = swiglu(rows @ wg.T + g.bias[e], self._alpha, self._limit)
                wd = dequantize_mxfp4(d.weight[e], d.scales[e], d.group_size).astype(xf.dtype)
                outs.append(h @ wd.T + d.bias[e])
        return mx.concatenate(outs)[mx.argsort(order)].reshape(N, k, -1)

    def _apply(self, xs: mx.array, idx: mx.array, axis: int, sorted_indices: bool = False) -> mx.array:
        """idx cut along `axis` into one share per CPU stream (xs cut alike for the sorted rows),
        results joined along `axis`."""
        streams = self.streams.get()
        n = min(len(streams), idx.shape[axis])
        if n < 2:
            return self._experts(xs, idx, sorted_indices)

        def part(a: int, b: int) -> mx.array:
            sl = (slice(None),) * axis + (slice(a, b),)
            return self._experts(xs[sl] if axis == 0 else xs, idx[sl], sorted_indices)

        return mx.concatenate(per_stream(streams[:n], idx.shape[axis], part), axis=axis)


def prepare(
    model, *, metal: bool | None = None, blas: str | None | bool = False, streams: int | None = None
) -> dict:
    """Set up `model` (built, weights not yet loaded) for this backend. -> what was applied.

    `blas`: the optimized BLAS loaded in the process; False (default) asks `fast_blas()`.
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
    for layer in model.layers:
        if type(layer.attn) is Attention:
            layer.attn = CPUAttention.of(layer.attn, model.args, cs)
    owners = [model] + [layer.attn for layer in model.layers]
    for owner in owners:
        for name, lin in list(owner.children().items()):
            if type(lin) is nn.Linear and lin.weight.shape[0] >= SPLIT_MIN_OUT:
                out_dims, in_dims = lin.weight.shape
                setattr(owner, name, SplitLinear(in_dims, out_dims, "bias" in lin, cs))
    if blas is False:
        blas = fast_blas()
    for layer in model.layers:
        if type(layer.mlp) is MoE:
            layer.mlp = CPUMoE.of(layer.mlp, model.args, cs, DENSE_MIN_PAIRS if blas else None)
    applied["cpu_streams"] = cs.n
    if blas:
        applied["dense_prefill"] = blas
    if blas == "openblas" and cs.n > 1 and openblas_threads(1) is not None:
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


# ---------------------------------------------------------------------------------- BLAS probes


def fast_blas(maps: str | None = None) -> str | None:
    """The optimized BLAS loaded in this process (openblas, mkl, blis), or None for the reference
    BLAS bundled with MLX's Linux wheel. Read from /proc/self/maps; `maps` injects its text."""
    if maps is None:
        try:
            with open("/proc/self/maps") as f:
                maps = f.read()
        except OSError:
            return None
    # "libopenblas", not "openblas": numpy's bundled libscipy_openblas64_ uses suffixed symbols and
    # never serves MLX's cblas calls.
    for lib, name in (("/libopenblas", "openblas"), ("/libmkl_rt", "mkl"), ("/libblis", "blis")):
        if lib in maps:
            return name
    return None


OPENBLAS_CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/x86_64-linux-gnu/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/libopenblas.so.0",
    "/usr/lib64/libopenblas.so.0",
)


def find_openblas(exists: Callable[[str], bool] | None = None) -> str | None:
    """Path of a system OpenBLAS (Debian: `apt-get install libopenblas0-pthread`), or None."""
    exists = exists or os.path.exists
    return next((p for p in OPENBLAS_CANDIDATES if exists(p)), None)


def openblas_threads(n: int | None = None, lib=None) -> int | None:
    """Threads of the OpenBLAS serving this process (set to `n` if given; -> the count before),
    None if there is none. OpenBLAS's own threads and our per-core MLX streams would fight over the
    same cores, so a model split over streams runs OpenBLAS single-threaded (`prepare`)."""
    if lib is None:
        import ctypes

        lib = ctypes.CDLL(None)  # the global namespace: an LD_PRELOADed OpenBLAS lands there
    get = getattr(lib, "openblas_get_num_threads", None)
    if get is None:
        return None
    before = int(get())
    if n is not None and n != before:
        lib.openblas_set_num_threads(int(n))
    return before
