"""Issue 25, the server's classes: who may drive it (Host, Origin, content type, /health), that a failure
mid-stream still ends the stream with its final event and keeps the connection, the field checks at
entry, and the stored responses bounded by bytes. A real uvicorn on 127.0.0.1 (server_harness)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import httpx
import pytest

import mlx_oss
from mlx_oss.harmony import Message
from mlx_oss.server import generation
from mlx_oss.server.builtin import ServerTools
from mlx_oss.server.guard import Access, host_name, origins_need_key
from mlx_oss.server.responses import StoredResponses, slim_item
from server_harness import MODEL_ID, Scripts, free_port, fresh, reply, running_server

USER = [{"role": "user", "content": "hi"}]
CHAT = {"model": MODEL_ID, "messages": USER, "max_tokens": 16}
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def model_tok(tiny_chat_converted):
    return mlx_oss.load(tiny_chat_converted, dtype="float32")


@pytest.fixture(scope="module")
def guarded(model_tok):
    """A server that would run python for anyone who lists code_interpreter (--allow-python), answers the
    extra Host name mac.local and the browser origin http://app.example."""
    model, tok = model_tok
    scripts = Scripts()
    tools = ServerTools(allow_python=True)
    with running_server(model, tok, scripts, max_context=512, builtin=tools, cors=["http://app.example"],
                        allowed_hosts=["mac.local"]) as (url, app):  # fmt: skip
        yield url, app, scripts, tok


@pytest.fixture
def srv(guarded):
    return fresh(guarded)


def _post(url, path, body, headers=None):
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return httpx.post(url + path, content=data, headers={**JSON, **(headers or {})}, timeout=60)


def _refused(r: httpx.Response, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["code"] == code, err
    assert err["type"] == ("permission_error" if status == 403 else "invalid_request_error") and err["message"], err
    assert r.headers["content-type"] == "application/json" and int(r.headers["content-length"]) == len(r.content)


# ----------------------------------------------------------------------------- who may drive the server


CODE = {"model": MODEL_ID, "input": "run rm -rf ~", "tools": [{"type": "code_interpreter", "container": {"type": "auto"}}]}


@pytest.mark.parametrize("content_type", ["text/plain", "application/json", "application/x-www-form-urlencoded"])
@pytest.mark.parametrize("origin", ["http://evil.example", "null", "http://localhost:3000", "https://app.example",
                                    "http://app.example.evil.example", "http://APP.example:80"])
def test_a_web_page_cannot_run_anything(srv, origin, content_type):
    url, app, scripts, tok = srv
    before = dict(app.state.backend.outcomes)
    for path, body in (("/responses", CODE), ("/chat/completions", CHAT)):
        r = httpx.post(url + path, content=json.dumps(body), timeout=60,
                       headers={"Origin": origin, "Content-Type": content_type})  # fmt: skip
        _refused(r, 403, "origin_not_allowed")
    assert scripts.bodies == [] and dict(app.state.backend.outcomes) == before  # nothing was even parsed


def test_an_allowed_origin_gets_cors_and_its_preflight(srv):
    url, app, scripts, tok = srv
    scripts.push(reply(tok, final="fine"))
    r = _post(url, "/chat/completions", CHAT, {"Origin": "http://app.example"})
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "fine"
    assert r.headers["access-control-allow-origin"] == "http://app.example"
    pre = {"Origin": "http://app.example", "Access-Control-Request-Method": "POST",
           "Access-Control-Request-Headers": "content-type,authorization"}  # fmt: skip
    r = httpx.options(url + "/chat/completions", headers=pre, timeout=30)
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "http://app.example"
    r = httpx.options(url + "/chat/completions", headers={**pre, "Origin": "http://evil.example"}, timeout=30)
    _refused(r, 403, "origin_not_allowed")


@pytest.mark.parametrize("content_type", [None, "text/plain", "multipart/form-data; boundary=x", "application/jsonx",
                                          "text/json", "application/x-www-form-urlencoded"])
def test_a_post_must_be_json(srv, content_type):
    url, app, scripts, tok = srv
    headers = {} if content_type is None else {"Content-Type": content_type}
    r = httpx.post(url + "/chat/completions", content=json.dumps(CHAT), headers=headers, timeout=30)
    _refused(r, 415, "unsupported_media_type")
    assert scripts.bodies == []


def test_json_with_parameters_is_json(srv):
    url, app, scripts, tok = srv
    scripts.push(reply(tok, final="ok"))
    r = _post(url, "/chat/completions", CHAT, {"Content-Type": "Application/JSON; charset=utf-8"})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8000", "localhost.evil.example", "127.0.0.1.nip.io",
                                  "127.0.0.2", "[::2]", "0.0.0.0", "mac.local.evil.example", "xlocalhost", "localhost:x",
                                  "", "[::1", "evil.example@localhost"])
def test_a_rebinding_page_is_refused_by_host(srv, host):
    url, app, scripts, tok = srv
    for method, path in (("POST", "/responses"), ("GET", "/models"), ("GET", "/health")):
        r = httpx.request(method, url + path, content=json.dumps(CODE) if method == "POST" else None, timeout=30,
                          headers={**JSON, "Host": host})  # fmt: skip
        _refused(r, 403, "host_not_allowed")
    assert scripts.bodies == []


@pytest.mark.parametrize("host", ["localhost", "LOCALHOST:1234", "127.0.0.1", "127.0.0.1:80", "[::1]:8000", "[::1]",
                                  "localhost.", "mac.local", "Mac.Local:8000"])
def test_the_names_of_this_machine_are_answered(srv, host):
    url, app, scripts, tok = srv
    assert httpx.get(url + "/models", headers={"Host": host}, timeout=30).status_code == 200


def test_access_rules_directly():
    a = Access("192.168.1.5", ("box.lan",), ())
    assert a.host_names() == {"localhost", "127.0.0.1", "::1", "192.168.1.5", "box.lan"}
    assert Access("0.0.0.0").host_names() == {"localhost", "127.0.0.1", "::1"}  # a wildcard bind is no name
    assert Access("::").host_names() == {"localhost", "127.0.0.1", "::1"}
    assert host_name("[::1]:80") == "::1" and host_name("Foo.Example.:9") == "foo.example" and host_name("a:b") is None
    assert host_name("XBOX.lan") == "xbox.lan" and host_name(":80") is None and host_name("") is None
    assert Access("MAC.LAN").host_names() >= {"mac.lan"} and Access("[fd00::5]").host_names() >= {"fd00::5"}
    assert Access("XMAC.lan", ("Box.LAN.", "[fd00::7]", "XBOX.lan")).host_names() == {
        "localhost", "127.0.0.1", "::1", "xmac.lan", "box.lan", "fd00::7", "xbox.lan"}  # fmt: skip
    assert origins_need_key(["*"], None) == ("--cors '*' lets every web page you open use this server; it needs "
                                             "--api-key (or MLX_OSS_API_KEY)")  # fmt: skip
    assert origins_need_key(["*"], "k") is None and origins_need_key(["http://a"], None) is None


def test_refusals_quote_what_was_sent_and_clip_it(srv):
    url, app, scripts, tok = srv
    r = httpx.get(url + "/models", headers={"Host": "evil.example"}, timeout=30)
    assert r.json()["error"]["message"] == ("Host 'evil.example' is not allowed: this server answers 127.0.0.1, ::1, "
                                            "localhost, mac.local (add names with --allowed-hosts).")  # fmt: skip
    r = httpx.get(url + "/models", headers={"Host": "h" * 300}, timeout=30)
    assert r.json()["error"]["message"].startswith(f"Host '{'h' * 99}…' is not allowed")
    r = httpx.get(url + "/models", headers={"Host": "h" * 100}, timeout=30)
    assert r.json()["error"]["message"].startswith(f"Host '{'h' * 100}' is not allowed")  # 100 characters: whole
    r = httpx.post(url + "/chat/completions", headers={"Origin": "http://evil.example"}, json=CHAT, timeout=30)
    assert r.json()["error"]["message"] == ("Origin 'http://evil.example' is not allowed: a web page may use this "
                                            "server only if it was started with --cors ORIGIN.")  # fmt: skip
    r = httpx.post(url + "/chat/completions", content=json.dumps(CHAT), timeout=30)
    assert r.json()["error"]["message"] == "Content-Type must be application/json, not (none)."
    r = httpx.post(url + "/chat/completions", content=json.dumps(CHAT), headers={"Content-Type": "Text/Plain"}, timeout=30)
    assert r.json()["error"]["message"] == "Content-Type must be application/json, not 'text/plain'."
    for host in (":8000", "[]:80"):  # no name at all
        _refused(httpx.get(url + "/models", headers={"Host": host}, timeout=30), 403, "host_not_allowed")


def test_a_request_without_host_is_refused(srv):
    url, app, scripts, tok = srv
    port = int(url.split(":")[2].split("/")[0])
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"GET /v1/models HTTP/1.0\r\n\r\n")  # HTTP/1.0 needs no Host header
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.split(b" ")[1] == b"403", raw
    assert json.loads(body)["error"]["message"].startswith("Host (none) is not allowed")


def test_any_host_and_any_origin_when_asked(model_tok):
    model, tok = model_tok
    scripts = Scripts()
    with running_server(model, tok, scripts, cors=["*"], allowed_hosts=["*"], api_key="k") as (url, app):
        h = {"Host": "anything.example", "Origin": "http://any.example", "Authorization": "Bearer k"}
        assert httpx.get(url + "/models", headers=h, timeout=30).status_code == 200


def test_cors_star_without_a_key_is_refused_by_the_cli(tiny_chat_converted):
    env = {**os.environ, "MLX_OSS_API_KEY": ""}
    cmd = [sys.executable, "-m", "mlx_oss.cli.main", "serve", "--model", str(tiny_chat_converted), "--cors", "*",
           "--port", str(free_port())]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)  # a server that started would time out
    err = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(err) == 1 and "--cors '*'" in err[0] and "--api-key" in err[0], r.stderr


def test_health_shows_state_only_to_the_key_holder(model_tok):
    model, tok = model_tok
    with running_server(model, tok, Scripts(), api_key="s3cret") as (url, app):
        base = url.removesuffix("/v1")
        for headers in ({}, {"Authorization": "Bearer s3cre"}, {"Authorization": "Bearer s3cret2"}, {"Authorization": "s3cret"}):
            r = httpx.get(base + "/health", headers=headers, timeout=30)
            assert r.status_code == 200 and r.json() == {"status": "ok"}
        full = httpx.get(base + "/health", headers={"Authorization": "Bearer s3cret"}, timeout=30).json()
        assert full["model"] == MODEL_ID and {"busy", "queued", "generations"} <= set(full)


# ----------------------------------------------------------------------------- failures end streams


def _broken_sampler(*a, **kw):
    raise RuntimeError("the sampler broke\nsecond line")


def test_a_failure_in_the_worker_ends_every_stream_and_keeps_the_connection(srv, monkeypatch):
    url, app, scripts, tok = srv
    monkeypatch.setattr(generation, "Sampler", _broken_sampler)
    with httpx.Client(timeout=60, headers=JSON) as client:
        for _ in range(3):  # a 500 once reset the next request on the same keep-alive connection
            r = client.post(url + "/chat/completions", content=json.dumps(CHAT))
            assert r.status_code == 500 and r.json()["error"]["message"] == "Internal error: RuntimeError: the sampler broke"
            r = client.post(url + "/chat/completions", content=json.dumps({**CHAT, "stream": True}))
            frames = [f for f in r.text.split("\n\n") if f]
            assert r.status_code == 200 and frames[-1] == "data: [DONE]"
            assert json.loads(frames[-2][6:])["error"]["code"] == "server_error"
            r = client.post(url + "/responses", content=json.dumps({"model": MODEL_ID, "input": "x", "stream": True}))
            frames = [f for f in r.text.split("\n\n") if f]
            assert frames[-1].startswith("event: response.failed\n")
            failed = json.loads(frames[-1].split("\n")[1][6:])["response"]
            assert failed["status"] == "failed" and failed["error"]["code"] == "server_error"
            r = client.post(url + "/responses", content=json.dumps({"model": MODEL_ID, "input": "x"}))
            assert r.status_code == 500 and r.json()["error"]["type"] == "server_error"
            assert client.get(url + "/models").status_code == 200
        monkeypatch.undo()
        scripts.push(reply(tok, final="back"))
        r = client.post(url + "/chat/completions", content=json.dumps(CHAT))
        assert r.json()["choices"][0]["message"]["content"] == "back"


def test_a_failure_on_the_server_side_of_a_stream_ends_it_too(srv, monkeypatch):
    from mlx_oss.server import chat_completions, responses

    url, app, scripts, tok = srv

    def boom(self, ev):
        raise ValueError("feed broke")

    monkeypatch.setattr(chat_completions.ChatAccumulator, "feed", boom)
    monkeypatch.setattr(responses.ResponseBuilder, "feed", boom)
    scripts.push(reply(tok, final="x"))
    r = _post(url, "/chat/completions", {**CHAT, "stream": True})
    frames = [f for f in r.text.split("\n\n") if f]
    assert frames[-1] == "data: [DONE]" and "feed broke" in json.loads(frames[-2][6:])["error"]["message"]
    scripts.push(reply(tok, final="x"))
    r = _post(url, "/responses", {"model": MODEL_ID, "input": "x", "stream": True})
    assert r.text.strip().split("\n\n")[-1].startswith("event: response.failed\n")


@pytest.mark.parametrize("body,param", [
    ({"seed": -1}, "seed"), ({"seed": 2**64}, "seed"), ({"seed": 1.5}, "seed"), ({"seed": "1"}, "seed"),
    ({"instructions": "\ud800"}, "instructions"), ({"user": "a\udfffb"}, "user"),
    ({"metadata": {"k": "\udc00"}}, "metadata.k"), ({"metadata": {"\ud800": "v"}}, "metadata"),
])  # fmt: skip
@pytest.mark.parametrize("stream", [False, True])
def test_fields_that_would_break_a_stream_are_refused_before_it_starts(srv, body, param, stream):
    url, app, scripts, tok = srv
    payload = json.dumps({"model": MODEL_ID, "input": "x", "stream": stream, **body}).encode()
    r = _post(url, "/responses", payload)
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
    assert scripts.bodies == []


def test_the_edges_of_the_seed_range_are_accepted(srv):
    url, app, scripts, tok = srv
    for s in (0, 2**64 - 1):
        scripts.push(reply(tok, final="ok"))
        r = _post(url, "/chat/completions", {**CHAT, "seed": s})
        assert r.status_code == 200, r.text


@pytest.mark.parametrize("raw,param", [
    (b'{"model": "x", "messages": [], "temperature": NaN}', None),
    (b'{"model": "x", "messages": [], "temperature": Infinity}', None),
    (b'{"model": "x", "messages": [], "temperature": 1e999}', "temperature"),
    (b'{"model": "x", "messages": [], "max_tokens": ' + b"9" * 5000 + b"}", None),
    (b'{"model": "x", "messages": [], "max_tokens": ' + b"9" * 30 + b"}", "max_tokens"),
    (b'{"model": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", None),
    (b'{"model": "gpt-oss-tiny", "messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function", '
     b'"function": {"name": "f", "parameters": ' + b'{"type": "array", "items": ' * 70 + b"{}" + b"}" * 70 + b"}}]}",
     "tools[0].function.parameters" + ".items" * 60),  # the object at depth 64
    (b'\xff\xfe{', None),
])  # fmt: skip
def test_json_that_python_accepts_but_no_api_does(srv, raw, param):
    url, app, scripts, tok = srv
    r = _post(url, "/chat/completions", raw)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and "\n" not in err["message"] and len(err["message"]) < 400, err


@pytest.mark.parametrize("field,value", [
    ("model", ["gpt"]), ("model", {"a": 1}), ("tool_choice", {"type": "function", "function": {"name": ["f"]}}),
    ("tool_choice", {"type": "function", "name": {"x": 1}}),
])  # fmt: skip
def test_ids_and_names_of_the_wrong_type(srv, field, value):
    url, app, scripts, tok = srv
    for path, base in (("/chat/completions", CHAT), ("/responses", {"model": MODEL_ID, "input": "x"})):
        r = _post(url, path, {**base, field: value})
        assert r.status_code == 400 and r.json()["error"]["param"].startswith(field), r.text


@pytest.mark.parametrize("items,param", [
    ([{"type": "function_call", "name": "f", "arguments": "{}", "call_id": ["c"]}], "input[0].call_id"),
    ([{"type": "reasoning", "content": [{"type": "reasoning_text", "text": 5}]}], "input[0].content[0].text"),
    ([{"type": "code_interpreter_call", "id": "ci_1", "code": "1", "outputs": 7}], "input[0].outputs"),
    ([{"type": "code_interpreter_call", "id": "ci_1", "code": "1", "outputs": [{"type": "logs", "logs": 3}]}],
     "input[0].outputs[0].logs"),
])  # fmt: skip
def test_input_items_of_the_wrong_shape(srv, items, param):
    url, app, scripts, tok = srv
    r = _post(url, "/responses", {"model": MODEL_ID, "input": items})
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text


def test_a_tool_call_id_that_is_a_list(srv):
    url, app, scripts, tok = srv
    msgs = [*USER, {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": ["c1"], "content": "1"}]  # fmt: skip
    r = _post(url, "/chat/completions", {**CHAT, "messages": msgs})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages[2].tool_call_id", r.text


def test_a_schema_default_of_nan(srv):
    url, app, scripts, tok = srv
    raw = (b'{"model": "gpt-oss-tiny", "messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function", '
           b'"function": {"name": "f", "parameters": {"type": "object", "properties": {"x": {"type": "number", '
           b'"default": NaN}}}}}]}')  # fmt: skip
    r = _post(url, "/chat/completions", raw)
    assert r.status_code == 400 and "NaN" in r.json()["error"]["message"]


# ----------------------------------------------------------------------------- stored responses, by bytes


@pytest.mark.parametrize("metadata,ok", [
    ({f"k{i}": "v" for i in range(16)}, True), ({f"k{i}": "v" for i in range(17)}, False),
    ({"k" * 64: "v" * 512}, True), ({"k" * 65: "v"}, False), ({"k": "v" * 513}, False), ({"k": 1}, False),
    ({"k": None}, False), ("tags", False),
])  # fmt: skip
def test_metadata_is_capped_as_openai_caps_it(srv, metadata, ok):
    url, app, scripts, tok = srv
    scripts.push(reply(tok, final="m"))
    r = _post(url, "/responses", {"model": MODEL_ID, "input": "x", "metadata": metadata})
    if ok:
        assert r.status_code == 200 and r.json()["metadata"] == metadata
    else:
        assert r.status_code == 400 and r.json()["error"]["param"].startswith("metadata"), r.text


def test_the_stored_responses_stay_within_their_bytes(model_tok):
    model, tok = model_tok
    scripts = Scripts()
    budget = 80_000
    with running_server(model, tok, scripts, stored_bytes=budget, max_context=512) as (url, app):
        ids = []
        for i in range(12):
            scripts.push(reply(tok, final=f"answer {i}"))
            item = {"type": "message", "role": "user", "content": f"question {i}", "junk": "j" * 20_000,
                    "extra": {"deep": ["x" * 5000]}}  # fmt: skip
            meta = {f"key{k}": "v" * 512 for k in range(16)}
            r = _post(url, "/responses", {"model": MODEL_ID, "input": [item], "metadata": meta})
            assert r.status_code == 200, r.text
            ids.append(r.json()["id"])
        stored = app.state.stored
        assert 0 < stored.bytes <= budget and 1 < len(stored) < 12
        kept = [i for i in ids if _post(url, "/responses", {"model": MODEL_ID, "input": "again", "previous_response_id": i,
                                                            "max_output_tokens": 1}).status_code == 200]  # fmt: skip
        assert kept and kept == ids[-len(kept):]  # the oldest went first
        _refused(_post(url, "/responses", {"model": MODEL_ID, "input": "x", "previous_response_id": ids[0]}), 404,
                 "response_not_found")  # fmt: skip
        items, _ = stored.get(ids[-1])
        assert items == [{"type": "message", "role": "user", "content": "question 11"}]  # what a later turn renders


def test_stored_responses_unit():
    s = StoredResponses(max_bytes=3000)
    call = (Message.tool_call("browser.search", "{}"), Message.tool_result("browser", "page"))
    assert s.put({"id": "r1", "output": []}, [{"type": "message", "role": "user", "content": "a" * 1000}], {"ws_1": call})
    assert s.put({"id": "r2", "output": []}, [{"type": "message", "role": "user", "content": "b" * 1000}])
    first = s.bytes
    assert s.put({"id": "r2", "output": []}, [{"type": "message", "role": "user", "content": "b" * 1000}])
    assert s.bytes == first  # the same id again replaces, never double counts
    assert s.tool_messages("ws_1") == call
    assert s.put({"id": "r3", "output": []}, [{"type": "message", "role": "user", "content": "c" * 1000}])
    assert s.tool_messages("ws_1") is None and len(s) == 2 and s.bytes <= 3000  # r1 went, with its tool messages
    assert not s.put({"id": "big", "output": []}, [{"type": "message", "role": "user", "content": "d" * 5000}])
    assert len(s) == 2 and s.bytes <= 3000
    assert slim_item({"type": "code_interpreter_call", "id": "ci", "code": "1", "x": 1,
                      "outputs": [{"type": "logs", "logs": "L"}, {"type": "image", "url": "data:..."}]}) == \
        {"type": "code_interpreter_call", "id": "ci", "code": "1", "outputs": [{"type": "logs", "logs": "L"}]}  # fmt: skip


# ----------------------------------------------------------------------------- the API key and its near misses


@pytest.fixture(scope="module")
def keyed(model_tok):
    model, tok = model_tok
    scripts = Scripts()
    with running_server(model, tok, scripts, api_key="s3cret-Key") as (url, app):
        yield url, app, scripts, tok


KEY = "s3cret-Key"
NEAR_MISSES = sorted({KEY[:i] for i in range(1, len(KEY))} | {KEY[i:] for i in range(1, len(KEY))}
                     | {KEY + "x", "x" + KEY, KEY.upper(), KEY.lower(), KEY.swapcase(), KEY[:-1] + "z", KEY + KEY,
                        KEY.replace("-", "_"), f"{KEY[:4]} {KEY[4:]}"})  # fmt: skip


@pytest.mark.parametrize("given", NEAR_MISSES)
def test_every_near_miss_of_the_key_is_refused(keyed, given):
    url, app, scripts, tok = keyed
    for headers in ({"Authorization": f"Bearer {given}"}, {"Authorization": f"bearer {given}"}):
        for method, path in (("GET", "/models"), ("POST", "/chat/completions"), ("POST", "/responses"),
                             ("GET", "/responses/resp_x"), ("GET", "/models/gpt-oss-tiny")):  # fmt: skip
            r = httpx.request(method, url + path, headers={**JSON, **headers}, timeout=30,
                              content=json.dumps(CHAT) if method == "POST" else None)  # fmt: skip
            _refused(r, 401, "invalid_api_key")
    assert scripts.bodies == []


@pytest.mark.parametrize("auth", [KEY, f"Basic {KEY}", f"Token {KEY}", f"Bearer{KEY}", f"Bearer: {KEY}", ""])
def test_the_key_outside_a_bearer_header_is_refused(keyed, auth):
    url, app, scripts, tok = keyed
    _refused(httpx.get(url + "/models", headers={"Authorization": auth}, timeout=30), 401, "invalid_api_key")
    # x-api-key (Anthropic's header) is taken on Anthropic's routes and /v1/models, which both SDKs read; not here
    r = httpx.post(url + "/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
                   headers={"X-Api-Key": KEY}, timeout=30)  # fmt: skip
    _refused(r, 401, "invalid_api_key")


@pytest.mark.parametrize("auth", [f"Bearer {KEY}", f"bearer {KEY}", f"BEARER {KEY}", f"Bearer  {KEY}"])
def test_the_key_in_a_bearer_header_is_accepted(keyed, auth):
    url, app, scripts, tok = keyed
    assert httpx.get(url + "/models", headers={"Authorization": auth}, timeout=30).status_code == 200


# ----------------------------------------------------------------------------- the schema's words


M = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("schema,body,message,param", [
    ("CHAT", {"messages": M, "temperature": "hot"}, "'temperature' must be a number, got a string", "temperature"),
    ("CHAT", {"messages": M, "temperature": -1}, "'temperature' must be >= 0", "temperature"),
    ("CHAT", {"messages": M, "temperature": 3}, "'temperature' must be <= 2", "temperature"),
    ("CHAT", {"messages": M, "top_p": 0}, "'top_p' must be > 0", "top_p"),
    ("CHAT", {"messages": M, "stop": ""}, "'stop' must have at least 1 character(s)", "stop"),
    ("CHAT", {"messages": M, "stop": ["a"] * 5}, "'stop' must have at most 4 items", "stop"),
    ("CHAT", {"messages": []}, "'messages' must have at least 1 item(s)", "messages"),
    ("CHAT", {"messages": M, "metadata": {f"k{i}": "v" for i in range(17)}}, "'metadata' must have at most 16 keys",
     "metadata"),
    ("CHAT", {"messages": M, "metadata": {"k": "v" * 513}}, "'metadata.k' must have at most 512 characters", "metadata.k"),
    ("CHAT", {"messages": M, "metadata": {"k" * 65: "v"}}, "'metadata' keys must have at most 64 characters", "metadata"),
    ("CHAT", {}, "'messages' is required", "messages"),
    ("CHAT", {"messages": M, "tools": [{"type": "function", "function": {"name": ""}}]},
     "'tools[0].function.name' must have at least 1 character(s)", "tools[0].function.name"),
    ("CHAT", {"messages": M, "seed": True}, "'seed' must be an integer, got a boolean", "seed"),
    ("CHAT", {"messages": M, "stream": 1}, "'stream' must be a boolean, got an integer", "stream"),
    ("CHAT", {"messages": M, "n": 1.5}, "'n' must be an integer, got a number", "n"),
    ("CHAT", {"messages": M, "stream_options": None, "tool_choice": 3},
     "'tool_choice' must be a string or an object, got an integer", "tool_choice"),
    ("CHAT", {"messages": [None]}, "'messages[0]' must be an object, got null", "messages[0]"),
    ("CHAT", {"messages": M, "stream_options": {"include_usage": "yes"}},
     "'stream_options.include_usage' must be a boolean, got a string", "stream_options.include_usage"),
    ("CHAT", {"messages": M, "tools": [{"function": {"name": "f", "parameters": []}}]},
     "'tools[0].function.parameters' must be an object, got an array", "tools[0].function.parameters"),
    ("CHAT", {"messages": M, "logit_bias": {"x": 1}},
     "'logit_bias' keys must be token ids (decimal integers, no leading zeros)", "logit_bias"),
    ("RESPONSES", {"input": "x", "logit_bias": {"01": 1}},
     "'logit_bias' keys must be token ids (decimal integers, no leading zeros)", "logit_bias"),
    ("CHAT", {"messages": M, "logit_bias": {"5": 101}}, "'logit_bias.5' must be <= 100", "logit_bias.5"),
    ("RESPONSES", {"input": {"a": 1}}, "'input' must be a string or an array, got an object", "input"),
    ("RESPONSES", {"input": "x", "metadata": []}, "'metadata' must be an object, got an array", "metadata"),
    ("RESPONSES", {"input": "x", "reasoning": {"summary": "weird"}},
     "'reasoning.summary' must be one of \"auto\", \"concise\", \"detailed\", \"none\", null", "reasoning.summary"),
    ("RESPONSES", {"input": "x", "tools": [{"type": "function", "name": "f", "parameters": "x"}]},
     "'tools[0].parameters' must be an object, got a string", "tools[0].parameters"),
    ("RESPONSES", {"input": "x", "max_output_tokens": 0}, "'max_output_tokens' must be >= 1", "max_output_tokens"),
    ("RESPONSES", {"input": "x", "max_output_tokens": 2**31}, "'max_output_tokens' must be <= 2147483647",
     "max_output_tokens"),
])  # fmt: skip
def test_each_schema_rule_reads_as_one_line_naming_the_field(schema, body, message, param):
    from mlx_oss.server import request_body
    from mlx_oss.server.errors import APIError

    with pytest.raises(APIError) as e:
        request_body.read_body(json.dumps(body).encode(), getattr(request_body, schema))
    assert (e.value.status, e.value.message, e.value.param) == (400, message, param)


def test_read_body_returns_the_body_it_checked():
    from mlx_oss.server.request_body import CHAT, read_body

    body = {"messages": M, "temperature": 0.5, "seed": 2**64 - 1, "metadata": {"k" * 64: "v" * 512}, "extra": [1]}
    assert read_body(json.dumps(body).encode(), CHAT) == body


def test_a_lone_surrogate_reads_as_such():
    from mlx_oss.server.errors import APIError
    from mlx_oss.server.request_body import RESPONSES, read_body

    with pytest.raises(APIError) as e:
        read_body(b'{"input": "x", "metadata": {"k": "a\\udfffb"}}', RESPONSES)
    assert (e.value.message, e.value.param) == (
        "Text holds a lone UTF-16 surrogate (\\ud800-\\udfff escape without its pair), which is not a character.",
        "metadata.k")  # fmt: skip


def test_what_translation_raises_is_the_bodys_fault(caplog):
    from mlx_oss.server.app import _failure, _translate
    from mlx_oss.server.errors import APIError

    def deep():
        raise RecursionError("maximum recursion depth exceeded")

    def odd():
        raise KeyError("tools")

    with pytest.raises(APIError) as e:
        _translate(deep)
    assert (e.value.status, e.value.message, e.value.param) == (
        400, "The request is too large or too deeply nested to translate.", None)  # fmt: skip
    with caplog.at_level("WARNING", logger="mlx_oss.server"), pytest.raises(APIError) as e:
        _translate(odd)
    assert (e.value.status, e.value.message) == (400, "The request could not be read: KeyError: 'tools'")
    [record] = [r for r in caplog.records if r.name == "mlx_oss.server"]
    assert record.getMessage() == "a request body the schema let through failed in translation"
    assert record.exc_info and record.exc_info[0] is KeyError  # the log says where, to add the rule
    with pytest.raises(APIError) as e:
        _translate(lambda: (_ for _ in ()).throw(APIError(429, "busy")))
    assert e.value.status == 429  # an API error passes as it is
    assert _failure(RuntimeError())["error"]["message"] == "Internal error: RuntimeError: "
