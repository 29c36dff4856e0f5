"""The server's error values, unit by unit (`mlx_oss/server/errors.py`): the exact OpenAI error object,
what `str()` of an error says (logs and the CLI print it), and the quoting bound of `clip` at its edge."""

from __future__ import annotations

from mlx_oss.server.errors import APIError, bad_request, clip, error_body


def test_an_api_error_is_openais_error_object_and_reads_as_its_message():
    e = APIError(429, "busy", type="rate_limit_error", param="model", code="rate_limit_exceeded", headers={"Retry-After": "1"})
    assert str(e) == "busy" and e.args == ("busy",)
    assert (e.status, e.headers) == (429, {"Retry-After": "1"})
    assert e.body() == {"error": {"message": "busy", "type": "rate_limit_error", "param": "model", "code": "rate_limit_exceeded"}}
    plain = APIError(404, "nope")
    assert plain.body() == {"error": {"message": "nope", "type": "invalid_request_error", "param": None, "code": None}}
    assert plain.headers == {}
    bad = bad_request("temperature must be a number", "temperature")
    assert (bad.status, str(bad), bad.body()["error"]["param"], bad.body()["error"]["code"]) == (
        400, "temperature must be a number", "temperature", None)  # fmt: skip
    assert error_body("m") == {"error": {"message": "m", "type": "invalid_request_error", "param": None, "code": None}}


def test_clip_keeps_200_characters_and_cuts_201_to_199_and_an_ellipsis():
    assert clip("x" * 200) == "x" * 200
    assert clip("x" * 201) == "x" * 199 + "…" and len(clip("y" * 10_000)) == 200
    assert clip("abcdef", 4) == "abc…" and clip("abcd", 4) == "abcd"


def test_anthropic_error_types_for_statuses_it_does_not_name():
    """Anthropic's error types by status: those it names, else invalid_request_error for a 4xx (the guard's
    415, a 405) and api_error for a 5xx (a 502, a 504)."""
    from mlx_oss.server.errors import anthropic_body

    kinds = {s: anthropic_body(s, "m")["error"]["type"] for s in (400, 405, 415, 429, 500, 502, 504, 529)}
    assert kinds == {400: "invalid_request_error", 405: "invalid_request_error", 415: "invalid_request_error",
                     429: "rate_limit_error", 500: "api_error", 502: "api_error", 504: "api_error",
                     529: "overloaded_error"}  # fmt: skip
    assert anthropic_body(415, "m") == {"type": "error", "error": {"type": "invalid_request_error", "message": "m"}}


def test_an_error_in_anthropics_shape_names_its_parameter_once():
    named = APIError(400, "must be a positive integer", param="max_tokens")
    assert named.anthropic() == {"type": "error", "error": {"type": "invalid_request_error",
                                                           "message": "max_tokens: must be a positive integer"}}  # fmt: skip
    said = APIError(400, "max_tokens must be a positive integer", param="max_tokens")  # already in the message
    assert said.anthropic()["error"]["message"] == "max_tokens must be a positive integer"
    assert APIError(429, "busy").anthropic() == {"type": "error", "error": {"type": "rate_limit_error", "message": "busy"}}
    assert APIError(503, "down").anthropic()["error"]["type"] == "overloaded_error"
