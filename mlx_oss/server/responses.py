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
`StoredResponses` keeps stored responses (bounded by bytes) for `previous_response_id` and `GET /v1/responses/{id}`.
"""

from __future__ import annotations

import base64
import copy
import json
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
    reasoning_message,
    response_format,
    sampling,
    text_of,
)
from mlx_oss.server.errors import APIError, bad_request
from mlx_oss.server.builtin import ServerTools
from mlx_oss.server.generation import (
    BROWSER_CALL,
    FUNCTION_CALL,
    MESSAGE,
    PYTHON_CALL,
    REASONING,
    Finished,
    ItemDelta,
    ItemDone,
    ItemStarted,
    ToolDone,
)
from mlx_oss.server.tools import FUNCTIONS, parse_tools, tool_choice

__all__ = ["ResponsesRequest", "StoredResponses", "ResponseBuilder", "parse_request", "slim_item"]

LOGPROBS = "message.output_text.logprobs"  # the `include` value that asks for the answer's logprobs


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
    not kept at all."""

    def __init__(self, max_bytes: int = 256 << 20) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._items: OrderedDict[str, tuple[list, dict, tuple[str, ...], int]] = OrderedDict()
        self._tools: dict[str, tuple[Message, ...]] = {}

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
    "message": ("type", "role", "content", *REASONING_FIELDS),
    "reasoning": ("type", "id", "content"),
    "function_call": ("type", "id", "name", "arguments", "call_id", "status"),
    "function_call_output": ("type", "call_id", "output"),
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


def _as_items(value: Any) -> list:
    if isinstance(value, str):
        return [{"type": "message", "role": "user", "content": value}]
    if not isinstance(value, list) or not value:
        raise bad_request("'input' must be a string or a non-empty array of items", "input")
    return list(value)


def _code_messages(it: dict, where: str) -> tuple[Message, ...]:
    """A code_interpreter_call item not stored here: its code and logs, as the model wrote and saw them."""
    code = it.get("code") or ""
    logs = "".join(o.get("logs") or "" for o in it.get("outputs") or [])
    return (Message.tool_call("python", code, channel=ANALYSIS, content_type="code"),
            Message.tool_result("python", logs, channel=ANALYSIS))  # fmt: skip


def _history(items: list, stored: StoredResponses | None = None) -> tuple[list[Message], list[str]]:
    history: list[Message] = []
    instructions: list[str] = []
    calls: dict[str, str] = {}
    for i, it in enumerate(items):
        where = f"input[{i}]"
        kind = it.get("type", "message")
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
            text = "".join(p.get("text") or "" for p in parts if isinstance(p, dict)) if isinstance(parts, list) else parts
            if text:
                history.append(reasoning_message(text))
        elif kind == "function_call":
            name, args, call_id = it.get("name"), it.get("arguments", ""), it.get("call_id")
            if not name or args is None or call_id is None:
                raise bad_request(f"{where}: a function_call needs string 'name', 'arguments' and 'call_id'", where)
            calls[call_id] = name
            history.append(Message.tool_call(FUNCTIONS + name, args))
        elif kind == "function_call_output":
            call_id = it.get("call_id")
            if call_id not in calls:
                raise bad_request(f"{where}.call_id {call_id!r} does not match any earlier function_call", f"{where}.call_id")
            output = it.get("output")
            text = output if isinstance(output, str) else text_of(output, f"{where}.output", ("input_text", "output_text", "text"))
            history.append(Message.tool_result(FUNCTIONS + calls[call_id], text))
        elif kind in ("web_search_call", "code_interpreter_call"):
            known = stored.tool_messages(it.get("id")) if stored is not None else None
            if known is not None:
                history.extend(known)
            elif kind == "code_interpreter_call":
                history.extend(_code_messages(it, where))
            # an unknown web search (not stored here): what the page said is gone, so it is left out
        else:
            raise bad_request(f"{where}.type {kind!r} is not supported (message, reasoning, function_call, "
                              "function_call_output, web_search_call, code_interpreter_call)", f"{where}.type")  # fmt: skip
    if not history:
        raise bad_request("'input' needs at least one user, assistant or tool item", "input")
    return history, instructions


def parse_request(body: dict, stored: StoredResponses, base: SamplingConfig, builtin: ServerTools | None = None) -> ResponsesRequest:
    """Translate a Responses body that passed the RESPONSES schema (server/request_body.py); 400/404
    naming the parameter for what a schema cannot say. `builtin`: the server's built-in tools (their
    types are refused without it)."""
    stream = bool(body.get("stream"))
    keep = body.get("store") is not False
    if body.get("input") is None:
        raise bad_request("'input' is required", "input")
    items = _as_items(body["input"])
    prev = body.get("previous_response_id")
    if prev is not None:
        prev_items, prev_resp = stored.get(prev, "previous_response_id")
        items = prev_items + [o for o in prev_resp["output"]] + items
    history, instructions = _history(items, stored)
    extra = body.get("instructions")
    if extra:
        instructions.insert(0, extra)
    include = body.get("include") or []
    top = logprobs_setting(body, LOGPROBS in include, f"'include': [{LOGPROBS!r}]")
    tools = parse_tools(body.get("tools"), builtin=builtin)
    choice = tool_choice(body.get("tool_choice"), tools)
    limit = builtin.max_calls if builtin is not None else 0
    max_calls = min(first_of(body, "max_tool_calls") or limit, limit)
    r = body.get("reasoning") or {}
    text = body.get("text") or {}
    turn = Turn(
        tuple(history), "\n\n".join(instructions) if instructions else None, tools, effort(r.get("effort"), "reasoning.effort"),
        response_format(text.get("format"), "text.format"), first_of(body, "max_output_tokens"),
        replace(sampling(body, base), logprobs=top), tool_choice=choice,
    )  # fmt: skip
    echo = {
        "instructions": extra, "max_output_tokens": body.get("max_output_tokens"), "previous_response_id": prev,
        "reasoning": {"effort": turn.effort.value, "summary": None}, "temperature": turn.sampling.temperature,
        "top_p": turn.sampling.top_p, "text": {"format": text.get("format") or {"type": "text"}},
        "tool_choice": body.get("tool_choice") or "auto", "tools": body.get("tools") or [],
        "parallel_tool_calls": body.get("parallel_tool_calls", True), "metadata": body.get("metadata") or {},
        "store": keep, "truncation": "disabled", "user": body.get("user"), "max_tool_calls": body.get("max_tool_calls"),
    }  # fmt: skip
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
        args = json.loads(raw) if raw.strip() else {}
    except json.JSONDecodeError:
        return {}
    return args if isinstance(args, dict) else {}


def web_search_action(recipient: str, raw: str, url: str = "") -> dict:
    """The `action` of a web_search_call (the openai SDK's search / open_page / find_in_page) for
    the model's `browser.<function>` call; `url` is the page the call showed ("" if none)."""
    args = _arguments(raw)
    function = recipient.split(".", 1)[1] if "." in recipient else ""
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
    `container_id` names the python session of this conversation (code_interpreter_call items)."""

    def __init__(self, model: str, echo: dict, container_id: str = "") -> None:
        self.id = f"resp_{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = model
        self.echo = echo
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
            self._item, self._recipient = item, ev.name or ""
            where = self._where()
            return [self._event("response.output_item.added", output_index=where["output_index"], item=copy.deepcopy(item)),
                    self._event("response.code_interpreter_call.in_progress", **where)]  # fmt: skip
        if ev.kind == REASONING:
            item = {"id": f"rs_{hexid}", "type": "reasoning", "summary": [], "content": [], "status": "in_progress"}
            part = {"type": "reasoning_text", "text": ""}
        elif ev.kind == FUNCTION_CALL:
            item = {"id": f"fc_{hexid}", "type": "function_call", "status": "in_progress", "name": ev.name,
                    "arguments": "", "call_id": f"call_{hexid[:24]}"}  # fmt: skip
            part = None
        else:
            item = {"id": f"msg_{hexid}", "type": "message", "role": "assistant", "status": "in_progress", "content": []}
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        self.output.append(item)
        self._item = item
        out = [self._event("response.output_item.added", output_index=len(self.output) - 1, item=copy.deepcopy(item))]
        if part is not None:
            item["content"].append(part)
            out.append(self._event("response.content_part.added", **self._where(), content_index=0, part=dict(part)))
        return out

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
        item["content"][0]["text"] += text
        kind = "response.reasoning_text.delta" if item["type"] == "reasoning" else "response.output_text.delta"
        extra = {} if item["type"] == "reasoning" else {"logprobs": list(logprobs)}
        if logprobs and item["type"] == "message":
            item["content"][0]["logprobs"] += logprobs
        return [self._event(kind, **self._where(), content_index=0, delta=text, **extra)]

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
        out.append(self._event("response.output_item.done", output_index=where["output_index"], item=copy.deepcopy(item)))
        self._item = None
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
