"""Batched decode (issue 28, first slice): every sequence of a batch gets what it gets alone.

The oracle is `Engine.generate` on the same prompt and sampler settings, one sequence at a time. A
recording logits processor (first in both runs) sees the raw logits of every step, so logits are
compared step by step (float32, relative error <= 1e-5) besides the tokens. The synthetic models have
an 8-slot sliding window, so decoding a few tokens wraps the rings.
"""

from __future__ import annotations

import time
from dataclasses import replace

import mlx.core as mx
import numpy as np
import pytest

import mlx_oss
from mlx_oss.batch import BatchEvent, BatchGenerator, generate_batch
from mlx_oss.engine import ContextLengthError, Engine
from mlx_oss.loader import load_model
from mlx_oss.nn.moe import MoE
from mlx_oss.sampling import Sampler, SamplingConfig, ScriptedTokens

GREEDY = SamplingConfig(temperature=0)
NO_STOP: tuple[int, ...] = ()


@pytest.fixture(scope="module")
def chat_model(tiny_chat_converted):
    m = load_model(tiny_chat_converted, dtype="float32")
    assert m.args.sliding_window == 8
    return m


@pytest.fixture(scope="module")
def golden_model(tiny_converted):
    return load_model(tiny_converted, dtype="float32")


class Recorder:
    """A logits processor that keeps (context length, logits) of every step and changes nothing."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, np.ndarray]] = []

    def __call__(self, context: mx.array, logits: mx.array) -> mx.array:
        self.seen.append((context.size, np.array(logits.astype(mx.float32)).reshape(-1)))
        return logits


def recorded(config: SamplingConfig) -> tuple[Sampler, Recorder]:
    """A fresh sampler for `config` with a `Recorder` in front of its processors."""
    rec = Recorder()
    return Sampler(replace(config, logits_processors=(rec, *config.logits_processors))), rec


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def prompt_of(seed: int, n: int, vocab: int) -> list[int]:
    return np.random.default_rng(seed).integers(0, min(vocab, 199_000), n).tolist()


def solo(model, prompt, config, max_tokens, stop_tokens=NO_STOP, **engine_kw):
    """-> (tokens, recorder, stop reason, engine tokens) of `prompt` alone through `Engine.generate`."""
    sampler, rec = recorded(config)
    engine = Engine(model, **engine_kw)
    gen = engine.generate(prompt, sampler, max_tokens=max_tokens, stop_tokens=stop_tokens)
    toks = list(gen)
    return toks, rec, gen.stop_reason, engine.tokens


def assert_same(batch_tokens, batch_rec: Recorder, solo_tokens, solo_rec: Recorder) -> None:
    """The same tokens; every step's logits within 1e-5 relative, with the same context length."""
    assert batch_tokens == solo_tokens
    n = len(batch_rec.seen)
    assert n >= len(batch_tokens) - 1 and solo_rec.seen[:n] and len(solo_rec.seen) >= n
    for (cb, lb), (cs, ls) in zip(batch_rec.seen, solo_rec.seen):
        assert cb == cs
        assert rel_err(lb, ls) <= 1e-5


class Run:
    """Drives a BatchGenerator and collects each sequence's tokens and end."""

    def __init__(self, batch: BatchGenerator) -> None:
        self.batch = batch
        self.tokens: dict[int, list[int]] = {}
        self.done: dict[int, str] = {}
        self.recs: dict[int, Recorder] = {}

    def add(self, prompt, config, max_tokens=None, **kw) -> int:
        sampler, rec = recorded(config)
        sid = self.batch.add(prompt, sampler, max_tokens=max_tokens, stop_tokens=kw.pop("stop_tokens", NO_STOP), **kw)
        self.tokens[sid], self.recs[sid] = [], rec
        return sid

    def step(self) -> list[BatchEvent]:
        events = self.batch.step()
        assert len({e.seq_id for e in events}) == len(events)
        for e in events:
            if e.token is not None:
                self.tokens[e.seq_id].append(e.token)
            if e.done is not None:
                assert e.seq_id not in self.done
                self.done[e.seq_id] = e.done
        return events

    def finish(self) -> None:
        while len(self.batch):
            self.step()


# ---------------------------------------------------------------------- exactness


@pytest.mark.parametrize("which", ["golden", "chat"])
def test_prompts_of_different_lengths_match_solo(which, golden_model, chat_model):
    """Three sequences (prompts 3, 17 and 40 tokens) decoded together, 20 tokens each, so every ring
    wraps during decode (the 3-token one only there): each equals its solo run, logits step by step."""
    model = golden_model if which == "golden" else chat_model
    V = model.args.vocab_size
    prompts = [prompt_of(1, 3, V), prompt_of(2, 17, V), prompt_of(3, 40, V)]
    run = Run(BatchGenerator(model))
    ids = [run.add(p, GREEDY, max_tokens=20, keep_state=True) for p in prompts]
    run.finish()
    for sid, p in zip(ids, prompts):
        toks, rec, reason, engine_tokens = solo(model, p, GREEDY, 20)
        assert_same(run.tokens[sid], run.recs[sid], toks, rec)
        assert run.done[sid] == reason == "length"
        state = run.batch.take_state(sid)
        assert list(state.tokens) == engine_tokens == p + toks
        ring = state.cache[0 if model.args.is_sliding(0) else 1]
        assert ring.offset == len(p) + 20 > 2 * ring.window  # the window wrapped during decode


def test_join_finish_and_cancel_mid_stream(chat_model):
    """A decodes from the start; B joins at step 3 and finishes (max_tokens) at its 4th token; C joins
    at step 5; A is cancelled after step 9; C runs on alone. Each equals its solo run (A: up to the
    cancel), and a sequence that left costs nothing after it left."""
    V = chat_model.args.vocab_size
    pa, pb, pc = prompt_of(10, 12, V), prompt_of(11, 5, V), prompt_of(12, 30, V)
    run = Run(BatchGenerator(chat_model))
    a = run.add(pa, GREEDY, max_tokens=40)
    sizes = []
    for i in range(14):
        if i == 3:
            b = run.add(pb, GREEDY, max_tokens=4)
        if i == 5:
            c = run.add(pc, GREEDY, max_tokens=16)
        if i == 9:
            run.batch.cancel(a)
        sizes.append(len(run.batch))
        events = run.step()
        if i == 9:
            assert events[0] == BatchEvent(a, None, "cancelled") and a not in run.batch.ids
    assert sizes[:8] == [1, 1, 1, 2, 2, 3, 3, 2]  # B left right after its 4th token
    assert run.done == {b: "length", a: "cancelled"} and run.batch.ids == [c]
    run.finish()
    assert run.done[c] == "length"
    for sid, p, n in [(a, pa, 40), (b, pb, 4), (c, pc, 16)]:
        toks, rec, _, _ = solo(chat_model, p, GREEDY, n)
        got = run.tokens[sid]
        assert len(got) == (9 if sid == a else n)
        assert_same(got, run.recs[sid], toks[: len(got)], rec)


def test_seeded_sampling_is_the_same_as_alone(chat_model):
    """Temperature 1 with seeds (and filters on one of them): each sequence's samples equal its solo
    run's, whatever else shares the batch (its own PRNG key)."""
    V = chat_model.args.vocab_size
    configs = [
        SamplingConfig(temperature=1.0, seed=7),
        SamplingConfig(temperature=1.0, seed=7),  # the same seed in another sequence: its own key
        SamplingConfig(temperature=0.8, top_p=0.9, top_k=50, seed=123),
    ]
    prompts = [prompt_of(20, 9, V), prompt_of(21, 14, V), prompt_of(22, 6, V)]
    run = Run(BatchGenerator(chat_model))
    ids = [run.add(p, c, max_tokens=15) for p, c in zip(prompts, configs)]
    run.finish()
    for sid, p, c in zip(ids, prompts, configs):
        toks, rec, _, _ = solo(chat_model, p, c, 15)
        assert_same(run.tokens[sid], run.recs[sid], toks, rec)


def test_a_logits_processor_affects_only_its_sequence(chat_model):
    """One sequence is forced by `ScriptedTokens`, its neighbours are greedy: they get their solo
    greedy tokens, it gets the script then its own continuation (as alone)."""
    V = chat_model.args.vocab_size
    script = [100, 200, 300, 400, 500]
    forced = replace(GREEDY, logits_processors=(ScriptedTokens(script),))
    prompts = [prompt_of(30, 7, V), prompt_of(31, 11, V), prompt_of(32, 4, V)]
    run = Run(BatchGenerator(chat_model))
    ids = [run.add(prompts[0], GREEDY, 10), run.add(prompts[1], forced, 10), run.add(prompts[2], GREEDY, 10)]
    run.finish()
    assert run.tokens[ids[1]][:5] == script
    for sid, p, c in zip(ids, prompts, [GREEDY, replace(GREEDY, logits_processors=(ScriptedTokens(script),)), GREEDY]):
        toks, rec, _, _ = solo(chat_model, p, c, 10)
        assert_same(run.tokens[sid], run.recs[sid], toks, rec)


@pytest.mark.parametrize("group", [64, 32])
def test_quantized_caches_match_solo(tiny_chat_hd64_converted, group):
    """`kv_bits=8`: full layers on quantized caches, per sequence, as the quantized engine alone (with the
    default group size and another)."""
    model = load_model(tiny_chat_hd64_converted, dtype="float32")
    V = model.args.vocab_size
    prompts = [prompt_of(40, 5, V), prompt_of(41, 19, V)]
    run = Run(BatchGenerator(model, kv_bits=8, kv_group_size=group))
    ids = [run.add(p, GREEDY, max_tokens=12) for p in prompts]
    run.finish()
    for sid, p in zip(ids, prompts):
        toks, rec, _, _ = solo(model, p, GREEDY, 12, kv_bits=8, kv_group_size=group)
        assert_same(run.tokens[sid], run.recs[sid], toks, rec)


def test_stop_tokens_and_context_limit_end_a_sequence_as_alone(chat_model):
    """The engine's stop rules per sequence: a scripted stop token ("stop", "tool_call") and the context."""
    V = chat_model.args.vocab_size
    from mlx_oss import tokenizer as tk

    p = prompt_of(50, 6, V)
    run = Run(BatchGenerator(chat_model, max_context=12))
    stops = tk.STOP_TOKENS_FOR_ASSISTANT_ACTIONS
    s_return = run.add(p, replace(GREEDY, logits_processors=(ScriptedTokens([1, tk.RETURN]),)), stop_tokens=stops)
    s_call = run.add(p, replace(GREEDY, logits_processors=(ScriptedTokens([1, 2, tk.CALL]),)), stop_tokens=stops)
    s_ctx = run.add(p, GREEDY)
    run.finish()
    assert run.done == {s_return: "stop", s_call: "tool_call", s_ctx: "context"}
    assert run.tokens[s_return] == [1, tk.RETURN] and run.tokens[s_call] == [1, 2, tk.CALL]
    assert len(run.tokens[s_ctx]) == 6


def test_a_finished_state_resumes_in_an_engine(chat_model):
    """`keep_state`: an ended sequence's `EngineState` (for a prompt-cache pool) continues exactly in
    an `Engine`: the next prompt extends it and only its new tokens are prefilled."""
    V = chat_model.args.vocab_size
    p = prompt_of(60, 13, V)
    run = Run(BatchGenerator(chat_model))
    sid = run.add(p, GREEDY, max_tokens=9, keep_state=True)
    run.add(prompt_of(61, 4, V), GREEDY, max_tokens=20)
    run.finish()
    state = run.batch.take_state(sid)
    assert run.batch.take_state(sid) is None
    engine = Engine(chat_model)
    engine.attach(state)
    nxt = p + run.tokens[sid] + prompt_of(62, 5, V)
    logits, reused = engine.prefill(nxt)
    assert reused == len(p) + 9
    scratch = np.array(chat_model(mx.array([nxt]), None, last_only=True)).reshape(-1)
    assert rel_err(np.array(logits).reshape(-1), scratch) <= 1e-5
    # and a batch can start from a state too: only the new part is prefilled
    b2 = BatchGenerator(chat_model)
    fed: list[int] = []
    real = type(chat_model).__call__
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(type(chat_model), "__call__", lambda self, x, cache, **kw: (fed.append(x.shape[1]), real(self, x, cache, **kw))[1])
        sid2 = b2.add(nxt + [7], Sampler(GREEDY), max_tokens=1, state=engine.detach(), keep_state=True)
    assert fed == [1] and b2.tokens(sid2) == nxt + [7]


# ---------------------------------------------------------------------- one forward pass


def test_a_step_is_one_forward_pass_for_the_whole_batch(chat_model, monkeypatch):
    """B = 4 sequences: one step runs the lm_head once on 4 rows and each layer's MoE once on 4
    tokens; a batch that looped over its sequences would call them 4 times."""
    V = chat_model.args.vocab_size
    calls: dict[str, list] = {"moe": [], "lm_head": [], "qkv": []}
    lm_head_cls = type(chat_model.unembed)
    qkv_cls = type(chat_model.layers[0].attn.qkv)
    moe_call, lin_call = MoE.__call__, lm_head_cls.__call__
    lm_head, qkv0 = chat_model.unembed, chat_model.layers[0].attn.qkv

    def counting_moe(self, x):
        calls["moe"].append(x.shape)
        return moe_call(self, x)

    def counting_linear(self, x):
        if self is lm_head:
            calls["lm_head"].append(x.shape)
        if self is qkv0:
            calls["qkv"].append(x.shape)
        return lin_call(self, x)

    batch = BatchGenerator(chat_model)
    for i in range(4):
        batch.add(prompt_of(70 + i, 3 + 4 * i, V), Sampler(GREEDY), max_tokens=5)
    monkeypatch.setattr(MoE, "__call__", counting_moe)
    monkeypatch.setattr(lm_head_cls, "__call__", counting_linear)
    assert qkv_cls is lm_head_cls
    events = batch.step()
    assert len(events) == 4 and all(e.done is None for e in events)
    H = chat_model.args.hidden_size
    assert calls["lm_head"] == [(4, 1, H)]
    assert calls["moe"] == [(4, 1, H)] * len(chat_model.layers)
    assert calls["qkv"] == [(4, 1, H)]


# ---------------------------------------------------------------------- API


def test_step_without_sequences_and_errors(chat_model):
    V = chat_model.args.vocab_size
    batch = BatchGenerator(chat_model, max_context=16)
    assert batch.step() == [] and len(batch) == 0
    engine = Engine(chat_model)
    engine.prefill(prompt_of(80, 5, V))
    state = engine.detach()
    with pytest.raises(ContextLengthError):
        batch.add(prompt_of(81, 16, V), Sampler(GREEDY), state=state)
    assert state.cache[0].offset == 5  # a prompt that does not fit leaves the state to its owner
    with pytest.raises(ValueError, match="max_tokens"):
        batch.add([1, 2], Sampler(GREEDY), max_tokens=0)
    sid = batch.add([1, 2], Sampler(GREEDY))
    batch.cancel(sid)
    batch.cancel(12345)  # unknown ids are ignored
    assert batch.step() == [BatchEvent(sid, None, "cancelled")]
    assert batch.add([1, 2, 3], Sampler(GREEDY), should_stop=lambda: True) is None and len(batch) == 0
    with pytest.raises(ValueError, match="one cache per row"):
        chat_model.layers[0].attn(mx.zeros((2, 1, chat_model.args.hidden_size)), None, [None], mx.array([0, 0]))


def test_generate_batch_equals_solo_runs(chat_model):
    """`mlx_oss.generate_batch`: three prompts (a string and token ids) through at most two slots,
    each the tokens it gets alone, in order."""
    from mlx_oss.harmony import Message, Role, render_conversation_for_completion
    from mlx_oss.tokenizer import load_tokenizer

    tok = load_tokenizer(None)
    V = chat_model.args.vocab_size
    prompts = ["What is 2 + 2?", prompt_of(90, 8, V), prompt_of(91, 21, V)]
    results = mlx_oss.generate_batch(
        chat_model, tok, prompts, sampling=GREEDY, max_tokens=6, max_batch=2, reasoning_effort="low"
    )
    assert mlx_oss.generate_batch is generate_batch and mlx_oss.BatchGenerator is BatchGenerator
    conv = [Message.system(reasoning_effort="low"), Message(Role.USER, prompts[0])]
    rendered = render_conversation_for_completion(conv, encoding=tok)
    for r, p in zip(results, [rendered, prompts[1], prompts[2]]):
        toks, _, reason, _ = solo(chat_model, p, GREEDY, 6, stop_tokens=(200002, 200012))
        assert r.tokens == toks and r.stop_reason == reason and r.text == tok.decode(toks)


def test_generate_batch_defaults_per_prompt_configs_and_one_slot(chat_model, monkeypatch):
    """The defaults (8 slots, 256 tokens, a "medium" system message for a string), a config per prompt
    (each as alone with its own), one slot (one at a time, the same tokens) and the refusals."""
    from mlx_oss.harmony import Message, Role, render_conversation_for_completion
    from mlx_oss.tokenizer import load_tokenizer

    tok = load_tokenizer(None)
    V = chat_model.args.vocab_size
    live: list[int] = []
    real_add = BatchGenerator.add
    monkeypatch.setattr(BatchGenerator, "add", lambda self, *a, **kw: (live.append(len(self)), real_add(self, *a, **kw))[1])
    nine = [prompt_of(200 + i, 5, V) for i in range(9)]
    short = generate_batch(chat_model, tok, nine, sampling=GREEDY, max_tokens=2, stop_tokens=NO_STOP)
    assert max(live) == 7 and [len(r.tokens) for r in short] == [2] * 9  # 8 at once, the ninth waits
    assert short[8].tokens == solo(chat_model, nine[8], GREEDY, 2)[0]

    [long] = generate_batch(chat_model, tok, [nine[0]], sampling=GREEDY, stop_tokens=NO_STOP)
    assert len(long.tokens) == 256 and long.stop_reason == "length"
    [text] = generate_batch(chat_model, tok, ["Hi"], sampling=GREEDY, max_tokens=3, stop_tokens=NO_STOP)
    medium = render_conversation_for_completion([Message.system(reasoning_effort="medium"), Message(Role.USER, "Hi")], encoding=tok)
    assert text.tokens == solo(chat_model, medium, GREEDY, 3)[0]

    configs = [SamplingConfig(temperature=1.0, seed=5), SamplingConfig(temperature=0.7, seed=9)]
    own = generate_batch(chat_model, tok, nine[:2], sampling=configs, max_tokens=5, stop_tokens=NO_STOP)
    assert [r.tokens for r in own] == [solo(chat_model, p, c, 5)[0] for p, c in zip(nine[:2], configs)]
    live.clear()
    one = generate_batch(chat_model, tok, nine[:3], sampling=GREEDY, max_tokens=2, max_batch=1, stop_tokens=NO_STOP)
    assert live == [0, 0, 0] and [r.tokens for r in one] == [r.tokens for r in short[:3]]
    first = short[0].tokens[0]  # a stop token ends the sequence there; the context limit ends it as alone
    [stopped] = generate_batch(chat_model, tok, nine[:1], sampling=GREEDY, max_tokens=5, stop_tokens=(first,))
    assert stopped.tokens == [first] and stopped.stop_reason == "stop"
    [full] = generate_batch(chat_model, tok, nine[:1], sampling=GREEDY, max_tokens=50, stop_tokens=NO_STOP, max_context=8)
    assert full.stop_reason == "context" and len(full.tokens) == 3  # 5 prompt tokens + 3 = the context of 8
    with pytest.raises(ValueError, match="max_batch must be at least 1"):
        generate_batch(chat_model, tok, nine[:1], max_batch=0)
    with pytest.raises(ValueError, match="2 sampling configs for 3 prompts"):
        generate_batch(chat_model, tok, nine[:3], sampling=configs)


# ---------------------------------------------------------------------- interleaved prefill


def test_a_joining_prompt_is_prefilled_a_chunk_per_step_and_everyone_matches_solo(chat_model, monkeypatch):
    """`prefill_step=8`: B (37 tokens, from a state holding 9 of them) joins while A decodes; each step
    feeds at most 8 tokens of queued prompts before A's decode pass, so A gets a token every step, and B
    joins the pass of the step that ends its prefill (28 tokens to go after the reused 9: 8, 8, 8, 4).
    C is queued behind B: the 4 tokens B's last chunk left of that step's budget go to C's first chunk,
    cut to fit; C's other 7 come next step and it joins. Two short prompts fit one step together. Each
    equals its solo run, logits step by step (prefilled in other pieces than alone)."""
    V = chat_model.args.vocab_size
    pa, pb, pc = prompt_of(20, 6, V), prompt_of(21, 37, V), prompt_of(22, 11, V)
    engine = Engine(chat_model)
    engine.prefill(pb[:9])
    state = engine.detach()
    chunks: list[int] = []
    real = chat_model.__call__
    monkeypatch.setattr(type(chat_model), "__call__", lambda self, x, cache, **kw: (chunks.append(x.shape[1]), real(x, cache, **kw))[1])
    run = Run(BatchGenerator(chat_model, prefill_step=8))
    a = run.add(pa, GREEDY, max_tokens=14)
    assert chunks == [] and len(run.batch) == 1 and run.batch.decoding == 0  # queued, not prefilled
    run.step()
    assert chunks == [6] and run.tokens[a] and run.batch.decoding == 1  # its one chunk, then its first token
    b = run.add(pb, GREEDY, max_tokens=6, state=state, keep_state=True)
    c = run.add(pc, GREEDY, max_tokens=4)
    per_step = []
    for _ in range(5):
        chunks.clear()
        n_a = len(run.tokens[a])
        run.step()
        per_step.append((chunks[:], len(run.tokens[a]) - n_a, len(run.tokens[b]), len(run.tokens[c])))
    assert per_step == [([8], 1, 0, 0), ([8], 1, 0, 0), ([8], 1, 0, 0), ([4, 4], 1, 1, 0), ([7], 1, 2, 1)], per_step
    run.finish()
    for sid, p, n in [(a, pa, 14), (b, pb, 6), (c, pc, 4)]:
        toks, rec, reason, _ = solo(chat_model, p, GREEDY, n)
        assert_same(run.tokens[sid], run.recs[sid], toks, rec)
        assert run.done[sid] == reason == "length"
    st = run.batch.take_state(b)
    assert list(st.tokens) == pb + run.tokens[b]
    chunks.clear()
    d, e = run.add(prompt_of(23, 3, V), GREEDY, max_tokens=2), run.add(prompt_of(24, 4, V), GREEDY, max_tokens=2)
    run.step()
    assert chunks == [3, 4] and run.batch.decoding == 2 and run.tokens[d] and run.tokens[e]  # one step, both joined


def test_a_queued_prefill_cancelled_or_failing_leaves_the_others_alone(chat_model):
    """Cancelled mid-prefill (after one of its chunks), cut by `should_stop`, or failing in its first
    sampling: that sequence ends with one event ("cancelled" / "failed" with the error), the engine is
    free for the next prompt, and the decoding sequence goes on as alone."""
    V = chat_model.args.vocab_size
    pa = prompt_of(30, 5, V)

    def broken(context, logits):
        raise RuntimeError("processor failed")

    run = Run(BatchGenerator(chat_model, prefill_step=4))
    a = run.add(pa, GREEDY, max_tokens=12)
    run.step()
    b = run.add(prompt_of(31, 20, V), GREEDY, max_tokens=3)
    run.step()  # b's first chunk
    run.batch.cancel(b)
    events = run.step()
    assert BatchEvent(b, None, "cancelled") in events and b not in run.batch.ids
    assert run.batch._engine.tokens == []  # its half-prefilled state is dropped, not held by the engine
    stop = [False]
    c = run.add(prompt_of(32, 9, V), GREEDY, max_tokens=3, should_stop=lambda: stop[0])
    run.step()
    stop[0] = True
    events = run.step()
    assert BatchEvent(c, None, "cancelled") in events and c not in run.batch.ids
    d = run.batch.add(prompt_of(33, 3, V), Sampler(SamplingConfig(logits_processors=(broken,))), max_tokens=3)
    run.tokens[d] = []
    failed = [e for e in run.step() if e.seq_id == d]
    assert [(e.token, e.done, str(e.error)) for e in failed] == [(None, "failed", "processor failed")]
    e = run.add(prompt_of(34, 6, V), GREEDY, max_tokens=2)
    run.finish()
    assert run.done[a] == "length" and run.done[e] == "length"
    for sid, p, n in [(a, pa, 12), (e, prompt_of(34, 6, V), 2)]:
        toks, rec, _, _ = solo(chat_model, p, GREEDY, n)
        assert_same(run.tokens[sid], run.recs[sid], toks, rec)
    with pytest.raises(ValueError, match="prefill_step"):
        BatchGenerator(chat_model, prefill_step=0)


def test_a_prefill_that_raises_fails_only_its_sequence_and_the_queue_goes_on_in_the_same_step(chat_model, monkeypatch):
    """A prompt whose chunk raises ends with one "failed" event carrying the error, and so does one whose
    first sampling fails; either way the next queued prompt is prefilled and decodes from that same step
    (the budget allows it), the tokens of what it holds are the prompt's, and every survivor matches
    its solo run. Without `prefill_step` there is no budget: `add` prefills at once."""
    V = chat_model.args.vocab_size
    assert BatchGenerator(chat_model).prefill_budget() == 0
    real = type(chat_model).__call__

    def flaky(self, x, cache, **kw):
        if x.shape[1] == 13:
            raise RuntimeError("chunk failed")
        return real(self, x, cache, **kw)

    def broken(context, logits):
        raise RuntimeError("processor failed")

    monkeypatch.setattr(type(chat_model), "__call__", flaky)
    pa, pb, pc, pd, pe = (prompt_of(50 + i, n, V) for i, n in enumerate((5, 13, 7, 4, 6)))
    run = Run(BatchGenerator(chat_model, prefill_step=32))
    a = run.add(pa, GREEDY, max_tokens=8)
    run.step()
    b = run.add(pb, GREEDY, max_tokens=3)
    c = run.add(pc, GREEDY, max_tokens=3)
    events = run.step()
    assert [(e.seq_id, e.token, e.done, str(e.error)) for e in events if e.seq_id == b] == [(b, None, "failed", "chunk failed")]
    assert run.batch.ids == [a, c] and run.batch.decoding == 2 and run.batch.tokens(c)[:7] == pc
    assert run.batch.generated(a) == run.tokens[a] and len(run.tokens[a]) == 2
    d = run.batch.add(pd, Sampler(SamplingConfig(logits_processors=(broken,))), max_tokens=3)
    run.tokens[d] = []
    e = run.add(pe, GREEDY, max_tokens=3)
    events = run.step()
    assert [(x.seq_id, x.token, x.done, str(x.error)) for x in events if x.seq_id == d] == [(d, None, "failed", "processor failed")]
    assert e in run.batch.ids and run.batch.decoding == len(run.batch.ids)  # e decodes from this step
    f = run.add(prompt_of(55, 9, V), GREEDY, max_tokens=3, should_stop=lambda: True)  # cut before its chunk
    pg = prompt_of(56, 5, V)
    g = run.add(pg, GREEDY, max_tokens=3)
    events = run.step()
    assert BatchEvent(f, None, "cancelled") in events and g in run.batch.ids and run.batch.decoding == len(run.batch.ids)
    run.finish()
    assert run.batch.take_state(a) is None  # no state kept unless asked (`keep_state`)
    for sid, p, n in [(a, pa, 8), (c, pc, 3), (e, pe, 3), (g, pg, 3)]:
        toks, rec, _, _ = solo(chat_model, p, GREEDY, n)
        assert_same(run.tokens[sid], run.recs[sid], toks, rec)


@pytest.mark.parametrize("prefill_step", [None, 8])
def test_boundaries_leave_the_snapshots_an_engine_leaves(chat_model, prefill_step):
    """`add(..., boundaries=)` (the end of the instructions, from the server): the kept state holds ring
    snapshots at those positions, as `Engine.prefill` leaves them, so a later prompt that shares only the
    instructions resumes there. Whether the prompt is prefilled at once or a chunk per step."""
    V = chat_model.args.vocab_size
    p = prompt_of(70, 30, V)
    engine = Engine(chat_model)
    engine.prefill(p, boundaries=(12,))
    alone = [(s.position, s.kind) for s in engine.detach().snapshots]
    assert (12, "prompt") in alone
    run = Run(BatchGenerator(chat_model, prefill_step=prefill_step))
    sid = run.add(p, GREEDY, max_tokens=1, keep_state=True, boundaries=(12,))
    run.finish()
    batched = [(s.position, s.kind) for s in run.batch.take_state(sid).snapshots]
    assert [x for x in batched if x[0] <= len(p)] == alone


def test_a_message_end_in_a_generation_leaves_the_snapshot_an_engine_leaves(chat_model):
    """An `<|end|>` decoded in the batch leaves a "message" snapshot there, as `Engine.generate` does: the
    first a full snapshot list gives up (prompt ends are kept longer), and where a conversation that
    continues after that message resumes."""
    from mlx_oss import tokenizer as tk

    V = chat_model.args.vocab_size
    p, script = prompt_of(72, 20, V), [1, tk.END, 2, 3]

    def config():  # a script is used up by the run it drives
        return replace(GREEDY, logits_processors=(ScriptedTokens(script),))

    engine = Engine(chat_model)
    assert list(engine.generate(p, Sampler(config()), max_tokens=4, stop_tokens=NO_STOP)) == script
    alone = [(s.position, s.kind) for s in engine.detach().snapshots]
    assert (len(p) + 2, "message") in alone
    run = Run(BatchGenerator(chat_model))
    sid = run.add(p, config(), max_tokens=4, keep_state=True)
    run.finish()
    assert run.tokens[sid] == script
    assert [(s.position, s.kind) for s in run.batch.take_state(sid).snapshots] == alone


def test_the_engine_settings_reach_every_sequence(chat_model, monkeypatch):
    """`prefill_chunk` and `max_snapshots` act in the batch as in an engine given them: without
    `prefill_step` a prompt goes in chunks of that size, and a kept state holds at most that many
    snapshots. The smallest settings of the batch's own are valid: one token a step, a balance of 1."""
    V = chat_model.args.vocab_size
    p, marks = prompt_of(71, 40, V), (6, 12, 20, 28)
    engine = Engine(chat_model, max_snapshots=2)
    engine.prefill(p, boundaries=marks)
    alone = [(s.position, s.kind) for s in engine.detach().snapshots]
    assert len(alone) == 2
    run = Run(BatchGenerator(chat_model, max_snapshots=2))
    sid = run.add(p, GREEDY, max_tokens=1, keep_state=True, boundaries=marks)
    run.finish()
    assert [(s.position, s.kind) for s in run.batch.take_state(sid).snapshots if s.position <= len(p)] == alone
    chunks: list[int] = []
    real = chat_model.__call__
    monkeypatch.setattr(type(chat_model), "__call__", lambda self, x, cache, **kw: (chunks.append(x.shape[1]), real(x, cache, **kw))[1])
    run = Run(BatchGenerator(chat_model, prefill_chunk=16))
    run.add(p, GREEDY, max_tokens=1)
    assert chunks == [16, 16, 8], chunks
    BatchGenerator(chat_model, prefill_step=1, prefill_balance=1.0)
    BatchGenerator(chat_model, prefill_step=1, prefill_balance=0.01)


def test_the_prefill_budget_follows_the_measured_costs(chat_model, monkeypatch):
    """`prefill_balance`: while sequences decode, a step's prefill is held to `balance` decode passes at the
    costs measured so far (tokens = balance x pass time / token time, at least 1, at most `prefill_step`);
    with nothing decoding, or nothing measured yet, the whole `prefill_step`. The chunks fed follow it."""
    V = chat_model.args.vocab_size
    batch = BatchGenerator(chat_model, prefill_step=64, prefill_balance=2.0)
    assert batch.prefill_budget() == 64  # nothing measured, nothing decoding
    run = Run(batch)
    t0 = time.perf_counter()
    run.add(prompt_of(40, 5, V), GREEDY, max_tokens=30)
    for _ in range(4):
        run.step()
    elapsed = time.perf_counter() - t0  # each measurement is a part of it, and so is their smoothed mean
    assert 0 < batch._decode_s < elapsed and 0 < batch._token_s < elapsed, (batch._decode_s, batch._token_s, elapsed)
    batch._decode_s, batch._token_s = 0.010, 0.001  # 2 x 10 ms / 1 ms: 20 tokens
    assert batch.prefill_budget() == 20
    batch._decode_s = 0.0001
    assert batch.prefill_budget() == 1  # at least one token: a prompt always gets on
    batch._decode_s = 10.0
    assert batch.prefill_budget() == 64  # never above prefill_step
    # the chunks follow the budget: freeze the measurements at 20 tokens a step
    monkeypatch.setattr(BatchGenerator, "_smooth", staticmethod(lambda old, new: old))
    batch._decode_s, batch._token_s = 0.010, 0.001
    chunks: list[int] = []
    real = chat_model.__call__
    monkeypatch.setattr(type(chat_model), "__call__", lambda self, x, cache, **kw: (chunks.append(x.shape[1]), real(x, cache, **kw))[1])
    b = run.add(prompt_of(41, 50, V), GREEDY, max_tokens=3)
    while b not in run.tokens or not run.tokens[b]:
        run.step()
    assert chunks == [20, 20, 10], chunks
    run.finish()
    toks, rec, _, _ = solo(chat_model, prompt_of(41, 50, V), GREEDY, 3)
    assert_same(run.tokens[b], run.recs[b], toks, rec)
    with pytest.raises(ValueError, match="prefill_balance"):
        BatchGenerator(chat_model, prefill_step=8, prefill_balance=0)
    assert len(run.batch) == 0 and batch._decode_s is not None
    assert batch.prefill_budget() == 64  # measured, but nobody decodes: nobody to hold back for


def test_the_measurements_are_smoothed_and_the_first_join_is_timed_before_more_prefill(chat_model):
    """A step that began with nobody decoding stops prefilling once a sequence joins, until a decode pass of
    it has been timed (`prefill_balance` needs one); the costs are smoothed (0.7 old + 0.3 new), so one slow
    step moves the budget a little, not all the way."""
    V = chat_model.args.vocab_size
    assert BatchGenerator._smooth(None, 2.0) == 2.0 and BatchGenerator._smooth(1.0, 2.0) == pytest.approx(1.3)
    assert BatchGenerator._smooth(2.0, 1.0) == pytest.approx(1.7)
    run = Run(BatchGenerator(chat_model, prefill_step=64, prefill_balance=2.0))
    a, b = run.add(prompt_of(50, 5, V), GREEDY, max_tokens=4), run.add(prompt_of(51, 5, V), GREEDY, max_tokens=4)
    run.step()
    assert run.batch.decoding == 1 and run.tokens[a] and not run.tokens[b]  # b waits for a's first timed pass
    run.finish()
    for sid, seed in ((a, 50), (b, 51)):
        toks, rec, _, _ = solo(chat_model, prompt_of(seed, 5, V), GREEDY, 4)
        assert_same(run.tokens[sid], run.recs[sid], toks, rec)
    plain = Run(BatchGenerator(chat_model, prefill_step=64))  # no balance: both join in the first step
    plain.add(prompt_of(50, 5, V), GREEDY, max_tokens=4), plain.add(prompt_of(51, 5, V), GREEDY, max_tokens=4)
    plain.step()
    assert plain.batch.decoding == 2
