"""`Chat.history` replacement (edit / regenerate / delete) and `Chat.warm` (a reopened chat's
background prefill) on the tiny synthetic model, replies forced token by token."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import mlx_oss
from mlx_oss.harmony import Message, Role, render_message
from mlx_oss.sampling import SamplingConfig, ScriptedTokens

sys.path.insert(0, str(Path(__file__).parent))
from test_chat import reply  # noqa: E402


@pytest.fixture(scope="module")
def model_tok(tiny_chat_converted):
    return mlx_oss.load(tiny_chat_converted, dtype="float32")


def forced(chat, tokens) -> None:
    chat.sampling = SamplingConfig(seed=0, logits_processors=(ScriptedTokens(tokens),))


def two_turns(model, tok) -> mlx_oss.Chat:
    chat = mlx_oss.Chat(model, tok)
    forced(chat, reply(tok, analysis="Think one.", final="Answer one."))
    chat.ask("first question")
    forced(chat, reply(tok, analysis="Think two.", final="Answer two."))
    chat.ask("second question")
    return chat


def test_warm_prefills_what_the_next_turn_reuses(model_tok):
    model, tok = model_tok
    chat = two_turns(model, tok)
    reopened = mlx_oss.Chat.from_json(chat.to_json(), model, tok)
    assert reopened.engine.tokens == []
    seen: list[tuple[int, int]] = []
    cached = reopened.warm(progress=lambda done, total: seen.append((done, total)))
    assert cached == len(reopened.engine.tokens) > 0
    assert seen and seen[-1] == (cached, cached) and all(d <= t for d, t in seen)

    forced(reopened, reply(tok, final="Three."))
    stats = reopened.ask("third question").stats
    assert stats.reused_tokens == cached  # everything warmed was reused
    assert stats.prefilled_tokens == stats.prompt_tokens - cached
    # the warmed tokens are exactly the start of the prompt the next turn rendered (reasoning pruned)
    forced(chat, reply(tok, final="Three."))
    cold = chat.ask("third question").stats
    assert stats.prompt_tokens == cold.prompt_tokens


def test_warm_stops_where_the_next_turn_differs(model_tok):
    """Exactly: the warmed tokens are the conversation through its last message (the last reply's
    reasoning pruned, as the next turn prunes it); the next turn prefills only its own message and
    `<|start|>assistant`."""
    model, tok = model_tok
    reopened = mlx_oss.Chat.from_json(two_turns(model, tok).to_json(), model, tok)
    cached = reopened.warm()
    forced(reopened, reply(tok, final="Three."))
    stats = reopened.ask("third question").stats
    new = len(render_message(Message.user("third question"), encoding=tok)) + len(
        tok.encode("<|start|>assistant", allowed_special="all"))  # fmt: skip
    assert (stats.reused_tokens, stats.prefilled_tokens) == (cached, new) and cached == stats.prompt_tokens - new


def test_warm_leaves_the_snapshots_a_turn_leaves(model_tok):
    """After a warm, a conversation replaced from its first message still reuses the system and
    developer messages: warm hands the engine the same snapshot points as a turn (the sliding-window
    layers cannot trim back to a point without one)."""
    model, tok = model_tok
    chat = mlx_oss.Chat(model, tok, instructions="Be brief.")
    forced(chat, reply(tok, analysis="Think.", final="Answer."))
    chat.ask("first question")
    reopened = mlx_oss.Chat.from_json(chat.to_json(), model, tok)
    reopened.warm()
    reopened.history = []
    forced(reopened, reply(tok, final="Other."))
    head = sum(len(render_message(m, encoding=tok)) for m in reopened.messages[:2])
    assert reopened.ask("another question entirely").stats.reused_tokens == head


def test_warm_is_cancellable(model_tok):
    model, tok = model_tok
    chat = two_turns(model, tok)
    reopened = mlx_oss.Chat.from_json(chat.to_json(), model, tok)
    reopened.engine.prefill_chunk = 4
    calls = []

    def progress(done, total):
        calls.append(done)
        reopened.cancel()

    reopened.warm(progress=progress)
    assert len(calls) == 1 and calls[0] < len(chat.prompt_tokens())
    forced(reopened, reply(tok, final="Still fine."))
    assert reopened.ask("next").answer == "Still fine."  # a cancelled warm leaves a usable chat


def test_history_replacement_regenerates_and_edits(model_tok):
    model, tok = model_tok
    chat = two_turns(model, tok)
    hist = chat.history
    last_user = max(i for i, m in enumerate(hist) if m.role is Role.USER)

    chat.history = hist[: last_user + 1]  # regenerate: drop the last reply, continue after the question
    forced(chat, reply(tok, final="Answer two, again."))
    r = chat.ask(None)
    assert r.answer == "Answer two, again." and r.stats.reused_tokens > 0
    assert [m.text for m in chat.history if m.role is Role.USER] == ["first question", "second question"]

    chat.history = hist[:last_user]  # edit the second question
    forced(chat, reply(tok, final="Edited."))
    assert chat.ask("second question, edited").answer == "Edited."
    assert [m.text for m in chat.history if m.role is Role.USER] == ["first question", "second question, edited"]


def test_history_rejects_what_is_not_conversation(model_tok):
    model, tok = model_tok
    chat = mlx_oss.Chat(model, tok)
    with pytest.raises(TypeError, match=r"history\[0\]"):
        chat.history = [{"role": "user", "content": "x"}]
    with pytest.raises(ValueError, match="system message"):
        chat.history = [Message.system()]
    assert chat.history == []
