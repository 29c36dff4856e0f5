"""OpenAI-shaped errors: `{"error": {"message", "type", "param", "code"}}` with the right HTTP status.

Request translation raises `APIError`; the app turns it (and anything unexpected, as a 500 with a
one-line message) into this JSON, so a client never sees a traceback and the server keeps running.

Anthropic's Messages API (`/v1/messages`, server/messages.py) answers the same errors in its own
shape, `{"type": "error", "error": {"type", "message"}}`, the type chosen by the HTTP status
(`anthropic_body`).
"""

from __future__ import annotations

from typing import Any

__all__ = ["APIError", "bad_request", "error_body", "anthropic_body", "clip"]

# HTTP status -> Anthropic's error type (https://docs.anthropic.com/en/api/errors)
ANTHROPIC_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                   404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 500: "api_error",
                   503: "overloaded_error", 529: "overloaded_error"}  # fmt: skip


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

    def anthropic(self) -> dict[str, Any]:
        """This error in Anthropic's shape (the parameter, when known, is in the message already or added)."""
        message = self.message
        if self.param and self.param not in message:
            message = f"{self.param}: {message}"
        return anthropic_body(self.status, message)


def error_body(message: str, type: str = "invalid_request_error", param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def anthropic_body(status: int, message: str) -> dict:
    """Anthropic's error JSON for an HTTP `status` (a 4xx it does not name: invalid_request_error; 5xx: api_error)."""
    kind = ANTHROPIC_TYPES.get(status) or ("api_error" if status >= 500 else "invalid_request_error")
    return {"type": "error", "error": {"type": kind, "message": message}}


def bad_request(message: str, param: str | None = None) -> APIError:
    """400 invalid_request_error naming the offending parameter."""
    return APIError(400, message, param=param)


def clip(text: str, n: int = 200) -> str:
    """`text` cut to `n` characters: a client's value quoted in a message must not make it megabytes."""
    return text if len(text) <= n else text[: n - 1] + "…"
