"""KV caches: a fixed ring for sliding-window layers, a growing buffer for full-attention layers.

Both update their buffers functionally (`self.keys = mx.slice_update(...)`): MLX then writes in place
(the old buffer is donated, measured 0.2 ms per decode write into a 100k-token buffer), and any
`snapshot()` a caller holds stays valid, because a held reference only turns the next write into one
copy. That is what lets an engine keep the sliding-layer state of a turn boundary for cross-turn
prompt reuse, and roll a full-layer cache back with `trim`.

Shapes: keys/values are [B, n_kv_heads, slots, head_dim]; all batch rows share one offset.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TypeVar

import mlx.core as mx

_C = TypeVar("_C", bound="_Buffers")


@dataclass(frozen=True)
class CacheState:
    """What `snapshot()` returns; pass it back to `restore()` of the same cache."""

    offset: int
    keys: mx.array | None = None  # only rotating caches keep their (small) buffers
    values: mx.array | None = None


class _Buffers:
    """What both caches share: key/value buffers [B, n_kv_heads, slots, head_dim] and an offset."""

    keys: mx.array | None
    values: mx.array | None
    offset: int

    @property
    def state(self) -> list[mx.array]:
        return [] if self.keys is None else [self.keys, self.values]

    @property
    def nbytes(self) -> int:
        return 0 if self.keys is None else self.keys.nbytes + self.values.nbytes

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
        self.keys: mx.array | None = None
        self.values: mx.array | None = None
        self.offset = 0

    @property
    def capacity(self) -> int:
        return 0 if self.keys is None else self.keys.shape[2]

    def reserve(self, n: int, like: mx.array | None = None) -> None:
        """Make room for `n` tokens in total (`like`: a [B, H, T, D] array giving B, H, D and dtype)."""
        if n <= self.capacity:
            return
        src = self.keys if self.keys is not None else like
        if src is None:
            raise ValueError("reserve before the first update needs `like`")
        B, H, _, D = src.shape
        cap = -(-n // self.step) * self.step
        new_k = mx.zeros((B, H, cap, D), dtype=src.dtype)
        new_v = mx.zeros((B, H, cap, D), dtype=src.dtype)
        if self.keys is not None and self.offset:
            new_k[..., : self.offset, :] = self.keys[..., : self.offset, :]
            new_v[..., : self.offset, :] = self.values[..., : self.offset, :]
        self.keys, self.values = new_k, new_v

    def update_and_fetch(self, k: mx.array, v: mx.array) -> tuple[mx.array, mx.array]:
        """Append k, v [B, H, T, D]; return every cached key/value [B, H, offset+T, D] in order."""
        T = k.shape[2]
        need = self.offset + T
        if need > self.capacity:
            self.reserve(max(need, int(self.capacity * self.growth)), like=k)
        start = mx.array([self.offset])
        self.keys = mx.slice_update(self.keys, k, start, [2])
        self.values = mx.slice_update(self.values, v, start, [2])
        self.offset = need
        return self.keys[..., :need, :], self.values[..., :need, :]

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
        self.keys: mx.array | None = None
        self.values: mx.array | None = None
        self.offset = 0

    def retained(self, T: int) -> int:
        """Old keys that a T-token update returns in front of the new ones."""
        return min(self.offset, self.window - 1)

    def _alloc(self, k: mx.array) -> None:
        B, H, _, D = k.shape
        self.keys = mx.zeros((B, H, self.window, D), dtype=k.dtype)
        self.values = mx.zeros((B, H, self.window, D), dtype=k.dtype)

    def _ordered(self, buf: mx.array, start: int, n: int) -> mx.array:
        """Positions start..start+n-1 (all resident), in order."""
        s = start % self.window
        if s + n <= self.window:
            return buf[..., s : s + n, :]
        return mx.concatenate([buf[..., s:, :], buf[..., : s + n - self.window, :]], axis=2)

    def _write(self, buf: mx.array, x: mx.array, start: int) -> mx.array:
        """Store x [B, H, n <= window, D] as positions start..start+n-1."""
        n = x.shape[2]
        s = start % self.window
        if s + n <= self.window:
            return mx.slice_update(buf, x, mx.array([s]), [2])
        first = self.window - s
        buf = mx.slice_update(buf, x[..., :first, :], mx.array([s]), [2])
        return mx.slice_update(buf, x[..., first:, :], mx.array([0]), [2])

    def update_and_fetch(self, k: mx.array, v: mx.array) -> tuple[mx.array, mx.array]:
        T = k.shape[2]
        if self.keys is None:
            self._alloc(k)
        if T == 1:
            self.keys = self._write(self.keys, k, self.offset)
            self.values = self._write(self.values, v, self.offset)
            self.offset += 1
            n = min(self.offset, self.window)
            if n == self.window:
                return self.keys, self.values
            return self.keys[..., :n, :], self.values[..., :n, :]
        r = self.retained(T)
        if r:
            keys = mx.concatenate([self._ordered(self.keys, self.offset - r, r), k], axis=2)
            values = mx.concatenate([self._ordered(self.values, self.offset - r, r), v], axis=2)
        else:
            keys, values = k, v
        n = min(T, self.window)
        end = self.offset + T
        self.keys = self._write(self.keys, k[..., T - n :, :], end - n)
        self.values = self._write(self.values, v[..., T - n :, :], end - n)
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



def make_cache(layer_types: tuple[str, ...] | list[str], window: int) -> list[KVCache | RotatingKVCache]:
    """One cache per layer: rotating on sliding layers, growing on full ones."""
    return [RotatingKVCache(window) if t == "sliding_attention" else KVCache() for t in layer_types]


def trim_cache(cache: list, n: int) -> int:
    """Trim every layer by `n` tokens if all of them can; returns the tokens trimmed (0 if not possible)."""
    if not all(c.can_trim(n) for c in cache):
        return 0
    for c in cache:
        c.trim(n)
    return n
