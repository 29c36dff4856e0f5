"""A request body, read once: JSON within limits, then checked against its API's JSON Schema.

This is the one place where a request field's type and range are checked, so no body can reach
the translation code (chat_completions.py, responses.py, messages.py) with a shape it does not expect; the
translation only adds rules a schema cannot state (a `tool_call_id` naming an earlier call, ...).

- JSON: Python's `json` accepts `NaN`, `Infinity`, `1e999` (inf), lone surrogates (`"\\ud800"`, which
  no response can echo as UTF-8), integers of thousands of digits and nesting deep enough to exhaust the
  stack. Each is refused here with a 400 naming where it is.
- The schemas (`CHAT`, `RESPONSES`, `MESSAGES` / `COUNT_TOKENS` for Anthropic's API) list the fields the two APIs read, with their types and OpenAI's
  ranges (`seed` 0..2^64-1, `metadata` 16 keys of at most 64 characters with string values of at most
  512). Unknown fields are allowed (clients send many that change nothing here). `jsonschema` validates;
  its first error becomes one line naming the field as a path (`messages[2].tool_call_id`).
"""

from __future__ import annotations

import json
import math
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match

from mlx_oss.server.errors import APIError, bad_request, clip

__all__ = ["CHAT", "RESPONSES", "MESSAGES", "COUNT_TOKENS", "MAX_DEPTH", "SUMMARIES", "read_body", "field_path"]

MAX_DEPTH = 64  # objects/arrays nested deeper than this are refused (tool schemas need far less)
MAX_INT = 2**64  # |integers| at or beyond this are refused wherever they appear
MAX_TOKENS = 2**31 - 1
SUMMARIES = ("auto", "concise", "detailed", "none")  # `reasoning.summary` ("none": no summary, as Codex sends it)


# ----------------------------------------------------------------------------- schema helpers


def _t(*types: str, **kw: Any) -> dict:
    return {"type": list(types) if len(types) > 1 else types[0], **kw}


def _obj(props: dict[str, dict] | None = None, *, required: tuple[str, ...] = (), nullable: bool = True, **kw: Any) -> dict:
    s: dict[str, Any] = {"type": ["object", "null"] if nullable else "object", "properties": props or {}, **kw}
    if required:
        s["required"] = list(required)
    return s


_STR = _t("string", "null")
_BOOL = _t("boolean", "null")
_COUNT = _t("integer", "null", minimum=1, maximum=MAX_TOKENS)
_TEXT_PARTS = _t("string", "array", "null", items=_t("string", "object", properties={"type": _STR, "text": {"type": "string"}}))
_METADATA = _obj(maxProperties=16, propertyNames={"maxLength": 64},
                 additionalProperties={"type": "string", "maxLength": 512})  # fmt: skip
_SCHEMA_OBJECT = _t("object", "null")  # a JSON Schema: checked by check_schema (tools.py) against its meta-schema
_SAMPLING = {
    "model": _STR,
    "temperature": _t("number", "null", minimum=0, maximum=2),
    "top_p": _t("number", "null", exclusiveMinimum=0, maximum=1),
    "seed": _t("integer", "null", minimum=0, maximum=MAX_INT - 1),
    "top_logprobs": _t("integer", "null", minimum=0, maximum=20),
    "stream": _BOOL,
    "metadata": _METADATA,
    "user": _STR,
    "parallel_tool_calls": _BOOL,
}
_FUNCTION = _obj({"name": {"type": "string", "minLength": 1}, "description": _STR, "parameters": _SCHEMA_OBJECT,
                  "strict": _BOOL})  # fmt: skip
_TOOL_CHOICE = _t("string", "object", "null",
                  properties={"type": _STR, "name": _STR, "namespace": _STR, "function": _obj({"name": _STR})})  # fmt: skip
_EFFORT = _STR  # values: conversation.effort
_BUDGET = _t("integer", "null", minimum=0, maximum=MAX_TOKENS)  # `reasoning.max_tokens`: analysis tokens (0: none)
# `logit_bias`: token id (decimal, no leading zeros) -> a bias of -100..100 (ids are checked against the
# vocabulary when the prompt is rendered: server/conversation.py)
_LOGIT_BIAS = _obj(maxProperties=1024, propertyNames={"pattern": "^(0|[1-9][0-9]{0,8})$"},
                   additionalProperties=_t("number", minimum=-100, maximum=100))  # fmt: skip
# a custom (freeform) tool's input format: `text`, or a `grammar` (`lark` / `regex`) quoted to the model
_CUSTOM_FORMAT = _obj({"type": _STR, "syntax": _STR, "definition": _STR})
_TOOL_FIELDS = {"type": _STR, **_FUNCTION["properties"], "format": _CUSTOM_FORMAT}  # function and custom tools


def _tools(nested_function: bool) -> dict:
    """Chat Completions nests a function under `function`; the Responses API does not, and also takes
    `custom` tools (`format`), `namespace` tools (`tools`: function / custom tools) and `web_search`'s
    `external_web_access` (server/tools.py)."""
    if nested_function:
        return _t("array", "null", items=_obj({"type": _STR, "function": _FUNCTION}, nullable=False))
    inner = _t("array", "null", items=_obj(_TOOL_FIELDS, nullable=False))
    return _t("array", "null", items=_obj({**_TOOL_FIELDS, "tools": inner, "external_web_access": _BOOL}, nullable=False))


CHAT: dict = _obj(
    {
        **_SAMPLING,
        "messages": _t("array", minItems=1, items=_obj({
            "role": _STR, "content": _TEXT_PARTS, "name": _STR, "tool_call_id": _STR,
            "reasoning": _STR, "reasoning_content": _STR, "thinking": _STR,
            "tool_calls": _t("array", "null", items=_obj({
                "id": _STR, "type": _STR,
                "function": _obj({"name": _STR, "arguments": _t("string", "object", "null")}),
            }, nullable=False)),
        }, nullable=False)),
        "n": _t("integer", "null"),
        "logprobs": _BOOL,
        "stream_options": _obj({"include_usage": _BOOL}),
        "tools": _tools(nested_function=True),
        "tool_choice": _TOOL_CHOICE,
        "reasoning_effort": _EFFORT,
        "reasoning": _obj({"effort": _EFFORT, "max_tokens": _BUDGET}),
        "response_format": _obj({"type": _STR, "json_schema": _obj({"name": _STR, "description": _STR,
                                                                     "schema": _SCHEMA_OBJECT, "strict": _BOOL})}),
        "max_completion_tokens": _COUNT,
        "max_tokens": _COUNT,
        "stop": _t("string", "array", "null", minLength=1, maxItems=4, items={"type": "string", "minLength": 1}),
        "logit_bias": _LOGIT_BIAS,
    },
    required=("messages",), nullable=False,
)  # fmt: skip

_ITEM = _obj(
    {
        "type": _STR, "id": _STR, "role": _STR, "status": _STR,
        "content": _TEXT_PARTS,  # message text parts; a reasoning item's reasoning_text parts
        "reasoning": _STR, "reasoning_content": _STR, "thinking": _STR,
        "summary": _t("array", "null", items=_t("object", properties={"type": _STR, "text": _STR})),
        "encrypted_content": _STR,  # a reasoning item's text as this server sealed it (server/responses.py)
        "name": _STR, "namespace": _STR, "arguments": _STR, "call_id": _STR,
        "input": _STR,  # a custom_tool_call's input
        "output": _TEXT_PARTS,
        "code": _STR, "container_id": _STR,
        "outputs": _t("array", "null", items=_t("object", properties={"type": _STR, "logs": _STR, "url": _STR})),
        # a web_search_call's action (not read: the server's own record is) or a local_shell_call's
        "action": _obj({"type": _STR, "command": _t("array", "null", items={"type": "string"}),
                        "working_directory": _STR, "timeout_ms": _t("integer", "null", minimum=0, maximum=MAX_INT - 1),
                        "env": _obj(additionalProperties={"type": "string"}), "user": _STR}),
    },
    nullable=False,
)  # fmt: skip

RESPONSES: dict = _obj(
    {
        **_SAMPLING,
        "input": _t("string", "array", "null", items=_ITEM),
        "instructions": _STR,
        "previous_response_id": _STR,
        "store": _BOOL,
        "include": _t("array", "null", items={"type": "string"}),
        "tools": _tools(nested_function=False),
        "tool_choice": _TOOL_CHOICE,
        "max_output_tokens": _COUNT,
        "max_tool_calls": _COUNT,
        "reasoning": _obj({"effort": _EFFORT, "summary": _t("string", "null", enum=[*SUMMARIES, None]),
                           "max_tokens": _BUDGET}),
        "text": _obj({"format": _obj({"type": _STR, "name": _STR, "description": _STR, "schema": _SCHEMA_OBJECT,
                                      "strict": _BOOL})}),
        "truncation": _t("string", "null", enum=["auto", "disabled", None]),
        "logit_bias": _LOGIT_BIAS,
    },
    nullable=False,
)  # fmt: skip

# Anthropic's Messages API (server/messages.py). Content blocks are loose objects here: their `type`
# decides which fields count, and messages.py refuses an unknown type naming its path.
_BLOCK_TEXTS = _t("string", "array", "null", items=_obj({"type": _STR, "text": _STR}, nullable=False))
_BLOCK = _obj({
    "type": _STR, "text": _STR, "thinking": _STR, "signature": _STR, "data": _STR,
    "id": _STR, "name": _STR, "input": _t("object", "null"),  # tool_use
    "tool_use_id": _STR, "content": _BLOCK_TEXTS, "is_error": _BOOL,  # tool_result
    "cache_control": _obj({"type": _STR, "ttl": _STR}),  # accepted, ignored (the pool caches every prefix)
}, nullable=False)  # fmt: skip
_MESSAGES_FIELDS = {
    "model": _STR,
    "system": _BLOCK_TEXTS,
    "messages": _t("array", minItems=1, items=_obj({"role": _STR, "content": _t("string", "array", items=_BLOCK)},
                                                   required=("role", "content"), nullable=False)),
    "max_tokens": _t("integer", minimum=1, maximum=MAX_TOKENS),
    "stop_sequences": _t("array", "null", maxItems=16, items={"type": "string", "minLength": 1}),
    "temperature": _t("number", "null", minimum=0, maximum=1),  # Anthropic's range
    "top_p": _t("number", "null", exclusiveMinimum=0, maximum=1),
    "top_k": _t("integer", "null", minimum=0, maximum=MAX_TOKENS),
    "stream": _BOOL,
    "metadata": _obj({"user_id": _STR}),
    "tools": _t("array", "null", items=_obj({"type": _STR, "name": {"type": "string", "minLength": 1},
                                             "description": _STR, "input_schema": _SCHEMA_OBJECT, "strict": _BOOL,
                                             "defer_loading": _BOOL},
                                            required=("name",), nullable=False)),
    "tool_choice": _obj({"type": _STR, "name": _STR, "disable_parallel_tool_use": _BOOL}),
    "thinking": _obj({"type": _STR, "budget_tokens": _BUDGET, "display": _STR}),  # "omitted" hides it; others ("summarized", "updates") show it
    "output_config": _obj({"effort": _EFFORT, "format": _obj({"type": _STR, "schema": _SCHEMA_OBJECT})}),
    "output_format": _obj({"type": _STR, "schema": _SCHEMA_OBJECT}),
    "context_management": _obj(),  # accepted, changes nothing (messages.py)
}  # fmt: skip
MESSAGES: dict = _obj(_MESSAGES_FIELDS, required=("model", "messages", "max_tokens"), nullable=False)
COUNT_TOKENS: dict = _obj(_MESSAGES_FIELDS, required=("model", "messages"), nullable=False)  # max_tokens not needed

_VALIDATORS = {id(s): Draft202012Validator(s) for s in (CHAT, RESPONSES, MESSAGES, COUNT_TOKENS)}


# ----------------------------------------------------------------------------- reading


def field_path(parts: Any) -> str | None:
    """('messages', 2, 'tool_call_id') -> 'messages[2].tool_call_id' (the `param` of the error)."""
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _decode(data: bytes) -> Any:
    try:
        return json.loads(data, parse_constant=_refuse_constant)
    except RecursionError:
        raise bad_request(f"The request body is nested too deeply (the limit is {MAX_DEPTH} levels).") from None
    except UnicodeDecodeError as e:
        raise bad_request(f"The request body is not UTF-8 text: {e.reason} at byte {e.start}.") from None
    except ValueError as e:  # JSONDecodeError, NaN/Infinity, an integer of more than 4,300 digits
        raise bad_request(f"The request body is not valid JSON: {clip(str(e))}") from None


def _check_values(value: Any) -> None:
    """Depth, surrogates, non-finite floats and huge integers anywhere in the body (iterative: a
    body nested 100,000 deep must not exhaust the stack here either)."""
    stack: list[tuple[Any, tuple, int]] = [(value, (), 0)]
    while stack:
        v, path, depth = stack.pop()
        if isinstance(v, (dict, list)):
            if depth >= MAX_DEPTH:
                raise bad_request(f"The request body is nested more than {MAX_DEPTH} levels deep.", field_path(path))
            pairs = v.items() if isinstance(v, dict) else enumerate(v)
            for k, x in pairs:
                if isinstance(k, str):
                    _check_text(k, path)
                stack.append((x, (*path, k), depth + 1))
        elif isinstance(v, str):
            _check_text(v, path)
        elif isinstance(v, float) and not math.isfinite(v):
            raise bad_request("Numbers must be finite (this one overflows a double).", field_path(path))
        elif isinstance(v, int) and not isinstance(v, bool) and not -MAX_INT < v < MAX_INT:
            raise bad_request(f"Integers must be smaller than 2^64 in magnitude; this one has {len(str(abs(v)))} digits.",
                              field_path(path))  # fmt: skip


def _check_text(s: str, path: tuple) -> None:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        raise bad_request("Text holds a lone UTF-16 surrogate (\\ud800-\\udfff escape without its pair), which is "
                          "not a character.", field_path(path)) from None  # fmt: skip


_KINDS = {"string": "a string", "integer": "an integer", "number": "a number", "boolean": "a boolean",
          "object": "an object", "array": "an array", "null": "null"}  # fmt: skip


def _expected(e: ValidationError) -> str:
    """What the field must be, in words (never the offending value, which can be megabytes)."""
    v = e.validator_value
    if e.validator == "type":
        kinds = [_KINDS[t] for t in ([v] if isinstance(v, str) else v) if t != "null"]
        return "must be " + " or ".join(kinds)
    words = {"minimum": f"must be >= {v}", "maximum": f"must be <= {v}", "exclusiveMinimum": f"must be > {v}",
             "minLength": f"must have at least {v} character(s)", "maxLength": f"must have at most {v} characters",
             "maxProperties": f"must have at most {v} keys", "minItems": f"must have at least {v} item(s)",
             "maxItems": f"must have at most {v} items",
             "enum": "must be one of " + ", ".join(json.dumps(x) for x in v) if isinstance(v, list) else ""}  # fmt: skip
    return words.get(e.validator, f"fails the {e.validator!r} rule")


def _schema_error(e: ValidationError) -> APIError:
    path = list(e.absolute_path)
    if e.validator == "required":
        missing = next((r for r in e.validator_value if isinstance(e.instance, dict) and r not in e.instance), "?")
        return bad_request(f"'{field_path([*path, missing])}' is required", field_path([*path, missing]))
    if e.validator == "pattern" and path and path[-1] == "logit_bias":  # a key that is not a token id
        return bad_request("'logit_bias' keys must be token ids (decimal integers, no leading zeros)", "logit_bias")
    if "propertyNames" in e.schema_path:  # a metadata key over 64 characters (the error is the key's maxLength)
        return bad_request(f"'{field_path(path)}' keys {_expected(e)}", field_path(path))
    where = field_path(path) or "the request body"
    got = type(e.instance).__name__ if e.validator == "type" else None
    got = {"str": "a string", "int": "an integer", "float": "a number", "bool": "a boolean", "dict": "an object",
           "list": "an array", "NoneType": "null"}.get(got or "", got)  # fmt: skip
    return bad_request(f"'{where}' {_expected(e)}" + (f", got {got}" if got else ""), field_path(path))


def read_body(data: bytes, schema: dict) -> dict[str, Any]:
    """The JSON object in `data`, checked against `schema` (CHAT, RESPONSES, MESSAGES, COUNT_TOKENS); a 400 naming the
    field otherwise."""
    body = _decode(data)
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object.")
    _check_values(body)
    error = best_match(_VALIDATORS[id(schema)].iter_errors(body))
    if error is not None:
        raise _schema_error(error)
    return body
