"""Engine: cross-turn cache reuse equals a from-scratch run, rollback, cancel, limits, sampling."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from mlx_oss.engine import ContextLengthError, Engine
from mlx_oss.sampling import Sampler, SamplingConfig, ScriptedTokens


@pytest.fixture(scope="module")
def model(tiny_chat_converted):
    from mlx_oss.loader import load_model

    m = load_model(tiny_chat_converted, dtype="float32")
    assert m.args.sliding_window == 8  # the tests below wrap the ring many times
    return m


def scratch_logits(model, tokens: list[int]) -> np.ndarray:
    """Last-position logits of one forward pass over `tokens`, no cache at all."""
    return np.array(model(mx.array([tokens]), None, last_only=True)[0, -1])


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def rng_tokens(seed: int, n: int) -> list[int]:
    return np.random.default_rng(seed).integers(0, 199_000, n).tolist()


def scripted(tokens: list[int]) -> Sampler:
    return Sampler(SamplingConfig(logits_processors=(ScriptedTokens(tokens),)))


def run(engine: Engine, prompt: list[int], sampler: Sampler, **kw) -> tuple[list[int], object]:
    gen = engine.generate(prompt, sampler, **kw)
    return list(gen), gen


def test_turns_prefill_only_new_tokens_and_match_scratch(model):
    """Each turn drops what was generated after the previous prompt (as harmony drops analysis) and
    appends new tokens: only those are prefilled, and the logits equal a from-scratch pass."""
    engine = Engine(model)
    prompt = rng_tokens(0, 40)
    for turn in range(5):
        gen_tokens = rng_tokens(100 + turn, 12)
        logits, reused = engine.prefill(prompt)
        assert rel_err(logits[0], scratch_logits(model, prompt)) <= 1e-5
        if turn:
            assert reused == prev_len and engine.tokens == prompt
        out, g = run(engine, prompt, scripted(gen_tokens), max_tokens=12)
        assert out == gen_tokens and g.stop_reason == "length"
        assert g.reused_tokens == len(prompt) - 1  # same prompt again: only its last token is re-fed
        assert engine.tokens == prompt + gen_tokens  # every yielded token is in the cache
        prev_len = len(prompt)
        prompt = prompt + [gen_tokens[0] + 1] + rng_tokens(200 + turn, 9)  # diverges right after the prompt


def test_generated_tokens_are_reused_when_kept(model):
    """A prompt that extends prompt + generated (tool-call round trip) prefills only its new part."""
    engine = Engine(model)
    prompt = rng_tokens(1, 30)
    out, _ = run(engine, prompt, scripted(rng_tokens(2, 10)), max_tokens=10)
    nxt = prompt + out + rng_tokens(3, 7)
    logits, reused = engine.prefill(nxt)
    assert reused == len(prompt) + 10
    assert rel_err(logits[0], scratch_logits(model, nxt)) <= 1e-5


def test_one_token_rollback_trims_the_ring(model):
    """`<|return|>` becomes `<|end|>` in history: the last token differs, a trim suffices."""
    engine = Engine(model)
    prompt = rng_tokens(4, 30)
    out, _ = run(engine, prompt, scripted(rng_tokens(5, 10)), max_tokens=10)
    engine._snapshots.clear()  # prove no snapshot is needed
    nxt = prompt + out[:-1] + [out[-1] + 1] + rng_tokens(6, 5)
    logits, reused = engine.prefill(nxt)
    assert reused == len(prompt) + 9
    assert rel_err(logits[0], scratch_logits(model, nxt)) <= 1e-5


def test_divergence_before_any_snapshot_recomputes_correctly(model):
    engine = Engine(model)
    prompt = rng_tokens(7, 30)
    run(engine, prompt, scripted(rng_tokens(8, 10)), max_tokens=10)
    nxt = prompt[:20] + rng_tokens(9, 15)  # diverges inside the first prompt, far behind the ring
    logits, reused = engine.prefill(nxt)
    assert reused == 0
    assert rel_err(logits[0], scratch_logits(model, nxt)) <= 1e-5
    # Within the ring's reach (nothing wrapped yet) a trim is enough.
    short = Engine(model)
    short.prefill(rng_tokens(10, 6))
    logits, reused = short.prefill(rng_tokens(10, 6)[:3] + [5, 6, 7])
    assert reused == 3
    assert rel_err(logits[0], scratch_logits(model, rng_tokens(10, 6)[:3] + [5, 6, 7])) <= 1e-5


def test_message_boundary_snapshot_is_used(model):
    """A snapshot taken after a generated `<|end|>` lets a rollback to there skip re-prefilling the turn."""
    from mlx_oss import tokenizer as tk

    engine = Engine(model)
    prompt = rng_tokens(11, 25)
    script = rng_tokens(12, 9) + [tk.END] + rng_tokens(13, 6)
    out, _ = run(engine, prompt, scripted(script), max_tokens=len(script))
    assert [s.position for s in engine.snapshots][-1] == len(prompt) + 10
    nxt = prompt + out[:10] + rng_tokens(14, 8)
    logits, reused = engine.prefill(nxt)
    assert reused == len(prompt) + 10
    assert rel_err(logits[0], scratch_logits(model, nxt)) <= 1e-5


def test_boundary_snapshot_allows_rollback_before_the_header(model):
    engine = Engine(model)
    prompt = rng_tokens(15, 30)
    run(engine, prompt, scripted(rng_tokens(16, 10)), max_tokens=10, boundaries=(28, 12, 50, 0, 30))
    assert [s.position for s in engine.snapshots] == [12, 28, 30]  # out-of-range points (and the end) ignored
    for cut in (28, 12):
        nxt = prompt[:cut] + rng_tokens(17, 6)  # a different next header / first message
        logits, reused = engine.prefill(nxt)
        assert reused == cut
        assert rel_err(logits[0], scratch_logits(model, nxt)) <= 1e-5


def test_cancel_during_prefill_keeps_cache_consistent(model):
    engine = Engine(model, prefill_chunk=16)
    prompt = rng_tokens(18, 50)
    calls = []

    def stop_after_two_chunks() -> bool:
        calls.append(1)
        return len(calls) > 2

    out, g = run(engine, prompt, scripted([1, 2]), should_stop=stop_after_two_chunks)
    assert out == [] and g.stop_reason == "cancelled"
    assert engine.tokens == prompt[:32]
    logits, reused = engine.prefill(prompt)
    assert reused == 32
    assert rel_err(logits[0], scratch_logits(model, prompt)) <= 1e-5


def test_cancel_during_decode_keeps_yielded_tokens(model):
    engine = Engine(model)
    prompt = rng_tokens(19, 20)
    flag = []
    gen = engine.generate(prompt, scripted(rng_tokens(20, 50)), should_stop=lambda: bool(flag))
    out = []
    for tok in gen:
        out.append(tok)
        if len(out) == 5:
            flag.append(1)
    assert len(out) == 5 and gen.stop_reason == "cancelled"
    assert engine.tokens == prompt + out


def test_chunked_prefill_equals_one_pass(model):
    prompt = rng_tokens(21, 70)
    a, _ = Engine(model, prefill_chunk=16).prefill(prompt)
    assert rel_err(a[0], scratch_logits(model, prompt)) <= 1e-5


def test_context_limit_checked_before_compute(model):
    calls = []

    class Spy:
        args = model.args

        def make_cache(self):
            return model.make_cache()

        def __call__(self, *a, **k):
            calls.append(1)
            return model(*a, **k)

    engine = Engine(Spy(), max_context=32)
    with pytest.raises(ContextLengthError, match="32"):
        engine.generate(rng_tokens(22, 32), scripted([]))
    with pytest.raises(ValueError):
        engine.generate(rng_tokens(22, 32), scripted([]))
    assert calls == [] and engine.tokens == []
    out, g = run(engine, rng_tokens(22, 25), scripted(rng_tokens(23, 50)))
    assert g.stop_reason == "context" and len(engine.tokens) == 32 and len(out) == 7


def test_stop_tokens_end_generation(model):
    from mlx_oss import tokenizer as tk

    engine = Engine(model)
    out, g = run(engine, rng_tokens(24, 10), scripted([5, 6, tk.CALL, 7]))
    assert out == [5, 6, tk.CALL] and g.stop_reason == "tool_call"
    out, g = run(engine, rng_tokens(24, 10), scripted([5, tk.RETURN]))
    assert out == [5, tk.RETURN] and g.stop_reason == "stop"
    assert g.generated == out and g.prompt_tokens == 10 and g.reused_tokens + g.prefilled_tokens == 10


def test_snapshots_are_bounded(model):
    from mlx_oss import tokenizer as tk

    engine = Engine(model, max_snapshots=4)
    prompt = rng_tokens(25, 12)
    run(engine, prompt, scripted([1, tk.END] * 6), max_tokens=12)
    snaps = engine.snapshots
    assert len(snaps) == 4
    assert snaps[0].kind == "prompt" and snaps[0].position == len(prompt)  # prompt ends outlive messages


def test_invalid_arguments(model):
    engine = Engine(model, max_context=100)
    with pytest.raises(ValueError, match="^empty prompt$"):
        engine.generate([], scripted([]))
    with pytest.raises(ValueError, match="max_tokens must be at least 1, got 0"):
        engine.generate([1, 2], scripted([]), max_tokens=0)
    with pytest.raises(ValueError):
        Engine(model, max_context=1)
    with pytest.raises(ValueError, match="131072"):
        Engine(model, max_context=200_000)
    assert Engine(model, max_context=2).max_context == 2 and Engine(model, max_context=131072).max_context == 131072
    gen = engine.generate([1, 2], scripted([3]), max_tokens=1)
    assert list(gen) == [3]
    with pytest.raises(AssertionError, match="^a Generation is iterated once$"):
        iter(gen)


def test_token_ids_outside_the_vocabulary_are_refused(model):
    """MLX does not bounds-check the embedding gather: an id past the table must be refused, naming it."""
    engine = Engine(model)
    V = model.args.vocab_size
    engine.check_prompt([0, V - 1])  # both ends of the table are fine
    with pytest.raises(ValueError, match=rf"^token id {V} \(position 2\) is outside the model's vocabulary of {V} ids$"):
        engine.check_prompt([5, 0, V, 3])
    with pytest.raises(ValueError, match=r"^token id -1 \(position 1\) "):
        engine.check_prompt([5, -1, 3])
    with pytest.raises(ValueError, match=rf"^token id {V + 7} \(position 0\) "):  # both wrong: the big one is named
        engine.check_prompt([V + 7, -1, V + 7])


def test_package_import_stays_cheap():
    """`import mlx_oss` (the CLI's --help) must not import MLX; the exports resolve lazily."""
    import subprocess
    import sys

    code = ("import sys, mlx_oss; assert 'mlx.core' not in sys.modules; "
            "assert mlx_oss.Chat.__name__ == 'Chat' and mlx_oss.ContextLengthError.__name__ == 'ContextLengthError'")  # fmt: skip
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# ------------------------------------------------------------------ every rollback path vs scratch


def check_prefill(engine: Engine, model, prompt: list[int], reused: int, boundaries=()) -> None:
    """Prefill `prompt`, then: the reuse is what the engine promised, the logits equal a from-scratch
    pass, and no snapshot lies past what the caches now hold."""
    assert engine.reusable(prompt) == reused
    logits, got = engine.prefill(prompt, boundaries=boundaries)
    assert got == reused and engine.tokens == prompt
    assert rel_err(logits[0], scratch_logits(model, prompt)) <= 1e-5
    assert all(s.position <= len(prompt) for s in engine.snapshots)


def test_double_rewind_never_restores_a_stale_snapshot(model):
    """prefill A; B diverges from A early (no snapshot that early: fresh caches); C diverges from B
    past A's old snapshot point. A's snapshot must be gone: its rings hold A's tokens, not B's."""
    engine = Engine(model)
    a = rng_tokens(30, 40)
    check_prefill(engine, model, a, 0)
    assert [s.position for s in engine.snapshots] == [40]
    b = a[:10] + rng_tokens(31, 40)  # diverges at 10: behind every snapshot -> from scratch
    check_prefill(engine, model, b, 0)
    assert [s.position for s in engine.snapshots] == [50]
    c = b[:45] + rng_tokens(32, 10)  # diverges at 45, past A's old snapshot at 40
    check_prefill(engine, model, c, 0)


def test_rewind_to_a_snapshot_drops_the_later_ones(model):
    """Restoring the snapshot at 20 drops those at 30 and 40; a later prompt diverging between 30
    and 40 of the *new* sequence must not find them."""
    engine = Engine(model)
    base = rng_tokens(33, 40)
    engine.prefill(base[:20])
    engine.prefill(base[:30])
    engine.prefill(base)
    assert [s.position for s in engine.snapshots] == [20, 30, 40]
    b = base[:25] + rng_tokens(34, 20)  # rolls back to 20 (the ring cannot trim 15)
    check_prefill(engine, model, b, 20)
    assert [s.position for s in engine.snapshots] == [20, 45]
    c = b[:35] + rng_tokens(35, 6)  # the old snapshot at 30 held base[20:30], not b[20:30]
    check_prefill(engine, model, c, 20)
    d = c[:40] + [c[40] + 1]  # diverges at the last token: a one-token trim, no snapshot needed
    check_prefill(engine, model, d, 40)


def test_rollback_paths_against_scratch_in_random_sequences(model):
    """A random walk over prompts that share prefixes of every length with the cached sequence
    (trim, restore, fresh caches, reuse of generated tokens, snapshot at 0): each prefill equals a
    from-scratch pass and reuses exactly what `reusable` promised."""
    from mlx_oss import tokenizer as tk

    rng = np.random.default_rng(36)
    engine = Engine(model, max_snapshots=3)
    paths = set()
    for step in range(14):
        held = engine.tokens
        cut = int(rng.integers(0, len(held) + 1)) if held else 0
        prompt = held[:cut] + rng_tokens(400 + step, int(rng.integers(1, 12)))
        keep = min(cut, len(prompt) - 1)
        drop = len(held) - keep
        can_trim = drop == 0 or all(c.can_trim(drop) for c in engine.cache)
        expect = engine.reusable(prompt)
        paths.add("trim" if can_trim else "restore" if expect else "scratch")
        check_prefill(engine, model, prompt, expect)
        if step % 3 == 0:  # decode a little, with a message boundary, so message snapshots exist too
            run(engine, prompt, scripted(rng_tokens(500 + step, 3) + [tk.END] + rng_tokens(600 + step, 3)), max_tokens=6)
        assert len(engine.snapshots) <= 3
    assert paths == {"trim", "restore", "scratch"}


def test_snapshot_at_zero_and_boundaries_after_a_reset_path(model):
    """A snapshot at position 0 is no better than fresh caches; a boundary snapshot taken in a
    prefill that started from scratch serves the next divergence."""
    engine = Engine(model)
    p = rng_tokens(37, 30)
    engine.prefill(p, boundaries=(12,))
    from mlx_oss.nn.cache import RotatingKVCache
    from mlx_oss.engine import Snapshot

    empty = tuple(c.snapshot() if isinstance(c, RotatingKVCache) else None for c in Engine(model).cache)
    engine._snapshots.insert(0, Snapshot(0, empty))  # what a snapshot at 0 holds: empty rings
    q = p[:5] + rng_tokens(38, 20)  # only the 0 snapshot is at or before 5
    check_prefill(engine, model, q, 0, boundaries=(12,))
    assert [s.position for s in engine.snapshots] == [0, 12, 25]
    r = q[:12] + rng_tokens(39, 5)
    check_prefill(engine, model, r, 12)


def test_message_snapshots_are_evicted_before_prompt_ends(model):
    from mlx_oss import tokenizer as tk

    engine = Engine(model, max_snapshots=3)
    prompt = rng_tokens(40, 12)
    run(engine, prompt, scripted([1, tk.END, 2, tk.END, 3, tk.END, 4, tk.END]), max_tokens=8)
    snaps = engine.snapshots
    # prompt end kept; the oldest message snapshot goes first, the newest stays
    assert [(s.position, s.kind) for s in snaps] == [(12, "prompt"), (18, "message"), (20, "message")]


# ------------------------------------------------------------------ what the engine reports and hands over


def test_logits_processors_see_exactly_the_tokens_fed_so_far(model):
    """A processor's context (mlx-lm's repetition penalty reads it) is the prompt plus every token
    sampled before this step, on a fresh engine and on a turn that reuses the cache; its logits are
    [1, vocab] at every step."""
    seen = []

    def record(ctx, logits):
        seen.append(ctx.tolist())
        shapes.add(logits.shape)
        return logits

    shapes = set()
    engine = Engine(model)
    prompt = rng_tokens(41, 10)
    for turn in range(2):
        script = rng_tokens(42 + turn, 4)
        seen.clear()
        sampler = Sampler(SamplingConfig(logits_processors=(record, ScriptedTokens(script))))
        out, _ = run(engine, prompt, sampler, max_tokens=4)
        assert out == script
        assert seen == [prompt + script[:i] for i in range(4)]
        prompt = prompt + out + rng_tokens(50 + turn, 3)
    assert shapes == {(1, model.args.vocab_size)}  # [1, vocab] at every step, as mlx-lm's processors expect


def test_timings_and_token_counts_on_a_clock_that_moves_per_forward_pass(model, monkeypatch):
    """prefill_s, ttft_s, decode_s and the token counts, exactly: the engine's clock advances one second
    per forward call of the model (so the times count forward passes), starting at 100 s."""
    import types

    import mlx_oss.engine as engine_mod

    now = [100.0]

    class Timed:
        args = model.args

        def make_cache(self):
            return model.make_cache()

        def __call__(self, *a, **k):
            now[0] += 1
            return model(*a, **k)

    monkeypatch.setattr(engine_mod, "time", types.SimpleNamespace(perf_counter=lambda: now[0]))
    engine = Engine(Timed(), prefill_chunk=16)
    prompt = rng_tokens(43, 40)  # 3 chunks
    g = engine.generate(prompt, scripted(rng_tokens(44, 5)), max_tokens=5)
    out, decode_so_far = [], []
    for tok in g:  # the consumer takes 10 s per token: part of the decode time, up to the generation's end
        out.append(tok)
        decode_so_far.append(g.decode_s)
        now[0] += 10
    assert (g.prefill_s, g.ttft_s) == (3, 4)
    assert decode_so_far == [0, 11, 22, 33, 44] and g.decode_s == 54
    assert (g.prompt_tokens, g.reused_tokens, g.prefilled_tokens) == (40, 0, 40)
    assert g.prefill_tps == 40 / 3 and g.decode_tps == 4 / 54
    nxt = prompt + out + rng_tokens(45, 7)  # reuses all 45 tokens held: one 7-token chunk
    out, g = run(engine, nxt, scripted(rng_tokens(46, 1)), max_tokens=1)
    assert (g.prompt_tokens, g.reused_tokens, g.prefilled_tokens) == (52, 45, 7)
    assert (g.prefill_s, g.ttft_s, g.decode_s) == (1, 2, 0)
    assert g.decode_tps == 0.0  # one token: no decode rate
    stops = iter([False, False, True])  # cancelled after two chunks of a fresh 40-token prompt
    out, g = run(Engine(Timed(), prefill_chunk=16), rng_tokens(47, 40), scripted([1]), should_stop=lambda: next(stops))
    assert out == [] and g.stop_reason == "cancelled"
    assert (g.prefill_s, g.prefilled_tokens, g.ttft_s) == (2, 32, 0)
    flag = []  # cancelled while decoding: the time up to the cancel counts
    g = engine.generate(engine.tokens + [9], scripted(rng_tokens(48, 9)), should_stop=lambda: any(flag))
    for tok in g:
        now[0] += 10
        flag.append(len(g.generated) == 2)
    assert g.stop_reason == "cancelled" and len(g.generated) == 2 and g.decode_s == 21


def test_nothing_lazy_outlives_a_generation(model, monkeypatch):
    """MLX streams are per thread, so the last thing a generation does is evaluate every cache buffer
    and every snapshot ring (the next turn may run in another thread)."""
    from mlx_oss import tokenizer as tk

    calls = []
    real_eval = mx.eval

    def spy(*arrays):
        calls.append(arrays)
        return real_eval(*arrays)

    monkeypatch.setattr(mx, "eval", spy)
    engine = Engine(model)
    run(engine, rng_tokens(48, 20), scripted([3, tk.END, 4, 5]), max_tokens=4)
    held = [a for c in engine.cache for a in c.state]
    held += [a for snap in engine.snapshots for st in snap.states if st is not None for a in (st.keys, st.values)]
    assert len(engine.snapshots) == 2 and len(held) > 2 * len(engine.cache)

    def flat(x):
        return [a for y in x for a in flat(y)] if isinstance(x, (list, tuple)) else [x]

    assert {id(a) for a in held} <= {id(a) for a in flat(calls[-1])}


def test_detach_attach_fork_and_reset(model):
    """A detached state resumes exactly (same reuse, same logits as scratch) after the engine served
    another conversation; a fork stays intact while the original is written; reset empties."""
    from mlx_oss import tokenizer as tk

    engine = Engine(model)
    a = rng_tokens(60, 30)
    run(engine, a, scripted(rng_tokens(61, 3) + [tk.END] + rng_tokens(62, 3)), max_tokens=7)
    held = engine.tokens
    probes = [held + [5], held[:34] + [6, 7], held[:31] + [8], held[:12] + [9]]  # trim, snapshot, one back, scratch
    promised = [engine.reusable(p) for p in probes]
    assert promised == [37, 34, 30, 0]
    state = engine.detach()
    assert engine.tokens == [] and engine.snapshots == [] and all(c.offset == 0 for c in engine.cache)
    assert state.tokens == tuple(held) and [s.position for s in state.snapshots] == [30, 34]
    assert [state.reusable(p) for p in probes] == promised
    fork = state.fork()
    assert fork.tokens == state.tokens and fork.snapshots == state.snapshots
    assert all(f is not c and f.offset == c.offset for f, c in zip(fork.cache, state.cache))
    engine.prefill(rng_tokens(63, 20))  # another conversation meanwhile
    engine.attach(state)
    assert engine.tokens == held and engine.snapshots == list(state.snapshots)
    check_prefill(engine, model, probes[1], 34)  # writes the original's caches
    engine.attach(fork)
    check_prefill(engine, model, probes[0], 37)  # the fork still holds `held`
    engine.reset()
    assert engine.tokens == [] and engine.snapshots == [] and all(c.offset == 0 for c in engine.cache)
    assert engine.reusable(probes[0]) == 0


def test_state_nbytes_counts_buffers_and_the_snapshot_rings_they_no_longer_use(model):
    """Tiny model, float32: 2 sliding layers (8-slot rings, 2 KiB of keys + values each) and 2 full layers
    (256-slot buffers, 64 KiB each). A snapshot ring counts once it is no longer the live one."""
    engine = Engine(model)
    assert Engine(model).detach().nbytes == 0
    engine.prefill(rng_tokens(64, 30))
    live = 2 * 2048 + 2 * 65536
    state = engine.detach()
    assert state.nbytes == live  # the snapshot at 30 holds the live rings
    engine.attach(state)
    run(engine, engine.tokens + rng_tokens(65, 2), scripted([1, 2]), max_tokens=2)
    state = engine.detach()
    assert [s.position for s in state.snapshots] == [30, 32]
    assert state.nbytes == live + 2 * (2 * 2048)  # both snapshots' rings were left behind by later writes


def test_snapshot_eviction_order_and_default_bound(model):
    """Over the bound, the oldest message snapshot goes (never the newest snapshot), else the oldest
    prompt end; the default bound is 16; `snapshot()` defaults to a prompt end."""
    from mlx_oss import tokenizer as tk

    p = rng_tokens(70, 40)
    engine = Engine(model, max_snapshots=2)
    for n in (10, 20, 30):
        engine.prefill(p[:n])
    assert [(s.position, s.kind) for s in engine.snapshots] == [(20, "prompt"), (30, "prompt")]
    engine = Engine(model, max_snapshots=3)
    engine.prefill(p[:10])
    run(engine, p[:20], scripted([1, tk.END]), max_tokens=2)  # prompt end at 20, message at 22
    engine.prefill(engine.tokens + p[30:34])  # a 4th: the only message snapshot goes, not a prompt end
    assert [(s.position, s.kind) for s in engine.snapshots] == [(10, "prompt"), (20, "prompt"), (26, "prompt")]
    engine = Engine(model)
    run(engine, p[:5], scripted([1, tk.END] * 20), max_tokens=40)
    assert engine.max_snapshots == 16 and len(engine.snapshots) == 16
    engine.reset()
    engine.prefill(p[:5])
    engine._snapshots.clear()
    engine.snapshot()
    assert [(s.position, s.kind) for s in engine.snapshots] == [(5, "prompt")]


def test_rollback_to_a_snapshot_at_position_one(model):
    """A snapshot right after the first token is a real one (only a snapshot at 0 means fresh caches)."""
    p = rng_tokens(71, 21)
    engine = Engine(model)
    engine.prefill(p[:1])
    engine.prefill(p)  # 20 more tokens: the ring cannot trim back to 1
    assert [s.position for s in engine.snapshots] == [1, 21]
    check_prefill(engine, model, p[:1] + rng_tokens(72, 6), 1)


def test_prefill_reports_progress_per_chunk(model):
    """`progress(cached, total)` after each chunk, counting what the cache already held."""
    engine = Engine(model, prefill_chunk=16)
    p = rng_tokens(73, 60)
    seen = []
    engine.prefill(p[:20], progress=lambda *a: seen.append(a))
    assert seen == [(16, 20), (20, 20)]
    seen.clear()
    engine.prefill(p, boundaries=(30,), progress=lambda *a: seen.append(a))
    assert seen == [(30, 60), (46, 60), (60, 60)]


def test_prefill_chunks_on_its_own(model, monkeypatch):
    """The shared prefill loop (the benchmark calls it directly): defaults, chunk spans, stopping, the
    full-layer buffers sized once for the final length, and only the last chunk's logits evaluated."""
    from mlx_oss.engine import prefill_chunks
    from mlx_oss.nn.cache import KVCache

    monkeypatch.setattr(KVCache, "step", 8)  # capacities visible to the slot (default: 256-slot steps)
    p = rng_tokens(74, 70)
    cache = model.make_cache()
    model(mx.array([p[:10]]), cache)
    full = [c for c in cache if isinstance(c, KVCache)]
    assert full and all(c.capacity == 16 for c in full)
    spans, evals = [], []
    real_eval = mx.eval
    monkeypatch.setattr(mx, "eval", lambda *a: (evals.append(a), real_eval(*a))[1])
    logits = prefill_chunks(model, cache, mx.array([p[10:]]), chunk=16, on_chunk=lambda a, b: spans.append((a, b)))
    monkeypatch.setattr(mx, "eval", real_eval)
    assert spans == [(0, 16), (16, 32), (32, 48), (48, 60)]
    assert rel_err(logits[0, -1], scratch_logits(model, p)) <= 1e-5
    assert all(c.capacity == 72 for c in full)  # reserved for 70 tokens at once, no geometric overshoot
    assert len(evals) == 4 and evals[-1] == (logits,)  # the caches after each chunk, the logits at the end
    assert all(isinstance(e[0], list) and len(e[0]) == len(cache) for e in evals[:-1])
    cache = model.make_cache()
    assert prefill_chunks(model, cache, mx.array([p[:20]]), chunk=16, total=100, want_logits=False) is True
    assert all(c.capacity == 104 for c in cache if isinstance(c, KVCache))
    stops = iter([False, True])
    assert prefill_chunks(model, model.make_cache(), mx.array([p]), chunk=16, should_stop=lambda: next(stops)) is False
