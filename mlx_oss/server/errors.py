"""OpenAI-shaped errors: `{"error": {"message", "type", "param", "code"}}` with the right HTTP status.

Request translation raises `APIError`; the app turns it (and anything unexpected, as a 500 with a
one-line message) into this JSON, so a client never sees a traceback and the server keeps running.
"""

from __future__ import annotations

from typing import Any

__all__ = ["APIError", "bad_request", "error_body", "clip"]


class APIError(Exception):
    """An error for the client; `status` is the HTTP status, the rest is OpenAI's error object."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type: str = "invalid_request_error", param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def bad_request(message: str, param: str | None = None) -> APIError:
    """400 invalid_request_error naming the offending parameter."""
    return APIError(400, message, param=param)


def clip(text: str, n: int = 200) -> str:
    """`text` cut to `n` characters: a client's value quoted in a message must not make it megabytes."""
    return text if len(text) <= n else text[: n - 1] + "…"
