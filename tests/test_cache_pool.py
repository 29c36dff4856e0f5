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


def run(engine: Engine, tokens: list[int], n: int = 3):
    """Generate n greedy tokens; -> (generation, logits at the prompt's last position from the engine)."""
    seen = []

    def record(ctx, logits):
        if not seen:
            seen.append(np.array(logits.reshape(-1)))
        return logits

    gen = engine.generate(tokens, Sampler(SamplingConfig(temperature=0, logits_processors=(record,))), max_tokens=n)
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
