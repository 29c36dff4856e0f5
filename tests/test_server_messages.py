"""Anthropic's Messages API (`POST /v1/messages`, issue 29) through the official anthropic SDK, against a real
uvicorn on 127.0.0.1 around the tiny chat model, replies scripted as harmony (server_harness); raw httpx for
the error shapes and the headers. The server has an API key and `--model-alias claude-*`, as Claude Code
needs it."""

from __future__ import annotations

import json

import anthropic
import httpx
import jsonschema
import pytest

import mlx_oss
from mlx_oss.harmony import ReasoningEffort
from mlx_oss.server.messages import thinking_settings
from server_harness import MODEL_ID, Scripts, fresh, reply, running_server

KEY = "sekret-key"
MODEL = "claude-sonnet-4-5"  # served through the alias pattern claude-*
USER = [{"role": "user", "content": "What is the weather in Oslo?"}]
PARAMS = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 10}, "unit": {"enum": ["c", "f"]}},
          "required": ["city", "unit"], "additionalProperties": False}  # fmt: skip
WEATHER = {"name": "get_weather", "description": "Weather in a city", "input_schema": PARAMS}


@pytest.fixture(scope="module")
def served(tiny_chat_converted):
    model, tok = mlx_oss.load(tiny_chat_converted, dtype="float32")
    scripts = Scripts()
    with running_server(model, tok, scripts, max_context=2048, api_key=KEY, model_aliases=("claude-*",)) as (url, app):
        yield url, app, scripts, tok


@pytest.fixture
def srv(served):
    return fresh(served)


@pytest.fixture
def client(srv):
    return anthropic.Anthropic(base_url=srv[0][: -len("/v1")], api_key=KEY, max_retries=0, timeout=120)


def prompt_text(app, tok) -> str:
    return tok.decode(app.state.backend.engine.tokens)


def raw(srv, path: str, body: dict, **headers) -> httpx.Response:
    return httpx.post(srv[0] + path, json=body, headers={"x-api-key": KEY, **headers}, timeout=120)


def anthropic_error(r: httpx.Response, status: int, kind: str) -> str:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["type"] == "error" and body["error"]["type"] == kind, body
    return body["error"]["message"]


# ----------------------------------------------------------------------------- replies


def test_a_text_reply_with_thinking_and_usage(srv, client):
    url, app, scripts, tok = srv
    scripts.push(reply(tok, analysis="A greeting.", final="Hello there."))
    m = client.messages.create(model=MODEL, max_tokens=100, system="Be brief.", messages=[{"role": "user", "content": "Hi"}],
                               metadata={"user_id": "u1"})  # fmt: skip
    assert (m.type, m.role, m.model, m.stop_reason, m.stop_sequence) == ("message", "assistant", MODEL_ID, "end_turn", None)
    assert m.id.startswith("msg_")
    assert [b.type for b in m.content] == ["thinking", "text"]
    assert (m.content[0].thinking, m.content[1].text) == ("A greeting.", "Hello there.")
    assert app.state.stored.seal.open(m.content[0].signature) == "A greeting."
    assert "Be brief." in prompt_text(app, tok)
    u = m.usage
    assert u.output_tokens == len(reply(tok, analysis="A greeting.", final="Hello there."))
    assert u.cache_creation_input_tokens == 0 and u.cache_read_input_tokens >= 0
    counted = client.messages.count_tokens(model=MODEL, system="Be brief.", messages=[{"role": "user", "content": "Hi"}])
    assert counted.input_tokens == u.input_tokens + u.cache_read_input_tokens  # the whole prompt


def test_a_streamed_reply_sends_anthropics_events_in_order(srv, client):
    url, app, scripts, tok = srv
    scripts.push(reply(tok, analysis="Think about it.", final="Streamed answer."))
    events = list(client.messages.create(model=MODEL, max_tokens=100, messages=USER, stream=True))
    kinds = [e.type for e in events]
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    blocks = [e.content_block.type for e in events if e.type == "content_block_start"]
    assert blocks == ["thinking", "text"]
    assert kinds.count("content_block_stop") == 2
    deltas = {i: "" for i in range(2)}
    signature = None
    for e in events:
        if e.type == "content_block_delta":
            d = e.delta
            if d.type == "signature_delta":
                signature = d.signature
            else:
                deltas[e.index] += d.thinking if d.type == "thinking_delta" else d.text
    assert deltas == {0: "Think about it.", 1: "Streamed answer."}
    assert app.state.stored.seal.open(signature) == "Think about it."
    assert events[-2].delta.stop_reason == "end_turn" and events[-2].usage.output_tokens > 0
    # the SDK's own accumulation gives the same message
    scripts.push(reply(tok, analysis="Think about it.", final="Streamed answer."))
    with client.messages.stream(model=MODEL, max_tokens=100, messages=USER) as s:
        final = s.get_final_message()
    assert [(b.type, getattr(b, "thinking", None) or getattr(b, "text", None)) for b in final.content] == [
        ("thinking", "Think about it."), ("text", "Streamed answer.")]
    # the wire: each `event:` line names its JSON's type
    scripts.push(reply(tok, final="ok"))
    r = raw(srv, "/messages", {"model": MODEL, "max_tokens": 50, "messages": USER, "stream": True})
    frames = [f.split("\n") for f in r.text.split("\n\n") if f]
    assert all(f[0] == f"event: {json.loads(f[1][6:])['type']}" for f in frames)
    assert [f[0] for f in frames][:2] == ["event: message_start", "event: ping"]


def test_a_tool_loop_with_thinking_sent_back(srv, client):
    url, app, scripts, tok = srv
    scripts.push(reply(tok, analysis="Need the weather.", call=("get_weather", '{"city":"Oslo","unit":"c"}')))
    first = client.messages.create(model=MODEL, max_tokens=200, messages=USER, tools=[WEATHER])
    assert first.stop_reason == "tool_use"
    assert [b.type for b in first.content] == ["thinking", "tool_use"]
    call = first.content[1]
    assert call.id.startswith("toolu_") and call.name == "get_weather" and call.input == {"city": "Oslo", "unit": "c"}
    scripts.push(reply(tok, final="It is 21C in Oslo."))
    messages = [*USER, {"role": "assistant", "content": first.content},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id,
                                              "content": [{"type": "text", "text": "sunny, 21C"}]}]}]  # fmt: skip
    second = client.messages.create(model=MODEL, max_tokens=200, messages=messages, tools=[WEATHER])
    assert second.stop_reason == "end_turn" and second.content[-1].text == "It is 21C in Oslo."
    prompt = prompt_text(app, tok)
    assert "<|start|>functions.get_weather to=assistant<|channel|>commentary<|message|>sunny, 21C<|end|>" in prompt
    assert "<|channel|>analysis<|message|>Need the weather.<|end|>" in prompt  # kept: the call continues
    assert '<|constrain|>json<|message|>{"city":"Oslo","unit":"c"}<|call|>' in prompt
    assert second.usage.cache_read_input_tokens > 0  # the first request's state was reused
    counted = client.messages.count_tokens(model=MODEL, messages=messages, tools=[WEATHER])
    assert counted.input_tokens == second.usage.input_tokens + second.usage.cache_read_input_tokens
    # a signature that this server did not make is refused, naming the block
    tampered = [*USER, {"role": "assistant", "content": [{"type": "thinking", "thinking": "x", "signature": "forged"},
                                                         {"type": "tool_use", "id": call.id, "name": "get_weather",
                                                          "input": {}}]}, messages[2]]  # fmt: skip
    r = raw(srv, "/messages", {"model": MODEL, "max_tokens": 10, "messages": tampered})
    assert "messages[1].content[0].signature" in anthropic_error(r, 400, "invalid_request_error")


def test_tool_choice_any_makes_random_weights_call_a_tool(srv, client):
    strict = {**WEATHER, "strict": True}
    for _ in range(2):  # no script: the constraint alone makes the call (and its strict input)
        m = client.messages.create(model=MODEL, max_tokens=160, messages=USER, tools=[strict], tool_choice={"type": "any"},
                                   thinking={"type": "enabled", "budget_tokens": 8})  # fmt: skip
        assert m.stop_reason == "tool_use", m.content
        calls = [b for b in m.content if b.type == "tool_use"]
        assert len(calls) == 1 and calls[0].name == "get_weather"
        jsonschema.validate(calls[0].input, PARAMS)
    m = client.messages.create(model=MODEL, max_tokens=160, messages=USER, tools=[strict],
                               tool_choice={"type": "tool", "name": "get_weather"}, thinking={"type": "disabled"})  # fmt: skip
    assert m.stop_reason == "tool_use" and [b.type for b in m.content] == ["tool_use"]  # disabled: no thinking


def test_stop_sequences_and_max_tokens(srv, client):
    url, app, scripts, tok = srv
    scripts.push(reply(tok, final="one two STOP three"))
    m = client.messages.create(model=MODEL, max_tokens=100, messages=USER, stop_sequences=["NEVER", "STOP"])
    assert (m.stop_reason, m.stop_sequence, m.content[-1].text) == ("stop_sequence", "STOP", "one two ")
    scripts.push(reply(tok, final="a rather long answer that does not fit"))
    m = client.messages.create(model=MODEL, max_tokens=5, messages=USER)
    assert m.stop_reason == "max_tokens" and m.usage.output_tokens == 5
    scripts.push(reply(tok, final="a rather long answer that does not fit"))
    events = list(client.messages.create(model=MODEL, max_tokens=5, messages=USER, stream=True))
    assert events[-2].delta.stop_reason == "max_tokens"


# ----------------------------------------------------------------------------- errors and settings


def test_errors_in_anthropics_shape(srv, client):
    r = raw(srv, "/messages", {"model": MODEL, "messages": USER})
    assert "max_tokens" in anthropic_error(r, 400, "invalid_request_error")
    image = [{"role": "user", "content": [{"type": "text", "text": "look"}, {"type": "image", "source": {}}]}]
    r = raw(srv, "/messages", {"model": MODEL, "max_tokens": 10, "messages": image})
    assert "messages[0].content[1].type" in anthropic_error(r, 400, "invalid_request_error")
    r = raw(srv, "/messages/count_tokens", {"model": MODEL, "messages": image})
    assert "messages[0].content[1].type" in anthropic_error(r, 400, "invalid_request_error")
    orphan = [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_x", "content": "?"}]}]
    r = raw(srv, "/messages", {"model": MODEL, "max_tokens": 10, "messages": orphan})
    assert "messages[0].content[0].tool_use_id" in anthropic_error(r, 400, "invalid_request_error")
    r = raw(srv, "/messages", {"model": "gpt-4o", "max_tokens": 10, "messages": USER})
    anthropic_error(r, 404, "not_found_error")
    for headers in ({"x-api-key": "wrong"}, {"x-api-key": "", "Authorization": "Bearer wrong"}, {"x-api-key": ""}):
        r = raw(srv, "/messages", {"model": MODEL, "max_tokens": 10, "messages": USER}, **headers)
        anthropic_error(r, 401, "authentication_error")
    r = raw(srv, "/messages/count_tokens", {"model": MODEL, "messages": USER}, **{"x-api-key": "", "Authorization": f"Bearer {KEY}"})
    assert r.status_code == 200 and r.json()["input_tokens"] > 0
    with pytest.raises(anthropic.AuthenticationError):
        anthropic.Anthropic(base_url=srv[0][:-3], api_key="wrong", max_retries=0).messages.create(
            model=MODEL, max_tokens=10, messages=USER)
    with pytest.raises(anthropic.BadRequestError) as e:
        client.messages.create(model=MODEL, max_tokens=10, messages=USER, tool_choice={"type": "any"})
    assert e.value.body["error"]["type"] == "invalid_request_error"


def test_thinking_settings_rule():
    assert thinking_settings(None) == (ReasoningEffort.MEDIUM, None)
    assert thinking_settings({"type": "adaptive"}) == (ReasoningEffort.MEDIUM, None)
    assert thinking_settings({"type": "adaptive"}, {"effort": "low"}) == (ReasoningEffort.LOW, None)
    assert thinking_settings(None, {"effort": "max"}) == (ReasoningEffort.HIGH, None)
    assert thinking_settings({"type": "enabled", "budget_tokens": 16000}, {"effort": "low"}) == (ReasoningEffort.LOW, 16000)
    assert thinking_settings({"type": "disabled"}, {"effort": "high"}) == (ReasoningEffort.LOW, 0)
    assert thinking_settings({"type": "disabled"}) == (ReasoningEffort.LOW, 0)
    assert thinking_settings({"type": "enabled", "budget_tokens": 1024}) == (ReasoningEffort.LOW, 1024)
    assert thinking_settings({"type": "enabled", "budget_tokens": 4000}) == (ReasoningEffort.MEDIUM, 4000)
    assert thinking_settings({"type": "enabled", "budget_tokens": 16000}) == (ReasoningEffort.HIGH, 16000)


# ----------------------------------------------------------------------------- what Claude Code sends (2.1.337)


def _render(app, tok, body: dict) -> str:
    """The prompt a Messages body renders (count_tokens' path, no generation)."""
    from mlx_oss.server.messages import parse_request

    backend = app.state.backend
    req = parse_request(body, backend.sampling(body), app.state.stored.seal)
    return tok.decode(req.turn.render(tok)[0])


def test_system_messages_render_in_place_and_the_billing_header_is_left_out(srv, client):
    """Claude Code's `system` messages inside `messages` are developer messages where they stand (so the
    prefix before them stays cached); its billing-header system block is not instructions."""
    url, app, scripts, tok = srv
    system = [{"type": "text", "text": "x-anthropic-billing-header: cc_version=2.1.337.933; cc_entrypoint=sdk-cli;"},
              {"type": "text", "text": "You are an agent.", "cache_control": {"type": "ephemeral"}}]  # fmt: skip
    messages = [{"role": "user", "content": [{"type": "text", "text": "<system-reminder>r</system-reminder>"},
                                             {"type": "text", "text": "Run it."}]},
                {"role": "system", "content": [{"type": "text", "text": "# Environment\ncwd: /w"}]}]  # fmt: skip
    text = _render(app, tok, {"model": MODEL, "system": system, "messages": messages})
    assert "billing" not in text and "<|start|>developer<|message|># Instructions\n\nYou are an agent.<|end|>" in text
    assert text.endswith("<|start|>user<|message|><system-reminder>r</system-reminder>Run it.<|end|>"
                         "<|start|>developer<|message|># Instructions\n\n# Environment\ncwd: /w<|end|>"
                         "<|start|>assistant")  # fmt: skip
    scripts.push(reply(tok, final="ok"))
    m = client.messages.create(model=MODEL, max_tokens=20, system=system, messages=messages)
    assert m.content[-1].text == "ok" and prompt_text(app, tok).startswith(text)
    bad = [*messages, {"role": "system", "content": [{"type": "image", "source": {}}]}]
    r = raw(srv, "/messages", {"model": MODEL, "max_tokens": 10, "messages": bad})
    assert "messages[2].content[0].type" in anthropic_error(r, 400, "invalid_request_error")
    r = raw(srv, "/messages", {"model": MODEL, "max_tokens": 10, "messages": [*messages, {"role": "tool", "content": "x"}]})
    assert "messages[2].role" in anthropic_error(r, 400, "invalid_request_error")


def test_adaptive_thinking_with_output_config_effort(srv, client):
    url, app, scripts, tok = srv
    for effort, level in (("low", "low"), ("medium", "medium"), ("high", "high"), ("max", "high")):
        body = {"model": MODEL, "messages": USER, "thinking": {"type": "adaptive"}, "output_config": {"effort": effort}}
        assert f"Reasoning: {level}" in _render(app, tok, body)
    r = raw(srv, "/messages", {"model": MODEL, "max_tokens": 10, "messages": USER, "output_config": {"effort": "huge"}})
    assert "output_config.effort" in anthropic_error(r, 400, "invalid_request_error")
    r = raw(srv, "/messages", {"model": MODEL, "max_tokens": 10, "messages": USER, "thinking": {"type": "sometimes"}})
    assert "thinking.type" in anthropic_error(r, 400, "invalid_request_error")
    r = raw(srv, "/messages", {"model": MODEL, "max_tokens": 10, "messages": USER, "temperature": 1.5})
    assert "temperature" in anthropic_error(r, 400, "invalid_request_error")  # Anthropic's range is 0..1
    r = raw(srv, "/messages", {"model": MODEL, "max_tokens": 10, "messages": USER, "tools": [{"input_schema": {}}]})
    assert anthropic_error(r, 400, "invalid_request_error") == "'tools[0].name' is required"  # not a KeyError later


def test_omitted_thinking_comes_back_empty_with_a_signature_that_carries_it(srv, client):
    """`thinking.display: "omitted"` (Claude Code's default): no thinking text in the reply or the stream,
    but the signature seals it, so sent back with the call it is rendered as the model wrote it."""
    url, app, scripts, tok = srv
    omitted = {"type": "adaptive", "display": "omitted"}
    scripts.push(reply(tok, analysis="Need the weather.", call=("get_weather", '{"city":"Oslo","unit":"c"}')))
    first = client.messages.create(model=MODEL, max_tokens=200, messages=USER, tools=[WEATHER], extra_body={"thinking": omitted})
    thinking, call = first.content
    assert (thinking.type, thinking.thinking) == ("thinking", "") and app.state.stored.seal.open(thinking.signature) == "Need the weather."
    scripts.push(reply(tok, analysis="Need the weather.", call=("get_weather", '{"city":"Oslo","unit":"c"}')))
    events = list(client.messages.create(model=MODEL, max_tokens=200, messages=USER, tools=[WEATHER], stream=True,
                                         extra_body={"thinking": omitted}))  # fmt: skip
    deltas = [e.delta.type for e in events if e.type == "content_block_delta"]
    assert "thinking_delta" not in deltas and "signature_delta" in deltas and "input_json_delta" in deltas
    scripts.push(reply(tok, final="21C."))
    messages = [*USER, {"role": "assistant", "content": first.content},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "21C"}]}]  # fmt: skip
    client.messages.create(model=MODEL, max_tokens=50, messages=messages, tools=[WEATHER], extra_body={"thinking": omitted})
    assert "<|channel|>analysis<|message|>Need the weather.<|end|>" in prompt_text(app, tok)
    for display in ("summarized", "updates"):  # "updates": what interactive Claude Code 2.1.337 sends
        scripts.push(reply(tok, analysis="Shown.", final="ok"))
        m = client.messages.create(model=MODEL, max_tokens=50, messages=USER,
                                   extra_body={"thinking": {"type": "adaptive", "display": display}})  # fmt: skip
        assert m.content[0].thinking == "Shown."


def test_deferred_tools_are_not_in_the_prompt(srv):
    url, app, scripts, tok = srv
    deferred = {"name": "DeferredToolPlaceholder", "description": "loaded by tool search", "defer_loading": True,
                "input_schema": {"type": "object"}}  # fmt: skip
    with_it = _render(app, tok, {"model": MODEL, "messages": USER, "tools": [WEATHER, deferred]})
    assert with_it == _render(app, tok, {"model": MODEL, "messages": USER, "tools": [WEATHER]})
    assert "get_weather" in with_it and "DeferredToolPlaceholder" not in with_it


@pytest.mark.parametrize("where", ["output_config", "output_format"])
def test_output_format_is_enforced_on_random_weights(srv, client, where):
    """Anthropic's structured outputs: the answer follows the schema because the grammar makes it, with
    nothing scripted (a random-weight model writes no JSON by itself)."""
    fmt = {"type": "json_schema", "schema": PARAMS}
    body = {"output_config": {"format": fmt}} if where == "output_config" else {"output_format": fmt}
    for _ in range(2):
        m = client.messages.create(model=MODEL, max_tokens=300, messages=USER, thinking={"type": "enabled", "budget_tokens": 8},
                                   extra_body=body)  # fmt: skip
        assert m.stop_reason == "end_turn", m.content
        jsonschema.validate(json.loads(m.content[-1].text), PARAMS)
    param = "output_config.format" if where == "output_config" else "output_format"
    bad = {"output_config": {"format": {"type": "json_object"}}} if where == "output_config" else {"output_format": {"type": "json_object"}}
    r = raw(srv, "/messages", {"model": MODEL, "max_tokens": 10, "messages": USER, **bad})
    assert f"{param}.type" in anthropic_error(r, 400, "invalid_request_error")
    unenforceable = {"type": "json_schema", "schema": {"type": "object", "not": {"required": ["a"]}}}
    bad = {"output_config": {"format": unenforceable}} if where == "output_config" else {"output_format": unenforceable}
    r = raw(srv, "/messages", {"model": MODEL, "max_tokens": 10, "messages": USER, **bad})
    assert f"{param}.schema" in anthropic_error(r, 400, "invalid_request_error")


def test_models_in_both_sdks_shapes(srv, client):
    """`/v1/models` answers the anthropic SDK (x-api-key) and the openai SDK (Bearer) alike."""
    import openai

    page = client.models.list()
    assert [m.id for m in page.data] == [MODEL_ID] and page.has_more is False and page.first_id == MODEL_ID
    info = client.models.retrieve(MODEL_ID)
    assert (info.type, info.display_name) == ("model", MODEL_ID) and info.created_at.year >= 2026
    oai = openai.OpenAI(base_url=srv[0], api_key=KEY, max_retries=0)
    assert [(m.id, m.owned_by) for m in oai.models.list().data] == [(MODEL_ID, "mlx-oss")]
    assert httpx.get(srv[0] + "/models", headers={"x-api-key": "wrong"}, timeout=30).status_code == 401
    assert httpx.get(srv[0] + "/models", timeout=30).status_code == 401


def test_the_printed_claude_code_settings_warn_below_its_compaction_floor():
    """Claude Code reads an auto-compact window under 100k as 100k (it says so at start, 2.1.337), so with a
    smaller server context it would send more than the server takes before it compacts: the printout says so."""
    from mlx_oss.server.settings import CLAUDE_CODE_MIN_WINDOW, client_settings

    title = lambda ctx: next(line for line in client_settings("http://h:1/v1", "m", False, ctx).splitlines()  # noqa: E731
                             if line.startswith("Claude Code "))  # fmt: skip
    assert title(CLAUDE_CODE_MIN_WINDOW) == "Claude Code 2.1.337:"
    assert "--max-context 100000 or more" in title(CLAUDE_CODE_MIN_WINDOW - 1)
    assert "CLAUDE_CODE_AUTO_COMPACT_WINDOW=32768 \\" in client_settings("http://h:1/v1", "m", False, 32768)


def test_the_docs_show_the_claude_code_settings_serve_prints():
    """docs/CLIENTS.md shows the variables `mlx-oss serve --model openai/gpt-oss-20b` prints for Claude Code,
    without a key (the README's block: tests/clients/test_client_claude.py); with a key, the token is the
    variable that holds it."""
    import re
    from pathlib import Path

    from mlx_oss.server.settings import KEY_ENV, claude_code_env, client_settings

    root = Path(__file__).resolve().parents[1]
    printed = client_settings("http://127.0.0.1:8000/v1", "gpt-oss-20b", False, 131072)
    lines = [line.strip() for line in printed.splitlines() if re.match(r"\s+[A-Z_]+=", line)]
    block = re.search(r"```sh\n(ANTHROPIC_BASE_URL=.*?)claude\n```", (root / "docs/CLIENTS.md").read_text(), re.S).group(1)
    assert block.splitlines() == lines
    with_key = claude_code_env("http://127.0.0.1:8000/v1", "m", True, 131072)
    assert with_key["ANTHROPIC_AUTH_TOKEN"] == f"${KEY_ENV}" == "$MLX_OSS_API_KEY"
    assert {k: v for k, v in with_key.items() if k != "ANTHROPIC_AUTH_TOKEN"} == {
        k: v for k, v in claude_code_env("http://127.0.0.1:8000/v1", "m", False, 131072).items() if k != "ANTHROPIC_AUTH_TOKEN"}


# ----------------------------------------------------------------------------- what a schema cannot say


CALL = {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Oslo", "unit": "c"}}]}


@pytest.mark.parametrize(
    "extra, message",
    [
        ({"thinking": {"type": "enabled"}}, "thinking.budget_tokens: thinking of type 'enabled' needs 'budget_tokens'"),
        ({"thinking": {"type": "maybe"}}, "thinking.type must be 'enabled', 'adaptive' or 'disabled', not 'maybe'"),
        ({"messages": [*USER, {"role": "assistant", "content": [{"type": "tool_use", "name": "f", "input": {}}]}]},
         "messages[1].content[0] needs an 'id' and a 'name'"),
        ({"messages": [*USER, {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "input": {}}]}]},
         "messages[1].content[0] needs an 'id' and a 'name'"),
        ({"messages": [*USER, {"role": "assistant", "content": [{"type": "image", "source": {}}]}]},
         "messages[1].content[0].type 'image' is not supported in an assistant message (supported: thinking, text, tool_use)"),
        ({"messages": [{"role": "user", "content": []}, {"role": "system", "content": ""}]}, "'messages' holds no content"),
        ({"tools": [WEATHER], "tool_choice": {"type": "tool"}}, "tool_choice.name: tool_choice of type 'tool' needs a 'name'"),
        ({"tools": [WEATHER], "tool_choice": {"type": "sometimes"}}, "tool_choice.type must be auto, any, tool or none, not 'sometimes'"),
    ],
)  # fmt: skip
def test_what_the_schema_lets_through_is_refused_by_name(srv, extra, message):
    """Each a 400 in Anthropic's shape whose one line names the field, on both endpoints."""
    body = {"model": MODEL, "messages": USER, **extra}
    assert anthropic_error(raw(srv, "/messages", {**body, "max_tokens": 10}), 400, "invalid_request_error") == message
    assert anthropic_error(raw(srv, "/messages/count_tokens", body), 400, "invalid_request_error") == message


def test_tool_results_text_and_unsigned_thinking_render_as_sent(srv):
    """A tool_result marked `is_error` reads "Error: ..." to the model; an assistant's text beside its tool_use
    is commentary (a preamble), alone it is the final answer; a thinking block without a signature (a client
    that kept the text only) is the call's analysis as written."""
    url, app, scripts, tok = srv
    asked = {"role": "assistant", "content": [{"type": "thinking", "thinking": "Need the weather."},
                                              {"type": "text", "text": "Checking."}, *CALL["content"]]}  # fmt: skip
    failed = {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "is_error": True,
                                           "content": [{"type": "text", "text": "timeout"}]}]}  # fmt: skip
    text = _render(app, tok, {"model": MODEL, "tools": [WEATHER], "messages": [*USER, asked, failed]})
    assert text.endswith("<|start|>assistant<|channel|>analysis<|message|>Need the weather.<|end|>"
                         "<|start|>assistant<|channel|>commentary<|message|>Checking.<|end|>"
                         '<|start|>assistant to=functions.get_weather<|channel|>commentary <|constrain|>json<|message|>{"city":"Oslo","unit":"c"}<|call|>'
                         "<|start|>functions.get_weather to=assistant<|channel|>commentary<|message|>Error: timeout<|end|>"
                         "<|start|>assistant")  # fmt: skip
    ok = {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "12 C"}]}
    answer = {"role": "assistant", "content": "It is 12 C."}
    forged = {"role": "assistant", "content": [{"type": "thinking", "thinking": "x", "signature": "mlxoss-r1.forged"}, *CALL["content"]]}
    r = raw(srv, "/messages", {"model": MODEL, "max_tokens": 10, "tools": [WEATHER], "messages": [*USER, forged]})
    assert anthropic_error(r, 400, "invalid_request_error") == (
        "messages[1].content[0].signature was not made by this server, or was altered (thinking is sent back with "
        "the signature this server gave it)")  # fmt: skip
    blank = {"role": "assistant", "content": [{"type": "thinking", "thinking": ""}, *CALL["content"]]}
    text = _render(app, tok, {"model": MODEL, "tools": [WEATHER], "messages": [*USER, blank, ok]})
    assert "<|channel|>analysis" not in text  # a thinking block with nothing in it is no analysis
    text = _render(app, tok, {"model": MODEL, "tools": [WEATHER], "messages": [*USER, CALL, ok, answer, *USER]})
    assert "<|message|>12 C<|end|>" in text and "<|start|>assistant<|channel|>final<|message|>It is 12 C.<|end|>" in text


def test_server_tools_are_left_out_with_a_warning(srv, caplog):
    url, app, scripts, tok = srv
    tools = [{"type": "web_search_20250305", "name": "web_search"}, WEATHER, {"type": "bash_20250124", "name": "bash"}]
    with caplog.at_level("WARNING", logger="mlx_oss.server"):
        text = _render(app, tok, {"model": MODEL, "tools": tools, "messages": USER})
    assert "get_weather" in text and "web_search" not in text and "bash" not in text
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
        "Anthropic server tools this server does not run, left out of the prompt: tools[0] 'web_search_20250305', "
        "tools[2] 'bash_20250124'"]  # fmt: skip


def test_tool_choice_and_top_k_reach_the_turn(srv):
    from mlx_oss.server.messages import parse_request

    url, app, scripts, tok = srv
    backend, seal = app.state.backend, app.state.stored.seal

    def turn(**extra):
        body = {"model": MODEL, "messages": USER, "tools": [WEATHER], **extra}
        return parse_request(body, backend.sampling(body), seal).turn

    assert turn().tool_choice == turn(tool_choice={"type": "auto"}).tool_choice
    assert turn(tool_choice={"type": "none"}).tool_choice.mode == "none"
    assert turn(tool_choice={"type": "any"}).tool_choice.mode == "required"
    assert turn(tool_choice={"type": "tool", "name": "get_weather"}).tool_choice.recipients == ("functions.get_weather",)
    assert turn(top_k=7).sampling.top_k == 7 and turn().sampling.top_k == backend.sampling({}).top_k


def test_the_builder_shows_only_anthropic_blocks_and_reads_arguments_as_an_object():
    """A built-in tool's call (the server runs it) is no block of the reply, nor are its deltas; an empty
    delta sends nothing; a call whose arguments are not a JSON object has the input {}; before the end the
    usage is the prompt's alone."""
    from mlx_oss.server.generation import BROWSER_CALL, FUNCTION_CALL, MESSAGE, Finished, ItemDelta, ItemDone, ItemStarted, Usage
    from mlx_oss.server.messages import MessageBuilder
    from mlx_oss.server.responses import ReasoningSeal

    b = MessageBuilder("m", ReasoningSeal(), prompt_tokens=12)
    before = {"input_tokens": 12, "output_tokens": 0, "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0}
    assert b.start() == [("message_start", {"type": "message_start", "message": {
        "id": b.id, "type": "message", "role": "assistant", "model": "m", "content": [], "stop_reason": None,
        "stop_sequence": None, "usage": before}}), ("ping", {"type": "ping"})]  # fmt: skip
    assert b.end() == [("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                                          "usage": before}), ("message_stop", {"type": "message_stop"})]  # fmt: skip
    assert b.feed(ItemStarted(BROWSER_CALL, "browser.search")) == []
    assert b.feed(ItemDelta('{"query": "x"}')) == [] and b.feed(ItemDone(BROWSER_CALL, '{"query": "x"}')) == []
    assert b.feed(ItemDelta("stray")) == [] and b.feed(object()) == []
    assert b.content == []
    (start,) = b.feed(ItemStarted(MESSAGE))
    assert start[1]["index"] == 0 and b.feed(ItemDelta("")) == [] and b.feed(object()) == []
    b.feed(ItemDelta("Hi"))
    b.feed(ItemDone(MESSAGE, "Hi"))
    assert b.message()["usage"] == {"input_tokens": 12, "output_tokens": 0, "cache_read_input_tokens": 0,
                                    "cache_creation_input_tokens": 0}  # fmt: skip
    assert b.message()["stop_reason"] == "end_turn" and b.end()[0][1]["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    for raw_args in ("[1, 2]", "not json", "  "):
        b.feed(ItemStarted(FUNCTION_CALL, "f"))
        b.feed(ItemDelta(raw_args))
        b.feed(ItemDone(FUNCTION_CALL, raw_args, "f"))
        assert b.content[-1]["input"] == {}
    b.feed(Finished(Usage(prompt_tokens=12, cached_tokens=4, completion_tokens=9), "tool_call"))
    assert b.message()["usage"] == {"input_tokens": 8, "output_tokens": 9, "cache_read_input_tokens": 4,
                                    "cache_creation_input_tokens": 0}  # fmt: skip
    assert b.message()["stop_reason"] == "tool_use" and [c["type"] for c in b.message()["content"]] == ["text"] + ["tool_use"] * 3
    b.feed(Finished(Usage(prompt_tokens=12, completion_tokens=3), "stop", stop_sequence="END"))
    assert b.end()[0][1]["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": "END"}
