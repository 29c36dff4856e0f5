"""`mlx-oss serve`: tool_choice forcing, logprobs, disconnect-cancel without streaming, malformed
harmony. A real uvicorn on 127.0.0.1 (server_harness), the openai SDK or a plain HTTP client."""

from __future__ import annotations

import json
import socket
import time

import httpx
import openai
import pytest

import mlx_oss
from mlx_oss import tokenizer as tk
from server_harness import MODEL_ID, AfterHeader, Gate, Scripts, reply, running_server

USER = [{"role": "user", "content": "Weather in Paris?"}]


def _tool(name):
    return {"type": "function", "function": {"name": name, "description": f"the {name} tool", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}  # fmt: skip


TOOLS = [_tool("get_weather"), _tool("get_time")]
TOOLS_R = [{"type": "function", **t["function"]} for t in TOOLS]
MARKUP = ("<|channel|>", "<|message|>", "<|end|>", "<|call|>", "<|start|>", "<|return|>", "<|constrain|>")


@pytest.fixture(scope="module")
def served(tiny_chat_converted):
    model, tok = mlx_oss.load(tiny_chat_converted, dtype="float32")
    scripts = Scripts()
    with running_server(model, tok, scripts, max_context=1024) as (url, app):
        yield url, app, scripts, tok


@pytest.fixture
def srv(served):
    url, app, scripts, tok = served
    scripts.queue.clear()
    _wait_idle(app)
    return served


@pytest.fixture
def client(srv):
    return openai.OpenAI(base_url=srv[0], api_key="unused", max_retries=0, timeout=120)


def _wait_idle(app, timeout=60.0) -> None:
    w = app.state.backend.worker
    deadline = time.monotonic() + timeout
    while w.busy or w.waiting:
        assert time.monotonic() < deadline, "the generation worker did not become idle"
        time.sleep(0.02)


def _final_then_args(scripts, tok, args='{"city": "Paris"}'):
    """The model 'tries' to answer in final; AfterHeader writes arguments if a call header is forced."""
    scripts.push(reply(tok, final="Sunny."), AfterHeader(tok, args))


# ----------------------------------------------------------------------------- tool_choice


def test_chat_named_tool_choice_forces_that_call(srv, client):
    url, app, scripts, tok = srv
    _final_then_args(scripts, tok)
    r = client.chat.completions.create(model=MODEL_ID, messages=USER, tools=TOOLS, max_tokens=60,
                                       tool_choice={"type": "function", "function": {"name": "get_time"}})
    ch = r.choices[0]
    assert ch.finish_reason == "tool_calls" and not ch.message.content
    [call] = ch.message.tool_calls
    assert call.function.name == "get_time" and json.loads(call.function.arguments) == {"city": "Paris"}
    # Both tools are still described (the prompt is the same whatever the choice).
    prompt = tok.decode(app.state.backend.engine.tokens)
    assert "type get_weather" in prompt and "type get_time" in prompt
    # The same script without a choice answers in final: the constraint is what made the call.
    _final_then_args(scripts, tok)
    r = client.chat.completions.create(model=MODEL_ID, messages=USER, tools=TOOLS, max_tokens=60)
    assert r.choices[0].message.content == "Sunny." and not r.choices[0].message.tool_calls


def test_chat_required_stream_and_none(srv, client):
    url, app, scripts, tok = srv
    _final_then_args(scripts, tok, '{"city": "Oslo"}')
    stream = client.chat.completions.create(model=MODEL_ID, messages=USER, tools=TOOLS, tool_choice="required",
                                            max_tokens=60, stream=True)  # fmt: skip
    name, args, finish, content = None, "", None, ""
    for chunk in stream:
        for c in chunk.choices:
            content += c.delta.content or ""
            for tc in c.delta.tool_calls or []:
                name = (tc.function.name if tc.function else None) or name
                args += (tc.function.arguments or "") if tc.function else ""
            finish = c.finish_reason or finish
    assert name in ("get_weather", "get_time") and json.loads(args) == {"city": "Oslo"}
    assert finish == "tool_calls" and content == ""
    # none: a scripted call becomes a final answer, with no markup in it.
    scripts.push(reply(tok, call=("get_weather", '{"city": "Paris"}')))
    r = client.chat.completions.create(model=MODEL_ID, messages=USER, tools=TOOLS, tool_choice="none", max_tokens=60)
    m = r.choices[0].message
    assert not m.tool_calls and r.choices[0].finish_reason == "stop"
    assert m.content and not any(s in m.content for s in MARKUP)


def test_responses_named_tool_choice_forces_that_call(srv, client):
    url, app, scripts, tok = srv
    _final_then_args(scripts, tok)
    r = client.responses.create(model=MODEL_ID, input="Weather in Paris?", tools=TOOLS_R, max_output_tokens=60,
                                tool_choice={"type": "function", "name": "get_weather"})
    calls = [o for o in r.output if o.type == "function_call"]
    assert [c.name for c in calls] == ["get_weather"] and json.loads(calls[0].arguments) == {"city": "Paris"}
    assert not [o for o in r.output if o.type == "message"] and r.status == "completed"


def test_required_without_function_tools_is_400(srv):
    r = httpx.post(srv[0] + "/chat/completions", timeout=60,
                   json={"model": MODEL_ID, "messages": USER, "tool_choice": "required"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "tool_choice"
