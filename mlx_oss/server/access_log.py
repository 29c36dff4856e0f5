"""The access log: one line per request on the logger `mlx_oss.server.access` (INFO), written when the
response has been sent (a stream: when it ended), so the duration is the whole request's.

    127.0.0.1 "POST /v1/responses" 200 1.234s prompt_tokens=5823 cached_tokens=5790 completion_tokens=12 finish=stop

Fields: the client's address, the method and path (percent-encoded as on the wire; never the query
string), the status (`-` when the client left before one was sent), the duration, and, when a
generation ran, its token counts and why it stopped. Never a body, a header value or a key: the
routes hand over nothing but the generation's `Finished` (`note`). `mlx-oss serve --log-level`
chooses what is shown (server/cli.py `configure_logging`); uvicorn's own access log stays off.
"""

from __future__ import annotations

import logging
import time
from contextvars import ContextVar
from dataclasses import dataclass
from urllib.parse import quote

__all__ = ["AccessLog", "LOGGER", "note"]

LOGGER = "mlx_oss.server.access"
log = logging.getLogger(LOGGER)

_MAX_PATH = 200


@dataclass
class _Record:
    """What a request's line adds besides the ASGI scope: its generation's outcome."""

    finished: object | None = None  # server/generation.py Finished


_current: ContextVar[_Record | None] = ContextVar("mlx_oss_access_record", default=None)


def note(finished) -> None:
    """A generation of the current request ended (`Finished`): its usage goes on the request's line.
    Called by the routes; a request that runs several generations reports the last."""
    record = _current.get()
    if record is not None:
        record.finished = finished


def _safe(text: str, limit: int) -> str:
    """`text` percent-encoded (no spaces, quotes, control characters or non-ASCII in the line: a
    client cannot forge a line) and cut to `limit`."""
    s = quote(text, safe="/:@!$&'()*+,;=-._~")
    return s if len(s) <= limit else s[: limit - 1] + "…"


def line(scope, status: int | None, seconds: float, finished=None) -> str:
    """The access line of a request (`finished`: its generation's `Finished`, if one ran)."""
    client = scope.get("client")
    who = _safe(str(client[0]), 64) if client else "-"
    method, path = _safe(str(scope.get("method", "")), 16), _safe(str(scope.get("path", "")), _MAX_PATH)
    out = f'{who} "{method} {path}" {status if status is not None else "-"} {seconds:.3f}s'
    usage = getattr(finished, "usage", None)
    if usage is not None:
        out += (f" prompt_tokens={usage.prompt_tokens} cached_tokens={usage.cached_tokens}"
                f" completion_tokens={usage.completion_tokens} finish={finished.stop_reason}")  # fmt: skip
    return out


class AccessLog:
    """ASGI middleware (outermost, so refusals by the guard are logged too): times each HTTP request
    and logs its line once the response is complete, or when it failed."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or not log.isEnabledFor(logging.INFO):
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status: int | None = None
        record = _Record()
        token = _current.set(record)

        async def watched(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, watched)
        except Exception:
            if status is None:
                status = 500  # what the client gets from Starlette's last-resort handler
            raise
        finally:
            _current.reset(token)
            log.info("%s", line(scope, status, time.perf_counter() - start, record.finished))
