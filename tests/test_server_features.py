"""`mlx-oss serve`: tool_choice forcing, logprobs, disconnect-cancel without streaming, malformed
harmony. A real uvicorn on 127.0.0.1 (server_harness), the openai SDK or a plain HTTP client."""

from __future__ import annotations

import json
import socket
import time

import httpx
import pytest

from server_harness import MODEL_ID, AfterHeader, Gate, reply, serve_folder

USER = [{"role": "user", "content": "Weather in Paris?"}]


def _tool(name):
    return {"type": "function", "function": {"name": name, "description": f"the {name} tool", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}  # fmt: skip


TOOLS = [_tool("get_weather"), _tool("get_time")]
TOOLS_R = [{"type": "function", **t["function"]} for t in TOOLS]
MARKUP = ("<|channel|>", "<|message|>", "<|end|>", "<|call|>", "<|start|>", "<|return|>", "<|constrain|>")


@pytest.fixture(scope="module")
def served(tiny_chat_converted):
    yield from serve_folder(tiny_chat_converted, max_context=1024)


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


# ----------------------------------------------------------------------------- logprobs

ANSWER = "Hello there, world"


def _reference(app, tok, entries, text, top):
    """Check `entries` against log-softmax of a fresh full forward pass over what the engine holds."""
    import mlx.core as mx

    ids = tok.encode_ordinary(text)
    seq = app.state.backend.engine.tokens
    start = max(i for i in range(len(seq) - len(ids) + 1) if seq[i : i + len(ids)] == ids)
    logits = app.state.backend.engine.model(mx.array([seq[: start + len(ids)]], dtype=mx.int32)).astype(mx.float32)
    lp = (logits - mx.logsumexp(logits, axis=-1, keepdims=True))[0]
    assert [e["token"] for e in entries] == [tok.decode([i]) for i in ids]
    for j, e in enumerate(entries):
        ref = lp[start + j - 1]
        assert e["logprob"] == pytest.approx(ref[ids[j]].item(), abs=2e-3)
        assert e["bytes"] == list(tok.decode_single_token_bytes(ids[j]))
        best = mx.argsort(-ref)[:top].tolist()
        assert [t["logprob"] for t in e["top_logprobs"]] == pytest.approx([ref[i].item() for i in best], abs=2e-3)
        assert [t["token"] for t in e["top_logprobs"]] == [tok.decode([i]) for i in best]


def test_chat_logprobs_are_the_models_log_softmax_stream_or_not(srv, client):
    url, app, scripts, tok = srv
    scripts.push(reply(tok, analysis="think", final=ANSWER))
    r = client.chat.completions.create(model=MODEL_ID, messages=USER, logprobs=True, top_logprobs=3, temperature=1.7)
    entries = [e.model_dump() for e in r.choices[0].logprobs.content]
    _reference(app, tok, entries, ANSWER, 3)  # the model's distribution, whatever the temperature
    scripts.push(reply(tok, analysis="think", final=ANSWER))
    streamed = []
    for chunk in client.chat.completions.create(model=MODEL_ID, messages=USER, logprobs=True, top_logprobs=3,
                                                stream=True):  # fmt: skip
        for c in chunk.choices:
            if c.logprobs is not None:
                streamed += [e.model_dump() for e in c.logprobs.content]
    assert [e["token"] for e in streamed] == [e["token"] for e in entries]
    assert [e["logprob"] for e in streamed] == pytest.approx([e["logprob"] for e in entries], abs=1e-4)
    # A stop string: no logprobs for the tokens of the stop string or after it.
    scripts.push(reply(tok, final=ANSWER))
    r = client.chat.completions.create(model=MODEL_ID, messages=USER, logprobs=True, stop=[", world"])
    assert r.choices[0].message.content == "Hello there"
    assert "".join(e.token for e in r.choices[0].logprobs.content) == "Hello there"
    # Not asked for: none computed, none sent.
    scripts.push(reply(tok, final=ANSWER))
    assert client.chat.completions.create(model=MODEL_ID, messages=USER).choices[0].logprobs is None


def test_responses_logprobs_with_include(srv, client):
    url, app, scripts, tok = srv
    scripts.push(reply(tok, final=ANSWER))
    r = client.responses.create(model=MODEL_ID, input="hi", include=["message.output_text.logprobs"], top_logprobs=2)
    [msg] = [o for o in r.output if o.type == "message"]
    _reference(app, tok, [e.model_dump() for e in msg.content[0].logprobs], ANSWER, 2)


@pytest.mark.parametrize("path,body", [
    ("/chat/completions", {"messages": USER, "logprobs": True, "top_logprobs": 21}),
    ("/chat/completions", {"messages": USER, "top_logprobs": 2}),
    ("/responses", {"input": "x", "top_logprobs": 3}),
])  # fmt: skip
def test_logprobs_bad_input(srv, path, body):
    r = httpx.post(srv[0] + path, json={"model": MODEL_ID, **body}, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["param"] == "top_logprobs"


# ----------------------------------------------------------------------------- disconnect, non-streaming


def _health(url):
    return httpx.get(url.rsplit("/v1", 1)[0] + "/health", timeout=30).json()


def test_non_streaming_disconnect_cancels_and_frees_the_engine(srv, client):
    url, app, scripts, tok = srv
    before = _health(url)["generations"].get("cancelled", 0)
    gate = Gate()
    scripts.push([], gate)  # unscripted: would run to max_tokens
    host, port = url.split("//")[1].split("/")[0].split(":")
    body = json.dumps({"model": MODEL_ID, "messages": USER, "max_tokens": 900}).encode()
    sock = socket.create_connection((host, int(port)), timeout=60)
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n" % len(body) + body)  # fmt: skip
    assert gate.entered.wait(60)  # the generation is running (held at its first step)
    job = app.state.backend.worker._running
    sock.close()
    deadline = time.monotonic() + 60
    while not job.cancelled.is_set():  # the server saw the disconnect (an event, not a duration)
        assert time.monotonic() < deadline, "a closed connection did not cancel its generation"
        time.sleep(0.01)
    gate.release.set()
    scripts.push(reply(tok, final="served"))
    assert client.chat.completions.create(model=MODEL_ID, messages=USER).choices[0].message.content == "served"
    assert gate.calls <= 2  # at most one decode step after the cancel
    assert _health(url)["generations"]["cancelled"] == before + 1


# ----------------------------------------------------------------------------- malformed harmony


def test_malformed_harmony_never_puts_markup_in_content(srv, client):
    url, app, scripts, tok = srv
    # Special tokens inside the answer, then text after the end that belongs to no message.
    bad = tok.encode("<|channel|>final<|message|>Hi<|channel|> there<|constrain|>!<|end|>loose<|message|> words<|return|>",
                     allowed_special="all")  # fmt: skip
    scripts.push(bad)
    r = client.chat.completions.create(model=MODEL_ID, messages=USER, max_tokens=len(bad))
    m = r.choices[0].message
    assert not any(s in m.content for s in MARKUP)
    assert m.content == "Hi there!loose words"
    # the two special tokens inside the answer, and every token after its <|end|>
    loose = tok.encode("loose<|message|> words<|return|>", allowed_special="all")
    assert r.usage.completion_tokens_details.model_extra["unparsed_tokens"] == 2 + len(loose)
    # A model not writing harmony at all (no header): its words are shown, never markup; each is counted.
    scripts.push(tok.encode("just words, no header<|return|>", allowed_special="all"))
    r = client.chat.completions.create(model=MODEL_ID, messages=USER)
    assert r.choices[0].message.content == "just words, no header"
    assert r.usage.completion_tokens_details.model_extra["unparsed_tokens"] == len(tok.encode("just words, no header"))
    scripts.push(tok.encode("a b<|end|><|start|>assistant c d<|return|>", allowed_special="all"))  # two such "headers"
    r = client.chat.completions.create(model=MODEL_ID, messages=USER)
    assert r.choices[0].message.content == "a bc d"
    assert r.usage.completion_tokens_details.model_extra["unparsed_tokens"] == len(tok.encode("a b")) + len(
        tok.encode("assistant c d"))  # fmt: skip  (<|start|> is markup, counted as in Chat: not at all)
    # cut off by max_tokens inside what is no header (a random model), and a character written byte by byte
    euro = [tok.encode_single_token(bytes([b])) for b in "€".encode()]
    for script, shown, unparsed in ((tok.encode("a b c d e"), "a b c d e", 5),
                                    (tok.encode("<|channel|>final<|message|>A<|end|>", allowed_special="all") + euro, "A€", 3)):  # fmt: skip
        scripts.push(script)
        r = client.chat.completions.create(model=MODEL_ID, messages=USER, max_tokens=len(script))
        assert r.choices[0].message.content == shown and r.choices[0].finish_reason == "length"
        assert r.usage.completion_tokens_details.model_extra["unparsed_tokens"] == unparsed
    scripts.push(bad)
    stream = client.responses.create(model=MODEL_ID, input="hi", stream=True, max_output_tokens=len(bad))
    deltas = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
    assert deltas == "Hi there!loose words"
    # Responses: text outside any message is a message of its own, one however many pieces it comes in, and
    # the message before it ends complete
    scripts.push(bad)
    r = client.responses.create(model=MODEL_ID, input="hi", max_output_tokens=len(bad))
    assert [(o.type, o.status, [c.text for c in o.content]) for o in r.output] == [
        ("message", "completed", ["Hi there!"]), ("message", "completed", ["loose words"])]  # fmt: skip
    scripts.push(tok.encode("<|channel|>analysis<|message|>hm<|end|>loose words<|start|>assistant<|channel|>final<|message|>ok<|return|>",
                            allowed_special="all"))  # fmt: skip
    r = client.responses.create(model=MODEL_ID, input="hi")
    assert [(o.type, o.status) for o in r.output] == [("reasoning", "completed"), ("message", "completed"), ("message", "completed")]
    assert [c.text for o in r.output[1:] for c in o.content] == ["loose words", "ok"]
    # ended by <|return|> with the start of a stop string held back: the held text is shown at the end
    scripts.push(tok.encode("plain words EN<|return|>", allowed_special="all"))
    r = client.chat.completions.create(model=MODEL_ID, messages=USER, stop=["END"])
    assert (r.choices[0].message.content, r.choices[0].finish_reason) == ("plain words EN", "stop")
