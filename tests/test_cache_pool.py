"""Engine state detach/attach/fork and the prompt-cache pool, checked against from-scratch logits on
the tiny chat model (sliding window 8, so resuming inside a conversation needs the snapshots)."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

import mlx_oss
from mlx_oss.engine import Engine
from mlx_oss.harmony import Message, Role, render_conversation_for_completion
from mlx_oss.sampling import Sampler, SamplingConfig
from mlx_oss.server.cache_pool import PromptCachePool


@pytest.fixture(scope="module")
def model_tok(tiny_chat_converted):
    return mlx_oss.load(tiny_chat_converted, dtype="float32")


def prompt(tok, *texts: str) -> list[int]:
    msgs = [Message.system(), Message.developer("Shared instructions for every conversation.")]
    for i, t in enumerate(texts):
        msgs.append(Message.user(t) if i % 2 == 0 else Message.assistant(t))
    return render_conversation_for_completion(msgs, Role.ASSISTANT, encoding=tok)


def run(engine: Engine, tokens: list[int], n: int = 3, boundaries: tuple[int, ...] = ()):
    """Generate n greedy tokens (ring snapshots at `boundaries`, where the server marks the instructions'
    end); -> (generation, logits at the prompt's last position from the engine)."""
    seen = []

    def record(ctx, logits):
        if not seen:
            seen.append(np.array(logits.reshape(-1)))
        return logits

    gen = engine.generate(tokens, Sampler(SamplingConfig(temperature=0, logits_processors=(record,))), max_tokens=n,
                          boundaries=boundaries)  # fmt: skip
    list(gen)
    return gen, seen[0]


def scratch(model, tokens) -> np.ndarray:
    return np.array(model(mx.array([tokens]), None, last_only=True)[0, -1])


def close(a, b) -> bool:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b)) <= 1e-5


def test_detach_attach_resumes_exactly(model_tok):
    model, tok = model_tok
    e = Engine(model)
    p1 = prompt(tok, "first conversation, a fairly long opening message")
    run(e, p1)
    state = e.detach()
    assert e.tokens == [] and state.tokens[: len(p1)] == tuple(p1)
    assert state.nbytes > 0
    run(e, prompt(tok, "something else entirely"))
    e.attach(state)
    p2 = prompt(tok, "first conversation, a fairly long opening message", "reply", "next")
    gen, logits = run(e, p2)
    assert gen.reused_tokens >= len(p1) - 1
    assert close(logits, scratch(model, p2))


def test_fork_leaves_the_original_intact(model_tok):
    model, tok = model_tok
    e = Engine(model)
    p1 = prompt(tok, "conversation A")
    run(e, p1)
    original = e.detach()
    e.attach(original.fork())
    run(e, prompt(tok, "conversation B is different"))  # overwrites the shared buffers' tail in the fork
    e.attach(original)
    p = prompt(tok, "conversation A", "answer", "more")
    gen, logits = run(e, p)
    assert gen.reused_tokens >= len(p1) - 1
    assert close(logits, scratch(model, p))


def test_pool_keeps_interleaved_conversations(model_tok):
    model, tok = model_tok
    e = Engine(model)
    pool = PromptCachePool(1 << 30)
    a, b = ["conversation A opening"], ["conversation B opening, other words"]
    prefilled = {}
    for turn in range(3):
        for name, conv in (("A", a), ("B", b)):
            p = prompt(tok, *conv)
            reuse = pool.prepare(e, p)
            gen, logits = run(e, p)
            assert gen.reused_tokens == reuse
            assert close(logits, scratch(model, p))
            prefilled[name, turn] = gen.prefilled_tokens
            conv += [f"reply {turn}", f"{name} question {turn}"]
    # After the first round, each turn prefills only its new messages, not the whole conversation.
    for name in "AB":
        assert prefilled[name, 2] < len(prompt(tok, *(a if name == "A" else b))) / 2
    assert len(pool) >= 1


def test_pool_is_bounded_by_bytes(model_tok):
    model, tok = model_tok
    e = Engine(model)
    pool = PromptCachePool(0)
    for text in ("one", "two different", "three more different"):
        p = prompt(tok, text)
        pool.prepare(e, p)
        run(e, p)
    assert len(pool) == 0 and pool.nbytes == 0
    pool = PromptCachePool(1 << 30)
    for text in ("one", "two different", "three more different"):
        p = prompt(tok, text)
        pool.prepare(e, p)
        run(e, p)
    assert len(pool) == 2
    one = pool.nbytes // 2
    pool.max_bytes = one + one // 2
    pool.prepare(e, prompt(tok, "four"))
    assert pool.nbytes <= pool.max_bytes


def _state(e: Engine, tokens: list[int], boundaries: tuple[int, ...] = ()):
    """The engine's state after `run` (the engine left empty)."""
    run(e, tokens, boundaries=boundaries)
    return e.detach()


def test_take_hands_out_the_best_state_moved_or_forked_and_nothing_for_an_unrelated_prompt(model_tok):
    """Batched generation's side (`take`): the state with the longest reusable prefix; moved out when the
    prompt diverges at or after the prompt it was built for (an agent loop resending its conversation),
    else a fork the pool keeps (a new conversation sharing the instructions); nothing reusable: (None, 0)."""
    model, tok = model_tok
    e = Engine(model)
    pa, pb = prompt(tok, "conversation A opening"), prompt(tok, "conversation B, other words")
    common = next(i for i, (x, y) in enumerate(zip(pa, pb)) if x != y)  # the instructions and more
    pool = PromptCachePool(1 << 30)
    a, b = _state(e, pa, (common - 2,)), _state(e, pb, (common - 2,))
    pool.release(a, len(pa))
    pool.release(b, len(pb))
    assert pool.take([7, 8, 9]) == (None, 0) and len(pool) == 2  # no token in common
    shared = prompt(tok, "conversation C")  # shares the instructions with both: a fork of one
    state, reuse = pool.take(shared)
    assert reuse == common - 2 and len(pool) == 2 and state is not a and state is not b
    assert state.tokens == b.tokens  # the equals' tie goes to the one used last
    nxt = pa + [5, 6]  # A's own continuation: from A's prompt end on (its reply dropped); moved out
    state, reuse = pool.take(nxt)
    assert state is a and reuse == len(pa) and len(pool) == 1
    e.attach(state)
    gen, logits = run(e, nxt)
    assert gen.reused_tokens == reuse and close(logits, scratch(model, nxt))


def test_release_keeps_the_newest_past_the_budget_and_evicts_the_least_recently_used(model_tok):
    """`release`: the newest state stays even alone past `max_bytes` (it plays the engine state's part);
    older ones go least recently used first, and a fork handed out by `take` marks its state used."""
    model, tok = model_tok
    e = Engine(model)
    ps = [prompt(tok, t) for t in ("first one", "second, other words", "third, more other words")]
    mark = next(i for i, (x, y) in enumerate(zip(ps[0], ps[1])) if x != y) - 2  # in the shared instructions
    states = [_state(e, ps[0], (mark, len(ps[0]) - 1))] + [_state(e, p, (mark,)) for p in ps[1:]]
    pool = PromptCachePool(1)
    pool.release(states[0], len(ps[0]))
    assert len(pool) == 1  # alone past the budget: kept
    pool.release(states[1], len(ps[1]))
    assert len(pool) == 1 and pool.take(ps[1] + [5])[0] is states[1]  # the older one evicted
    pool = PromptCachePool(max(s.nbytes for s in states))  # room for one besides the newest
    pool.release(states[0], len(ps[0]))
    pool.release(states[1], len(ps[1]))
    forked, reuse = pool.take(ps[0][:-1] + [5])  # a regenerate of state 0's last token: a fork of it
    assert reuse == len(ps[0]) - 1 and forked.tokens == states[0].tokens and len(pool) == 2
    pool.release(states[2], len(ps[2]))  # state 1, used least recently now, goes
    assert len(pool) == 2
    assert [pool.take(p + [5])[0] for p in (ps[0], ps[2])] == [states[0], states[2]] and len(pool) == 0


def test_a_negative_budget_is_refused_and_an_empty_state_is_not_kept(model_tok):
    """`--cache-bytes` below 0 is refused in one line; a state of no tokens (a sequence that ended before its
    prefill fed one) is nothing to reuse: released, it is not kept, and the newest kept state stays."""
    model, tok = model_tok
    with pytest.raises(ValueError, match=r"^max_bytes must be >= 0, got -1$"):
        PromptCachePool(-1)
    e = Engine(model)
    p = prompt(tok, "a conversation")
    kept = _state(e, p)
    pool = PromptCachePool(1 << 30)
    pool.release(kept, len(p))
    pool.release(e.detach(), 0)  # the engine left empty: a state of no tokens
    assert len(pool) == 1 and pool.take(p + [5])[0] is kept


def test_an_empty_pool_hands_out_nothing_to_reuse():
    assert PromptCachePool(1 << 20).take([1, 2, 3]) == (None, 0)
