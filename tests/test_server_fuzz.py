"""Bounded property-based fuzzing of the three APIs on a real server (issue 25, class 3; issue 29: Messages).

Bodies are generated from the fields the two APIs accept (every property path of the request schemas in
mlx_oss/server/request_body.py, array items included), each starting from a valid request with one to
three fields replaced by hostile JSON: wrong types, NaN/Infinity/1e999, integers of thousands of digits,
seeds below 0 or past 2^64, lone surrogates, 100,000-deep nesting, long strings, plus the values that reach
deeper code (roles, item types, tool types). For every body: no 5xx, every error in its API's shape
(OpenAI's; Anthropic's for /messages), a 200 stream ends with its documented final event. Afterwards the server still answers on the same
keep-alive connection.

`FUZZ_EXAMPLES=5000 python -m pytest tests/test_server_fuzz.py` runs a longer campaign by hand (the
suite runs 300 bodies, seeded, in well under a minute of requests).
"""

from __future__ import annotations

import copy
import itertools
import json
import os
import threading

import httpx
import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

import mlx_oss
from mlx_oss.sampling import ScriptedTokens
from mlx_oss.server.request_body import CHAT, MESSAGES, RESPONSES
from server_harness import MODEL_ID, reply, running_server, sse_frames

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "300"))

HUGE_INT = "\x00HUGE\x00"  # serialized as an integer literal of 5,000 digits
DEEP = "\x00DEEP\x00"  # serialized as arrays nested 100,000 deep
RAW = {HUGE_INT: "9" * 5000, DEEP: "[" * 100_000 + "]" * 100_000}


def schema_paths(schema: dict, prefix: tuple = ()) -> list[tuple]:
    """Every property path of a request schema ('items' as index 0)."""
    out = []
    for key, sub in (schema.get("properties") or {}).items():
        out.append((*prefix, key))
        out += schema_paths(sub, (*prefix, key))
    if isinstance(schema.get("items"), dict):
        out += schema_paths(schema["items"], (*prefix, 0))
    return out


WORDS = ["user", "assistant", "system", "developer", "tool", "function", "message", "reasoning", "function_call",
         "function_call_output", "web_search_call", "code_interpreter_call", "web_search", "code_interpreter",
         "json_schema", "json_object", "text", "auto", "none", "required", "low", "high", "call_1", MODEL_ID,
         "input_text", "output_text", "namespace", "object", "string", "tool_use", "tool_result", "thinking", "any",
         "tool", "enabled", "disabled", "toolu_1"]  # fmt: skip
leaf = (
    st.none() | st.booleans() | st.integers(-(2**70), 2**70)
    | st.sampled_from([-1, 0, 1, 2, 2**31, 2**63, 2**64 - 1, 2**64, -(2**64), HUGE_INT, DEEP])
    | st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([1e300, -0.0, 0.5])
    | st.text(max_size=12) | st.sampled_from(WORDS + ["\ud800", "a\udfffb", "x" * 700, "\x00", "é😀"])
)  # fmt: skip
value = st.recursive(
    leaf, lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.sampled_from(["type", "name", "text", "role",
    "content", "function", "schema", "default", "properties", "items", "$ref"]) | st.text(max_size=6), kids, max_size=3),
    max_leaves=10,
)  # fmt: skip

CHAT_BASE = {"model": MODEL_ID, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
RESPONSES_BASE = {"model": MODEL_ID, "input": [{"type": "message", "role": "user", "content": "hi"}], "max_output_tokens": 8}
MESSAGES_BASE = {"model": MODEL_ID, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
APIS = {"/chat/completions": (CHAT_BASE, schema_paths(CHAT)), "/responses": (RESPONSES_BASE, schema_paths(RESPONSES)),
        "/messages": (MESSAGES_BASE, schema_paths(MESSAGES))}  # fmt: skip


def put(body: dict, path: tuple, v) -> None:
    """Set body[path] = v, making the containers on the way."""
    node = body
    for key, nxt in zip(path, path[1:]):
        holder_ok = isinstance(node, dict) if isinstance(key, str) else isinstance(node, list)
        if not holder_ok:
            return
        if isinstance(key, int):
            while len(node) <= key:
                node.append({})
        child = node[key] if (isinstance(key, int) or key in node) else None
        want = list if isinstance(nxt, int) else dict
        if not isinstance(child, want):
            child = want()
            node[key] = child
        node = child
    last = path[-1]
    if isinstance(last, int) and isinstance(node, list):
        while len(node) <= last:
            node.append({})
        node[last] = v
    elif isinstance(last, str) and isinstance(node, dict):
        node[last] = v


@st.composite
def requests(draw):
    path = draw(st.sampled_from(sorted(APIS)))
    base, paths = APIS[path]
    if draw(st.integers(0, 19)) == 0:  # now and then not an object at all
        return path, draw(value)
    body = copy.deepcopy(base)
    body["stream"] = draw(st.booleans())
    for p in draw(st.lists(st.sampled_from(paths), min_size=1, max_size=3)):
        put(body, p, draw(value))
    return path, body


def dump(body) -> bytes:
    text = json.dumps(body, allow_nan=True)  # NaN / Infinity literals, surrogates as \ud800 escapes
    for marker, raw in RAW.items():
        text = text.replace(json.dumps(marker), raw)
    return text.encode()


def check_error(path: str, r: httpx.Response) -> None:
    body = r.json()
    if path == "/messages":  # Anthropic's shape
        assert body["type"] == "error" and set(body) == {"type", "error"}, body
        err = body["error"]
        assert set(err) == {"type", "message"} and err["type"].endswith("_error"), err
    else:
        err = body["error"]
        assert set(err) == {"message", "type", "param", "code"}, err
    assert isinstance(err["message"], str) and err["message"] and "Traceback" not in err["message"]
    assert "\n" not in err["message"] and len(err["message"]) < 2000


def check_stream(path: str, text: str) -> None:
    frames = [f for f in text.split("\n\n") if f.strip()]
    assert frames, "a 200 stream with no event"
    if path == "/chat/completions":
        assert frames[-1] == "data: [DONE]", frames[-1][:300]
        last = json.loads(frames[-2][len("data: "):])
        assert "error" in last or last.get("choices") == [] or last["choices"][0]["finish_reason"], last
    elif path == "/messages":
        kind = frames[-1].split("\n")[0]
        assert kind in ("event: message_stop", "event: error"), kind
    else:
        kind = frames[-1].split("\n")[0]
        assert kind in ("event: response.completed", "event: response.incomplete", "event: response.failed"), kind


class Steps:
    """The sampling hook: each request gets the script "ok" and a processor that changes nothing but notes
    how many jobs the worker is running at each step (`most`: proof that fuzzed requests shared a batch)."""

    def __init__(self, script: list[int]) -> None:
        self.script, self.app, self.most = script, None, 0

    def __call__(self, body):
        return [ScriptedTokens(self.script), self.note]

    def note(self, context, logits):
        self.most = max(self.most, self.app.state.backend.worker.running)
        return logits


@pytest.fixture(scope="module", params=[1, 3], ids=["alone", "max-batch-3"])
def fuzz_server(tiny_chat_converted, request):
    """The server, one request at a time (the engine) or `--max-batch 3` (issue 28: every generation a
    program in the `BatchRunner`, beside the background requests of the test)."""
    model, tok = mlx_oss.load(tiny_chat_converted, dtype="float32")
    hook = Steps(reply(tok, final="ok"))
    with running_server(model, tok, hook, max_context=192, max_queue=4, body_limit=1 << 20,
                        max_batch=request.param) as (url, app):  # fmt: skip
        hook.app = app
        with httpx.Client(timeout=120) as client:
            yield url, app, client, hook


def _background(url: str, stop: threading.Event, got: list) -> None:
    """Valid requests one after another until `stop` (batched with the fuzzed ones), streamed or not, ended
    by the script (max_tokens 8) or by the limit (4: the script's "ok" but not its <|return|>): (status, the
    reply's text, its finish_reason) of each, and what it should be."""
    with httpx.Client(timeout=120) as client:
        for i in itertools.count():
            if stop.is_set():
                return
            stream, limit = i % 2 == 1, 8 if i % 4 < 2 else 4
            r = client.post(url + "/chat/completions", json={**CHAT_BASE, "stream": stream, "max_tokens": limit})
            want = (200, "ok", "stop" if limit == 8 else "length")
            if r.status_code != 200:
                got.append(((r.status_code, r.text[:300]), want))
            elif stream:
                chunks = [json.loads(f[6:]) for f in sse_frames(r.text) if f.startswith("data: {")]
                choices = [c for ch in chunks for c in ch["choices"]]
                text = "".join(c["delta"].get("content") or "" for c in choices)
                got.append(((200, text, [c["finish_reason"] for c in choices if c["finish_reason"]][-1]), want))
            else:
                c = r.json()["choices"][0]
                got.append(((200, c["message"]["content"], c["finish_reason"]), want))


def test_fuzzed_bodies_never_get_a_5xx_and_the_server_keeps_answering(fuzz_server):
    """With `max_batch` 3 a background client keeps a valid request in flight the whole time, so fuzzed
    generations share the batch with it: no 5xx, and the valid ones are all answered "ok"."""
    url, app, client, hook = fuzz_server
    batched = app.state.backend.max_batch > 1
    stop, background = threading.Event(), []
    thread = threading.Thread(target=_background, args=(url, stop, background), daemon=True)
    if batched:
        thread.start()
    seen: dict[int, int] = {}
    by_api: dict[str, set[int]] = {}  # status classes each API answered

    @seed(25)
    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])  # fmt: skip
    @given(requests())
    def one(req):
        path, body = req
        r = client.post(url + path, content=dump(body), headers={"Content-Type": "application/json"})
        seen[r.status_code] = seen.get(r.status_code, 0) + 1
        by_api.setdefault(path, set()).add(r.status_code // 100)
        assert r.status_code < 500, (r.status_code, r.text[:500], dump(body)[:500])
        if r.status_code >= 400:
            check_error(path, r)
        elif isinstance(body, dict) and body.get("stream") is True:
            check_stream(path, r.text)

    try:
        one()
    finally:
        stop.set()
    if batched:
        thread.join(60)
        assert not thread.is_alive() and len(background) > 10
        assert [got for got, want in background if got != want] == []
        assert hook.most >= 2  # fuzzed generations were batched with the background ones
    assert seen.get(200, 0) > 10 and sum(v for k, v in seen.items() if 400 <= k < 500) > 50, seen
    assert by_api == {path: {2, 4} for path in APIS}, by_api  # every API both served and refused
    # the same keep-alive connection still works, and so does a fresh one
    assert client.get(url + "/models").status_code == 200
    ok = client.post(url + "/chat/completions", json={**CHAT_BASE, "stream": False})
    assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"] == "ok"
    assert httpx.get(url + "/models", timeout=30).status_code == 200
