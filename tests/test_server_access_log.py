"""The access log (mlx_oss/server/access_log.py): one line per request on `mlx_oss.server.access` with the
method, path, status, duration and, when a generation ran, its token counts; never a body, a header
value or the API key. In process (a real uvicorn, scripted replies, every logger captured at DEBUG) and
as `mlx-oss serve` writes it to stderr, with `--log-level`."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time

import httpx
import pytest

import mlx_oss
from mlx_oss.cli.main import build_parser
from mlx_oss.server.access_log import LOGGER
from mlx_oss.server.cli import configure_logging
from server_harness import MODEL_ID, Scripts, free_port, reply, running_server, wait_idle

KEY = "sk-access-log-0b7c41e9"
WRONG = "sk-not-the-key-93aa"
MARKER = "body-marker-5f2d"  # in every request body; must never reach the log
LINE = re.compile(r'^(?P<client>\S+) "(?P<method>[A-Z]+) (?P<path>\S+)" (?P<status>\d{3}|-) (?P<seconds>\d+\.\d{3})s'
                  r'(?: prompt_tokens=(?P<prompt>\d+) cached_tokens=(?P<cached>\d+) completion_tokens=(?P<completion>\d+)'
                  r' finish=(?P<finish>\w+))?$')  # fmt: skip


@pytest.fixture(scope="module")
def keyed(tiny_chat_converted):
    model, tok = mlx_oss.load(tiny_chat_converted, dtype="float32")
    scripts = Scripts()
    with running_server(model, tok, scripts, api_key=KEY, max_context=1024) as (url, app):
        yield url, app, scripts, tok


@pytest.fixture
def log(keyed, caplog):
    """Every record of every logger from here on (the server's thread included)."""
    wait_idle(keyed[1])
    keyed[2].queue.clear()
    caplog.set_level(logging.DEBUG)
    caplog.clear()
    return caplog


def _lines(caplog) -> list[dict]:
    out = []
    for r in caplog.records:
        if r.name == LOGGER:
            m = LINE.match(r.getMessage())
            assert m, f"not an access line: {r.getMessage()!r}"
            assert r.levelno == logging.INFO
            out.append(m.groupdict())
    return out


def _wait_lines(caplog, n: int) -> list[dict]:
    """The line is written once the response is complete, which may be just after the client has it."""
    deadline = time.monotonic() + 30
    while len(_lines(caplog)) < n:
        assert time.monotonic() < deadline, [r.getMessage() for r in caplog.records]
        time.sleep(0.01)
    return _lines(caplog)


def _never_leaked(caplog) -> None:
    """Nothing the server side logged (the test's own httpx logs its URLs) holds a key, a body or a header value."""
    server_side = [r for r in caplog.records if not r.name.startswith(("httpx", "httpcore"))]
    text = "\n".join(r.getMessage() + repr(r.args) for r in server_side)
    for secret in (KEY, WRONG, MARKER, "Bearer", "application/json"):
        assert secret not in text, secret


AUTH = {"Authorization": f"Bearer {KEY}"}


def test_a_generation_logs_its_fields_and_usage(keyed, log):
    url, app, scripts, tok = keyed
    scripts.push(reply(tok, analysis="Think.", final="Hello!"))
    body = {"model": MODEL_ID, "messages": [{"role": "user", "content": f"say hi {MARKER}"}]}
    t0 = time.monotonic()
    r = httpx.post(url + "/chat/completions", json=body, headers=AUTH, timeout=120)
    took = time.monotonic() - t0
    assert r.status_code == 200
    (line,) = _wait_lines(log, 1)
    usage = r.json()["usage"]
    assert line["client"] == "127.0.0.1" and (line["method"], line["path"], line["status"]) == ("POST", "/v1/chat/completions", "200")
    assert 0 < float(line["seconds"]) <= took + 0.5
    assert (int(line["prompt"]), int(line["completion"]), line["finish"]) == (usage["prompt_tokens"], usage["completion_tokens"], "stop")
    assert int(line["cached"]) == usage["prompt_tokens_details"]["cached_tokens"]
    _never_leaked(log)


def test_a_stream_is_logged_when_it_ends_with_its_usage(keyed, log):
    url, app, scripts, tok = keyed
    scripts.push(reply(tok, analysis="Look.", call=("lookup", '{"q": "x"}')))
    tool = {"type": "function", "name": "lookup", "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}
    body = {"model": MODEL_ID, "input": f"find {MARKER}", "stream": True, "tools": [tool]}
    with httpx.stream("POST", url + "/responses", json=body, headers=AUTH, timeout=120) as r:
        raw = r.read().decode()
    assert r.status_code == 200 and "response.completed" in raw
    (line,) = _wait_lines(log, 1)
    done = [ln for ln in raw.split("\n") if ln.startswith("data: ") and '"response.completed"' in ln]
    usage = json.loads(done[0][6:])["response"]["usage"]
    assert (line["path"], line["status"], line["finish"]) == ("/v1/responses", "200", "tool_call")
    assert (int(line["prompt"]), int(line["completion"])) == (usage["input_tokens"], usage["output_tokens"])
    _never_leaked(log)


def test_refusals_are_logged_without_tokens_keys_or_query(keyed, log):
    url, app, scripts, tok = keyed
    body = {"model": MODEL_ID, "messages": [{"role": "user", "content": MARKER}]}
    assert httpx.post(url + "/chat/completions", json=body, timeout=30).status_code == 401  # no key
    wrong = {"Authorization": f"Bearer {WRONG}"}
    assert httpx.post(url + "/chat/completions", json=body, headers=wrong, timeout=30).status_code == 401
    assert httpx.get(url + f"/models?api_key={KEY}&q={MARKER}", headers=AUTH, timeout=30).status_code == 200
    assert httpx.get(url + "/nope", headers=AUTH, timeout=30).status_code == 404
    evil = {**AUTH, "Host": "evil.example"}
    assert httpx.post(url + "/chat/completions", json=body, headers=evil, timeout=30).status_code == 403
    assert httpx.post(url + "/chat/completions", content=MARKER, headers={**AUTH, "Content-Type": "text/plain"},
                      timeout=30).status_code == 415  # fmt: skip
    lines = _wait_lines(log, 6)
    assert [(ln["method"], ln["path"], ln["status"]) for ln in lines] == [
        ("POST", "/v1/chat/completions", "401"), ("POST", "/v1/chat/completions", "401"), ("GET", "/v1/models", "200"),
        ("GET", "/v1/nope", "404"), ("POST", "/v1/chat/completions", "403"), ("POST", "/v1/chat/completions", "415"),
    ]  # fmt: skip
    assert all(ln["prompt"] is None for ln in lines)  # no generation ran
    _never_leaked(log)


def test_a_path_cannot_forge_a_line(keyed, log):
    url = keyed[0]
    r = httpx.get(url + '/x%0A127.0.0.1%20%22GET%20%2Fv1%2Fmodels%22%20200%200.001s%C3%A9', headers=AUTH, timeout=30)
    assert r.status_code == 404
    (line,) = _wait_lines(log, 1)
    assert line["path"] == "/v1/x%0A127.0.0.1%20%22GET%20/v1/models%22%20200%200.001s%C3%A9"
    assert len(log.records[-1].getMessage().splitlines()) == 1


def test_log_level_flag_and_what_uvicorn_gets():
    parse = lambda *a: build_parser().parse_args(["serve", "--model", "m", *a])  # noqa: E731
    assert parse().log_level == "info" and parse("--log-level", "debug").log_level == "debug"
    with pytest.raises(SystemExit):
        parse("--log-level", "verbose")
    logger = logging.getLogger("mlx_oss")
    before = (list(logger.handlers), logger.level)
    try:
        assert [configure_logging(x) for x in ("debug", "info", "warning", "error")] == ["debug", "warning", "warning", "error"]
        assert sum(getattr(h, "_mlx_oss_serve", False) for h in logger.handlers) == 1  # replaced, not added
        assert logger.getEffectiveLevel() == logging.ERROR
        configure_logging("info")
        assert logging.getLogger(LOGGER).isEnabledFor(logging.INFO)
        configure_logging("warning")
        assert not logging.getLogger(LOGGER).isEnabledFor(logging.INFO)
    finally:
        logger.handlers[:] = before[0]
        logger.setLevel(before[1])


def _serve(folder, port: int, *extra: str, key_env: str | None = None) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("MLX_OSS_API_KEY", None)
    if key_env:
        env["MLX_OSS_API_KEY"] = key_env
    return subprocess.Popen(
        [sys.executable, "-m", "mlx_oss.cli.main", "serve", "--model", str(folder), "--port", str(port),
         "--max-tokens", "4", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip


def _one_request_then_stop(proc, port: int) -> tuple[str, str]:
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() is not None else ""
            try:
                httpx.get(base + "/health", timeout=5)
                break
            except httpx.HTTPError:
                time.sleep(0.2)
        body = {"model": "x", "messages": [{"role": "user", "content": MARKER}]}
        body["model"] = httpx.get(base + "/v1/models", headers=AUTH, timeout=30).json()["data"][0]["id"]
        r = httpx.post(base + "/v1/chat/completions", json=body, headers=AUTH, timeout=120)
        assert r.status_code == 200, r.text
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        return proc.stdout.read(), proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)


@pytest.mark.slow
def test_serve_writes_access_lines_to_stderr_never_the_key(tiny_chat_converted):
    port = free_port()
    out, err = _one_request_then_stop(_serve(tiny_chat_converted, port, "--api-key", KEY), port)
    lines = [ln.split(f"INFO {LOGGER}: ", 1)[1] for ln in err.splitlines() if f" {LOGGER}: " in ln]
    parsed = [LINE.match(ln).groupdict() for ln in lines]
    assert [(p["method"], p["path"], p["status"]) for p in parsed] == [
        ("GET", "/health", "200"), ("GET", "/v1/models", "200"), ("POST", "/v1/chat/completions", "200")]
    assert parsed[-1]["completion"] == "4" and parsed[-1]["finish"] == "length" and int(parsed[-1]["prompt"]) > 0
    assert KEY not in out + err and MARKER not in out + err
    assert "Uvicorn running" not in err  # uvicorn stays at warning: the printed settings say where


@pytest.mark.slow
def test_serve_log_level_warning_has_no_access_lines(tiny_chat_converted):
    port = free_port()
    out, err = _one_request_then_stop(_serve(tiny_chat_converted, port, "--log-level", "warning", key_env=KEY), port)
    assert LOGGER not in err and "mlx-oss serve: stopped" in err
    assert KEY not in out + err and MARKER not in out + err


# ----------------------------------------------------------------------------- the line and the middleware alone


def _finished(reason: str = "stop"):
    from mlx_oss.server.generation import Finished, Usage

    return Finished(Usage(prompt_tokens=7, cached_tokens=3, completion_tokens=2), reason)


def test_the_line_of_each_kind_of_request():
    from mlx_oss.server.access_log import line

    scope = {"client": ("10.1.2.3", 5555), "method": "POST", "path": "/v1/responses"}
    assert line(scope, 200, 1.23456) == '10.1.2.3 "POST /v1/responses" 200 1.235s'
    assert line(scope, None, 0.0004) == '10.1.2.3 "POST /v1/responses" - 0.000s'  # the client left first
    assert line(scope, 200, 2, _finished("length")) == (
        '10.1.2.3 "POST /v1/responses" 200 2.000s prompt_tokens=7 cached_tokens=3 completion_tokens=2 finish=length')
    assert line({"method": "GET", "path": "/"}, 404, 0) == '- "GET /" 404 0.000s'  # no client address
    assert line({}, 400, 0) == '- " " 400 0.000s'
    long_path = "/v1/" + "a" * 300
    assert line({"method": "GET", "path": long_path}, 404, 0) == f'- "GET /v1/{"a" * 195}…" 404 0.000s'
    assert line({"method": "G" * 20, "path": "/"}, 405, 0) == f'- "{"G" * 15}… /" 405 0.000s'
    assert line({"client": ("x" * 70, 1), "method": "GET", "path": "/"}, 200, 0).startswith("x" * 63 + "… ")
    assert line({"method": "GET", "path": "/a b\"\n€"}, 404, 0) == '- "GET /a%20b%22%0A%E2%82%AC" 404 0.000s'
    kept = "/v1/a:b@c!$&'()*+,;=-._~"  # what a path may hold unencoded stays as it is
    assert line({"method": "GET", "path": kept}, 404, 0) == f'- "GET {kept}" 404 0.000s'
    exact = "/" + "b" * 199  # exactly the limit: whole
    assert line({"method": "GET", "path": exact}, 404, 0) == f'- "GET {exact}" 404 0.000s'


class _Sent:
    def __init__(self) -> None:
        self.messages: list[dict] = []

    async def __call__(self, message: dict) -> None:
        self.messages.append(message)


def _run(app, scope: dict) -> tuple[list[dict], Exception | None]:
    import anyio

    from mlx_oss.server.access_log import AccessLog

    sent = _Sent()

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def main():
        try:
            await AccessLog(app)(scope, receive, sent)
        except Exception as e:  # noqa: BLE001 - what the middleware re-raised
            return e
        return None

    return sent.messages, anyio.run(main)


HTTP = {"type": "http", "client": ("127.0.0.1", 1), "method": "POST", "path": "/v1/chat/completions"}


def _access_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER]


def test_the_middleware_logs_once_after_the_response_with_the_generations_usage(caplog):
    from mlx_oss.server.access_log import note

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 201, "headers": []})
        note(_finished("tool_call"))
        await send({"type": "http.response.body", "body": b"{}"})

    caplog.set_level(logging.INFO, logger=LOGGER)
    sent, err = _run(app, HTTP)
    assert err is None and [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    (text,) = _access_lines(caplog)
    assert re.fullmatch(r'127\.0\.0\.1 "POST /v1/chat/completions" 201 0\.\d{3}s prompt_tokens=7 cached_tokens=3 '
                        r"completion_tokens=2 finish=tool_call", text)  # fmt: skip
    note(_finished())  # outside a request: nothing to note, no error


def test_a_failing_app_is_logged_as_500_and_its_error_goes_on(caplog):
    async def app(scope, receive, send):
        raise RuntimeError("boom")

    async def late(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        raise RuntimeError("mid-stream")

    caplog.set_level(logging.INFO, logger=LOGGER)
    _, err = _run(app, HTTP)
    assert isinstance(err, RuntimeError) and str(err) == "boom"
    _, err = _run(late, HTTP)
    assert isinstance(err, RuntimeError)
    first, second = _access_lines(caplog)
    assert ' 500 ' in first and ' 200 ' in second  # a status already sent stays


def test_nothing_is_logged_for_other_scopes_or_below_info(caplog):
    seen: list[str] = []

    async def app(scope, receive, send):
        seen.append(scope["type"])

    caplog.set_level(logging.INFO, logger=LOGGER)
    _run(app, {"type": "lifespan"})
    assert seen == ["lifespan"] and _access_lines(caplog) == []
    caplog.set_level(logging.WARNING, logger=LOGGER)
    _run(app, HTTP)
    assert seen == ["lifespan", "http"] and _access_lines(caplog) == []
