"""`POST /v1/responses` (OpenAI's Responses API, what Codex speaks) <-> harmony.

Input items map to harmony messages as in OpenAI's gpt-oss reference server: `message` (user;
assistant -> final; system/developer -> instructions), `reasoning` -> analysis (kept by harmony only
while continuing a tool call), `function_call` -> a `functions.<name>` call, `function_call_output`
-> that call's tool result; `web_search_call` / `code_interpreter_call` items (built-in calls the
server ran) -> the call and its result as the model saw them (kept with the stored response; an unknown web
search is skipped, a code call is rebuilt from its code and logs). Output: one item per harmony
message the model wrote (a built-in call the server ran: `web_search_call` or
`code_interpreter_call` with its `response.web_search_call.*` / `response.code_interpreter_call*`
events; `url_citation` annotations on the text for the browser's citations), streamed with the
Responses event sequence (`response.created`, `response.in_progress`, `response.output_item.added`,
`response.content_part.added`, `response.reasoning_text.delta`/`response.output_text.delta`/
`response.function_call_arguments.delta`, their `.done`, `response.content_part.done`,
`response.output_item.done`, then `response.completed`, `response.incomplete` or `response.failed`).
`StoredResponses` keeps stored responses (bounded by bytes) for `previous_response_id`, `item_reference`
input items and `GET /v1/responses/{id}`.

Client tools other than plain functions (server/tools.py): a call to a namespaced function comes back as a
`function_call` with `name` and `namespace`; to a custom tool as a `custom_tool_call` (`input`); to
`local_shell` as a `local_shell_call` (`action`). Input items of those types, and their `*_output` items,
render back as the same harmony call and tool result.

Reasoning for stateless clients: with `include: ["reasoning.encrypted_content"]` a reasoning item carries
`encrypted_content`, its analysis text sealed by `ReasoningSeal` (HMAC-SHA256 under the server's state
key: integrity-protected, not secret: the same text is the item's `content`). An input reasoning item
with `encrypted_content` is rendered from it (a tampered or foreign one is a 400 naming the field), so
`store: false` clients that send back only that (Codex, the Vercel AI SDK) keep their reasoning across
tool calls. `reasoning.summary` (`auto`/`concise`/`detailed`) fills `summary` with the raw analysis as one
`summary_text` part (not a model-written summary), streamed as `response.reasoning_summary_*` events.
"""

from __future__ import annotations

import base64
import binascii
import copy
import hashlib
import hmac
import json
import secrets
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from mlx_oss.sampling import SamplingConfig
from mlx_oss.harmony import ANALYSIS, Message
from mlx_oss.server.conversation import (
    REASONING_FIELDS,
    Turn,
    effort,
    logprobs_setting,
    first_of,
    logit_bias,
    reasoning_budget,
    reasoning_message,
    response_format,
    sampling,
    strict_answer,
    text_of,
)
from mlx_oss.server.errors import APIError, bad_request
from mlx_oss.server.builtin import ServerTools
from mlx_oss.server.generation import (
    BROWSER_CALL,
    FUNCTION_CALL,
    PYTHON_CALL,
    REASONING,
    Finished,
    ItemDelta,
    ItemDone,
    ItemStarted,
    ToolDone,
)
from mlx_oss.server.tools import (
    CUSTOM,
    FUNCTIONS,
    LOCAL_SHELL,
    LOCAL_SHELL_NAME,
    CallKind,
    custom_arguments,
    custom_input,
    parse_tools,
    shell_action,
    shell_arguments,
    tool_choice,
)

__all__ = ["ResponsesRequest", "StoredResponses", "ReasoningSeal", "OutputOptions", "ResponseBuilder", "parse_request",
           "slim_item"]  # fmt: skip

LOGPROBS = "message.output_text.logprobs"  # the `include` value that asks for the answer's logprobs
ENCRYPTED = "reasoning.encrypted_content"  # the `include` value that asks for reasoning items' encrypted_content


class ReasoningSeal:
    """`encrypted_content` of reasoning items: the analysis text with an HMAC-SHA256 tag under this
    server's state key (`key`, any length; a random one per server start when None), base64url.
    `open` gives the text back only for a value this key sealed. Integrity, not secrecy: the text is
    what the reasoning item's `content` already shows."""

    PREFIX = "mlxoss-r1."

    def __init__(self, key: bytes | str | None = None) -> None:
        raw = secrets.token_bytes(32) if key is None else (key.encode("utf-8") if isinstance(key, str) else bytes(key))
        self._key = hmac.new(raw, b"mlx-oss reasoning encrypted_content v1", hashlib.sha256).digest()

    def _tag(self, data: bytes) -> bytes:
        return hmac.new(self._key, data, hashlib.sha256).digest()

    def seal(self, text: str) -> str:
        data = text.encode("utf-8")
        return self.PREFIX + base64.urlsafe_b64encode(self._tag(data) + data).decode("ascii")

    def open(self, value: str) -> str | None:
        """The text `value` seals, or None (not sealed by this key, altered, or not this format)."""
        if not value.startswith(self.PREFIX):
            return None
        try:
            raw = base64.b64decode(value[len(self.PREFIX) :].encode("ascii"), altchars=b"-_", validate=True)
        except (binascii.Error, ValueError, UnicodeEncodeError):
            return None
        tag, data = raw[:32], raw[32:]
        if len(tag) < 32 or not hmac.compare_digest(tag, self._tag(data)):
            return None
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            return None


@dataclass(frozen=True)
class OutputOptions:
    """How a response builds its output items (not echoed): `seal` set when reasoning items carry
    `encrypted_content`, `summary` when they carry the analysis as their `summary`, `calls` the
    client tools by harmony recipient (what a call comes back as)."""

    seal: ReasoningSeal | None = None
    summary: bool = False
    calls: tuple[tuple[str, CallKind], ...] = ()

    def call(self, recipient: str | None) -> CallKind | None:
        return next((k for r, k in self.calls if r == recipient), None)  # None (no recipient) matches no call


class Echo(dict):
    """The request fields echoed in the response object, carrying (as `options`, not echoed) the
    OutputOptions its ResponseBuilder uses."""

    def __init__(self, fields: dict, options: OutputOptions) -> None:
        super().__init__(fields)
        self.options = options


@dataclass(frozen=True)
class ResponsesRequest:
    turn: Turn
    stream: bool
    store: bool
    items: list  # the whole input (previous response's input + output first), as items
    echo: dict  # request fields echoed in the response object
    previous: str | None = None  # previous_response_id
    max_calls: int = 8  # built-in calls this response may run


class StoredResponses:
    """The responses kept for `previous_response_id` and `GET /v1/responses/{id}`, bounded by bytes:
    id -> (input items, response object), and the harmony messages of their built-in call items (item
    id -> call + result, to render them again). Input items keep only what a later turn renders
    (unknown keys and image data dropped, see `slim_item`); `metadata` is capped by the request schema.
    The oldest responses go first once their JSON size passes `max_bytes`; one larger than that is
    not kept at all. `item(id)` finds an item by its id (an output item of a stored response, or an
    input item that had one) for `item_reference` inputs. `seal` is the server's `ReasoningSeal`
    (`state_key`: its key; None: a random key for this server's life)."""

    def __init__(self, max_bytes: int = 256 << 20, state_key: bytes | str | None = None) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self.seal = ReasoningSeal(state_key)
        self._items: OrderedDict[str, tuple[list, dict, tuple[str, ...], int]] = OrderedDict()
        self._tools: dict[str, tuple[Message, ...]] = {}
        self._by_item: dict[str, str] = {}  # item id -> the (newest) stored response holding it

    def __len__(self) -> int:
        return len(self._items)

    def put(self, response: dict, items: list, tool_messages: dict[str, tuple[Message, ...]] | None = None) -> bool:
        """Keep a finished response; False when it alone is over the byte budget (then it is not kept)."""
        kept = [slim_item(it) for it in items]
        tools = dict(tool_messages or {})
        size = _json_size(kept) + _json_size(response) + sum(len(m.text) + 64 for ms in tools.values() for m in ms)
        self._drop(response["id"])
        if size > self.max_bytes:
            return False
        self._items[response["id"]] = (kept, copy.deepcopy(response), tuple(tools), size)
        self._tools.update(tools)
        for it in [*kept, *(response.get("output") or [])]:
            if isinstance(it, dict) and isinstance(it.get("id"), str):
                self._by_item[it["id"]] = response["id"]
        self.bytes += size
        while self.bytes > self.max_bytes:
            self._drop(next(iter(self._items)))
        return True

    def _drop(self, response_id: str) -> None:
        entry = self._items.pop(response_id, None)
        if entry is not None:
            self.bytes -= entry[3]
            for item_id in entry[2]:
                self._tools.pop(item_id, None)
            for it in [*entry[0], *(entry[1].get("output") or [])]:
                if isinstance(it, dict) and self._by_item.get(it.get("id")) == response_id:
                    del self._by_item[it["id"]]

    def item(self, item_id: str) -> dict | None:
        """A copy of the stored item with this id (the newest response's, output before input), or None."""
        owner = self._by_item.get(item_id)
        if owner is None:
            return None
        kept, response, _, _ = self._items[owner]
        items = [*(response.get("output") or []), *kept]
        return copy.deepcopy(next((it for it in items if isinstance(it, dict) and it.get("id") == item_id), None))

    def tool_messages(self, item_id: Any) -> tuple[Message, ...] | None:
        return self._tools.get(item_id) if isinstance(item_id, str) else None

    def get(self, response_id: str, param: str | None = None) -> tuple[list, dict]:
        try:
            items, response, _, _ = self._items[response_id]
        except KeyError:
            raise APIError(404, f"No response with id {response_id[:100]!r} is stored on this server (store=true keeps the "
                           f"newest responses within {self.max_bytes:,} bytes)", param=param,
                           code="response_not_found") from None  # fmt: skip
        return items, response


def _json_size(value: Any) -> int:
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "replace"))


_ITEM_KEYS = {
    "message": ("type", "id", "role", "content", *REASONING_FIELDS),
    "reasoning": ("type", "id", "content"),  # its text: `_inputs` moved encrypted_content / summary here
    "function_call": ("type", "id", "name", "namespace", "arguments", "call_id", "status"),
    "function_call_output": ("type", "id", "call_id", "output"),
    "custom_tool_call": ("type", "id", "name", "namespace", "input", "call_id", "status"),
    "custom_tool_call_output": ("type", "id", "call_id", "output"),
    "local_shell_call": ("type", "id", "call_id", "status", "action"),
    "local_shell_call_output": ("type", "id", "call_id", "output"),
    "web_search_call": ("type", "id", "status", "action"),
    "code_interpreter_call": ("type", "id", "status", "code", "container_id", "outputs"),
}


def slim_item(item: Any) -> Any:
    """An input item with only what `_history` reads to render it again: no unknown keys, text parts
    as type + text, a code call's outputs as its logs (its images were the client's copy)."""
    if not isinstance(item, dict):
        return item
    keys = _ITEM_KEYS.get(item.get("type", "message"), ("type",))
    out = {k: item[k] for k in keys if k in item}
    for k in ("content", "output"):
        if isinstance(out.get(k), list):
            out[k] = [{"type": p.get("type"), "text": p.get("text")} if isinstance(p, dict) else p for p in out[k]]
    if isinstance(out.get("outputs"), list):
        out["outputs"] = [{"type": "logs", "logs": o["logs"]} for o in out["outputs"] if isinstance(o, dict) and "logs" in o]
    return out


def _as_items(value: Any, previous: bool) -> list:
    """`input` as items; `[]` (or no input) only continues a previous response."""
    if isinstance(value, str):
        return [{"type": "message", "role": "user", "content": value}]
    if value is None and previous:
        return []
    if value is None:
        raise bad_request("'input' is required", "input")
    if not isinstance(value, list) or not (value or previous):
        raise bad_request("'input' must be a string or a non-empty array of items (an empty one only with "
                          "'previous_response_id')", "input")  # fmt: skip
    return list(value)


def _is_reference(it: dict) -> bool:
    return it.get("type") == "item_reference" or ("type" not in it and "role" not in it and "id" in it)


def _inputs(items: list, stored: StoredResponses) -> list:
    """The client's input items, each `item_reference` replaced by the stored item it names and each
    reasoning item's text put in its `content` (from `encrypted_content`, checked with the server's
    seal, else from `summary` when there is no content): what `_history` renders and a stored
    response keeps. 400 naming `input[i].id` / `input[i].encrypted_content` otherwise."""
    out = []
    for i, it in enumerate(items):
        where = f"input[{i}]"
        if _is_reference(it):
            ref = it.get("id")
            found = stored.item(ref)  # a string or null (the request schema): null finds nothing
            if found is None:
                raise APIError(400, f"{where}: no item with id {str(ref)[:100]!r} is stored on this server (store=true "
                               "keeps the newest responses' input and output items)", param=f"{where}.id",
                               code="item_not_found")  # fmt: skip
            it = found
        if it.get("type") == "reasoning":
            it = _reasoning_item(it, stored.seal, where)
        out.append(it)
    return out


def _reasoning_item(it: dict, seal: ReasoningSeal, where: str) -> dict:
    sealed = it.get("encrypted_content")
    if sealed is not None:
        text = seal.open(sealed)
        if text is None:
            raise APIError(400, f"{where}.encrypted_content was not made by this server, or was altered (reasoning "
                           "sealed by a server with another state key, e.g. before a restart without --state-key)",
                           param=f"{where}.encrypted_content", code="invalid_encrypted_content")  # fmt: skip
        return {"type": "reasoning", "id": it.get("id"), "content": [{"type": "reasoning_text", "text": text}]}
    if not it.get("content") and it.get("summary"):
        text = "".join(p.get("text") or "" for p in it["summary"] if isinstance(p, dict))
        return {**it, "content": [{"type": "reasoning_text", "text": text}]}
    return it


def _code_messages(it: dict) -> tuple[Message, ...]:
    """A code_interpreter_call item not stored here: its code and logs, as the model wrote and saw them."""
    code = it.get("code") or ""
    logs = "".join(o.get("logs") or "" for o in it.get("outputs") or [])
    return (Message.tool_call("python", code, channel=ANALYSIS, content_type="code"),
            Message.tool_result("python", logs, channel=ANALYSIS))  # fmt: skip


def _recipient(name: str, namespace: Any) -> str:
    return f"{namespace}.{name}" if isinstance(namespace, str) and namespace else FUNCTIONS + name


def _call_output(it: dict, calls: dict[str, str], where: str) -> Message:
    """A `*_output` item -> the tool message answering the call its `call_id` (or, for a local shell
    call, `id`) names."""
    call_id = it.get("call_id")
    if call_id is None and it.get("type") == "local_shell_call_output":
        call_id = it.get("id")
    if call_id not in calls:
        raise bad_request(f"{where}.call_id {call_id!r} does not match any earlier function_call", f"{where}.call_id")
    return Message.tool_result(calls[call_id], text_of(it.get("output"), f"{where}.output"))


def _history(items: list, stored: StoredResponses, first: int) -> tuple[list[Message], list[str]]:
    """Input items -> harmony history and instructions. Items before `first` came from the previous
    response (errors name `previous_response_id`); item `first + i` is the client's `input[i]`."""
    history: list[Message] = []
    instructions: list[str] = []
    calls: dict[str, str] = {}  # call_id (a local shell call's id too) -> the call's harmony recipient
    for i, it in enumerate(items):
        where = f"input[{i - first}]" if i >= first else "previous_response_id"
        kind = it.get("type") or "message"  # `type: null` too, as OpenAI reads it
        if kind == "message":
            role = it.get("role")
            text = text_of(it.get("content"), f"{where}.content", ("input_text", "output_text", "text", "refusal"))
            if role in ("system", "developer"):
                instructions.append(text)
            elif role == "user":
                history.append(Message.user(text))
            elif role == "assistant":
                sent = next((it[k] for k in REASONING_FIELDS if isinstance(it.get(k), str) and it[k]), None)
                if sent:
                    history.append(reasoning_message(sent))
                history.append(Message.assistant(text))
            else:
                raise bad_request(f"{where}.role must be user, assistant, system or developer, not {role!r}", f"{where}.role")
        elif kind == "reasoning":
            parts = it.get("content") or []
            text = "".join(p if isinstance(p, str) else p.get("text") or "" for p in parts if isinstance(p, (str, dict))) \
                if isinstance(parts, list) else parts  # fmt: skip
            if text:
                history.append(reasoning_message(text))
        elif kind == "function_call":
            name, args, call_id = it.get("name"), it.get("arguments", ""), it.get("call_id")
            if not name or args is None or call_id is None:
                raise bad_request(f"{where}: a function_call needs string 'name', 'arguments' and 'call_id'", where)
            calls[call_id] = _recipient(name, it.get("namespace"))
            history.append(Message.tool_call(calls[call_id], args))
        elif kind == "custom_tool_call":
            name, text, call_id = it.get("name"), it.get("input"), it.get("call_id")
            if not name or text is None or call_id is None:
                raise bad_request(f"{where}: a custom_tool_call needs string 'name', 'input' and 'call_id'", where)
            calls[call_id] = _recipient(name, it.get("namespace"))
            history.append(Message.tool_call(calls[call_id], custom_arguments(text)))
        elif kind == "local_shell_call":
            call_id, item_id = it.get("call_id"), it.get("id")
            if call_id is None and item_id is None:
                raise bad_request(f"{where}: a local_shell_call needs a 'call_id'", f"{where}.call_id")
            for key in (call_id, item_id):
                if key is not None:
                    calls[key] = FUNCTIONS + LOCAL_SHELL_NAME
            history.append(Message.tool_call(FUNCTIONS + LOCAL_SHELL_NAME, shell_arguments(it.get("action"))))
        elif kind in ("function_call_output", "custom_tool_call_output", "local_shell_call_output"):
            history.append(_call_output(it, calls, where))
        elif kind in ("web_search_call", "code_interpreter_call"):
            known = stored.tool_messages(it.get("id"))
            if known is not None:
                history.extend(known)
            elif kind == "code_interpreter_call" and it.get("status") != "incomplete":
                history.extend(_code_messages(it))
            # left out: an unknown web search (not stored here: what the page said is gone), and a code
            # call that never ran (cut off, or past the call limit): the model must not read "no output"
        else:
            raise bad_request(f"{where}.type {kind!r} is not supported (message, reasoning, function_call, "
                              "function_call_output, custom_tool_call, custom_tool_call_output, local_shell_call, "
                              "local_shell_call_output, web_search_call, code_interpreter_call, item_reference)",
                              f"{where}.type")  # fmt: skip
    if not history:
        raise bad_request("'input' needs at least one user, assistant or tool item", "input")
    return history, instructions


def parse_request(body: dict, stored: StoredResponses, base: SamplingConfig, builtin: ServerTools | None = None) -> ResponsesRequest:
    """Translate a Responses body that passed the RESPONSES schema (server/request_body.py); 400/404
    naming the parameter for what a schema cannot say. `builtin`: the server's built-in tools (their
    types are refused without it)."""
    stream = bool(body.get("stream"))
    keep = body.get("store") is not False
    prev = body.get("previous_response_id")
    items = _inputs(_as_items(body.get("input"), prev is not None), stored)
    first = 0
    if prev is not None:
        prev_items, prev_resp = stored.get(prev, "previous_response_id")
        earlier = prev_items + [o for o in prev_resp["output"]]
        items, first = earlier + items, len(earlier)
    history, instructions = _history(items, stored, first)
    extra = body.get("instructions")
    if extra:
        instructions.insert(0, extra)
    include = body.get("include") or []
    top = logprobs_setting(body, LOGPROBS in include, f"'include': [{LOGPROBS!r}]")
    tools = parse_tools(body.get("tools"), builtin=builtin, responses=True)
    choice = tool_choice(body.get("tool_choice"), tools)
    limit = builtin.max_calls if builtin is not None else 0
    max_calls = min(first_of(body, "max_tool_calls") or limit, limit)
    r = body.get("reasoning") or {}
    text = body.get("text") or {}
    truncation = body.get("truncation") or "disabled"
    turn = Turn(
        tuple(history), "\n\n".join(instructions) if instructions else None, tools, effort(r.get("effort"), "reasoning.effort"),
        response_format(text.get("format"), "text.format"), first_of(body, "max_output_tokens"),
        replace(sampling(body, base), logprobs=top), tool_choice=choice, logit_bias=logit_bias(body.get("logit_bias")),
        truncate=truncation == "auto", answer_schema=strict_answer(text.get("format"), "text.format"),
        reasoning_budget=reasoning_budget(r),
    )  # fmt: skip
    summary = r.get("summary") if r.get("summary") != "none" else None
    options = OutputOptions(stored.seal if ENCRYPTED in include else None, summary is not None, tools.calls)
    echo = Echo({
        "instructions": extra, "max_output_tokens": body.get("max_output_tokens"), "previous_response_id": prev,
        "reasoning": {"effort": turn.effort.value, "summary": summary,
                      **({"max_tokens": turn.reasoning_budget} if turn.reasoning_budget is not None else {})},
        "temperature": turn.sampling.temperature,
        "top_p": turn.sampling.top_p, "text": {"format": text.get("format") or {"type": "text"}},
        "tool_choice": body.get("tool_choice") or "auto", "tools": body.get("tools") or [],
        "parallel_tool_calls": body.get("parallel_tool_calls") is not False, "metadata": body.get("metadata") or {},
        "store": keep, "truncation": truncation, "user": body.get("user"), "max_tool_calls": body.get("max_tool_calls"),
    }, options)  # fmt: skip
    return ResponsesRequest(turn, stream, keep, items, echo, prev, max_calls)


def _usage(u) -> dict:
    return {
        "input_tokens": u.prompt_tokens,
        "input_tokens_details": {"cached_tokens": u.cached_tokens},
        "output_tokens": u.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": u.reasoning_tokens,
                                  **({"unparsed_tokens": u.unparsed_tokens} if u.unparsed_tokens else {})},
        "total_tokens": u.prompt_tokens + u.completion_tokens,
    }


_MAX_IMAGE_BYTES = 8 << 20


def _arguments(raw: str) -> dict:
    try:
        args = json.loads(raw)
    except json.JSONDecodeError:  # not JSON, or nothing written
        return {}
    return args if isinstance(args, dict) else {}


def web_search_action(recipient: str, raw: str, url: str = "") -> dict:
    """The `action` of a web_search_call (the openai SDK's search / open_page / find_in_page) for
    the model's `browser.<function>` call; `url` is the page the call showed ("" if none)."""
    args = _arguments(raw)
    function = recipient.partition(".")[2]
    if function == "open":
        target = args.get("id")
        return {"type": "open_page", "url": url or (target if isinstance(target, str) else None)}
    if function == "find":
        pattern = args.get("pattern")
        return {"type": "find_in_page", "pattern": pattern if isinstance(pattern, str) else "", "url": url}
    query = args.get("query")
    return {"type": "search", "query": query if isinstance(query, str) else None}


def _image(path: str) -> dict | None:
    """An image the code saved, as the data URL of a code_interpreter_call output."""
    p = Path(path)
    try:
        if p.stat().st_size > _MAX_IMAGE_BYTES:
            return None
        data = p.read_bytes()
    except OSError:
        return None
    mime = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif",
            ".svg": "image/svg+xml"}.get(p.suffix.lower(), "application/octet-stream")  # fmt: skip
    return {"type": "image", "url": f"data:{mime};base64,{base64.b64encode(data).decode()}"}


def url_citation(c) -> dict:
    """A browser `Citation` as the Responses API's annotation (indices of its marker in the text)."""
    return {"type": "url_citation", "url": c.url, "title": c.title, "start_index": c.start, "end_index": c.end}


class ResponseBuilder:
    """Generation events -> the response object and, for streaming, the (type, payload) events.
    `container_id` names the python session of this conversation (code_interpreter_call items);
    `options` (default: the request's, carried by its `Echo`) how the output items are built."""

    def __init__(self, model: str, echo: dict, container_id: str, options: OutputOptions | None = None) -> None:
        self.id = f"resp_{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = model
        self.echo = echo
        self.options = options or getattr(echo, "options", None) or OutputOptions()
        self.container_id = container_id
        self.output: list[dict] = []
        self.seq = 0
        self.status = "in_progress"
        self.usage: dict | None = None
        self.error: dict | None = None
        self.incomplete: dict | None = None
        self._item: dict | None = None
        self._args = ""  # a browser call's arguments, shown once the call is complete
        self._recipient = ""
        self.tool_messages: dict[str, tuple[Message, ...]] = {}  # built-in item id -> call + result
    def response(self) -> dict:
        return {
            "id": self.id, "object": "response", "created_at": self.created, "status": self.status,
            "model": self.model, "output": copy.deepcopy(self.output), "usage": self.usage, "error": self.error,
            "incomplete_details": self.incomplete, **self.echo,
        }  # fmt: skip

    def _event(self, kind: str, **payload) -> tuple[str, dict]:
        ev = {"type": kind, "sequence_number": self.seq, **payload}
        self.seq += 1
        return kind, ev

    def start(self) -> list[tuple[str, dict]]:
        return [self._event("response.created", response=self.response()),
                self._event("response.in_progress", response=self.response())]  # fmt: skip

    def feed(self, ev: object) -> list[tuple[str, dict]]:
        if isinstance(ev, ItemStarted):
            return self._open(ev)
        if isinstance(ev, ItemDelta) and self._item is not None:
            return self._delta(ev.text, ev.logprobs)
        if isinstance(ev, ItemDone) and self._item is not None:
            return self._close(ev)
        if isinstance(ev, ToolDone) and self._item is not None:
            return self._tool_done(ev)
        if isinstance(ev, Finished):
            return self.finish(ev)
        return []

    def _where(self) -> dict:
        return {"item_id": self._item["id"], "output_index": len(self.output) - 1}

    def _open(self, ev: ItemStarted) -> list[tuple[str, dict]]:
        hexid = uuid.uuid4().hex
        if ev.kind == BROWSER_CALL:  # announced once its arguments are complete (the action needs them)
            self._item = {"id": f"ws_{hexid}", "type": "web_search_call", "status": "in_progress", "action": None}
            self._args, self._recipient = "", ev.name or ""
            return []
        if ev.kind == PYTHON_CALL:
            item = {"id": f"ci_{hexid}", "type": "code_interpreter_call", "status": "in_progress", "code": "",
                    "container_id": self.container_id, "outputs": None}  # fmt: skip
            self.output.append(item)
            self._item = item
            where = self._where()
            return [self._event("response.output_item.added", output_index=where["output_index"], item=copy.deepcopy(item)),
                    self._event("response.code_interpreter_call.in_progress", **where)]  # fmt: skip
        if ev.kind == REASONING:
            item = {"id": f"rs_{hexid}", "type": "reasoning", "summary": [], "content": [], "status": "in_progress"}
            part = {"type": "reasoning_text", "text": ""}
        elif ev.kind == FUNCTION_CALL:
            item, part = self._call_item(ev, hexid), None
            self._args = ""
        else:
            item = {"id": f"msg_{hexid}", "type": "message", "role": "assistant", "status": "in_progress", "content": []}
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        self.output.append(item)
        self._item = item
        out = [self._event("response.output_item.added", output_index=len(self.output) - 1, item=copy.deepcopy(item))]
        if part is not None:
            item["content"].append(part)
            out.append(self._event("response.content_part.added", **self._where(), content_index=0, part=dict(part)))
        if item["type"] == "reasoning" and self.options.summary:
            item["summary"].append({"type": "summary_text", "text": ""})
            out.append(self._event("response.reasoning_summary_part.added", **self._where(), summary_index=0,
                                   part={"type": "summary_text", "text": ""}))  # fmt: skip
        return out

    def _call_item(self, ev: ItemStarted, hexid: str) -> dict:
        """The output item of a call to a client tool: function_call (`namespace` for a namespaced
        one), custom_tool_call or local_shell_call, per the tool the recipient names."""
        call_id = f"call_{hexid[:24]}"
        known = self.options.call(ev.recipient)
        if known is not None and known.kind == CUSTOM:
            item = {"id": f"ctc_{hexid}", "type": "custom_tool_call", "status": "in_progress", "call_id": call_id,
                    "name": known.name, "input": ""}  # fmt: skip
        elif known is not None and known.kind == LOCAL_SHELL:
            return {"id": f"lsh_{hexid}", "type": "local_shell_call", "status": "in_progress", "call_id": call_id,
                    "action": shell_action("")}  # fmt: skip
        else:
            item = {"id": f"fc_{hexid}", "type": "function_call", "status": "in_progress",
                    "name": known.name if known is not None else ev.name, "arguments": "", "call_id": call_id}  # fmt: skip
        if known is not None and known.namespace is not None:
            item["namespace"] = known.namespace
        return item

    def _delta(self, text: str, logprobs: tuple = ()) -> list[tuple[str, dict]]:
        item = self._item
        if item["type"] == "web_search_call":
            self._args += text
            return []
        if item["type"] == "code_interpreter_call":
            item["code"] += text
            return [self._event("response.code_interpreter_call_code.delta", **self._where(), delta=text)]
        if item["type"] == "function_call":
            item["arguments"] += text
            return [self._event("response.function_call_arguments.delta", **self._where(), delta=text)]
        if item["type"] in ("custom_tool_call", "local_shell_call"):  # shown once the arguments are complete
            self._args += text
            return []
        item["content"][0]["text"] += text
        kind = "response.reasoning_text.delta" if item["type"] == "reasoning" else "response.output_text.delta"
        extra = {} if item["type"] == "reasoning" else {"logprobs": list(logprobs)}
        if logprobs and item["type"] == "message":
            item["content"][0]["logprobs"] += logprobs
        out = [self._event(kind, **self._where(), content_index=0, delta=text, **extra)]
        if item["type"] == "reasoning" and self.options.summary:
            item["summary"][0]["text"] += text
            out.append(self._event("response.reasoning_summary_text.delta", **self._where(), summary_index=0, delta=text))
        return out

    def _close(self, ev: ItemDone) -> list[tuple[str, dict]]:
        item = self._item
        if item["type"] == "web_search_call":  # now the action is known; the search runs next
            item["action"] = web_search_action(self._recipient, self._args)
            self.output.append(item)
            where = self._where()
            out = [self._event("response.output_item.added", output_index=where["output_index"], item=copy.deepcopy(item)),
                   self._event("response.web_search_call.in_progress", **where)]  # fmt: skip
            if not ev.complete:
                return out + self._end_tool("incomplete")
            item["status"] = "searching"
            return out + [self._event("response.web_search_call.searching", **where)]
        if item["type"] == "code_interpreter_call":
            where = self._where()
            out = [self._event("response.code_interpreter_call_code.done", **where, code=item["code"])]
            if not ev.complete:
                return out + self._end_tool("incomplete")
            item["status"] = "interpreting"
            return out + [self._event("response.code_interpreter_call.interpreting", **where)]
        where = self._where()
        item["status"] = "completed" if ev.complete else "incomplete"
        out = []
        if item["type"] == "function_call":
            out.append(self._event("response.function_call_arguments.done", **where, arguments=item["arguments"]))
        elif item["type"] == "custom_tool_call":
            item["input"] = custom_input(self._args)
            out.append(self._event("response.custom_tool_call_input.delta", **where, delta=item["input"]))
            out.append(self._event("response.custom_tool_call_input.done", **where, input=item["input"]))
        elif item["type"] == "local_shell_call":
            item["action"] = shell_action(self._args)
        else:
            part = item["content"][0]
            for i, c in enumerate(ev.citations):
                part["annotations"].append(url_citation(c))
                out.append(self._event("response.output_text.annotation.added", **where, content_index=0,
                                       annotation_index=i, annotation=url_citation(c)))  # fmt: skip
            done = "response.reasoning_text.done" if item["type"] == "reasoning" else "response.output_text.done"
            extra = {} if item["type"] == "reasoning" else {"logprobs": list(part["logprobs"])}
            out.append(self._event(done, **where, content_index=0, text=part["text"], **extra))
            out.append(self._event("response.content_part.done", **where, content_index=0, part=dict(part)))
            if item["type"] == "reasoning":
                out += self._reasoning_done(item, where)
        out.append(self._event("response.output_item.done", output_index=where["output_index"], item=copy.deepcopy(item)))
        self._item = None
        return out

    def _reasoning_done(self, item: dict, where: dict) -> list[tuple[str, dict]]:
        """A reasoning item's summary (the raw analysis) and encrypted_content, when asked for."""
        out = []
        if self.options.summary:
            summary = dict(item["summary"][0])
            out.append(self._event("response.reasoning_summary_text.done", **where, summary_index=0, text=summary["text"]))
            out.append(self._event("response.reasoning_summary_part.done", **where, summary_index=0, part=summary))
        if self.options.seal is not None:
            item["encrypted_content"] = self.options.seal.seal(item["content"][0]["text"])
        return out

    def _tool_done(self, ev: ToolDone) -> list[tuple[str, dict]]:
        """The server ran the call: its result completes the item (status failed when the tool failed)."""
        item, r = self._item, ev.result
        self.tool_messages[item["id"]] = (ev.call, ev.reply)
        if item["type"] == "web_search_call":
            item["action"] = web_search_action(self._recipient, self._args, r.url)
        else:
            images = [im for im in (_image(p) for p in r.images) if im is not None]
            item["outputs"] = [{"type": "logs", "logs": r.content}, *images]
        return self._end_tool("failed" if r.error else "completed")

    def _end_tool(self, status: str) -> list[tuple[str, dict]]:
        item, where = self._item, self._where()
        item["status"] = status
        kind = "web_search_call" if item["type"] == "web_search_call" else "code_interpreter_call"
        out = [] if status == "incomplete" else [self._event(f"response.{kind}.completed", **where)]
        out.append(self._event("response.output_item.done", output_index=where["output_index"], item=copy.deepcopy(item)))
        self._item = None
        return out

    def finish(self, ev: Finished) -> list[tuple[str, dict]]:
        item = self._item
        shown = item is not None and item["type"] in ("web_search_call", "code_interpreter_call") and any(o is item for o in self.output)
        out = self._end_tool("incomplete") if shown else []  # a built-in call the response ended before running
        self._item = None
        return out + self._finish(ev)

    def _finish(self, ev: Finished) -> list[tuple[str, dict]]:
        self.usage = _usage(ev.usage)
        if ev.stop_reason == "error":
            self.status, self.error = "failed", {"code": "server_error", "message": ev.error or "generation failed"}
            return [self._event("response.failed", response=self.response())]
        if ev.stop_reason in ("length", "context", "cancelled", "tool_limit"):
            reason = {"length": "max_output_tokens", "context": "max_output_tokens", "cancelled": "cancelled",
                      "tool_limit": "max_tool_calls"}[ev.stop_reason]  # fmt: skip
            self.status, self.incomplete = "incomplete", {"reason": reason}
            return [self._event("response.incomplete", response=self.response())]
        self.status = "completed"
        return [self._event("response.completed", response=self.response())]

    def fail(self, code: str, message: str) -> list[tuple[str, dict]]:
        self.status, self.error = "failed", {"code": code, "message": message}
        return [self._event("response.failed", response=self.response())]
