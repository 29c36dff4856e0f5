"""KV caches: incremental decoding must equal one full pass (float32, relative error <= 1e-5), past the
sliding window (8 on the tiny preset), across prefill chunk boundaries, for batch > 1; plus the
roll-back / snapshot operations an engine relies on.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

import mlx_oss.nn.model as model_mod
from mlx_oss.engine import prefill_chunks
from mlx_oss.loader import load_model
from mlx_oss.nn.cache import KVCache, RotatingKVCache, trim_cache

TOL = 1e-5


@pytest.fixture(scope="module")
def model(tiny_original):
    return load_model(tiny_original, "float32")


def _tokens(B: int, T: int, seed: int = 0) -> mx.array:
    return mx.array(np.random.default_rng(seed).integers(0, 512, (B, T)), dtype=mx.int32)


def _rel(a: mx.array, b: mx.array) -> float:
    a, b = np.array(a, np.float64), np.array(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _run(model, tokens: mx.array, steps: list[int]) -> mx.array:
    """Feed `tokens` through one cache in pieces of the given sizes; -> logits of every position."""
    cache = model.make_cache()
    outs, s = [], 0
    for n in steps:
        outs.append(model(tokens[:, s : s + n], cache))
        s += n
    assert s == tokens.shape[1] and cache[0].offset == s
    return mx.concatenate(outs, axis=1)


def test_token_by_token_equals_full_pass_batch2(model):
    tokens = _tokens(2, 30)  # well past the window of 8
    full = model(tokens)
    assert _rel(_run(model, tokens, [1] * 30), full) <= TOL
    # batch rows are independent
    assert _rel(model(tokens[1:]), full[1:]) <= TOL


@pytest.mark.parametrize("steps", [[12, 1, 1, 3, 1, 9, 1, 2], [5, 5, 5, 5, 1, 1, 8], [7, 1, 16, 6]])
def test_multi_token_steps_equal_full_pass(model, steps):
    """Steps shorter, equal to and longer than the window, starting at every ring phase."""
    tokens = _tokens(2, sum(steps), seed=len(steps))
    assert _rel(_run(model, tokens, steps), model(tokens)) <= TOL


@pytest.mark.parametrize("chunk", [3, 8, 11])
def test_chunked_prefill_equals_full_pass(model, chunk):
    tokens = _tokens(2, 37, seed=chunk)
    full = model(tokens)
    # prefill into a cache chunk by chunk (the engine's loop), then decode past more chunk boundaries
    cache = model.make_cache()
    fed = []
    last = prefill_chunks(model, cache, tokens[:, :30], chunk=chunk, on_chunk=lambda a, b: fed.append((a, b)))
    assert last.shape == (2, 1, 512) and cache[0].offset == 30
    assert fed[0][0] == 0 and fed[-1][1] == 30 and all(b - a <= chunk for a, b in fed) and len(fed) == -(-30 // chunk)
    assert _rel(last, full[:, 29:30]) <= TOL
    rest = mx.concatenate([model(tokens[:, t : t + 1], cache) for t in range(30, 37)], axis=1)
    assert _rel(rest, full[:, 30:]) <= TOL


def test_chunking_never_builds_a_prompt_sized_mask(model, monkeypatch):
    shapes = []
    real = model_mod.sliding_mask

    def spy(T, retained, window):
        m = real(T, retained, window)
        shapes.append(None if m is None or isinstance(m, str) else m.shape)
        return m

    monkeypatch.setattr(model_mod, "sliding_mask", spy)
    tokens = _tokens(1, 100)
    prefill_chunks(model, model.make_cache(), tokens, chunk=16)
    assert shapes and all(s is None or (s[0] <= 16 and s[1] <= 16 + 7) for s in shapes), shapes


def test_last_only_sends_one_position_through_lm_head(model, monkeypatch):
    tokens = _tokens(2, 20)
    full = model(tokens)
    seen = []
    cls = type(model.unembed)
    real = cls.__call__

    def spy(self, x):
        if self is model.unembed:
            seen.append(x.shape)
        return real(self, x)

    monkeypatch.setattr(cls, "__call__", spy)
    last = model(tokens, last_only=True)
    assert seen == [(2, 1, model.args.hidden_size)]
    assert _rel(last, full[:, -1:]) <= TOL
    seen.clear()
    prefill_chunks(model, model.make_cache(), tokens, chunk=6)  # 4 chunks, one lm_head row each
    # (built, never evaluated but for the last chunk: prefill_chunks evaluates only the caches before it)
    assert seen == [(2, 1, model.args.hidden_size)] * 4


def test_snapshot_restore_and_trim(model):
    tokens = _tokens(1, 40, seed=3)
    full = model(tokens)
    cache = model.make_cache()
    prefill_chunks(model, cache, tokens[:, :20])
    snap = [c.snapshot() for c in cache]
    model(mx.array([[7, 8, 9, 10, 11]], dtype=mx.int32), cache)  # a detour past the window
    model(mx.array([[12]], dtype=mx.int32), cache)
    for c, s in zip(cache, snap):
        c.restore(s)
    assert cache[0].offset == 20
    out = _run_from(model, cache, tokens, 20, 25)
    assert _rel(out, full[:, 20:25]) <= TOL
    # trim one token (a rejected draft token, say) and recompute it
    assert trim_cache(cache, 1) == 1
    assert _rel(model(tokens[:, 24:26], cache), full[:, 24:26]) <= TOL
    # a sliding ring past its window cannot drop more than one token: all-or-nothing
    assert trim_cache(cache, 5) == 0 and cache[0].offset == 26


def _run_from(model, cache, tokens, s, e):
    return mx.concatenate([model(tokens[:, t : t + 1], cache) for t in range(s, e)], axis=1)


def test_rotating_cache_keeps_window_slots_in_position_order():
    W = 4
    c = RotatingKVCache(W)
    pos = lambda a, b: mx.arange(a, b, dtype=mx.float32).reshape(1, 1, -1, 1)  # noqa: E731
    k, _ = c.update_and_fetch(pos(0, 6), pos(0, 6))
    assert k.reshape(-1).tolist() == list(range(6))
    assert c.keys.shape[2] == W and c.keys.reshape(-1).tolist() == [4, 5, 2, 3]  # slot p % W
    k, _ = c.update_and_fetch(pos(6, 7), pos(6, 7))  # decode: the whole ring, unordered
    assert sorted(k.reshape(-1).tolist()) == [3, 4, 5, 6]
    assert c.retained(2) == 3
    k, _ = c.update_and_fetch(pos(7, 9), pos(7, 9))  # chunk: 3 retained keys in order, then new
    assert k.reshape(-1).tolist() == [4, 5, 6, 7, 8]
    assert c.can_trim(1) and not c.can_trim(2)


def test_full_cache_grows_with_use_not_up_front():
    c = KVCache()
    kv = mx.zeros((1, 2, 1, 4))
    for _ in range(300):
        c.update_and_fetch(kv, kv)
    assert c.offset == 300 and 300 <= c.capacity <= 512
    assert c.nbytes == 2 * 1 * 2 * c.capacity * 4 * 4
    c.reserve(1000)
    assert c.capacity == 1024
    k, _ = c.update_and_fetch(mx.ones((1, 2, 3, 4)), mx.ones((1, 2, 3, 4)))
    assert k.shape == (1, 2, 303, 4) and float(k[..., :300, :].sum()) == 0.0 and float(k[..., 300:, :].min()) == 1.0
    assert c.trim(3) == 3 and c.offset == 300
    with pytest.raises(ValueError):
        c.restore(type(c.snapshot())(offset=400))


def test_trim_and_restore_boundaries():
    """The edges the engine relies on: trimming 0 or all tokens, never more; restoring to the same
    point; a rotating ring trims freely until it wraps, then by at most one token."""
    c = KVCache()
    kv = mx.zeros((1, 1, 5, 2))
    c.update_and_fetch(kv, kv)
    assert c.can_trim(0) and c.can_trim(5) and not c.can_trim(6) and not c.can_trim(-1)
    c.restore(c.snapshot())  # to the same offset: fine
    assert c.offset == 5
    with pytest.raises(ValueError, match=r"forward \(5 -> 6 tokens\)"):
        c.restore(type(c.snapshot())(offset=6))
    assert c.trim(0) == 0 and c.trim(-2) == 0 and c.offset == 5
    assert c.trim(9) == 5 and c.offset == 0  # clamped to what is there
    r = RotatingKVCache(4)
    r.update_and_fetch(mx.zeros((1, 1, 4, 2)), mx.zeros((1, 1, 4, 2)))
    assert r.can_trim(0) and r.can_trim(4) and not r.can_trim(5) and not r.can_trim(-1)  # not wrapped yet
    r.update_and_fetch(mx.zeros((1, 1, 1, 2)), mx.zeros((1, 1, 1, 2)))
    assert r.can_trim(1) and not r.can_trim(2)  # wrapped: the dropped slots are overwritten
    with pytest.raises(ValueError, match="4-slot sliding cache at 5 tokens cannot drop 2"):
        r.trim(2)
    assert r.trim(1) == 1 and r.offset == 4
    assert trim_cache([c, r], 0) == 0 and trim_cache([r], 2) == 2 and r.offset == 2


def _fresh_kv(rng, n: int, dtype=mx.float32) -> tuple[np.ndarray, np.ndarray]:
    """Random keys and values [B=2, H=3, n, D=4] (every batch row, head and dim distinct)."""
    return rng.standard_normal((2, 3, n, 4)).astype(np.float32), rng.standard_normal((2, 3, n, 4)).astype(np.float32)


def test_full_cache_against_a_reference(monkeypatch):
    """Every fetch returns exactly the keys/values of every held position, in order, through growth,
    trims and restores; capacities follow `reserve`: x1.25 (at least what is needed) only when a write
    does not fit, rounded up to `step` slots (1 here, 8 below)."""
    monkeypatch.setattr(KVCache, "step", 1)
    rng = np.random.default_rng(5)
    c, held_k, held_v, caps = KVCache(), np.zeros((2, 3, 0, 4), np.float32), np.zeros((2, 3, 0, 4), np.float32), []
    for T in (5, 1, 6, 20, 1, 7):
        k, v = _fresh_kv(rng, T)
        fk, fv = c.update_and_fetch(mx.array(k), mx.array(v))
        held_k, held_v = np.concatenate([held_k, k], 2), np.concatenate([held_v, v], 2)
        assert np.array_equal(np.array(fk), held_k) and np.array_equal(np.array(fv), held_v)
        assert c.offset == held_k.shape[2] and c.keys.shape == (2, 3, c.capacity, 4)
        caps.append(c.capacity)
    assert caps == [5, 6, 12, 32, 40, 40]  # 33 > 32: 32 x 1.25 = 40; then 40 fits exactly
    assert c.nbytes == 2 * (2 * 3 * 40 * 4 * 4) and c.state == [c.keys, c.values]
    keys = c.keys
    c.reserve(40)  # already there: the same buffer
    assert c.keys is keys
    monkeypatch.setattr(KVCache, "step", 8)
    c.trim(7)
    snap = c.snapshot()
    assert snap.offset == 33 and snap.keys is None and snap.values is None  # an offset only: no buffer held
    assert c.trim(3) == 3 and c.offset == 30
    k, v = _fresh_kv(rng, 2)
    fk, fv = c.update_and_fetch(mx.array(k), mx.array(v))  # overwrites positions 30, 31
    held_k, held_v = np.concatenate([held_k[:, :, :30], k], 2), np.concatenate([held_v[:, :, :30], v], 2)
    assert np.array_equal(np.array(fk), held_k) and np.array_equal(np.array(fv), held_v)
    c.restore(type(snap)(offset=20))
    k, v = _fresh_kv(rng, 1)
    fk, _ = c.update_and_fetch(mx.array(k), mx.array(v))
    assert np.array_equal(np.array(fk), np.concatenate([held_k[:, :, :20], k], 2))
    empty = KVCache()
    assert empty.capacity == 0 and empty.nbytes == 0 and empty.state == []
    with pytest.raises(ValueError, match=r"^reserve before the first update needs `like`$"):
        empty.reserve(3)
    empty.reserve(3, like=mx.zeros((1, 2, 5, 6), dtype=mx.float16))
    assert empty.keys.shape == empty.values.shape == (1, 2, 8, 6) and empty.keys.dtype == mx.float16
    assert empty.offset == 0 and float(mx.abs(empty.keys).sum()) == 0
    half = KVCache()
    k, v = _fresh_kv(rng, 3)
    half.update_and_fetch(mx.array(k, dtype=mx.float16), mx.array(v, dtype=mx.float16))
    assert half.keys.dtype == half.values.dtype == mx.float16


def test_rotating_cache_against_a_reference():
    """A 4-slot ring in a random walk of decode steps, chunks (shorter and longer than the window),
    one-token trims and restores: a decode step returns the ring (slot p % 4 holds position p), a chunk
    the retained positions in order then the new ones; the ring always holds the newest 4 positions."""
    W = 4
    rng = np.random.default_rng(6)
    c = RotatingKVCache(W)
    assert (c.window, c.offset, c.keys, c.values, c.state, c.nbytes) == (W, 0, None, None, [], 0)
    hk, hv = np.zeros((2, 3, 0, 4), np.float32), np.zeros((2, 3, 0, 4), np.float32)  # every position held so far

    def ring(h):
        out = np.zeros((2, 3, W, 4), np.float32)
        for p in range(max(0, h.shape[2] - W), h.shape[2]):
            out[:, :, p % W] = h[:, :, p]
        return out

    snaps = []
    for step, T in enumerate([3, 1, 1, 2, 1, 1, 1, 6, 1, 3, 1, 9, 2, 1, 1, 5, 1]):
        k, v = _fresh_kv(rng, T)
        before = hk.shape[2]
        r = c.retained(T)
        assert r == min(before, W - 1)
        fk, fv = c.update_and_fetch(mx.array(k), mx.array(v))
        hk, hv = np.concatenate([hk, k], 2), np.concatenate([hv, v], 2)
        if T == 1:
            n = min(hk.shape[2], W)
            assert np.array_equal(np.array(fk), ring(hk)[:, :, :n]) and np.array_equal(np.array(fv), ring(hv)[:, :, :n])
        else:
            assert np.array_equal(np.array(fk), hk[:, :, before - r:]) and np.array_equal(np.array(fv), hv[:, :, before - r:])
        assert c.offset == hk.shape[2] and c.keys.shape == (2, 3, W, 4) and c.state == [c.keys, c.values]
        assert np.array_equal(np.array(c.keys), ring(hk)) and np.array_equal(np.array(c.values), ring(hv))
        assert c.nbytes == 2 * (2 * 3 * W * 4 * 4)
        if step % 4 == 1:
            snaps.append((c.snapshot(), hk.copy(), hv.copy()))
        if step % 5 == 4 and c.can_trim(1):
            assert c.trim(1) == 1
            hk, hv = hk[:, :, :-1], hv[:, :, :-1]
        if step == 12:  # back to an earlier point: the ring as it was there
            snap, hk, hv = snaps[1]
            c.restore(snap)
            assert c.offset == snap.offset and np.array_equal(np.array(c.keys), ring(hk))
    half = RotatingKVCache(W)
    k, v = _fresh_kv(rng, 2)
    half.update_and_fetch(mx.array(k, dtype=mx.float16), mx.array(v, dtype=mx.float16))
    assert half.keys.dtype == half.values.dtype == mx.float16


def test_clone_is_independent_and_make_cache_follows_the_layer_types():
    from mlx_oss.nn.cache import make_cache

    rng = np.random.default_rng(7)
    for c in (KVCache(), RotatingKVCache(4)):
        k, v = _fresh_kv(rng, 6)
        c.update_and_fetch(mx.array(k), mx.array(v))
        twin = c.clone()
        assert type(twin) is type(c) and twin is not c and twin.offset == 6 and twin.keys is c.keys
        k2, v2 = _fresh_kv(rng, 1)
        twin.update_and_fetch(mx.array(k2), mx.array(v2))
        assert c.offset == 6 and twin.offset == 7 and twin.keys is not c.keys
    caches = make_cache(("sliding_attention", "full_attention", "sliding_attention"), 8)
    assert [type(c) for c in caches] == [RotatingKVCache, KVCache, RotatingKVCache] and caches[0].window == 8
    assert caches[0] is not caches[2]
