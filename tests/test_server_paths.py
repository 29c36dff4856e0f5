"""`mlx-oss serve` on the paths a single happy request does not take: a branch of an earlier
conversation and its resume (logits against a from-scratch pass), the context limit reached while
generating (every API, streamed or not), assistant turns of several parts sent back (the prompt checked
token by token), several requests in flight when the server cancels, shuts down or fails them all (a
lost rank), usage and `max_output_tokens` over built-in tool rounds, what a stop string may cut, and the
operator's built-in tool-call limit against a request asking for more.

A real uvicorn on 127.0.0.1 around the tiny chat model (tests/server_harness.py); replies are scripted
harmony, the model runs every forward pass."""

from __future__ import annotations

import json
import threading
import time

import httpx
import mlx.core as mx
import numpy as np
import pytest

import mlx_oss
from mlx_oss.sampling import SamplingConfig
from mlx_oss.server import chat_completions, responses
from mlx_oss.server.builtin import ServerTools
from server_harness import (
    MODEL_ID,
    FirstLogits,
    Gate,
    Scripts,
    fresh,
    join_all,
    post_json,
    reply,
    running_server,
    stream_chat,
    stream_responses,
    wait_idle,
    wait_until,
)


@pytest.fixture(scope="module")
def model_tok(tiny_chat_converted):
    return mlx_oss.load(tiny_chat_converted, dtype="float32")


@pytest.fixture(scope="module")
def served(model_tok):
    model, tok = model_tok
    scripts = Scripts()
    with running_server(model, tok, scripts, max_context=1024) as (url, app):
        yield url, app, scripts, tok


@pytest.fixture
def srv(served):
    return fresh(served)


def _tool(name: str, description: str) -> dict:
    return {"type": "function", "function": {"name": name, "description": description, "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}  # fmt: skip


TOOLS = [_tool("get_weather", "Current weather in a city"), _tool("get_time", "Local time in a city")]
TOOLS_R = [{"type": "function", **t["function"]} for t in TOOLS]


def _chat(msgs, **kw) -> dict:
    return {"model": MODEL_ID, "messages": msgs, **kw}


def _user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def _health(url: str) -> dict:
    return httpx.get(url.rsplit("/v1", 1)[0] + "/health", timeout=30).json()


def _chat_prompt_len(tok, body: dict) -> int:
    return len(chat_completions.parse_request(body, SamplingConfig()).turn.render(tok)[0])


def _responses_prompt_len(tok, body: dict) -> int:
    req = responses.parse_request(body, responses.StoredResponses(), SamplingConfig())
    return len(req.turn.render(tok)[0])


# ----------------------------------------------------------------------------- a branch, then the original resumed


def test_a_branch_of_an_earlier_conversation_then_its_resume_match_a_fresh_pass(model_tok):
    """Through the server (pool -> engine in `run_generation`): A over two requests, B, then a branch of A
    at its first reply (served by a fork of A's pooled state), then A resumed, the branch resumed and B
    resumed. Each request's first logits equal a from-scratch forward pass over its prompt."""
    model, tok = model_tok
    scripts = Scripts()
    with running_server(model, tok, scripts, max_context=1024) as (url, app):

        def ask(msgs, answer):
            rec = FirstLogits()
            scripts.push(reply(tok, final=answer), rec)
            r = post_json(url, "/chat/completions", _chat(msgs))
            assert r.status_code == 200, r.text
            [(context, logits)] = rec.firsts
            usage = r.json()["usage"]
            assert len(context) == usage["prompt_tokens"]
            fresh = np.array(model(mx.array([context]), None, last_only=True)[0, -1])
            err = float(np.linalg.norm(logits - fresh) / np.linalg.norm(fresh))
            assert err <= 1e-5, f"logits after {usage['prompt_tokens_details']['cached_tokens']} cached tokens: {err:.2e}"
            assert r.json()["choices"][0]["message"]["content"] == answer
            return usage

        def resumed(usage) -> int:  # a conversation resumed after `usage`'s reply: all but its `<|return|>`
            return usage["prompt_tokens"] + usage["completion_tokens"] - 1

        def cached(usage) -> int:
            return usage["prompt_tokens_details"]["cached_tokens"]

        a = _user("conversation A opening words")
        a1 = ask(a, "A reply one")
        a += [{"role": "assistant", "content": "A reply one"}, {"role": "user", "content": "A second question"}]
        a2 = ask(a, "A reply two")
        assert cached(a2) == resumed(a1)
        b = _user("conversation B is something else")
        b1 = ask(b, "B reply")
        branch = a[:1] + [{"role": "assistant", "content": "A different reply one"},
                          {"role": "user", "content": "A branch question"}]  # fmt: skip
        br = ask(branch, "branch reply")
        assert cached(br) == a1["prompt_tokens"]  # from A's state, up to its snapshot inside A
        a += [{"role": "assistant", "content": "A reply two"}, {"role": "user", "content": "A third question"}]
        assert cached(ask(a, "A reply three")) == resumed(a2)
        branch += [{"role": "assistant", "content": "branch reply"}, {"role": "user", "content": "branch goes on"}]
        assert cached(ask(branch, "ok")) == resumed(br)
        b += [{"role": "assistant", "content": "B reply"}, {"role": "user", "content": "B again"}]
        assert cached(ask(b, "ok")) == resumed(b1)


# ----------------------------------------------------------------------------- the context limit while generating

CONTENT = "count up please"
ROOM = 6  # tokens left to generate under the limit


@pytest.fixture(scope="module")
def ctx_served(model_tok):
    model, tok = model_tok
    limit = _chat_prompt_len(tok, _chat(_user(CONTENT))) + ROOM
    scripts = Scripts()
    with running_server(model, tok, scripts, max_context=limit) as (url, app):
        yield url, app, scripts, tok, limit


LONG = "one two three four five six seven eight nine ten eleven twelve"


def test_context_limit_mid_generation_in_a_batch(model_tok):
    """`--max-batch 2`: the batch holds each sequence to the server's `--max-context`, as the engine does
    (Chat Completions `length`, Messages `max_tokens`, the usage adding up to the limit)."""
    model, tok = model_tok
    prompt = _chat_prompt_len(tok, _chat(_user(CONTENT)))
    limit = prompt + ROOM
    cut = tok.decode(reply(tok, final=LONG)[:ROOM]).split("<|message|>", 1)[1]
    scripts = Scripts()
    with running_server(model, tok, scripts, max_context=limit, max_batch=2) as (url, app):
        scripts.push(reply(tok, final=LONG))
        r = post_json(url, "/chat/completions", _chat(_user(CONTENT)))
        ch = r.json()["choices"][0]
        assert (r.status_code, ch["finish_reason"], ch["message"]["content"]) == (200, "length", cut)
        assert (r.json()["usage"]["completion_tokens"], r.json()["usage"]["total_tokens"]) == (ROOM, limit)
        assert app.state.backend.outcomes.get("context") == 1


def test_context_limit_mid_generation_in_every_api(ctx_served):
    url, app, scripts, tok, limit = ctx_served
    wait_idle(app)
    prompt = _chat_prompt_len(tok, _chat(_user(CONTENT)))
    assert prompt == _responses_prompt_len(tok, {"input": CONTENT}) == limit - ROOM
    before = _health(url)["generations"].get("context", 0)
    cut = tok.decode(reply(tok, final=LONG)[:ROOM]).split("<|message|>", 1)[1]  # the answer text that fits

    def chat_usage(u):
        assert u == {"prompt_tokens": prompt, "completion_tokens": ROOM, "total_tokens": limit,
                     "prompt_tokens_details": u["prompt_tokens_details"],
                     "completion_tokens_details": {"reasoning_tokens": 0}}  # fmt: skip

    scripts.push(reply(tok, final=LONG))
    r = post_json(url, "/chat/completions", _chat(_user(CONTENT)))
    ch = r.json()["choices"][0]
    assert (r.status_code, ch["finish_reason"], ch["message"]["content"]) == (200, "length", cut)
    chat_usage(r.json()["usage"])
    assert len(app.state.backend.engine.tokens) == limit

    scripts.push(reply(tok, final=LONG))
    status, chunks, done = stream_chat(url, _chat(_user(CONTENT), stream=True, stream_options={"include_usage": True}))
    assert status == 200 and done
    finishes = [c["finish_reason"] for ch in chunks for c in ch.get("choices", []) if c["finish_reason"]]
    assert finishes == ["length"]
    assert "".join(c["delta"].get("content") or "" for ch in chunks for c in ch.get("choices", [])) == cut
    chat_usage(chunks[-1]["usage"])

    def resp_check(resp):
        assert resp["status"] == "incomplete" and resp["incomplete_details"] == {"reason": "max_output_tokens"}
        u = resp["usage"]
        assert (u["input_tokens"], u["output_tokens"], u["total_tokens"]) == (prompt, ROOM, limit)
        [msg] = resp["output"]
        assert msg["status"] == "incomplete" and msg["content"][0]["text"] == cut

    scripts.push(reply(tok, final=LONG))
    r = post_json(url, "/responses", {"model": MODEL_ID, "input": CONTENT})
    assert r.status_code == 200
    resp_check(r.json())

    scripts.push(reply(tok, final=LONG))
    status, events = stream_responses(url, {"model": MODEL_ID, "input": CONTENT, "stream": True})
    assert status == 200
    assert [e["type"] for e in events if e["type"].startswith("response.") and "." not in e["type"][9:]] == [
        "response.created", "response.in_progress", "response.incomplete"]  # fmt: skip
    resp_check(events[-1]["response"])
    assert _health(url)["generations"]["context"] == before + 4  # reported as the context, not max_tokens


def _content_of_length(tok, target: int, render_len) -> str:
    """User content whose rendered prompt is exactly `target` tokens."""
    for n in range(0, 200):
        text = " ".join(["go"] * n) or "go"
        if render_len(text) == target:
            return text
    raise AssertionError(f"no content renders to {target} tokens")


def test_a_prompt_at_the_limit_is_refused_and_one_below_generates_one_token(ctx_served):
    url, app, scripts, tok, limit = ctx_served
    wait_idle(app)
    chat_len = lambda text: _chat_prompt_len(tok, _chat(_user(text)))  # noqa: E731
    resp_len = lambda text: _responses_prompt_len(tok, {"input": text})  # noqa: E731
    for path, length, body in (("/chat/completions", chat_len, lambda t: _chat(_user(t))),
                               ("/responses", resp_len, lambda t: {"model": MODEL_ID, "input": t})):  # fmt: skip
        at = _content_of_length(tok, limit, length)
        r = post_json(url, path, body(at))
        assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded", r.text
        assert str(limit) in r.json()["error"]["message"]
        below = _content_of_length(tok, limit - 1, length)
        scripts.push(reply(tok, final=LONG))
        r = post_json(url, path, body(below))
        assert r.status_code == 200, r.text
        u = r.json()["usage"]
        if path == "/responses":
            assert (r.json()["status"], u["input_tokens"], u["output_tokens"]) == ("incomplete", limit - 1, 1)
        else:
            assert (r.json()["choices"][0]["finish_reason"], u["prompt_tokens"], u["completion_tokens"]) == (
                "length", limit - 1, 1)  # fmt: skip
        assert len(app.state.backend.engine.tokens) == limit


# ----------------------------------------------------------------------------- assistant turns of several parts

SYSTEM = ("<|start|>system<|message|>You are ChatGPT, a large language model trained by OpenAI.\nKnowledge cutoff: "
          "2024-06\n\nReasoning: medium\n\n# Valid channels: analysis, commentary, final. Channel must be included for "
          "every message.\nCalls to these tools must go to the commentary channel: 'functions'.<|end|>")  # fmt: skip
DEVELOPER = ("<|start|>developer<|message|># Instructions\n\nBe brief.\n\n# Tools\n\n## functions\n\nnamespace functions {"
             "\n\n// Current weather in a city\ntype get_weather = (_: {\ncity: string,\n}) => any;\n\n// Local time in a city"
             "\ntype get_time = (_: {\ncity: string,\n}) => any;\n\n} // namespace functions<|end|>")  # fmt: skip
CALLS = ('<|start|>assistant to=functions.get_weather<|channel|>commentary <|constrain|>json<|message|>{"city": "Paris"}'
         '<|call|><|start|>assistant to=functions.get_time<|channel|>commentary <|constrain|>json<|message|>'
         '{"city": "Oslo"}<|call|>')  # fmt: skip
RESULTS = ("<|start|>functions.get_time to=assistant<|channel|>commentary<|message|>noon<|end|>"
           "<|start|>functions.get_weather to=assistant<|channel|>commentary<|message|>sunny<|end|>")  # fmt: skip


def _check_prompt(app, tok, usage_prompt: int, expected: str) -> None:
    """The prompt the engine saw, token by token, against the expected harmony."""
    seen = app.state.backend.engine.tokens[:usage_prompt]
    assert tok.decode(seen) == expected
    want = tok.encode(expected, allowed_special="all")
    assert len(seen) == len(want)
    for i, (a, b) in enumerate(zip(seen, want)):
        assert a == b, f"token {i}: {tok.decode([a])!r} != {tok.decode([b])!r}"


def test_chat_assistant_turn_with_content_reasoning_and_parallel_calls_answered_out_of_order(srv):
    url, app, scripts, tok = srv
    msgs = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather and time?"},
        {"role": "assistant", "reasoning_content": "Two calls.",
         "content": [{"type": "text", "text": "Checking "}, {"type": "text", "text": "both."}],
         "tool_calls": [
             {"id": "call_w", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
             {"id": "call_t", "type": "function", "function": {"name": "get_time", "arguments": '{"city": "Oslo"}'}}]},
        {"role": "tool", "tool_call_id": "call_t", "content": "noon"},  # the second call's result first
        {"role": "tool", "tool_call_id": "call_w", "content": [{"type": "text", "text": "sunny"}]},
    ]  # fmt: skip
    head = SYSTEM + DEVELOPER + "<|start|>user<|message|>Weather and time?<|end|>"
    turn = ("<|start|>assistant<|channel|>analysis<|message|>Two calls.<|end|>"
            "<|start|>assistant<|channel|>commentary<|message|>Checking both.<|end|>" + CALLS + RESULTS)  # fmt: skip
    scripts.push(reply(tok, final="Sunny at noon."))
    r = post_json(url, "/chat/completions", _chat(msgs, tools=TOOLS))
    assert r.status_code == 200, r.text
    # Continuing the calls: the reasoning sent back is kept; each result is addressed from its own call.
    _check_prompt(app, tok, r.json()["usage"]["prompt_tokens"], head + turn + "<|start|>assistant")
    # The turn answered and a new user message: harmony drops that turn's reasoning, nothing else.
    msgs += [{"role": "assistant", "content": "Sunny at noon."}, {"role": "user", "content": "Thanks!"}]
    scripts.push(reply(tok, final="You're welcome."))
    r = post_json(url, "/chat/completions", _chat(msgs, tools=TOOLS))
    assert r.status_code == 200, r.text
    kept = turn.replace("<|start|>assistant<|channel|>analysis<|message|>Two calls.<|end|>", "")
    _check_prompt(app, tok, r.json()["usage"]["prompt_tokens"], head + kept +
                  "<|start|>assistant<|channel|>final<|message|>Sunny at noon.<|end|>"
                  "<|start|>user<|message|>Thanks!<|end|><|start|>assistant")  # fmt: skip


def test_chat_two_rounds_of_calls_in_one_turn_keep_both_reasonings(srv):
    """A turn that called a tool, read its result, then called another (two assistant messages, the first
    without content): both sent-back reasonings stay while the turn goes on, each before its own call."""
    url, app, scripts, tok = srv
    call = lambda i, name, city: {"id": i, "type": "function", "function": {"name": name, "arguments": f'{{"city": "{city}"}}'}}  # noqa: E731
    msgs = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather, then time?"},
        {"role": "assistant", "content": None, "reasoning": "First the weather.", "tool_calls": [call("w", "get_weather", "Paris")]},
        {"role": "tool", "tool_call_id": "w", "content": "sunny"},
        {"role": "assistant", "content": "", "thinking": "Now the time.", "tool_calls": [call("t", "get_time", "Oslo")]},
        {"role": "tool", "tool_call_id": "t", "content": "noon"},
    ]  # fmt: skip
    scripts.push(reply(tok, final="Sunny at noon."))
    r = post_json(url, "/chat/completions", _chat(msgs, tools=TOOLS))
    assert r.status_code == 200, r.text
    weather, time_ = CALLS.split("<|call|>")[:2]
    noon, sunny = RESULTS.split("<|end|>")[:2]
    _check_prompt(app, tok, r.json()["usage"]["prompt_tokens"], (
        SYSTEM + DEVELOPER + "<|start|>user<|message|>Weather, then time?<|end|>"
        "<|start|>assistant<|channel|>analysis<|message|>First the weather.<|end|>" + weather + "<|call|>" + sunny + "<|end|>"
        "<|start|>assistant<|channel|>analysis<|message|>Now the time.<|end|>" + time_ + "<|call|>" + noon + "<|end|>"
        "<|start|>assistant"))  # fmt: skip


def test_an_earlier_turns_reasoning_stays_out_while_a_later_turn_calls_tools(srv):
    """The reasoning sent back with an answered turn is dropped (harmony's rule), also while a later turn is
    in the middle of a tool call, where openai-harmony's renderer alone would bring it back: the prompt then
    differs from the one the cache was built from (`prune_analysis`, conversation.py)."""
    url, app, scripts, tok = srv
    call = {"id": "w", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    msgs = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "reasoning": "Greet back.", "content": "Hello!"},
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "reasoning": "Call it.", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "w", "content": "sunny"},
    ]  # fmt: skip
    scripts.push(reply(tok, final="Sunny."))
    r = post_json(url, "/chat/completions", _chat(msgs, tools=TOOLS))
    assert r.status_code == 200, r.text
    weather, sunny = CALLS.split("<|call|>")[0], RESULTS.split("<|end|>")[1]
    _check_prompt(app, tok, r.json()["usage"]["prompt_tokens"], (
        SYSTEM + DEVELOPER + "<|start|>user<|message|>Hi<|end|><|start|>assistant<|channel|>final<|message|>Hello!<|end|>"
        "<|start|>user<|message|>Weather?<|end|><|start|>assistant<|channel|>analysis<|message|>Call it.<|end|>"
        + weather + "<|call|>" + sunny + "<|end|><|start|>assistant"))  # fmt: skip


def test_responses_items_of_one_turn_with_parallel_calls_answered_out_of_order(srv):
    """Responses input items: a reasoning item, an assistant message (rendered on `final`, as OpenAI's
    gpt-oss reference server does, see responses.py), two function calls, their outputs in the other order."""
    url, app, scripts, tok = srv
    items = [
        {"role": "user", "content": [{"type": "input_text", "text": "Weather and time?"}]},
        {"type": "reasoning", "id": "rs_1", "summary": [], "content": [{"type": "reasoning_text", "text": "Two calls."}]},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Checking "},
                                                             {"type": "output_text", "text": "both."}]},
        {"type": "function_call", "call_id": "c_w", "name": "get_weather", "arguments": '{"city": "Paris"}'},
        {"type": "function_call", "call_id": "c_t", "name": "get_time", "arguments": '{"city": "Oslo"}'},
        {"type": "function_call_output", "call_id": "c_t", "output": "noon"},
        {"type": "function_call_output", "call_id": "c_w", "output": "sunny"},
    ]  # fmt: skip
    scripts.push(reply(tok, final="Sunny at noon."))
    r = post_json(url, "/responses", {"model": MODEL_ID, "input": items, "tools": TOOLS_R, "instructions": "Be brief.",
                                      "store": False})  # fmt: skip
    assert r.status_code == 200, r.text
    expected = (SYSTEM + DEVELOPER + "<|start|>user<|message|>Weather and time?<|end|>"
                "<|start|>assistant<|channel|>analysis<|message|>Two calls.<|end|>"
                "<|start|>assistant<|channel|>final<|message|>Checking both.<|end|>" + CALLS + RESULTS + "<|start|>assistant")  # fmt: skip
    _check_prompt(app, tok, r.json()["usage"]["input_tokens"], expected)


# ----------------------------------------------------------------------------- several requests when the server stops


def _requests(url: str, text: str) -> dict:
    """One request per API and mode (max 50 tokens), by name."""
    body = {"model": MODEL_ID, "messages": _user(text), "max_tokens": 50}
    rbody = {"model": MODEL_ID, "input": text, "max_output_tokens": 50}
    return {
        "chat stream": lambda: stream_chat(url, {**body, "stream": True}),
        "chat": lambda: post_json(url, "/chat/completions", body),
        "responses stream": lambda: stream_responses(url, {**rbody, "stream": True}),
        "responses": lambda: post_json(url, "/responses", rbody),
    }


def _in_flight(url: str, scripts: Scripts, app, gate: Gate, running: str) -> tuple[dict, list[threading.Thread]]:
    """One running request of the kind `running` (held at its first step by `gate`) and four queued behind
    it, one per API and mode. -> (results: "running" and the queued ones by kind, their threads)."""
    results: dict[str, object] = {}
    jobs = {"running": _requests(url, "running")[running], **_requests(url, "queued")}
    threads = []
    scripts.push([], gate)  # the first request holds the worker; the others are never run
    for i, (name, fn) in enumerate(jobs.items()):
        t = threading.Thread(target=lambda n=name, f=fn: results.update({n: f()}), daemon=True)
        t.start()
        threads.append(t)
        if i == 0:
            assert gate.entered.wait(60)
        else:
            wait_until(lambda: app.state.backend.worker.waiting == i or name in results, f"{name} queued")
            assert app.state.backend.worker.waiting == i
    return results, threads


def _check_final_events(results: dict, running: str) -> None:
    """Every request ended with its final event: a stream's last chunk or event, a non-streamed error JSON
    (or the running Responses request's incomplete response)."""
    for name in ("chat stream", "running") if running == "chat stream" else ("chat stream",):
        status, chunks, done = results[name]
        assert status == 200 and done, name
        assert [c["error"]["code"] for c in chunks if "error" in c] == ["cancelled"] and "error" in chunks[-1], name
    for name in ("chat", "running") if running == "chat" else ("chat",):
        r = results[name]
        assert r.status_code == 503 and r.json()["error"]["code"] == "cancelled", name
    status, events = results["responses stream"]  # never started: failed
    assert status == 200 and [e["type"] for e in events] == ["response.created", "response.in_progress", "response.failed"]
    assert events[-1]["response"]["error"]["code"] == "cancelled"
    r = results["responses"]
    assert r.status_code == 500 and r.json()["error"]["code"] == "cancelled"
    # A running Responses request ends incomplete, with what it had generated.
    if running == "responses stream":
        status, events = results["running"]
        assert status == 200 and events[-1]["type"] == "response.incomplete"
        assert events[-1]["response"]["incomplete_details"] == {"reason": "cancelled"}
        assert sum(e["type"] in ("response.completed", "response.failed", "response.incomplete") for e in events) == 1
    elif running == "responses":
        r = results["running"]
        assert r.status_code == 200 and r.json()["status"] == "incomplete"
        assert r.json()["incomplete_details"] == {"reason": "cancelled"}


@pytest.mark.parametrize("running", ["chat stream", "chat", "responses stream", "responses"])
def test_cancel_all_ends_the_running_and_every_queued_request(model_tok, running):
    model, tok = model_tok
    scripts = Scripts()
    with running_server(model, tok, scripts, max_context=1024, max_queue=4) as (url, app):
        gate = Gate()
        before = _health(url)["generations"].get("cancelled", 0)
        try:
            results, threads = _in_flight(url, scripts, app, gate, running)
            job = app.state.backend.worker._running
            app.state.backend.worker.cancel_all()
            assert job.cancelled.is_set()
        finally:
            gate.release.set()
        assert join_all(threads), "a request hung"
        _check_final_events(results, running)
        assert gate.calls <= 2  # the running one stopped at its next step
        h = _health(url)
        assert (h["busy"], h["queued"], h["generations"]["cancelled"]) == (False, 0, before + 1)
        scripts.push(reply(tok, final="still serving"))  # the worker goes on
        r = post_json(url, "/chat/completions", _chat(_user("after")))
        assert r.json()["choices"][0]["message"]["content"] == "still serving"


@pytest.mark.parametrize("running", ["chat stream", "responses stream"])
def test_shutdown_ends_the_running_and_every_queued_request(model_tok, running):
    model, tok = model_tok
    scripts = Scripts()
    with running_server(model, tok, scripts, max_context=1024, max_queue=4) as (url, app):
        gate = Gate()
        stopped: dict[str, bool] = {}
        try:
            results, threads = _in_flight(url, scripts, app, gate, running)
            job = app.state.backend.worker._running
            stopper = threading.Thread(target=lambda: stopped.update(ok=app.state.backend.shutdown()), daemon=True)
            stopper.start()
            wait_until(job.cancelled.is_set, "shutdown cancels the running generation")
        finally:
            gate.release.set()
        assert join_all([stopper, *threads]), "a request hung (or the worker did not stop)"
        assert stopped == {"ok": True}  # the worker thread ended
        _check_final_events(results, running)


REASON = "The server is stopping: lost rank 1"


@pytest.mark.parametrize("running", ["chat stream", "responses"])
def test_fail_all_ends_the_running_and_every_queued_request(model_tok, running):
    """`Backend.fail_all` (a rank of a group lost, called from the watchdog's thread): the running request
    and the four queued behind it, one per API and mode, end at once with a server error naming the reason;
    none of the queued ones is run. The requests end while the running step is still held, and the call
    returns once they have their events, within its bound."""
    model, tok = model_tok
    scripts = Scripts()
    with running_server(model, tok, scripts, max_context=1024, max_queue=4) as (url, app):
        gate = Gate()
        try:
            results, threads = _in_flight(url, scripts, app, gate, running)
            job = app.state.backend.worker._running
            t0 = time.monotonic()
            app.state.backend.fail_all(REASON)
            took = time.monotonic() - t0
            assert job.cancelled.is_set()
            assert join_all(threads), "a request hung while the running step was still held"
        finally:
            gate.release.set()
        assert 0.2 <= took < 3 * 3.0  # it waited for the requests to take their events, within 3x its bound
        kinds = {**{k: k for k in results if k != "running"}, "running": running}
        for name, kind in kinds.items():
            if kind == "chat stream":
                status, chunks, done = results[name]
                assert status == 200 and done and chunks[-1]["error"]["message"] == REASON, name
                assert not [c for ch in chunks for c in ch.get("choices", []) if c["delta"].get("content")], name
            elif kind == "responses stream":
                status, events = results[name]
                assert status == 200 and events[-1]["type"] == "response.failed", name
                assert events[-1]["response"]["error"]["message"] == REASON, name
            else:
                r = results[name]
                assert r.status_code == 500 and r.json()["error"]["message"] == REASON, (name, r.text)
        assert gate.calls <= 2  # the running one stopped at its next step
        wait_idle(app)
        assert sum(_health(url)["generations"].values()) <= 1  # only the running one generated


# ----------------------------------------------------------------------------- built-in tool rounds, stop strings


def builtin_reply(tok, call=None, final=None, analysis="Let me look.") -> list[int]:
    """One round of a reply with built-in tools: analysis, then a browser call or a final answer."""
    parts = [f"<|channel|>analysis<|message|>{analysis}<|end|>"]
    if call is not None:
        parts.append(f"<|channel|>analysis to={call[0]} code<|message|>{call[1]}<|call|>")
    if final is not None:
        parts.append(f"<|channel|>final<|message|>{final}<|return|>")
    return tok.encode("<|start|>assistant".join(parts), allowed_special="all")


SEARCH = ("browser.search", '{"query": "mlx"}')  # the default server browser has no search: an error result


def test_usage_and_max_output_tokens_add_up_over_builtin_rounds(model_tok):
    """One response, two rounds (a browser call the server runs, then the answer): usage is the sum of
    the rounds' prompts, cached and generated tokens; `max_output_tokens` is one budget for the whole
    response, so a limit that runs out in the second round ends it incomplete with the summed count."""
    model, tok = model_tok
    r1, r2 = builtin_reply(tok, call=SEARCH), builtin_reply(tok, final="No search here, sorry.")
    body = {"model": MODEL_ID, "input": "search mlx", "tools": [{"type": "web_search"}], "store": False}
    scripts = Scripts()
    with running_server(model, tok, scripts, max_context=2048) as (url, app):
        rec = FirstLogits()
        scripts.push(r1 + r2, rec)
        r = post_json(url, "/responses", body)  # a fresh engine: nothing cached before the first round
        resp = r.json()
        assert resp["status"] == "completed" and resp["output"][-1]["content"][0]["text"] == "No search here, sorry."
        assert [o["type"] for o in resp["output"]] == ["reasoning", "web_search_call", "reasoning", "message"]
        p1, p2 = rec.round_prompts
        assert p2 > p1 + len(r1)  # the call and its result were added
        u = resp["usage"]
        assert u["input_tokens"] == p1 + p2
        assert u["output_tokens"] == len(r1) + len(r2)
        assert u["total_tokens"] == p1 + p2 + len(r1) + len(r2)
        # Round 2 reuses round 1 up to the call: the renderer writes a call's recipient before its channel
        # (as openai-harmony does), the model wrote it after, so the call message itself is prefilled again.
        analysis = len(tok.encode("<|channel|>analysis<|message|>Let me look.<|end|>", allowed_special="all"))
        assert u["input_tokens_details"]["cached_tokens"] == p1 + analysis
        assert u["output_tokens_details"]["reasoning_tokens"] == 2 * len(tok.encode("Let me look."))
        for rnd, (ctx, logits) in enumerate(rec.firsts):  # the second round, resumed from the cache, is exact
            fresh = np.array(model(mx.array([ctx]), None, last_only=True)[0, -1])
            assert float(np.linalg.norm(logits - fresh) / np.linalg.norm(fresh)) <= 1e-5, f"round {rnd + 1}"
        # The same response again: each round's prompt is now cached up to the end of its last message (the
        # snapshot point before `<|start|>assistant`; round 2 resumes the first response's state, which the
        # pool kept when round 1 branched from it), and the counts of both rounds add up.
        scripts.push(r1 + r2)
        u = post_json(url, "/responses", body).json()["usage"]
        assert (u["input_tokens"], u["output_tokens"]) == (p1 + p2, len(r1) + len(r2))
        assert u["input_tokens_details"]["cached_tokens"] == (p1 - 2) + (p2 - 2)

        # A limit that runs out 3 tokens into the second round.
        limit = len(r1) + 3
        scripts.push(r1 + r2)
        status, events = stream_responses(url, {**body, "stream": True, "max_output_tokens": limit})
        assert status == 200
        final = events[-1]
        assert final["type"] == "response.incomplete", [e["type"] for e in events]
        assert final["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
        assert final["response"]["usage"]["output_tokens"] == limit
        assert final["response"]["usage"]["input_tokens"] == p1 + p2
        assert [o["type"] for o in final["response"]["output"]] == ["reasoning", "web_search_call", "reasoning"]
        assert final["response"]["output"][-1]["status"] == "incomplete"

        # A limit spent exactly by the first round: no second round is generated.
        scripts.push(r1 + r2)
        r = post_json(url, "/responses", {**body, "max_output_tokens": len(r1)})
        resp = r.json()
        assert r.status_code == 200 and resp["status"] == "incomplete"
        assert resp["incomplete_details"] == {"reason": "max_output_tokens"}
        assert (resp["usage"]["output_tokens"], resp["usage"]["input_tokens"]) == (len(r1), p1)
        assert [o["type"] for o in resp["output"]] == ["reasoning", "web_search_call"]


def test_stop_strings_cut_the_answer_only(srv):
    """Chat `stop` applies to the answer text: never to the reasoning or a tool call's arguments."""
    url, app, scripts, tok = srv
    stop = ["XYZ"]
    scripts.push(reply(tok, analysis="think XYZ more", call=("get_weather", '{"city": "XYZ town"}')))
    r = post_json(url, "/chat/completions", _chat(_user("where?"), tools=TOOLS, stop=stop))
    ch = r.json()["choices"][0]
    assert ch["finish_reason"] == "tool_calls" and ch["message"]["reasoning"] == "think XYZ more"
    assert [c["function"]["arguments"] for c in ch["message"]["tool_calls"]] == ['{"city": "XYZ town"}']
    scripts.push(reply(tok, analysis="plan XYZ plan", final="before XYZ after"))
    r = post_json(url, "/chat/completions", _chat(_user("say"), stop=stop))
    ch = r.json()["choices"][0]
    assert (ch["finish_reason"], ch["message"]["reasoning"], ch["message"]["content"]) == ("stop", "plan XYZ plan", "before ")
    scripts.push(reply(tok, analysis="plan XYZ plan", final="before XYZ after"))
    status, chunks, done = stream_chat(url, _chat(_user("say"), stop=stop, stream=True))
    deltas = [c["delta"] for ch in chunks for c in ch["choices"]]
    assert "".join(d.get("reasoning") or "" for d in deltas) == "plan XYZ plan"
    assert "".join(d.get("content") or "" for d in deltas) == "before "
    assert [c["finish_reason"] for ch in chunks for c in ch["choices"] if c["finish_reason"]] == ["stop"]


@pytest.mark.parametrize("max_batch", [1, 2], ids=["alone", "batched"])
def test_context_limit_reached_by_a_builtin_round(model_tok, max_batch):
    """A tool result that leaves no room under `max_context` ends the response incomplete (the context
    counts as running out of output tokens) with the first round's usage; one token of room gives one
    token of a second round. The same with batching on (the batch checks the round's prompt)."""
    model, tok = model_tok
    r1, r2 = builtin_reply(tok, call=SEARCH), builtin_reply(tok, final="No search here, sorry.")
    body = {"model": MODEL_ID, "input": "search mlx", "tools": [{"type": "web_search"}], "store": False}
    scripts = Scripts()
    rec = FirstLogits()
    with running_server(model, tok, scripts, max_context=2048) as (url, app):
        scripts.push(r1 + r2, rec)
        assert post_json(url, "/responses", body).json()["status"] == "completed"
    p1, p2 = rec.round_prompts
    for limit, second in ((p2, 0), (p2 + 1, 1)):
        with running_server(model, tok, scripts, max_context=limit, max_batch=max_batch) as (url, app):
            scripts.push(r1 + r2)
            resp = post_json(url, "/responses", body).json()
            assert resp["status"] == "incomplete" and resp["incomplete_details"] == {"reason": "max_output_tokens"}
            u = resp["usage"]
            assert (u["input_tokens"], u["output_tokens"]) == (p1 + (p2 if second else 0), len(r1) + second)
            assert [o["type"] for o in resp["output"]][:2] == ["reasoning", "web_search_call"]
            assert _health(url)["generations"] == {"context": 1}


def test_a_request_cannot_raise_the_servers_tool_call_limit(model_tok):
    """The operator's limit (`--max-tool-calls`, here 1) holds against a request asking for more
    (`max_tool_calls: 5`): the first call runs, the second is answered with the limit, and calling
    again ends the response incomplete."""
    model, tok = model_tok
    body = {"model": MODEL_ID, "input": "search mlx", "tools": [{"type": "web_search"}], "max_tool_calls": 5}
    scripts = Scripts()
    with running_server(model, tok, scripts, max_context=2048, builtin=ServerTools(max_calls=1)) as (url, app):
        scripts.push(builtin_reply(tok, call=SEARCH) * 3 + builtin_reply(tok, final="never"))
        resp = post_json(url, "/responses", body).json()
        assert resp["status"] == "incomplete" and resp["incomplete_details"] == {"reason": "max_tool_calls"}, resp
        calls = [o for o in resp["output"] if o["type"] == "web_search_call"]
        assert [o["status"] for o in calls] == ["failed", "failed", "incomplete"]  # no search backend: a failed result
        seen = [app.state.stored.tool_messages(o["id"])[1].text for o in calls[:2]]
        assert "limit of 1 built-in tool calls" not in seen[0] and "limit of 1 built-in tool calls" in seen[1]


# ----------------------------------------------------------------------------- a failure while generating


class Fails:
    """A logits processor that raises at its `at`-th step: a bug anywhere in a forward pass or the sampler."""

    def __init__(self, at: int) -> None:
        self.at, self.calls = at, 0

    def __call__(self, context, logits):
        self.calls += 1
        if self.calls == self.at:
            raise RuntimeError("the forward pass broke\nsecond line")
        return logits


BROKE = "RuntimeError: the forward pass broke"  # the first line of the error, with its type


def _anthropic_stream(url: str, body: dict) -> list[tuple[str, dict]]:
    with httpx.stream("POST", url + "/messages", json={**body, "stream": True}, timeout=120) as r:
        assert r.status_code == 200
        raw = r.read().decode()
    out = []
    for frame in raw.strip().split("\n\n"):
        head, data = frame.split("\n", 1)
        out.append((head.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    return out


@pytest.mark.parametrize("max_batch", [1, 2], ids=["alone", "batched"])
def test_a_failure_mid_generation_ends_the_reply_with_its_error_in_every_api_and_the_next_starts_clean(model_tok, max_batch):
    """A step fails after the reply began (the third sampling step): each API ends that reply with the error's
    first line, in its own shape (a 500 JSON, a stream's error chunk or `response.failed` or `error` event);
    the state it left is not reused: the same prompt again is computed from scratch (no cached tokens), and its
    first logits equal a fresh forward pass."""
    model, tok = model_tok
    scripts = Scripts()
    msgs = _user("a question that fails")
    anthropic = {"model": MODEL_ID, "max_tokens": 50, "messages": msgs}
    with running_server(model, tok, scripts, max_context=1024, max_batch=max_batch) as (url, app):

        def failing():
            scripts.push(reply(tok, final="an answer never finished"), Fails(3))

        failing()
        r = post_json(url, "/chat/completions", _chat(msgs))
        assert (r.status_code, r.json()) == (500, {"error": {"message": BROKE, "type": "server_error", "param": None, "code": "server_error"}})
        failing()
        status, chunks, done = stream_chat(url, _chat(msgs, stream=True))
        assert status == 200 and done and chunks[-1] == r.json()
        failing()
        r = post_json(url, "/responses", {"model": MODEL_ID, "input": "a question that fails"})
        assert (r.status_code, r.json()["error"]) == (500, {"message": BROKE, "type": "server_error", "param": None, "code": "server_error"})
        failing()
        status, events = stream_responses(url, {"model": MODEL_ID, "input": "a question that fails", "stream": True})
        assert status == 200 and events[-1]["type"] == "response.failed"
        assert events[-1]["response"]["error"] == {"code": "server_error", "message": BROKE}
        failing()
        r = post_json(url, "/messages", anthropic)
        assert (r.status_code, r.json()) == (500, {"type": "error", "error": {"type": "api_error", "message": BROKE}})
        failing()
        events = _anthropic_stream(url, anthropic)
        assert [k for k, _ in events] == ["message_start", "ping", "error"]
        assert events[-1][1] == {"type": "error", "error": {"type": "api_error", "message": BROKE}}
        assert _health(url)["generations"] == {"error": 6}
        rec = FirstLogits()
        scripts.push(reply(tok, final="fine"), rec)
        r = post_json(url, "/chat/completions", _chat(msgs))
        assert r.json()["choices"][0]["message"]["content"] == "fine"
        assert r.json()["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
        [(context, logits)] = rec.firsts
        fresh = np.array(model(mx.array([context]), None, last_only=True)[0, -1])
        assert float(np.linalg.norm(logits - fresh) / np.linalg.norm(fresh)) <= 1e-5


FIRST, SECOND = "the first answer", "the second answer is longer than the first one"


def _two_in_flight(url: str, app, scripts: Scripts, tok, *second_processors, before_release=lambda: None) -> tuple:
    """Two chat requests in one batch: the first held at its first step until the second is queued behind it
    (with `second_processors` before its script), then `before_release()`, then both run. -> their responses."""
    gate = Gate()
    scripts.push(reply(tok, final=FIRST), gate)
    results: dict[str, object] = {}
    a = threading.Thread(target=lambda: results.update(a=post_json(url, "/chat/completions", _chat(_user("first")))))
    a.start()
    assert gate.entered.wait(60)  # the first is decoding, held at its first step
    scripts.push(reply(tok, final=SECOND), *second_processors)
    b = threading.Thread(target=lambda: results.update(b=post_json(url, "/chat/completions", _chat(_user("second")))))
    b.start()
    wait_until(lambda: app.state.backend.worker.waiting == 1, "the second request queued")
    before_release()
    gate.release.set()
    assert join_all([a, b])
    return results["a"], results["b"]


def test_in_a_batch_a_failed_first_sampling_ends_its_request_alone_and_a_failed_step_ends_them_all(model_tok):
    """`--max-batch 2`, two requests in flight. A logits processor that fails at a request's first sampling
    (its prefill's end) ends that request only: the other's answer is whole. One that fails in a shared
    decoding step leaves the whole batch's state unknown: both end with the error, and the batch starts
    clean for the next."""
    model, tok = model_tok
    scripts = Scripts()
    with running_server(model, tok, scripts, max_context=1024, max_batch=2) as (url, app):

        a, b = _two_in_flight(url, app, scripts, tok, Fails(1))
        assert (a.status_code, a.json()["choices"][0]["message"]["content"]) == (200, FIRST)
        assert (b.status_code, b.json()["error"]["message"]) == (500, BROKE)
        a, b = _two_in_flight(url, app, scripts, tok, Fails(4))
        assert [(r.status_code, r.json()["error"]["message"]) for r in (a, b)] == [(500, BROKE), (500, BROKE)]
        scripts.push(reply(tok, final="fine"))
        r = post_json(url, "/chat/completions", _chat(_user("third")))
        assert r.json()["choices"][0]["message"]["content"] == "fine"


def test_in_a_batch_a_failure_reading_a_token_ends_its_request_alone_and_drops_its_state(model_tok, monkeypatch):
    """`--max-batch 2`: reading a generated token fails for one request (a bug in the harmony parser or a
    stop string's matcher, faked): that request ends with the error, the other's answer is whole, and the
    failed one's state is not pooled: its prompt again is computed from scratch."""
    from mlx_oss.server import generation

    model, tok = model_tok
    real, fired = generation._RoundOutput.feed, []

    def feed(self, token):
        if self.step == 2 and not fired:
            fired.append(self)
            raise RuntimeError("the forward pass broke\nsecond line")
        return real(self, token)

    scripts = Scripts()
    with running_server(model, tok, scripts, max_context=1024, max_batch=2) as (url, app):
        a, b = _two_in_flight(url, app, scripts, tok,
                              before_release=lambda: monkeypatch.setattr(generation._RoundOutput, "feed", feed))
        assert (a.status_code, a.json()["error"]["message"]) == (500, BROKE)
        assert b.json()["choices"][0]["message"]["content"] == SECOND
        wait_idle(app)
        scripts.push(reply(tok, final="again"))
        r = post_json(url, "/chat/completions", _chat(_user("first")))
        assert r.json()["choices"][0]["message"]["content"] == "again"
        first, second = (chat_completions.parse_request(_chat(_user(t)), SamplingConfig()).turn.render(tok)[0] for t in ("first", "second"))
        shared = next(i for i, (x, y) in enumerate(zip(first, second)) if x != y)
        assert 0 < r.json()["usage"]["prompt_tokens_details"]["cached_tokens"] <= shared  # B's state, never A's
