"""Server-sent events at the ASGI level (`mlx_oss/server/sse.py`), with a scripted `receive` and a
recording `send`: the exact messages of a stream and its end, a client that leaves mid-stream (the
generation is told at once and the chunk generator is closed then, not whenever it is collected), a
socket that fails mid-send, and compact UTF-8 event lines."""

from __future__ import annotations

import json

import anyio
import pytest

from mlx_oss.server.sse import DONE, EventStream, data_line, named_event


class Chunks:
    """An async generator of chunks that records whether it was closed (with `awaits`, its `finally`
    awaits, as a cleanup may); `hold` makes it wait after the first chunk (a generation still running).
    `closed_on_return`: whether it was closed when the response returned, not later by the event
    loop's shutdown (which closes every generator left open)."""

    def __init__(self, chunks: list[bytes], hold: anyio.Event | None = None, awaits: bool = False) -> None:
        self.closed = False
        self.awaits = awaits
        self.closed_on_return: bool | None = None
        self.gen = self._gen(chunks, hold)

    async def _gen(self, chunks, hold):
        try:
            for i, c in enumerate(chunks):
                yield c
                if hold is not None and i == 0:
                    await hold.wait()
        finally:
            if self.awaits:
                await anyio.sleep(0)
            self.closed = True


def run(stream: EventStream, receive, fail_send: bool = False, slow_send: float = 0.0, chunks: Chunks | None = None) -> list[dict]:
    sent: list[dict] = []

    async def send(message: dict) -> None:
        if fail_send and message.get("body"):
            raise OSError("broken pipe")
        if slow_send and message.get("body"):
            await anyio.sleep(slow_send)
        sent.append(message)

    async def main() -> None:
        with anyio.fail_after(10):
            await stream({"type": "http"}, receive, send)
        if chunks is not None:
            chunks.closed_on_return = chunks.closed

    anyio.run(main)
    return sent


def never_disconnects():
    async def receive() -> dict:
        await anyio.sleep_forever()

    return receive


def test_a_stream_sends_its_chunks_then_an_empty_last_body():
    chunks = Chunks([b"data: 1\n\n", b"data: 2\n\n"])
    left: list[bool] = []
    stream = EventStream(chunks.gen, lambda: left.append(True), headers={"Retry-After": "1", "X-Request-ID": "abc"})
    sent = run(stream, never_disconnects())
    assert sent == [
        {"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"), (b"retry-after", b"1"), (b"x-request-id", b"abc")]},
        {"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True},
        {"type": "http.response.body", "body": b"data: 2\n\n", "more_body": True},
        {"type": "http.response.body", "body": b"", "more_body": False},
    ]  # fmt: skip
    assert chunks.closed and left == []


def test_a_client_that_leaves_mid_stream_is_noticed_and_the_chunks_are_closed_then():
    hold = anyio.Event()
    chunks = Chunks([b"first", b"never sent"], hold)
    left: list[bool] = []
    closed_when_told: list[bool] = []

    def on_disconnect() -> None:
        left.append(True)
        closed_when_told.append(chunks.closed)

    async def receive() -> dict:
        await anyio.sleep(0.05)  # after the first chunk went out
        return {"type": "http.disconnect"}

    stream = EventStream(chunks.gen, on_disconnect)
    sent = run(stream, receive)
    assert left == [True] and closed_when_told == [False]  # told first, while the generation still held
    assert chunks.closed  # closed before the response returned, not left to the garbage collector
    assert [m.get("body") for m in sent] == [None, b"first"]


def test_other_messages_before_the_disconnect_are_ignored():
    messages = iter([{"type": "http.request", "body": b"", "more_body": False}, {"type": "http.disconnect"}])
    hold = anyio.Event()
    chunks = Chunks([b"a", b"b"], hold)
    left: list[bool] = []

    async def receive() -> dict:
        await anyio.sleep(0.02)
        return next(messages)

    run(EventStream(chunks.gen, lambda: left.append(True)), receive)
    assert left == [True] and chunks.closed


def test_a_socket_that_fails_mid_send_counts_as_the_client_leaving():
    chunks = Chunks([b"a", b"b"], awaits=True)
    left: list[bool] = []
    sent = run(EventStream(chunks.gen, lambda: left.append(True)), never_disconnects(), fail_send=True, chunks=chunks)
    assert left == [True] and chunks.closed_on_return  # closed then, even though it waits in its cleanup
    assert [m["type"] for m in sent] == ["http.response.start"]


def test_a_client_leaving_while_a_chunk_is_sent_still_closes_the_chunks_then():
    """The disconnect cancels the response while it is inside `send` (the generator waits at a `yield`):
    closing it must not be cancelled too."""
    chunks = Chunks([b"a", b"b"], awaits=True)
    left: list[bool] = []

    async def receive() -> dict:
        await anyio.sleep(0.05)
        return {"type": "http.disconnect"}

    run(EventStream(chunks.gen, lambda: left.append(True)), receive, slow_send=5.0, chunks=chunks)
    assert left == [True] and chunks.closed_on_return


@pytest.mark.parametrize("obj", [{"delta": "héllo → 世界", "n": [1, 2]}])
def test_event_lines_are_compact_utf8_json(obj):
    assert data_line(obj) == 'data: {"delta":"héllo → 世界","n":[1,2]}\n\n'.encode()
    assert named_event("response.created", obj) == (
        'event: response.created\ndata: {"delta":"héllo → 世界","n":[1,2]}\n\n'.encode())  # fmt: skip
    assert json.loads(data_line(obj)[len(b"data: "):]) == obj
    assert DONE == b"data: [DONE]\n\n"
