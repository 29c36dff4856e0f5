"""The one way the direct server tests check a refusal: the call raises the server's `APIError` with the
expected status, as an `invalid_request_error` (what the client reads as OpenAI's error object)."""

from __future__ import annotations

import pytest

from mlx_oss.server.errors import APIError


def refusal(fn, *args, status: int = 400, **kw) -> APIError:
    """The error `fn(*args, **kw)` raises."""
    with pytest.raises(APIError) as e:
        fn(*args, **kw)
    assert e.value.status == status and e.value.type == "invalid_request_error"
    return e.value


def refusal_line(fn, *args, status: int = 400, **kw) -> tuple[str, str | None]:
    """(the one-line message, the parameter it names) of the error `fn(*args, **kw)` raises."""
    e = refusal(fn, *args, status=status, **kw)
    return str(e), e.param
