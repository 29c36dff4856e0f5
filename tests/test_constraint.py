"""HeaderConstraint (tool_choice) without a model: random logits, optionally overridden by a script
that tries to write something else first; the constraint must win, and what it lets through must
parse as the right message and re-render token-exact."""

from __future__ import annotations

import json

import mlx.core as mx
import numpy as np
import pytest

from mlx_oss import tokenizer as tk
from mlx_oss.constraint import tool_choice_constraint
from mlx_oss.harmony import Message, Role, parse_completion, render_message
from mlx_oss.sampling import ScriptedTokens
from server_harness import AfterHeader

ENC = tk.load_tokenizer()
ASSISTANT = ENC.encode_ordinary("assistant")


def generate(processors, steps=80, seed=0):
    """Greedy over random logits through `processors`; -> tokens after `<|start|>assistant`."""
    rng = np.random.default_rng(seed)
    ctx = [tk.START, *ASSISTANT]
    out = []
    for _ in range(steps):
        logits = mx.array(rng.standard_normal((1, tk.N_VOCAB)).astype(np.float32))
        for p in processors:
            logits = p(mx.array(ctx, dtype=mx.int32), logits)
        tok = int(mx.argmax(logits, axis=-1).item())
        ctx.append(tok)
        out.append(tok)
        if tok in tk.STOP_TOKENS_FOR_ASSISTANT_ACTIONS:
            break
    return out


def final_script(text="Sunny."):
    return ScriptedTokens(ENC.encode(f"<|channel|>final<|message|>{text}<|return|>", allowed_special="all"))


def test_named_choice_turns_a_final_answer_into_that_call_token_exact():
    c = tool_choice_constraint("required", ("functions.get_weather",), ENC)
    out = generate([final_script(), AfterHeader(ENC, '{"city": "Paris"}'), c])
    msgs = parse_completion(out, Role.ASSISTANT, ENC)
    assert [m.channel for m in msgs] == ["analysis", "commentary"]  # the script's "final" was turned to analysis
    call = msgs[-1]
    assert call.recipient == "functions.get_weather" and json.loads(call.text) == {"city": "Paris"}
    assert out[-1] == tk.CALL
    # The call's tokens are exactly what the renderer writes for it (the next prompt reuses them).
    start = len(out) - 1 - out[::-1].index(tk.START)
    assert out[start:] == render_message(Message.tool_call("functions.get_weather", call.text), encoding=ENC)


def test_unscripted_random_logits_never_write_final_or_markup_in_text():
    for seed in range(3):
        c = tool_choice_constraint("required", ("functions.a", "functions.b"), ENC)
        out = generate([c], steps=40, seed=seed)
        msgs = parse_completion(out, Role.ASSISTANT, ENC)
        assert msgs[0].channel in ("analysis", "commentary") and msgs[0].recipient in (None, "functions.a", "functions.b")
        assert not any(t >= tk.FIRST_SPECIAL for t in out[out.index(tk.MESSAGE) + 1 :])  # content: no markup


def test_analysis_content_cannot_end_as_answer_or_call():
    c = tool_choice_constraint("required", ("functions.f",), ENC)
    # The script opens analysis, then tries to end it with <|call|> and then write a final header.
    script = ScriptedTokens(ENC.encode("<|channel|>analysis<|message|>hm<|call|>", allowed_special="all"))
    out = generate([script, AfterHeader(ENC, "{}"), c])
    msgs = parse_completion(out, Role.ASSISTANT, ENC)
    assert [(m.channel, m.recipient) for m in msgs] == [("analysis", None), ("commentary", "functions.f")]
    assert msgs[0].text == "hm"


def test_none_turns_a_call_into_a_final_answer_without_markup():
    c = tool_choice_constraint("none", (), ENC)
    call = ENC.encode('<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"x": 1}<|call|>',
                      allowed_special="all")  # fmt: skip
    out = generate([ScriptedTokens(call), c])
    assert tk.CALL not in out and out[-1] == tk.RETURN
    msgs = parse_completion(out, Role.ASSISTANT, ENC)
    assert [(m.channel, m.recipient) for m in msgs] == [("final", None)]
    assert "<|" not in msgs[0].text


def test_refuses_an_empty_choice():
    with pytest.raises(ValueError):
        tool_choice_constraint("required", (), ENC)
