"""Every operator setting of `create_app` checked for its effect on requests, not for being parsed:
`max_tokens` (the cap of a request that sets none), `max_queue` (exactly N wait, the next gets a 429),
`cache_bytes` (0 keeps only the state in use), `body_limit` (the exact byte boundary, with and without
Content-Length). `max_context` is in tests/test_server_paths.py (refused at the limit, generation stops
at it); `stored_bytes` in tests/test_server_security.py.

A real uvicorn on 127.0.0.1 around the tiny chat model (tests/server_harness.py), replies scripted."""

from __future__ import annotations

import json
import socket
import threading

import httpx
import pytest

import mlx_oss
from server_harness import (
    MODEL_ID,
    Gate,
    Scripts,
    join_all,
    post_json,
    reply,
    running_server,
    stream_chat,
    wait_idle,
    wait_until,
)

LONG = "one two three four five six seven eight nine ten eleven twelve thirteen"


@pytest.fixture(scope="module")
def model_tok(tiny_chat_converted):
    return mlx_oss.load(tiny_chat_converted, dtype="float32")


def _chat(text: str, **kw) -> dict:
    return {"model": MODEL_ID, "messages": [{"role": "user", "content": text}], **kw}


def _health(url: str) -> dict:
    return httpx.get(url.rsplit("/v1", 1)[0] + "/health", timeout=30).json()


def test_max_tokens_is_the_cap_of_a_request_that_sets_none(model_tok):
    model, tok = model_tok
    scripts = Scripts()
    with running_server(model, tok, scripts, max_context=1024, max_tokens=5) as (url, app):
        scripts.push(reply(tok, final=LONG))
        r = post_json(url, "/chat/completions", _chat("count"))
        assert (r.json()["choices"][0]["finish_reason"], r.json()["usage"]["completion_tokens"]) == ("length", 5)
        scripts.push(reply(tok, final=LONG))
        status, chunks, done = stream_chat(url, _chat("count", stream=True, stream_options={"include_usage": True}))
        assert done and chunks[-1]["usage"]["completion_tokens"] == 5
        assert [c["finish_reason"] for ch in chunks for c in ch["choices"] if c["finish_reason"]] == ["length"]
        scripts.push(reply(tok, final=LONG))
        r = post_json(url, "/responses", {"model": MODEL_ID, "input": "count"})
        assert (r.json()["status"], r.json()["incomplete_details"], r.json()["usage"]["output_tokens"]) == (
            "incomplete", {"reason": "max_output_tokens"}, 5)  # fmt: skip
        # A request's own limit wins, above or below the server's.
        for field, n in (("max_tokens", 8), ("max_completion_tokens", 3)):
            scripts.push(reply(tok, final=LONG))
            r = post_json(url, "/chat/completions", _chat("count", **{field: n}))
            assert r.json()["usage"]["completion_tokens"] == n
        scripts.push(reply(tok, final=LONG))
        r = post_json(url, "/responses", {"model": MODEL_ID, "input": "count", "max_output_tokens": 9})
        assert r.json()["usage"]["output_tokens"] == 9
        # A reply shorter than the cap is not affected.
        scripts.push(reply(tok, final="hi"))
        r = post_json(url, "/chat/completions", _chat("hi"))
        assert (r.json()["choices"][0]["finish_reason"], r.json()["choices"][0]["message"]["content"]) == ("stop", "hi")


def test_max_queue_lets_exactly_n_wait_and_refuses_the_next_with_retry_after(model_tok):
    model, tok = model_tok
    scripts = Scripts()
    with running_server(model, tok, scripts, max_context=1024, max_queue=2) as (url, app):
        worker = app.state.backend.worker
        gate = Gate()
        scripts.push([], gate)
        results: dict[object, httpx.Response] = {}

        def send(key, path, body) -> threading.Thread:
            t = threading.Thread(target=lambda: results.update({key: post_json(url, path, body)}), daemon=True)
            t.start()
            return t

        threads = [send("running", "/chat/completions", _chat("hold", max_tokens=2))]
        try:
            assert gate.entered.wait(60)
            for i, (path, body) in enumerate((("/chat/completions", _chat("first waiting")),
                                              ("/responses", {"model": MODEL_ID, "input": "second waiting"}))):  # fmt: skip
                scripts.push(reply(tok, final=f"waited {i}"))
                threads.append(send(i, path, body))
                wait_until(lambda: worker.waiting == i + 1 or i in results, f"request {i} queued")
                assert worker.waiting == i + 1, f"request {i} was answered instead of waiting: {results[i].text}"
            assert _health(url)["queued"] == 2
            for path, body in (("/chat/completions", _chat("one too many")), ("/responses", {"model": MODEL_ID, "input": "x"})):
                threads.append(send(path, path, body))
                wait_until(lambda: path in results or worker.waiting > 2, f"{path} answered or queued")
                assert worker.waiting == 2, "a request beyond max_queue was queued"
                r = results[path]
                assert r.status_code == 429 and r.headers["retry-after"] == "1", r.text
                assert r.json()["error"]["type"] == "rate_limit_error" and r.json()["error"]["code"] == "rate_limit_exceeded"
        finally:
            gate.release.set()
        assert join_all(threads), "a request hung"
        assert results["running"].status_code == 200
        assert results[0].json()["choices"][0]["message"]["content"] == "waited 0"
        assert results[1].json()["output"][-1]["content"][0]["text"] == "waited 1"
        wait_idle(app)
        scripts.push(reply(tok, final="room again"))  # the queue has room again
        assert post_json(url, "/chat/completions", _chat("later")).json()["choices"][0]["message"]["content"] == "room again"


def _conversations(url, tok, scripts) -> dict[str, dict]:
    """A, then B, then A continued; -> each request's usage."""
    out = {}
    a = [{"role": "user", "content": "conversation A opening words"}]
    for name, msgs, answer in (("A1", a, "A reply"), ("B1", [{"role": "user", "content": "conversation B, other words"}],
                                                      "B reply")):  # fmt: skip
        scripts.push(reply(tok, final=answer))
        out[name] = post_json(url, "/chat/completions", {"model": MODEL_ID, "messages": msgs}).json()["usage"]
    a2 = a + [{"role": "assistant", "content": "A reply"}, {"role": "user", "content": "A again"}]
    scripts.push(reply(tok, final="A reply 2"))
    out["A2"] = post_json(url, "/chat/completions", {"model": MODEL_ID, "messages": a2}).json()["usage"]
    return out


def _all_but_last(u: dict) -> int:
    return u["prompt_tokens"] + u["completion_tokens"] - 1


def _cached(u: dict) -> int:
    return u["prompt_tokens_details"]["cached_tokens"]


def test_cache_bytes_zero_keeps_only_the_state_in_use(model_tok):
    model, tok = model_tok
    scripts = Scripts()
    with running_server(model, tok, scripts, max_context=1024) as (url, app):
        kept = _conversations(url, tok, scripts)
    # The default budget kept A while B ran: all of A is reused but its reply's last token (`<|return|>`,
    # rendered back as `<|end|>`).
    assert _cached(kept["A2"]) == _all_but_last(kept["A1"])
    with running_server(model, tok, scripts, max_context=1024, cache_bytes=0) as (url, app):
        # The conversation in use is kept (an agent loop reuses everything) ...
        scripts.push(reply(tok, final="A reply"))
        a = [{"role": "user", "content": "conversation A opening words"}]
        first = post_json(url, "/chat/completions", {"model": MODEL_ID, "messages": a}).json()["usage"]
        scripts.push(reply(tok, final="A reply 2"))
        a2 = a + [{"role": "assistant", "content": "A reply"}, {"role": "user", "content": "A again"}]
        again = post_json(url, "/chat/completions", {"model": MODEL_ID, "messages": a2}).json()["usage"]
        assert _cached(again) == _all_but_last(first)
        # ... but nothing else: A's return after B prefills all but what every conversation shares.
        gone = _conversations(url, tok, scripts)
        assert len(app.state.backend.pool) == 0
    shared = _cached(gone["B1"])  # the system message, reused from A's state
    assert 0 < shared < gone["A1"]["prompt_tokens"]
    assert _cached(gone["A2"]) == shared


LIMIT = 1500


def _body_of(size: int) -> bytes:
    """A valid chat request of exactly `size` bytes."""
    base = json.dumps(_chat("", max_tokens=1), separators=(",", ":")).encode()
    body = json.dumps(_chat("a" * (size - len(base)), max_tokens=1), separators=(",", ":")).encode()
    assert len(body) == size
    return body


def test_body_limit_passes_exactly_at_the_limit_and_refuses_one_byte_more(model_tok):
    model, tok = model_tok
    scripts = Scripts()
    headers = {"Content-Type": "application/json"}
    with running_server(model, tok, scripts, max_context=2048, body_limit=LIMIT) as (url, app):
        for size, status in ((LIMIT, 200), (LIMIT + 1, 413)):
            body = _body_of(size)
            # With Content-Length (checked before reading) and chunked (counted while reading).
            r = httpx.post(url + "/chat/completions", content=body, headers=headers, timeout=120)
            assert r.status_code == status, (size, r.text)
            chunked = httpx.post(url + "/chat/completions", content=iter([body[:700], body[700:]]), headers=headers,
                                 timeout=120)  # fmt: skip
            assert chunked.request.headers.get("transfer-encoding") == "chunked"
            assert "content-length" not in chunked.request.headers
            assert chunked.status_code == status, (size, chunked.text)
            if status == 413:
                assert r.json()["error"]["code"] == chunked.json()["error"]["code"] == "request_too_large"
                # with Content-Length the size is known before a byte is read, and said
                assert r.json()["error"]["message"] == f"Request body is {size} bytes; the limit is {LIMIT}."
                assert chunked.json()["error"]["message"] == f"Request body is over the {LIMIT}-byte limit."


def test_a_queued_request_whose_client_left_frees_its_queue_slot(model_tok):
    model, tok = model_tok
    scripts = Scripts()
    with running_server(model, tok, scripts, max_context=1024, max_queue=1) as (url, app):
        worker = app.state.backend.worker
        gate = Gate()
        scripts.push([], gate)
        results: dict[str, httpx.Response] = {}
        threads = [threading.Thread(target=lambda: results.update(
            running=post_json(url, "/chat/completions", _chat("hold", max_tokens=2))), daemon=True)]  # fmt: skip
        threads[0].start()
        try:
            assert gate.entered.wait(60)
            # A client queues a request, then gives up (closes its connection): the server cancels the job.
            host, port = url.split("//")[1].split("/")[0].split(":")
            body = json.dumps(_chat("abandoned")).encode()
            sock = socket.create_connection((host, int(port)), timeout=60)
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n" % len(body) + body)  # fmt: skip
            wait_until(lambda: worker.waiting == 1, "the abandoned request queued")
            [abandoned] = worker._waiting
            sock.close()
            wait_until(abandoned.cancelled.is_set, "the server cancelled the abandoned request")
            # Nobody waits now: a new request must be queued (and served), not refused.
            scripts.push(reply(tok, final="served"))
            threads.append(threading.Thread(target=lambda: results.update(
                next=post_json(url, "/chat/completions", _chat("next"))), daemon=True))  # fmt: skip
            threads[-1].start()
            wait_until(lambda: len(worker._waiting) == 2, "the next request queued behind the abandoned one")
            assert worker.waiting == 1  # /health's `queued` counts who still waits
        finally:
            gate.release.set()
        assert join_all(threads), "a request hung"
        assert results["next"].status_code == 200, results["next"].text
        assert results["next"].json()["choices"][0]["message"]["content"] == "served"
