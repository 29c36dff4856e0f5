"""Server-sent events: the two framings the APIs use, and a response that notices a client leaving.

Chat Completions sends `data: {json}` lines and ends with `data: [DONE]`; the Responses API sends
`event: <type>` + `data: {json}` pairs and no terminator, as Anthropic's Messages API does. `EventStream` is a plain ASGI response
that streams chunks while it listens for `http.disconnect`, whatever ASGI version the server speaks,
and calls `on_disconnect` (which cancels the generation) the moment the client is gone.
"""

from __future__ import annotations

import json
from typing import Any, AsyncGenerator, Callable

import anyio

__all__ = ["DONE", "EventStream", "data_line", "named_event", "watch_disconnect"]

DONE = b"data: [DONE]\n\n"
HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
           (b"x-accel-buffering", b"no")]  # fmt: skip


def _json(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def data_line(obj: Any) -> bytes:
    """A Chat Completions chunk."""
    return f"data: {_json(obj)}\n\n".encode()


def named_event(event_type: str, obj: Any) -> bytes:
    """A Responses API event."""
    return f"event: {event_type}\ndata: {_json(obj)}\n\n".encode()


async def watch_disconnect(receive: Callable, on_disconnect: Callable[[], None]) -> None:
    """Wait for `http.disconnect` (after the body was read), then call `on_disconnect`."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            on_disconnect()
            return


class EventStream:
    """An ASGI text/event-stream response over `chunks` that cancels on disconnect (and closes `chunks`,
    so their `finally` runs whichever way the stream ends)."""

    def __init__(self, chunks: AsyncGenerator[bytes, None], on_disconnect: Callable[[], None], headers: dict[str, str] | None = None):
        self.chunks = chunks
        self.on_disconnect = on_disconnect
        self.headers = HEADERS + [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]

    async def __call__(self, scope, receive, send) -> None:
        async with anyio.create_task_group() as tg:

            async def watch() -> None:
                await watch_disconnect(receive, self.on_disconnect)
                tg.cancel_scope.cancel()

            tg.start_soon(watch)
            try:
                await send({"type": "http.response.start", "status": 200, "headers": self.headers})
                async for chunk in self.chunks:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            except OSError:  # the client went away mid-send
                self.on_disconnect()
            finally:
                with anyio.CancelScope(shield=True):
                    await self.chunks.aclose()
            tg.cancel_scope.cancel()
