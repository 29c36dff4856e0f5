"""Quantized KV cache (issue 30, first slice): `Engine(kv_bits=8|4)` / `Chat(kv_bits=)` / `model.make_cache(kv_bits=)`.

The exactness claim is proven, not just bounded: attention on a quantized cache equals the unquantized
attention (same sinks, same masks, same ring) run on the dequantized keys and values, to float rounding
(a cache subclass that quantizes and dequantizes on the way in is the oracle). The fidelity cost of
quantizing is then measured against the unquantized cache by benchmarks/kv_quant_fidelity.py's
`measure` (the table in docs/MODEL.md), with bounds asserted here. The models are the synthetic `tiny`
preset at gpt-oss's head_dim 64 (the golden tiny's head_dim 16 cannot be grouped by `mx.quantize`),
float32 compute.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from mlx_oss.backend.cpu import CPUAttention, attention_with_sinks
from mlx_oss.engine import Engine, prefill_chunks
from mlx_oss.loader import load_model
from mlx_oss.nn.attention import Attention, quantized_attention, sliding_mask
from mlx_oss.nn.cache import (
    KVCache, QArray, QuantizedKVCache, QuantizedRotatingKVCache, RotatingKVCache, check_kv_quant, slot_bytes, trim_cache,
)  # fmt: skip
from mlx_oss.sampling import Sampler, SamplingConfig, ScriptedTokens

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def fid():
    """benchmarks/kv_quant_fidelity.py as a module (registered while this file's tests run: it holds a dataclass)."""
    mp = pytest.MonkeyPatch()
    mp.setattr(sys, "path", list(sys.path))  # the benchmark puts the repository on it
    spec = importlib.util.spec_from_file_location("kv_quant_fidelity", ROOT / "benchmarks" / "kv_quant_fidelity.py")
    mod = importlib.util.module_from_spec(spec)
    mp.setitem(sys.modules, spec.name, mod)
    spec.loader.exec_module(mod)
    yield mod
    mp.undo()


@pytest.fixture(scope="module")
def short_model(fid, tmp_path_factory):
    """Tiny layers, head_dim 64, 8-slot window."""
    return load_model(fid.checkpoint(tmp_path_factory.mktemp("kvq"), 8), "float32")


@pytest.fixture(scope="module")
def long_model(fid, tmp_path_factory):
    """Tiny layers, head_dim 64, gpt-oss's 128-slot window."""
    return load_model(fid.checkpoint(tmp_path_factory.mktemp("kvq"), 128), "float32")


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _tokens(B: int, T: int, seed: int = 0) -> mx.array:
    return mx.array(np.random.default_rng(seed).integers(0, 512, (B, T)), dtype=mx.int32)


def _dq(x: QArray, bits: int, group_size: int) -> mx.array:
    return mx.dequantize(*x, group_size=group_size, bits=bits)


def _q(x: mx.array, bits: int, group_size: int) -> QArray:
    return QArray(*mx.quantize(x, group_size=group_size, bits=bits))


def _oracle_caches(model, bits: int, group_size: int, quantize_window: bool = True) -> list:
    """Unquantized caches holding dequantize(quantize(k)): what a quantized cache must attend to (the
    sliding layers' plain ones unless `quantize_window`)."""

    def enc(self, x):
        return mx.dequantize(*mx.quantize(x, group_size=group_size, bits=bits), group_size=group_size, bits=bits)

    full = type("OracleKVCache", (KVCache,), {"_encode": enc})
    ring = type("OracleRotatingKVCache", (RotatingKVCache,), {"_encode": enc})
    a = model.args
    if not quantize_window:
        ring = RotatingKVCache
    return [ring(a.sliding_window) if t == "sliding_attention" else full() for t in a.layer_types]


def _run(model, tokens: mx.array, steps: list[int], cache: list) -> mx.array:
    outs, s = [], 0
    for n in steps:
        outs.append(model(tokens[:, s : s + n], cache))
        s += n
    return mx.concatenate(outs, axis=1)


def _kinds(cache) -> set:
    return {type(c) for c in cache}


DEFAULT_QUANTIZED = {RotatingKVCache, QuantizedKVCache}  # kv_bits: the full layers quantized, the window not


# ------------------------------------------------------------------ the attention itself


@pytest.mark.parametrize("bits,group_size", [(8, 64), (4, 64), (8, 32), (4, 32)])
def test_quantized_attention_is_sink_attention_on_the_dequantized_values(bits, group_size):
    """Both products on the codes, the sink column, every mask kind: the same as MLX's fused sink
    attention and the CPU backend's, given the dequantized keys and values."""
    rng = np.random.default_rng(bits + group_size)
    B, nq, nkv, d, W = 2, 8, 2, 64, 8
    sinks = mx.array(rng.standard_normal(nq).astype(np.float32) * 1.5)
    for T, retained in ((1, 7), (5, 0), (6, 2), (12, 7)):  # decode, causal, causal (band cannot bite), band
        S = retained + T
        q, k, v = (mx.array(rng.standard_normal((B, h, n, d)).astype(np.float32)) for h, n in ((nq, T), (nkv, S), (nkv, S)))
        kq, vq = _q(k, bits, group_size), _q(v, bits, group_size)
        kd, vd = _dq(kq, bits, group_size), _dq(vq, bits, group_size)
        mask = sliding_mask(T, retained, W)
        assert (mask is None) == (T == 1) and isinstance(mask, str) == (T in (5, 6))
        got = quantized_attention(q, kq, vq, 0.125, mask, sinks)
        assert got.shape == (B, nq, T, d)
        assert _rel(got, mx.fast.scaled_dot_product_attention(q, kd, vd, scale=0.125, mask=mask, sinks=sinks)) <= 1e-5
        assert _rel(got, attention_with_sinks(q, kd, vd, 0.125, mask, sinks)) <= 1e-5
        # the sinks matter here (a wrong sink column could not pass the checks above)
        assert _rel(got, quantized_attention(q, kq, vq, 0.125, mask, sinks - 10.0)) > 1e-2


@pytest.mark.parametrize("mask", ["causal", "band", None])
def test_quantized_attention_in_blocks_of_queries_equals_one_block_and_bounds_the_scores(mask, monkeypatch):
    """Scores are built for a block of queries at a time (at most SCORE_BLOCK_BYTES of float32 each,
    evaluated before the next): the same output as all queries at once, for a causal prefill over cached
    keys, a sliding band and no mask; the transient memory follows the block, not T x S."""
    import mlx_oss.nn.attention as attention

    T, S, nq = 96, 640, 16
    q = mx.random.normal((1, nq, T, 64), key=mx.random.key(1))
    k = _q(mx.random.normal((1, 2, S, 64), key=mx.random.key(2)), 8, 64)
    v = _q(mx.random.normal((1, 2, S, 64), key=mx.random.key(3)), 8, 64)
    sinks = mx.random.normal((nq,), key=mx.random.key(4))
    m = sliding_mask(T, S - T, 128) if mask == "band" else mask
    mx.eval(q, k, v, sinks, m)
    whole = quantized_attention(q, k, v, 0.125, m, sinks)
    mx.eval(whole)
    scores = 4 * nq * T * S  # float32 bytes of all the scores at once
    for rows in (1, 7, 32):
        monkeypatch.setattr(attention, "score_block_bytes", lambda r=rows: 4 * nq * S * r)
        base = mx.get_active_memory()
        mx.reset_peak_memory()
        blocked = quantized_attention(q, k, v, 0.125, m, sinks)
        mx.eval(blocked)
        peak = mx.get_peak_memory() - base
        assert _rel(blocked, whole) <= 1e-6, rows
        if rows == 7:
            assert peak < scores / 2, (peak, scores)  # all at once: ~3 x scores (tests/test_info.py)


def test_plain_and_cpu_attention_agree_on_a_quantized_cache(short_model):
    """The model as loaded here runs CPUAttention (kv heads over CPU streams); Metal runs the plain
    `Attention.attend_quantized`. Same logits through a quantized cache, chunks and decode steps."""
    model = short_model
    assert all(type(layer.attn) is CPUAttention for layer in model.layers)
    tokens = _tokens(2, 30, seed=4)
    steps = [12, 1, 1, 9, 1, 6]
    cpu = _run(model, tokens, steps, model.make_cache(kv_bits=8, quantize_window=True))
    saved = [layer.attn for layer in model.layers]
    try:
        for layer in model.layers:
            plain = Attention(model.args, layer.attn._rope)
            plain.qkv, plain.out, plain.sinks = layer.attn.qkv, layer.attn.out, layer.attn.sinks
            layer.attn = plain
        assert _rel(_run(model, tokens, steps, model.make_cache(kv_bits=8, quantize_window=True)), cpu) <= 1e-5
    finally:
        for layer, attn in zip(model.layers, saved):
            layer.attn = attn


@pytest.mark.parametrize("window", [False, True])
@pytest.mark.parametrize("bits,group_size", [(8, 64), (4, 64), (4, 32)])
def test_model_on_a_quantized_cache_equals_attention_on_the_dequantized_values(short_model, bits, group_size, window):
    """The whole model, batch 2, steps shorter than, equal to and longer than the 8-slot window at every
    ring phase: the quantized caches give the logits of unquantized caches holding the dequantized
    keys/values (measured: identical on this backend; bound 1e-5), with the window in full precision (the
    default) or quantized too."""
    tokens = _tokens(2, 60, seed=bits)
    steps = [12, 1, 1, 3, 1, 9, 1, 2, 8, 1, 16, 5]
    got = _run(short_model, tokens, steps, short_model.make_cache(kv_bits=bits, kv_group_size=group_size, quantize_window=window))
    oracle = _oracle_caches(short_model, bits, group_size, quantize_window=window)
    assert _rel(got, _run(short_model, tokens, steps, oracle)) <= 1e-5
    assert _rel(got, short_model(tokens)) > 1e-4  # it did quantize


def test_long_window_wraps_exact_too(long_model):
    """The 128-slot ring wrapped several times, in chunks that cross it and in decode steps."""
    tokens = _tokens(1, 700, seed=9)
    steps = [200, 1, 1, 150, 1, 128, 127, 1, 90, 1]
    got = _run(long_model, tokens, steps, long_model.make_cache(kv_bits=8, quantize_window=True))
    assert _rel(got, _run(long_model, tokens, steps, _oracle_caches(long_model, 8, 64))) <= 1e-5


# ------------------------------------------------------------------ fidelity (the table in docs/MODEL.md)


def test_fidelity_short_case(fid, short_model):
    """8-bit (`--kv-bits 8`: the window in full precision): every greedy token identical over 64
    generated, free-running; median KL within issue 30's 1e-4 (measured 5.7e-6) and logits error bounded
    at ~2x measured (7.3e-3). 4-bit: worse by orders of magnitude, bounded loosely (measured 1.7e-3,
    4.9e-2). The window quantized too costs most of the error (8-bit: 2.1e-4): the default is not that."""
    r = fid.measure(short_model, fid.short_case(), 64, (8, 4, "8+window"))
    m8, m4, m8w = r[8], r[4], r["8+window"]
    assert m8["positions"] == 104 and m8["n"] == 64
    assert m8["same"] == 64 and m8["forced"] == 64
    assert m8["kl_median"] <= 1e-4, m8
    assert m8["rel"] <= 0.015, m8
    assert m4["kl_median"] <= 4e-3 and m4["rel"] <= 0.1 and m4["forced"] >= 48, m4
    assert m4["kl_median"] > 50 * m8["kl_median"]
    assert m8w["kl_median"] > 10 * m8["kl_median"] and m8w["kl_median"] <= 4e-4, m8w


def test_fidelity_long_case(fid, long_model):
    """2048-token prompt (the 128-slot window wraps 16 times) + 64 decoded, `--kv-bits 8` (the window in
    full precision): median KL within issue 30's 1e-4 and bounded at ~3x measured (1.1e-6), logits error
    at ~2x (4.9e-3); every teacher-forced greedy token agrees (the smallest top-2 gap among the
    unquantized steps is 0.004, so free-running greedy is not asserted here). The quantized ring's own
    exactness after many wraps is `test_long_window_wraps_exact_too`."""
    r = fid.measure(long_model, fid.long_case(2048), 64, (8,), free=False)
    m8 = r[8]
    assert m8["positions"] == 2048 + 64
    assert m8["kl_median"] <= 3e-6, m8
    assert m8["rel"] <= 0.01, m8
    assert m8["forced"] == 64, m8


# ------------------------------------------------------------------ the cache operations


def _held(rng, n: int) -> tuple[np.ndarray, np.ndarray]:
    return tuple(rng.standard_normal((2, 3, n, 64)).astype(np.float32) for _ in range(2))


def _same(buf: QArray, x: np.ndarray, bits: int, group_size: int) -> bool:
    """`buf` holds exactly the codes of `x` (quantization is per row, so any slice of rows quantizes alike)."""
    want = _q(mx.array(x), bits, group_size)
    return all(np.array_equal(np.array(a), np.array(b)) for a, b in zip(buf, want))


@pytest.mark.parametrize("bits", [8, 4])
def test_quantized_full_cache_against_a_reference(bits, monkeypatch):
    monkeypatch.setattr(KVCache, "step", 8)
    rng = np.random.default_rng(bits)
    c = QuantizedKVCache(bits, 32)
    assert (c.bits, c.group_size, c.state, c.nbytes, c.capacity) == (bits, 32, [], 0, 0)
    hk = hv = np.zeros((2, 3, 0, 64), np.float32)
    for T in (5, 1, 6, 20, 1, 7):
        k, v = _held(rng, T)
        fk, fv = c.update_and_fetch(mx.array(k), mx.array(v))
        hk, hv = np.concatenate([hk, k], 2), np.concatenate([hv, v], 2)
        assert isinstance(fk, QArray) and _same(fk, hk, bits, 32) and _same(fv, hv, bits, 32)
        assert c.offset == hk.shape[2] and c.keys.data.shape == (2, 3, c.capacity, 64 * bits // 32)
    assert c.state == [*c.keys, *c.values] and c.nbytes == sum(a.nbytes for a in c.state)
    assert c.nbytes == c.capacity * 2 * slot_bytes(3, 64, 4, bits, 32)  # batch 2
    assert c.trim(10) == 10 and c.snapshot().offset == 30 and c.snapshot().arrays == []
    k, v = _held(rng, 2)
    fk, _ = c.update_and_fetch(mx.array(k), mx.array(v))  # overwrites 30, 31
    assert _same(fk, np.concatenate([hk[:, :, :30], k], 2), bits, 32)
    twin = c.clone()
    c.update_and_fetch(*(mx.array(a) for a in _held(rng, 1)))
    assert twin.offset == 32 and c.offset == 33 and twin.keys is not c.keys
    assert _same(twin.update_and_fetch(mx.array(k[:, :, :1]), mx.array(v[:, :, :1]))[0],
                 np.concatenate([hk[:, :, :30], k, k[:, :, :1]], 2), bits, 32)  # fmt: skip
    empty = QuantizedKVCache(bits)
    empty.reserve(3, like=mx.zeros((1, 2, 5, 64), dtype=mx.bfloat16))  # a raw tensor gives the layout
    assert empty.keys.data.shape == (1, 2, 8, 64 * bits // 32) and empty.keys.scales.dtype == mx.bfloat16


@pytest.mark.parametrize("bits", [8, 4])
def test_quantized_ring_against_a_reference(bits):
    """A 4-slot ring, random walk of decode steps, chunks, trims and restores, as the unquantized one's test."""
    W = 4
    rng = np.random.default_rng(10 + bits)
    c = QuantizedRotatingKVCache(W, bits, 64)
    hk = hv = np.zeros((2, 3, 0, 64), np.float32)

    def ring(h):
        out = np.zeros((2, 3, W, 64), np.float32)
        for p in range(max(0, h.shape[2] - W), h.shape[2]):
            out[:, :, p % W] = h[:, :, p]
        return out

    snaps = []
    for step, T in enumerate([3, 1, 1, 2, 1, 1, 1, 6, 1, 3, 1, 9, 2, 1, 1, 5, 1]):
        k, v = _held(rng, T)
        before, r = hk.shape[2], c.retained(T)
        fk, fv = c.update_and_fetch(mx.array(k), mx.array(v))
        hk, hv = np.concatenate([hk, k], 2), np.concatenate([hv, v], 2)
        if T == 1:
            n = min(hk.shape[2], W)
            assert _same(fk, ring(hk)[:, :, :n], bits, 64) and _same(fv, ring(hv)[:, :, :n], bits, 64)
        else:
            assert _same(fk, hk[:, :, before - r :], bits, 64) and _same(fv, hv[:, :, before - r :], bits, 64)
        if hk.shape[2] >= W:  # slots never written hold zero codes, not the codes of zeros
            assert _same(c.keys, ring(hk), bits, 64) and _same(c.values, ring(hv), bits, 64)
        assert c.nbytes == W * 2 * slot_bytes(3, 64, 4, bits, 64) and len(c.state) == 6
        if step % 4 == 1:
            snaps.append((c.snapshot(), hk.copy(), hv.copy()))
        if step % 5 == 4 and c.can_trim(1):
            assert c.trim(1) == 1
            hk, hv = hk[:, :, :-1], hv[:, :, :-1]
        if step == 12:
            snap, hk, hv = snaps[1]
            assert snap.arrays == [*snap.keys, *snap.values]
            c.restore(snap)
            assert c.offset == snap.offset and _same(c.keys, ring(hk), bits, 64)


def test_bytes_follow_the_formula():
    """bfloat16 keys/values, groups of 64: 8-bit is (1 + 4/64)/2 = 0.531 of the unquantized cache,
    4-bit (1/2 + 4/64)/2 = 0.281, for both cache kinds at the same capacity."""
    kv = mx.zeros((1, 8, 300, 64), dtype=mx.bfloat16)
    sizes = {}
    for bits in (None, 8, 4):
        full = KVCache() if bits is None else QuantizedKVCache(bits)
        ring = RotatingKVCache(128) if bits is None else QuantizedRotatingKVCache(128, bits)
        for c in (full, ring):
            c.update_and_fetch(kv, kv)
        assert full.capacity == 512 and full.nbytes == 512 * slot_bytes(8, 64, 2, bits)  # 256-slot steps
        assert ring.nbytes == 128 * slot_bytes(8, 64, 2, bits)
        sizes[bits] = full.nbytes
    assert slot_bytes(8, 64, 2) == 2048  # gpt-oss: 8 kv heads x 64 x 2 (k, v) x 2 bytes
    assert sizes[8] / sizes[None] == pytest.approx(0.53125) and sizes[4] / sizes[None] == pytest.approx(0.28125)


@pytest.mark.parametrize("window", [False, True])
def test_snapshot_restore_and_trim_equal_a_fresh_quantized_pass(short_model, window):
    """As tests/test_cache.py's, on quantized caches: a detour past the window and back by snapshot,
    a one-token trim, each then equal to the same tokens fed into fresh quantized caches."""
    model = short_model
    tokens = _tokens(1, 40, seed=3)
    full = _run(model, tokens, [20, 1, 1, 1, 1, 1, 2], model.make_cache(kv_bits=8, quantize_window=window))  # [1, 27, vocab]
    cache = model.make_cache(kv_bits=8, quantize_window=window)
    prefill_chunks(model, cache, tokens[:, :20], chunk=7)
    snap = [c.snapshot() for c in cache]
    model(mx.array([[7, 8, 9, 10, 11]], dtype=mx.int32), cache)  # past the 8-slot window
    model(mx.array([[12]], dtype=mx.int32), cache)
    for c, s in zip(cache, snap):
        c.restore(s)
    out = mx.concatenate([model(tokens[:, t : t + 1], cache) for t in range(20, 25)], axis=1)
    assert _rel(out, full[:, 20:25]) <= 1e-5
    assert trim_cache(cache, 1) == 1
    assert _rel(model(tokens[:, 24:27], cache), full[:, 24:27]) <= 1e-5
    assert trim_cache(cache, 5) == 0 and cache[0].offset == 27


# ------------------------------------------------------------------ Engine and Chat


def _scripted(tokens: list[int]) -> Sampler:
    return Sampler(SamplingConfig(logits_processors=(ScriptedTokens(tokens),)))


def _fresh(model, prompt: list[int], bits: int) -> np.ndarray:
    return np.array(Engine(model, kv_bits=bits).prefill(prompt)[0])


def test_engine_reuse_equals_a_fresh_quantized_engine(short_model):
    """A random walk of prompts sharing prefixes with the cached sequence (trim, ring snapshot restore
    after the window wrapped, fresh caches): each prefill equals a fresh 8-bit engine's, and the caches
    stay quantized through reset and every rollback."""
    model = short_model
    rng = np.random.default_rng(30)
    engine = Engine(model, kv_bits=8, max_snapshots=3)
    paths = set()
    for step in range(12):
        held = engine.tokens
        cut = int(rng.integers(0, len(held) + 1)) if held else 0
        prompt = held[:cut] + rng.integers(0, 512, int(rng.integers(1, 12))).tolist()
        keep = min(cut, len(prompt) - 1)
        drop = len(held) - keep
        expect = engine.reusable(prompt)
        paths.add("trim" if drop == 0 or all(c.can_trim(drop) for c in engine.cache) else "restore" if expect else "scratch")
        logits, reused = engine.prefill(prompt)
        assert reused == expect and engine.tokens == prompt
        assert _rel(logits[0], _fresh(model, prompt, 8)[0]) <= 1e-5
        if step % 3 == 0:
            gen = engine.generate(prompt, _scripted([3, 4, 5, 6, 7]), max_tokens=5, stop_tokens=())
            assert len(list(gen)) == 5
        assert _kinds(engine.cache) == DEFAULT_QUANTIZED
    assert paths == {"trim", "restore", "scratch"}
    engine.reset()
    assert _kinds(engine.cache) == DEFAULT_QUANTIZED


def test_engine_state_detach_attach_fork_and_bytes(short_model):
    """Detached quantized state: nbytes counts the quantized buffers and the snapshot rings no longer
    live (all three parts each); a fork resumes exactly while the original is written."""
    model = short_model
    engine = Engine(model, kv_bits=4)
    first = np.random.default_rng(31).integers(0, 512, 30).tolist()
    engine.prefill(first)
    state = engine.detach()
    live = sum(c.nbytes for c in state.cache)
    assert state.nbytes == live and live == sum(x.nbytes for c in state.cache for x in c.state)
    args = model.args
    ring = args.sliding_window * slot_bytes(args.num_key_value_heads, 64, 4)  # the window: full precision
    assert state.cache[0].nbytes == ring
    slots = state.cache[1].keys.data.shape[2]  # the full layer's allocated slots, 4-bit, float32 scales/biases
    assert slots >= 30 and state.cache[1].nbytes == slots * slot_bytes(args.num_key_value_heads, 64, 4, 4)
    engine.attach(state)
    gen = engine.generate(first + [1, 2], _scripted([7, 8]), max_tokens=2)
    assert list(gen) == [7, 8]
    state = engine.detach()
    assert [s.position for s in state.snapshots] == [30, 32]
    n_sliding = sum(t == "sliding_attention" for t in args.layer_types)
    assert state.nbytes == sum(c.nbytes for c in state.cache) + 2 * n_sliding * ring  # both left behind by writes
    fork = state.fork()
    engine.attach(state)
    probe = first + [1, 9]
    logits, reused = engine.prefill(probe)  # restores the snapshot at 30 (the ring wrapped since)
    assert reused == 30 and _rel(logits[0], _fresh(model, probe, 4)[0]) <= 1e-5
    engine.attach(fork)
    probe = first + [1, 2, 7, 8, 5]
    logits, reused = engine.prefill(probe)
    assert reused == 34 and _rel(logits[0], _fresh(model, probe, 4)[0]) <= 1e-5


def test_kv_bits_none_is_the_unquantized_engine(short_model):
    e = Engine(short_model)
    assert (e.kv_bits, e.kv_group_size) == (None, 64)
    assert [type(c) for c in e.cache] == [RotatingKVCache, KVCache, RotatingKVCache, KVCache]
    q = Engine(short_model, kv_bits=4, kv_group_size=32)
    assert [type(c) for c in q.cache] == [RotatingKVCache, QuantizedKVCache] * 2  # the window in full precision
    assert all((c.bits, c.group_size) == (4, 32) for c in q.cache[1::2]) and q.cache[0].window == 8


@pytest.mark.parametrize("kw,message", [
    ({"kv_bits": 3}, "kv_bits must be 4 or 8 (None: an unquantized cache), got 3"),
    ({"kv_bits": True}, "kv_bits must be 4 or 8 (None: an unquantized cache), got True"),
    ({"kv_bits": "8"}, "kv_bits must be 4 or 8 (None: an unquantized cache), got '8'"),
    ({"kv_bits": 8, "kv_group_size": 48}, "kv_group_size must be 32, 64 or 128, got 48"),
    ({"kv_bits": 8, "kv_group_size": 128}, "kv_group_size 128 does not divide the model's head_dim 64"),
])  # fmt: skip
def test_invalid_settings_are_one_line_errors(short_model, kw, message):
    with pytest.raises(ValueError) as e:
        Engine(short_model, **kw)
    assert str(e.value) == message
    with pytest.raises(ValueError, match="^kv_"):
        short_model.make_cache(**kw)


def test_head_dim_16_cannot_be_quantized(tiny_original):
    """The golden tiny model (head_dim 16): MLX's smallest group is 32 values."""
    model = load_model(tiny_original, "float32")
    with pytest.raises(ValueError, match=r"^kv_group_size 64 does not divide the model's head_dim 16$"):
        Engine(model, kv_bits=8)
    with pytest.raises(ValueError, match=r"^kv_group_size 32 does not divide the model's head_dim 16$"):
        Engine(model, kv_bits=8, kv_group_size=32)
    assert Engine(model, kv_group_size=7).kv_bits is None  # the group size means nothing without bits


def test_cache_classes_validate():
    with pytest.raises(ValueError, match="^kv_bits must be 4 or 8"):
        QuantizedKVCache(2)
    with pytest.raises(ValueError, match="^kv_group_size must be"):
        QuantizedRotatingKVCache(8, 8, 16)
    check_kv_quant(None, 7)  # unquantized: nothing to check


def test_chat_takes_and_saves_kv_bits(fid, tmp_path_factory):
    """Chat(kv_bits=) quantizes its engine's caches; a saved chat names the setting only when set
    (an unquantized chat saves exactly what it did before) and reopens with it."""
    import mlx_oss
    from mlx_oss.convert.synthetic import preset, write_checkpoint

    src = write_checkpoint(tmp_path_factory.mktemp("kvchat") / "c", preset("tiny-chat", head_dim=64), "original", seed=0)
    model, tok = mlx_oss.load(src, "float32")
    chat = mlx_oss.Chat(model, tok, kv_bits=8, kv_group_size=32, max_tokens=3)
    assert type(chat.engine.cache[1]) is QuantizedKVCache and chat.engine.cache[1].group_size == 32
    s = chat.settings()
    assert (s["kv_bits"], s["kv_group_size"]) == (8, 32)
    reply = chat.ask("hi")
    assert reply.stats.generated_tokens >= 1
    again = mlx_oss.Chat.from_json(chat.to_json(), model, tok)
    assert (again.engine.kv_bits, again.engine.kv_group_size) == (8, 32)
    assert "kv_bits" not in mlx_oss.Chat(model, tok).settings()
    with pytest.raises(ValueError, match="^kv_bits must be 4 or 8"):
        mlx_oss.Chat(model, tok, kv_bits=6)


# ------------------------------------------------------------------ load(kv_bits=) and the commands' flags






def test_load_with_kv_bits_makes_every_cache_of_the_model_quantized(tiny_chat_hd64_converted):
    """`load(..., kv_bits=)`: the model's `make_cache()`, a plain `Engine` and a `Chat` all get the
    quantized caches (so the server, the TUI and mlx-lm's generate do too); an explicit setting wins."""
    from mlx_oss import Chat
    from mlx_oss.loader import load

    model, tok = load(tiny_chat_hd64_converted, "float32", kv_bits=4, kv_group_size=32)
    assert _kinds(model.make_cache()) == DEFAULT_QUANTIZED
    assert {(c.bits, c.group_size) for c in model.make_cache()[1::2]} == {(4, 32)}
    e = Engine(model)
    assert (e.kv_bits, e.kv_group_size) == (4, 32) and _kinds(e.cache) == DEFAULT_QUANTIZED
    e8 = Engine(model, kv_bits=8)  # the caller's bits, the model's group size
    assert {(c.bits, c.group_size) for c in e8.cache[1::2]} == {(8, 32)}
    chat = Chat(model, tok)
    assert _kinds(chat.engine.cache) == DEFAULT_QUANTIZED
    saved = chat.to_json()
    assert (saved["settings"]["kv_bits"], saved["settings"]["kv_group_size"]) == (4, 32)
    # a saved quantized chat resumes quantized, whatever the model was loaded for
    plain, _ = load(tiny_chat_hd64_converted, "float32")
    assert plain.kv_bits is None and _kinds(plain.make_cache()).isdisjoint({QuantizedKVCache, QuantizedRotatingKVCache})
    assert _kinds(Chat(plain, tok).engine.cache).isdisjoint({QuantizedKVCache, QuantizedRotatingKVCache})
    again = Chat.from_json(saved, plain, tok)
    assert {(c.bits, c.group_size) for c in again.engine.cache[1::2]} == {(4, 32)}
    model.set_kv_quant(None)
    assert _kinds(Engine(model).cache).isdisjoint({QuantizedKVCache, QuantizedRotatingKVCache})


@pytest.mark.parametrize(("kw", "message"), [
    ({"kv_bits": 3}, "kv_bits must be 4 or 8 (None: an unquantized cache), got 3"),
    ({"kv_bits": 8, "kv_group_size": 16}, "kv_group_size must be 32, 64 or 128, got 16"),
])  # fmt: skip
def test_load_checks_the_kv_settings_before_reading_anything(tmp_path, kw, message):
    from mlx_oss.loader import load

    with pytest.raises(ValueError) as e:
        load(tmp_path / "no-such-folder", **kw)  # the setting is named, not the missing folder
    assert str(e.value) == message


def test_load_refuses_a_group_size_the_model_cannot_use(tiny_chat_converted):
    from mlx_oss.loader import load

    with pytest.raises(ValueError, match=r"^kv_group_size 64 does not divide the model's head_dim 16$"):
        load(tiny_chat_converted, "float32", kv_bits=8)


def test_generate_with_kv_bits_runs_on_quantized_caches(tiny_chat_hd64_converted, monkeypatch, capsys):
    """`mlx-oss generate --kv-bits 8`: the flag reaches the caches; the random model's reply is forced into
    a document by `--json-schema`, so the run ends with a valid answer."""
    import json

    from mlx_oss.cli.main import main
    from mlx_oss.nn.model import Model

    made = []
    real = Model.make_cache

    def recording(self, *a, **k):
        made.append(real(self, *a, **k))
        return made[-1]

    monkeypatch.setattr(Model, "make_cache", recording)
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"], "additionalProperties": False}
    argv = ["generate", "--model", str(tiny_chat_hd64_converted), "--dtype", "float32", "--json-schema", json.dumps(schema),
            "--max-reasoning-tokens", "2", "--seed", "1", "--kv-bits", "8", "--kv-group-size", "32", "q"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert isinstance(json.loads(out)["ok"], bool)
    assert made and all(_kinds(c) == DEFAULT_QUANTIZED and {(x.bits, x.group_size) for x in c[1::2]} == {(8, 32)} for c in made)
    made.clear()
    assert main([a for a in argv if a not in ("--kv-bits", "8", "--kv-group-size", "32")]) == 0
    capsys.readouterr()
    assert made and all(_kinds(c).isdisjoint({QuantizedKVCache, QuantizedRotatingKVCache}) for c in made)
