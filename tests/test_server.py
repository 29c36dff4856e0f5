"""`mlx-oss serve` end to end: a real uvicorn on 127.0.0.1 driven by the official openai SDK (and a
plain HTTP client for framing and bad input). Replies are scripted harmony (see server_harness);
rendering, cache reuse, parsing and the API translation are the real code."""

from __future__ import annotations

import json
import threading
import time

import httpx
import openai
import pytest

import mlx_oss
from mlx_oss import tokenizer as tk
from server_harness import MODEL_ID, Gate, Scripts, fresh, reply, running_server

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
WEATHER_R = {"type": "function", **WEATHER["function"]}  # the Responses API's flat shape


@pytest.fixture(scope="module")
def model_tok(tiny_chat_converted):
    return mlx_oss.load(tiny_chat_converted, dtype="float32")


@pytest.fixture(scope="module")
def served(model_tok):
    model, tok = model_tok
    scripts = Scripts()
    with running_server(model, tok, scripts, max_context=1024, max_queue=1, body_limit=256 << 10) as (url, app):
        yield url, app, scripts, tok


@pytest.fixture
def srv(served):
    return fresh(served)


@pytest.fixture
def client(srv):
    return openai.OpenAI(base_url=srv[0], api_key="unused", max_retries=0, timeout=120)


def _prompt_text(app, tok) -> str:
    return tok.decode(app.state.backend.engine.tokens)


# ----------------------------------------------------------------------------- chat completions


def test_chat_reasoning_and_answer_separated(srv, client):
    url, app, scripts, tok = srv
    scripts.push(reply(tok, analysis="Let me think.", final="Hello there!"))
    r = client.chat.completions.create(model=MODEL_ID, messages=[{"role": "user", "content": "hi"}])
    m = r.choices[0].message
    assert m.content == "Hello there!"
    assert m.reasoning == m.reasoning_content == "Let me think."
    assert r.choices[0].finish_reason == "stop"
    assert "<|" not in m.content
    u = r.usage
    assert u.completion_tokens == len(reply(tok, analysis="Let me think.", final="Hello there!"))
    assert u.completion_tokens_details.reasoning_tokens == len(tok.encode("Let me think."))
    assert u.prompt_tokens == len(app.state.backend.engine.tokens) - u.completion_tokens


def test_chat_stream_and_cached_tokens_grow(srv, client):
    url, app, scripts, tok = srv
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "first question"}]
    cached, prompts = [], []
    for i in range(3):
        scripts.push(reply(tok, analysis=f"thinking {i}", final=f"answer {i}"))
        stream = client.chat.completions.create(model=MODEL_ID, messages=msgs, stream=True,
                                                stream_options={"include_usage": True})
        content, reasoning, finish, usage = "", "", None, None
        for ch in stream:
            if ch.usage is not None:
                usage = ch.usage
            for c in ch.choices:
                content += c.delta.content or ""
                reasoning += getattr(c.delta, "reasoning", None) or ""
                assert getattr(c.delta, "reasoning", None) == getattr(c.delta, "reasoning_content", None)
                finish = c.finish_reason or finish
        assert (content, reasoning, finish) == (f"answer {i}", f"thinking {i}", "stop")
        cached.append(usage.prompt_tokens_details.cached_tokens)
        prompts.append(usage.prompt_tokens)
        # The client resends everything, reasoning included: harmony drops it (an answered turn).
        msgs += [{"role": "assistant", "content": content, "reasoning_content": reasoning},
                 {"role": "user", "content": f"question {i + 2}"}]
    assert cached[1] > cached[0] and cached[2] > cached[1]
    assert cached[2] == prompts[1]  # turn 3 reuses turn 2's whole prompt: only the new part is prefilled
    text = _prompt_text(app, tok)
    assert "thinking 0" not in text and "thinking 1" not in text  # sent-back reasoning of answered turns dropped
    assert "# Instructions\n\nBe brief." in text


def test_chat_function_call_round_trip(srv, client):
    url, app, scripts, tok = srv
    scripts.push(reply(tok, analysis="Need the weather tool.", call=("get_weather", '{"city": "Paris"}')))
    msgs = [{"role": "user", "content": "Weather in Paris?"}]
    r = client.chat.completions.create(model=MODEL_ID, messages=msgs, tools=[WEATHER])
    ch = r.choices[0]
    assert ch.finish_reason == "tool_calls"
    call = ch.message.tool_calls[0]
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
    assert call.id.startswith("call_")
    scripts.push(reply(tok, final="It is sunny in Paris."))
    msgs += [
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()], "thinking": ch.message.reasoning},
        {"role": "tool", "tool_call_id": call.id, "content": '{"sky": "sunny"}'},
    ]
    r2 = client.chat.completions.create(model=MODEL_ID, messages=msgs, tools=[WEATHER])
    assert r2.choices[0].message.content == "It is sunny in Paris."
    text = _prompt_text(app, tok)
    # Continuing the tool call: the reasoning sent back is kept as analysis, the result is addressed right.
    assert "<|channel|>analysis<|message|>Need the weather tool.<|end|>" in text
    assert 'functions.get_weather to=assistant<|channel|>commentary<|message|>{"sky": "sunny"}<|end|>' in text
    assert r2.usage.prompt_tokens_details.cached_tokens > 0


def test_chat_stream_tool_call_deltas(srv, client):
    url, app, scripts, tok = srv
    scripts.push(reply(tok, call=("get_weather", '{"city": "Oslo"}')))
    stream = client.chat.completions.create(model=MODEL_ID, messages=[{"role": "user", "content": "Oslo?"}],
                                            tools=[WEATHER], stream=True)
    name, args, ids, finish = None, "", set(), None
    for ch in stream:
        for c in ch.choices:
            for tc in c.delta.tool_calls or []:
                assert tc.index == 0
                if tc.id:
                    ids.add(tc.id)
                if tc.function and tc.function.name:
                    name = tc.function.name
                args += (tc.function.arguments or "") if tc.function else ""
            finish = c.finish_reason or finish
    assert (name, json.loads(args), len(ids), finish) == ("get_weather", {"city": "Oslo"}, 1, "tool_calls")


def test_chat_structured_output_and_effort(srv, client):
    url, app, scripts, tok = srv
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    scripts.push(reply(tok, final='{"n": 3}'))
    r = client.chat.completions.create(
        model=MODEL_ID, messages=[{"role": "user", "content": "three"}], reasoning_effort="minimal",
        response_format={"type": "json_schema", "json_schema": {"name": "count", "schema": schema}},
    )
    assert json.loads(r.choices[0].message.content) == {"n": 3}
    text = _prompt_text(app, tok)
    assert "# Response Formats\n\n## count\n\n" + json.dumps(schema, separators=(",", ":")) in text
    assert "Reasoning: low" in text  # minimal -> low


def test_chat_stop_strings_and_max_tokens(srv, client):
    url, app, scripts, tok = srv
    scripts.push(reply(tok, final="one two STOP three"))
    r = client.chat.completions.create(model=MODEL_ID, messages=[{"role": "user", "content": "count"}], stop=["STOP"])
    assert r.choices[0].message.content == "one two " and r.choices[0].finish_reason == "stop"
    scripts.push(reply(tok, final="a b c d e f g h"))
    r = client.chat.completions.create(model=MODEL_ID, messages=[{"role": "user", "content": "count"}], max_tokens=6)
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 6


def test_models_and_health(srv, client):
    assert [m.id for m in client.models.list().data] == [MODEL_ID]
    h = httpx.get(srv[0].rsplit("/v1", 1)[0] + "/health", timeout=30).json()
    assert h["status"] == "ok"


# ----------------------------------------------------------------------------- responses


def test_responses_text_reasoning_and_usage(srv, client):
    url, app, scripts, tok = srv
    scripts.push(reply(tok, analysis="Plan.", final="Done."))
    r = client.responses.create(model=MODEL_ID, input="hi", instructions="Be kind.", reasoning={"effort": "high"})
    assert r.status == "completed" and r.output_text == "Done."
    assert [o.type for o in r.output] == ["reasoning", "message"]
    assert r.output[0].content[0].text == "Plan."
    assert r.usage.output_tokens_details.reasoning_tokens == len(tok.encode("Plan."))
    text = _prompt_text(app, tok)
    assert "Reasoning: high" in text and "# Instructions\n\nBe kind." in text


def test_responses_stream_event_sequence(srv, client):
    url, app, scripts, tok = srv
    scripts.push(reply(tok, analysis="Hmm", call=("get_weather", '{"city":"Rome"}')))
    with client.responses.stream(model=MODEL_ID, input="Rome?", tools=[WEATHER_R]) as stream:
        events = list(stream)
        final = stream.get_final_response()
    types = [e.type for e in events]
    collapsed = [t for i, t in enumerate(types) if i == 0 or t != types[i - 1]]
    assert collapsed == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.content_part.added", "response.reasoning_text.delta",
        "response.reasoning_text.done", "response.content_part.done", "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.done", "response.output_item.done", "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    call = final.output[1]
    assert (call.type, call.name, json.loads(call.arguments)) == ("function_call", "get_weather", {"city": "Rome"})


def test_responses_function_call_output_and_previous_response_id(srv, client):
    url, app, scripts, tok = srv
    scripts.push(reply(tok, analysis="Call it.", call=("get_weather", '{"city":"Lima"}')))
    r1 = client.responses.create(model=MODEL_ID, input="Lima?", tools=[WEATHER_R])
    call = next(o for o in r1.output if o.type == "function_call")
    scripts.push(reply(tok, final="Lima is warm."))
    r2 = client.responses.create(
        model=MODEL_ID, previous_response_id=r1.id, tools=[WEATHER_R],
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "warm"}],
    )
    assert r2.output_text == "Lima is warm." and r2.previous_response_id == r1.id
    text = _prompt_text(app, tok)
    assert "<|channel|>analysis<|message|>Call it.<|end|>" in text  # kept: continuing the call
    assert "functions.get_weather to=assistant<|channel|>commentary<|message|>warm<|end|>" in text
    assert r2.usage.input_tokens_details.cached_tokens > r1.usage.input_tokens_details.cached_tokens
    assert client.responses.retrieve(r2.id).output_text == "Lima is warm."
    # Stateless resend of the same conversation (what Codex does) reuses the cache too.
    scripts.push(reply(tok, final="Still warm."))
    items = [{"role": "user", "content": "Lima?"}, *[o.model_dump(exclude_none=True) for o in r1.output],
             {"type": "function_call_output", "call_id": call.call_id, "output": "warm"},
             *[o.model_dump(exclude_none=True) for o in r2.output], {"role": "user", "content": "And now?"}]
    r3 = client.responses.create(model=MODEL_ID, input=items, tools=[WEATHER_R], store=False)
    assert r3.output_text == "Still warm."
    # The new user turn drops the old reasoning (harmony), so reuse ends where it began: r1's prompt.
    assert r3.usage.input_tokens_details.cached_tokens == r1.usage.input_tokens
    assert "Call it." not in _prompt_text(app, tok)  # a new user turn: the old reasoning is dropped
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(r3.id)  # store=False


def test_responses_structured_output_and_max_output_tokens(srv, client):
    url, app, scripts, tok = srv
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}}
    scripts.push(reply(tok, final='{"ok": true}'))
    r = client.responses.create(model=MODEL_ID, input="ok?",
                                text={"format": {"type": "json_schema", "name": "flag", "schema": schema}})
    assert json.loads(r.output_text) == {"ok": True}
    assert "## flag" in _prompt_text(app, tok)
    scripts.push(reply(tok, final="a b c d e f g h"))
    r = client.responses.create(model=MODEL_ID, input="long", max_output_tokens=5)
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    assert r.usage.output_tokens == 5


# ----------------------------------------------------------------------------- errors


def _post(url, path, body, **kw):
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return httpx.post(url + path, content=data, headers={"Content-Type": "application/json"}, timeout=60, **kw)


USER = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("path,body,status,param", [
    ("/chat/completions", b"{not json", 400, None),
    ("/chat/completions", {"model": MODEL_ID, "messages": "hi"}, 400, "messages"),
    ("/chat/completions", {"model": MODEL_ID, "messages": [{"role": "wizard", "content": "x"}]}, 400, "messages[0].role"),
    ("/chat/completions", {"model": MODEL_ID, "messages": USER, "temperature": "hot"}, 400, "temperature"),
    ("/chat/completions", {"model": MODEL_ID, "messages": USER, "n": 2}, 400, "n"),
    ("/chat/completions", {"model": MODEL_ID, "messages": USER, "tools": [WEATHER],
                           "tool_choice": {"type": "function", "function": {"name": "nope"}}}, 400, "tool_choice"),
    ("/chat/completions", {"model": MODEL_ID, "messages": USER, "tools": [
        {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {"x": 5}}}}]}, 400, "tools[0]"),
    ("/chat/completions", {"model": MODEL_ID, "messages": USER, "response_format": {"type": "json_schema"}}, 400,
     "response_format.schema"),
    ("/chat/completions", {"model": MODEL_ID, "messages": USER, "response_format": {"type": "json_schema",
     "json_schema": {"name": "x", "schema": {"type": "integer", "minimum": "zero"}}}}, 400,
     "response_format.json_schema.schema"),
    ("/chat/completions", {"model": MODEL_ID, "messages": [{"role": "tool", "tool_call_id": "x", "content": "1"}]}, 400,
     "messages[0].tool_call_id"),
    ("/chat/completions", {"model": "gpt-5", "messages": USER}, 404, "model"),
    ("/responses", {"model": MODEL_ID, "input": 3}, 400, "input"),
    ("/responses", {"model": MODEL_ID, "input": [{"type": "image_generation_call"}]}, 400, "input[0].type"),
    ("/responses", {"model": MODEL_ID, "input": "x", "tools": [{"type": "namespace", "name": "ns", "description": "d",
     "tools": [{"type": "file_search"}]}]}, 400, "tools[0].tools[0].type"),  # a bare file_search is dropped (a warning)
    ("/responses", {"model": MODEL_ID, "input": "x", "tools": [WEATHER_R, {"type": "code_interpreter"}]}, 400,
     "tools[1].type"),  # refused unless the server was started with --allow-python
    ("/chat/completions", {"model": MODEL_ID, "messages": USER, "tools": [{"type": "web_search"}]}, 400,
     "tools[0].type"),  # built-in tools run only in the Responses API
    ("/responses", {"model": MODEL_ID, "input": "x", "reasoning": {"effort": "ultra"}}, 400, "reasoning.effort"),
    ("/responses", {"model": MODEL_ID, "input": "x", "previous_response_id": "resp_missing"}, 404, "previous_response_id"),
])  # fmt: skip
def test_bad_input_matrix(srv, path, body, status, param):
    r = _post(srv[0], path, body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"] and "Traceback" not in err["message"]
    assert err["param"] == param


def test_context_length_body_limit_and_unknown_ids(srv):
    url = srv[0]
    r = _post(url, "/chat/completions", {"model": MODEL_ID, "messages": [{"role": "user", "content": "word " * 2000}]})
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    assert not srv[1].state.backend.worker.busy
    r = _post(url, "/chat/completions", {"model": MODEL_ID, "messages": [{"role": "user", "content": "x" * (300 << 10)}]})
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    r = httpx.get(url + "/responses/resp_nope", timeout=30)
    assert r.status_code == 404 and r.json()["error"]["code"] == "response_not_found"
    r = httpx.get(url + "/nothing", timeout=30)
    assert r.status_code == 404 and "error" in r.json()


def test_api_key_refused_then_accepted(model_tok):
    model, tok = model_tok
    scripts = Scripts()
    with running_server(model, tok, scripts, api_key="s3cret") as (url, app):
        bad = openai.OpenAI(base_url=url, api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError) as e:
            bad.chat.completions.create(model=MODEL_ID, messages=USER)
        assert e.value.status_code == 401 and e.value.body["code"] == "invalid_api_key"
        assert httpx.get(url + "/models", timeout=30).status_code == 401
        scripts.push(reply(tok, final="ok"))
        good = openai.OpenAI(base_url=url, api_key="s3cret", max_retries=0)
        assert good.chat.completions.create(model=MODEL_ID, messages=USER).choices[0].message.content == "ok"


# ----------------------------------------------------------------------------- concurrency


def test_disconnect_cancels_generation_and_full_queue_is_429(srv, client):
    url, app, scripts, tok = srv
    gate = Gate()
    scripts.push([], gate)  # unscripted: the random model would run to max_tokens
    body = {"model": MODEL_ID, "messages": USER, "stream": True, "max_tokens": 500}
    with httpx.Client(timeout=60) as hc:
        with hc.stream("POST", url + "/chat/completions", json=body) as resp:
            assert resp.status_code == 200
            assert gate.entered.wait(60)
            # The worker is busy; one request may wait (max_queue=1), the next is refused.
            scripts.push(reply(tok, final="queued"))
            result = {}
            t = threading.Thread(target=lambda: result.update(r=client.chat.completions.create(model=MODEL_ID, messages=USER)))
            t.start()
            deadline = time.monotonic() + 30
            while app.state.backend.worker.waiting < 1:
                assert time.monotonic() < deadline
                time.sleep(0.01)
            r = _post(url, "/chat/completions", {"model": MODEL_ID, "messages": USER})
            assert r.status_code == 429 and r.headers["retry-after"] == "1"
            assert r.json()["error"]["type"] == "rate_limit_error"
            job = app.state.backend.worker._running
        # Client gone: the job is cancelled before the gate opens, so it stops at the next step.
        deadline = time.monotonic() + 30
        while not job.cancelled.is_set():
            assert time.monotonic() < deadline, "disconnect did not cancel the generation"
            time.sleep(0.01)
        gate.release.set()
        t.join(120)
    assert gate.calls <= 2  # at most one decode step after the cancel
    assert result["r"].choices[0].message.content == "queued"  # the queued request was served, unmixed


def test_two_concurrent_clients_get_their_own_replies(srv):
    url, app, scripts, tok = srv
    scripts.keyed = {f"client {i}": reply(tok, analysis=f"r{i}", final=f"reply for client {i}") for i in range(2)}
    out: dict[int, str] = {}

    def run(i):
        c = openai.OpenAI(base_url=url, api_key="x", max_retries=3, timeout=120)
        for turn in range(2):
            stream = c.chat.completions.create(model=MODEL_ID, stream=True,
                                               messages=[{"role": "user", "content": f"client {i} turn {turn}"}])
            out[(i, turn)] = "".join(ch.choices[0].delta.content or "" for ch in stream if ch.choices)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert out == {(i, t): f"reply for client {i}" for i in range(2) for t in range(2)}


# ----------------------------------------------------------------------------- raw SSE framing


def _frames(raw: str) -> list[str]:
    assert raw.endswith("\n\n")
    return raw[:-2].split("\n\n")


def test_raw_sse_framing(srv):
    url, app, scripts, tok = srv
    scripts.push(reply(tok, analysis="a", final="b"))
    with httpx.stream("POST", url + "/chat/completions", timeout=60,
                      json={"model": MODEL_ID, "messages": USER, "stream": True}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    frames = _frames(raw)
    assert frames[-1] == "data: [DONE]"
    for f in frames[:-1]:
        assert f.startswith("data: ") and "\n" not in f
        assert json.loads(f[6:])["object"] == "chat.completion.chunk"
    scripts.push(reply(tok, final="c"))
    with httpx.stream("POST", url + "/responses", timeout=60,
                      json={"model": MODEL_ID, "input": "x", "stream": True}) as r:
        raw = r.read().decode()
    frames = _frames(raw)
    for f in frames:
        ev_line, data_line = f.split("\n")
        assert ev_line.startswith("event: ") and data_line.startswith("data: ")
        assert json.loads(data_line[6:])["type"] == ev_line[7:]
    assert frames[-1].startswith("event: response.completed")
    assert "[DONE]" not in raw


def test_sse_special_tokens_never_leak(srv, client):
    url, app, scripts, tok = srv
    scripts.push(reply(tok, analysis="x", preamble="Checking.", call=("get_weather", '{"city":"A"}')))
    r = client.chat.completions.create(model=MODEL_ID, messages=USER, tools=[WEATHER])
    m = r.choices[0].message
    assert m.content == "Checking." and m.tool_calls[0].function.name == "get_weather"
    for s in (m.content, m.reasoning, m.tool_calls[0].function.arguments):
        assert not any(t in s for t in ("<|channel|>", "<|message|>", "<|end|>", "<|call|>", "<|start|>"))
    assert tk.CALL in app.state.backend.engine.tokens
