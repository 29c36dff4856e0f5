"""KV caches: a fixed ring for sliding-window layers, a growing buffer for full-attention layers.

Both update their buffers functionally (`self.keys = mx.slice_update(...)`): MLX then writes in place
(the old buffer is donated, measured 0.2 ms per decode write into a 100k-token buffer), and any
`snapshot()` a caller holds stays valid, because a held reference only turns the next write into one
copy. That is what lets an engine keep the sliding-layer state of a turn boundary for cross-turn
prompt reuse, and roll a full-layer cache back with `trim`.

Shapes: keys/values are [B, n_kv_heads, slots, head_dim]; all batch rows share one offset.

Quantized caches (`QuantizedKVCache`, opt-in: `make_cache(..., kv_bits=)`, on the full-attention
layers; `QuantizedRotatingKVCache` for the sliding window only with `quantize_window`) are the same caches whose buffers are `QArray`s: each key/value row quantized on the way in with MLX's
affine `mx.quantize` along head_dim (`bits` 8 or 4, one scale and one bias per `group_size` values), so
every buffer operation acts on the three parts alike, and a row's codes do not depend on any other
row (a chunked, a token-by-token and a from-scratch pass store the same codes). Attention then runs on
them with `mx.quantized_matmul` (`mlx_oss.nn.attention.quantized_attention`); nothing is dequantized.
Bytes per slot and layer (`slot_bytes`): 2 x n_kv_heads x head_dim x (bits/8 + 2 s/group_size), s the
bytes of the compute dtype (scales and biases), against 2 x n_kv_heads x head_dim x s unquantized:
with bfloat16 and groups of 64, 0.531x (8-bit) and 0.281x (4-bit).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, NamedTuple, TypeVar

import mlx.core as mx

from mlx_oss.config import KV_BITS, KV_GROUP_SIZES, check_kv_quant, slot_bytes

_C = TypeVar("_C", bound="_Buffers")



class QArray(NamedTuple):
    """A [B, H, n, d] tensor as `mx.quantize` stores it, quantized along d: packed codes
    [B, H, n, d * bits / 32] (uint32) and per-group scales and biases [B, H, n, d / group_size]."""

    data: mx.array
    scales: mx.array
    biases: mx.array


Buffer = mx.array | QArray


def map_kv(f: Callable[..., mx.array], *xs: Buffer) -> Buffer:
    """f(*xs) for plain arrays; for QArrays, f over their parts in step (data with data, ...), as a QArray."""
    if isinstance(xs[0], QArray):
        return QArray(*(f(*parts) for parts in zip(*xs)))
    return f(*xs)


def _slots(buf: Buffer) -> int:
    return (buf.data if isinstance(buf, QArray) else buf).shape[2]


def _take(buf: Buffer, a: int, b: int) -> Buffer:
    """Slots a..b-1."""
    return map_kv(lambda t: t[..., a:b, :], buf)


def _put(buf: Buffer, x: Buffer, start: int) -> Buffer:
    """buf with x written at slots start.. (functional: MLX writes in place when it can)."""
    at = mx.array([start])
    return map_kv(lambda b, y: mx.slice_update(b, y, at, [2]), buf, x)


def _cat(*bufs: Buffer) -> Buffer:
    return map_kv(lambda *ts: mx.concatenate(ts, axis=2), *bufs)


def _zeros(like: Buffer, slots: int) -> Buffer:
    """Zeros of `like`'s batch, heads, row layout and dtypes, with `slots` slots."""
    return map_kv(lambda t: mx.zeros((*t.shape[:2], slots, t.shape[3]), dtype=t.dtype), like)


def _arrays(buf: Buffer | None) -> list[mx.array]:
    if buf is None:
        return []
    return list(buf) if isinstance(buf, QArray) else [buf]


@dataclass(frozen=True)
class CacheState:
    """What `snapshot()` returns; pass it back to `restore()` of the same cache."""

    offset: int
    keys: Buffer | None = None  # only rotating caches keep their (small) buffers
    values: Buffer | None = None

    @property
    def arrays(self) -> list[mx.array]:
        """The MLX arrays this state holds (none for a full-attention cache's)."""
        return _arrays(self.keys) + _arrays(self.values)


class _Buffers:
    """What both caches share: key/value buffers [B, n_kv_heads, slots, head_dim] and an offset."""

    keys: Buffer | None
    values: Buffer | None
    offset: int

    def _encode(self, x: Buffer) -> Buffer:
        """New keys or values [B, H, T, D] as this cache stores them (here: as they are)."""
        return x

    @property
    def state(self) -> list[mx.array]:
        """Every array the cache holds (what to evaluate)."""
        return _arrays(self.keys) + _arrays(self.values)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.state)

    def clone(self: _C) -> _C:
        """An independent cache holding the same tokens: it shares the buffers, and whichever of the
        two writes first copies them (MLX does not donate a buffer that is referenced twice)."""
        return copy.copy(self)


class KVCache(_Buffers):
    """Full-attention layers: a buffer that grows with the tokens actually seen.

    Capacity grows geometrically (x1.25, rounded up to `step` slots) so a long prompt costs O(n)
    copying in total while never holding more than ~25% + `step` unused slots; `reserve(n)` lets a
    caller that knows the final length allocate once.
    """

    step = 256
    growth = 1.25

    def __init__(self) -> None:
        self.keys: Buffer | None = None
        self.values: Buffer | None = None
        self.offset = 0

    @property
    def capacity(self) -> int:
        return 0 if self.keys is None else _slots(self.keys)

    def reserve(self, n: int, like: mx.array | None = None) -> None:
        """Make room for `n` tokens in total (`like`: a [B, H, T, D] array giving B, H, D and dtype)."""
        if n <= self.capacity:
            return
        if self.keys is None and like is None:
            raise ValueError("reserve before the first update needs `like`")
        src = self.keys if self.keys is not None else self._encode(like)
        cap = -(-n // self.step) * self.step
        new_k, new_v = _zeros(src, cap), _zeros(src, cap)
        if self.keys is not None and self.offset:
            new_k = _put(new_k, _take(self.keys, 0, self.offset), 0)
            new_v = _put(new_v, _take(self.values, 0, self.offset), 0)
        self.keys, self.values = new_k, new_v

    def update_and_fetch(self, k: mx.array, v: mx.array) -> tuple[Buffer, Buffer]:
        """Append k, v [B, H, T, D]; return every cached key/value [B, H, offset+T, D] in order."""
        T = k.shape[2]
        k, v = self._encode(k), self._encode(v)
        need = self.offset + T
        if need > self.capacity:
            self.reserve(max(need, int(self.capacity * self.growth)), like=k)
        self.keys = _put(self.keys, k, self.offset)
        self.values = _put(self.values, v, self.offset)
        self.offset = need
        return _take(self.keys, 0, need), _take(self.values, 0, need)

    # -------------------------------------------------------------- roll back / reuse

    def can_trim(self, n: int) -> bool:
        return 0 <= n <= self.offset

    def trim(self, n: int) -> int:
        """Forget the last `n` tokens (the buffer is kept; later writes overwrite). Returns tokens trimmed."""
        n = max(0, min(n, self.offset))
        self.offset -= n
        return n

    def snapshot(self) -> CacheState:
        """Only the offset: holding the big buffer would force a copy on every later write."""
        return CacheState(self.offset)

    def restore(self, state: CacheState) -> None:
        """Back to a snapshot taken earlier on this cache, valid if the first `state.offset` tokens were not rewritten."""
        if state.offset > self.offset:
            raise ValueError(f"cannot restore a full-attention cache forward ({self.offset} -> {state.offset} tokens)")
        self.offset = state.offset



class RotatingKVCache(_Buffers):
    """Sliding-window layers: `window` slots; the key of absolute position p lives in slot p % window.

    Decode (T == 1) writes one slot and returns the whole ring: every slot is within the window
    (a query sees itself and the window-1 keys before it), and attention is order-independent, so
    no mask is needed. A multi-token update returns the retained keys in temporal order followed by
    the new ones, `retained(T)` of them, so the model can build the banded mask for the chunk.
    """

    def __init__(self, window: int) -> None:
        self.window = window
        self.keys: Buffer | None = None
        self.values: Buffer | None = None
        self.offset = 0

    def retained(self, T: int) -> int:
        """Old keys that a T-token update returns in front of the new ones."""
        return min(self.offset, self.window - 1)

    def _alloc(self, k: Buffer) -> None:
        self.keys = _zeros(k, self.window)
        self.values = _zeros(k, self.window)

    def _ordered(self, buf: Buffer, start: int, n: int) -> Buffer:
        """Positions start..start+n-1 (all resident), in order."""
        s = start % self.window
        if s + n <= self.window:
            return _take(buf, s, s + n)
        return _cat(_take(buf, s, self.window), _take(buf, 0, s + n - self.window))

    def _write(self, buf: Buffer, x: Buffer, start: int) -> Buffer:
        """Store x [B, H, n <= window, D] as positions start..start+n-1."""
        n = _slots(x)
        s = start % self.window
        if s + n <= self.window:
            return _put(buf, x, s)
        first = self.window - s
        buf = _put(buf, _take(x, 0, first), s)
        return _put(buf, _take(x, first, n), 0)

    def update_and_fetch(self, k: mx.array, v: mx.array) -> tuple[Buffer, Buffer]:
        T = k.shape[2]
        k, v = self._encode(k), self._encode(v)
        if self.keys is None:
            self._alloc(k)
        if T == 1:
            self.keys = self._write(self.keys, k, self.offset)
            self.values = self._write(self.values, v, self.offset)
            self.offset += 1
            n = min(self.offset, self.window)
            if n == self.window:
                return self.keys, self.values
            return _take(self.keys, 0, n), _take(self.values, 0, n)
        r = self.retained(T)
        if r:
            keys = _cat(self._ordered(self.keys, self.offset - r, r), k)
            values = _cat(self._ordered(self.values, self.offset - r, r), v)
        else:
            keys, values = k, v
        n = min(T, self.window)
        end = self.offset + T
        self.keys = self._write(self.keys, _take(k, T - n, T), end - n)
        self.values = self._write(self.values, _take(v, T - n, T), end - n)
        self.offset = end
        return keys, values

    # -------------------------------------------------------------- roll back / reuse

    def can_trim(self, n: int) -> bool:
        """Possible while the window of the new last token is still resident."""
        if n < 0 or n > self.offset:
            return False
        return self.offset <= self.window or n <= 1

    def trim(self, n: int) -> int:
        if not self.can_trim(n):
            raise ValueError(
                f"a {self.window}-slot sliding cache at {self.offset} tokens cannot drop {n}; restore a snapshot instead"
            )
        self.offset -= n
        return n

    def snapshot(self) -> CacheState:
        """The whole ring (window slots): cheap, and enough to resume from this exact point."""
        return CacheState(self.offset, self.keys, self.values)

    def restore(self, state: CacheState) -> None:
        self.offset, self.keys, self.values = state.offset, state.keys, state.values


# ------------------------------------------------------------------ quantized caches


class _Quantized:
    """Keys and values stored as `QArray`s: `mx.quantize(x, group_size, bits)` on the way in."""

    def _init_quant(self, bits: int, group_size: int) -> None:
        check_kv_quant(bits, group_size)
        self.bits = bits
        self.group_size = group_size

    def _encode(self, x: Buffer) -> QArray:
        if isinstance(x, QArray):
            return x
        return QArray(*mx.quantize(x, group_size=self.group_size, bits=self.bits))


class QuantizedKVCache(_Quantized, KVCache):
    """`KVCache` holding `bits`-bit keys and values (`QArray` buffers; fetches return QArrays)."""

    def __init__(self, bits: int = 8, group_size: int = 64) -> None:
        super().__init__()
        self._init_quant(bits, group_size)


class QuantizedRotatingKVCache(_Quantized, RotatingKVCache):
    """`RotatingKVCache` holding `bits`-bit keys and values (`QArray` ring; fetches return QArrays)."""

    def __init__(self, window: int, bits: int = 8, group_size: int = 64) -> None:
        super().__init__(window)
        self._init_quant(bits, group_size)


def make_cache(
    layer_types: tuple[str, ...] | list[str],
    window: int,
    kv_bits: int | None = None,
    kv_group_size: int = 64,
    quantize_window: bool = False,
) -> list[KVCache | RotatingKVCache]:
    """One cache per layer: rotating on sliding layers, growing on full ones. `kv_bits` 8 or 4: the
    full layers' caches quantized (`kv_group_size` values per scale and bias); the sliding window stays
    in full precision unless `quantize_window`: its `window` slots per layer are a fixed few MiB (20b:
    12 layers x 128 slots), and quantizing them costs most of the error (8-bit median KL 1.2e-4 with the
    window quantized, 6.8e-7 without: docs/MODEL.md, "Quantized KV cache")."""
    check_kv_quant(kv_bits, kv_group_size)

    def sliding() -> RotatingKVCache:
        if kv_bits is not None and quantize_window:
            return QuantizedRotatingKVCache(window, kv_bits, kv_group_size)
        return RotatingKVCache(window)

    def full() -> KVCache:
        return KVCache() if kv_bits is None else QuantizedKVCache(kv_bits, kv_group_size)

    return [sliding() if t == "sliding_attention" else full() for t in layer_types]


def trim_cache(cache: list, n: int) -> int:
    """Trim every layer by `n` tokens if all of them can; returns the tokens trimmed (0 if not possible)."""
    if not all(c.can_trim(n) for c in cache):
        return 0
    for c in cache:
        c.trim(n)
    return n
