"""`POST /v1/messages`: Anthropic's Messages API <-> harmony (what Claude Code and the anthropic SDK speak).

Request (checked by the MESSAGES schema, server/request_body.py): `system` (a string or text blocks) ->
the developer instructions (a block that is Claude Code's `x-anthropic-billing-header: …` line is
left out: it is metadata, and it would make the prompt differ between Claude Code versions);
`system` messages inside `messages` (Claude Code sends its environment that way) -> harmony
developer messages in their place, so what follows them stays a cached prefix; `user` messages -> harmony user messages (text blocks joined) and tool
messages (`tool_result` blocks, answered to the call their `tool_use_id` names; `is_error` prefixes
`Error: `); `assistant` messages -> `thinking` blocks as analysis (kept only where harmony keeps it:
the turn a tool call continues), `text` blocks as the answer (commentary when the message also calls
a tool), `tool_use` blocks as `functions.<name>` calls (input as compact JSON). `tools`
(`input_schema`; a tool with `defer_loading` is not in the model's context, as on Anthropic's API
until a tool search loads it, which this server does not run) and `tool_choice` go through tools.py
like the other APIs' (`any` -> required, `tool` -> that function); `thinking` and
`output_config.effort` set the reasoning effort and budget (`thinking_settings`);
`output_config.format` (or the older `output_format`) `{"type": "json_schema", "schema": …}` is
enforced on the answer by the grammar, as Anthropic's structured outputs are; `context_management`
is accepted and changes nothing (the pool keeps every prefix; thinking is dropped by harmony's rule).
A block type this server does not take is a 400 naming its path (`messages[1].content[0].type`).

A thinking block's `signature` is the analysis text sealed by the server's `ReasoningSeal` (the
Responses API's `encrypted_content`, same key): one sent back must open (else a 400 naming it), and
the text it seals is what is rendered. A thinking block without a signature is taken as it is.

Response: `content` blocks in the order the model wrote them (with `thinking.display: "omitted"`
a thinking block's text is empty and only its signature carries it, as Anthropic does) (thinking, text, tool_use with a
`toolu_…` id and the parsed `input`), `stop_reason` (end_turn, tool_use, max_tokens, stop_sequence),
`usage` as Anthropic counts it: `input_tokens` the prompt tokens not read from the cache,
`cache_read_input_tokens` those the prompt-cache pool reused (their sum is the prompt,
`count_tokens`' answer), `cache_creation_input_tokens` 0. Streaming: Anthropic's named events.
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass, replace
from typing import Any

from mlx_oss.harmony import COMMENTARY, FINAL, Message, ReasoningEffort
from mlx_oss.sampling import SamplingConfig
from mlx_oss.server.conversation import Turn, effort, reasoning_message, response_format, sampling, stop_strings
from mlx_oss.server.errors import APIError, bad_request, clip
from mlx_oss.server.generation import FUNCTION_CALL, MESSAGE, REASONING, Finished, ItemDelta, ItemDone, ItemStarted
from mlx_oss.server.responses import ReasoningSeal
from mlx_oss.server.tools import FUNCTIONS, StrictSchema, parse_tools, tool_choice

__all__ = ["MessagesRequest", "parse_request", "MessageBuilder", "thinking_settings", "STOP_REASONS", "BILLING_HEADER"]

log = logging.getLogger("mlx_oss.server")
STOP_REASONS = {"stop": "end_turn", "tool_call": "tool_use", "length": "max_tokens", "context": "max_tokens",
                "tool_limit": "end_turn"}  # fmt: skip
# `thinking.budget_tokens` -> effort: below 2048 low, below 8192 medium, else high (Anthropic's minimum is 1024)
LOW_BELOW, MEDIUM_BELOW = 2048, 8192
BILLING_HEADER = "x-anthropic-billing-header:"  # Claude Code's first system block: metadata, not instructions


@dataclass(frozen=True)
class MessagesRequest:
    turn: Turn
    stream: bool
    show_thinking: bool = True  # False: `thinking.display: "omitted"`


def thinking_settings(value: Any, config: Any = None) -> tuple[ReasoningEffort, int | None]:
    """`thinking` and `output_config` -> (effort, reasoning budget). `output_config.effort` (low, medium,
    high; xhigh and max mean high, gpt-oss's most) sets the effort, medium when absent (gpt-oss always
    reasons); `thinking` `{"type": "adaptive"}` or absent: that effort, no budget;
    `{"type": "enabled", "budget_tokens": N}`: budget N, effort by N (LOW_BELOW, MEDIUM_BELOW) unless
    `output_config.effort` names one; `{"type": "disabled"}`: low with a budget of 0 (no analysis at all)."""
    named = (config or {}).get("effort")
    eff = effort(named, "output_config.effort")
    kind = value.get("type") if value is not None else None
    if kind in (None, "adaptive"):
        return eff, None
    if kind == "disabled":
        return ReasoningEffort.LOW, 0
    if kind != "enabled":
        raise bad_request(f"thinking.type must be 'enabled', 'adaptive' or 'disabled', not {clip(str(kind))!r}",
                          "thinking.type")  # fmt: skip
    n = value.get("budget_tokens")
    if n is None:
        raise bad_request("thinking of type 'enabled' needs 'budget_tokens'", "thinking.budget_tokens")
    n = int(n)
    if named is None:
        eff = ReasoningEffort.LOW if n < LOW_BELOW else ReasoningEffort.MEDIUM if n < MEDIUM_BELOW else ReasoningEffort.HIGH
    return eff, n


def thinking_shown(value: Any) -> bool:
    """False for `thinking.display: "omitted"`: thinking blocks come back empty, with their signature. Other
    values (Anthropic's "summarized", Claude Code's interactive "updates") show the analysis as it is."""
    return not (value is not None and value.get("display") == "omitted")


def _texts(content: Any, param: str) -> str:
    """A string or text blocks (system, tool_result content) -> text; 400 naming a block of another type."""
    if content is None or isinstance(content, str):
        return content or ""
    out = []
    for i, block in enumerate(content):
        if block.get("type") != "text" or not isinstance(block.get("text"), str):
            raise bad_request(f"{param}[{i}]: only text blocks are supported here (got {clip(str(block.get('type')))!r})",
                              f"{param}[{i}].type")  # fmt: skip
        out.append(block["text"])
    return "".join(out)


def _system(content: Any) -> str | None:
    """`system` -> the developer instructions, without Claude Code's billing-header block."""
    if isinstance(content, list):
        content = [b for b in content if not (b.get("type") == "text" and (b.get("text") or "").startswith(BILLING_HEADER))]
    return _texts(content, "system") or None


def _blocks(content: Any) -> list[dict]:
    return [{"type": "text", "text": content}] if isinstance(content, str) else content


def _thinking(block: dict, seal: ReasoningSeal, where: str) -> str:
    signature = block.get("signature")
    if signature:
        text = seal.open(signature)
        if text is None:
            raise APIError(400, f"{where}.signature was not made by this server, or was altered (thinking is sent back "
                           "with the signature this server gave it)", param=f"{where}.signature")  # fmt: skip
        return text
    return block.get("thinking") or ""


def _messages(raw: list, seal: ReasoningSeal) -> list[Message]:
    history: list[Message] = []
    calls: dict[str, str] = {}  # tool_use id -> function name
    for i, m in enumerate(raw):
        where = f"messages[{i}]"
        role = m.get("role")
        blocks = _blocks(m.get("content"))
        if role == "user":
            text: list[str] = []

            def flush() -> None:
                if text:
                    history.append(Message.user("".join(text)))
                    text.clear()

            for j, b in enumerate(blocks):
                bw = f"{where}.content[{j}]"
                kind = b.get("type")
                if kind == "text":
                    text.append(b.get("text") or "")
                elif kind == "tool_result":
                    flush()
                    call_id = b.get("tool_use_id")
                    if call_id not in calls:
                        raise bad_request(f"{bw}.tool_use_id {clip(str(call_id))!r} does not match any earlier tool_use "
                                          "block", f"{bw}.tool_use_id")  # fmt: skip
                    result = _texts(b.get("content"), f"{bw}.content")
                    if b.get("is_error"):
                        result = f"Error: {result}"
                    history.append(Message.tool_result(FUNCTIONS + calls[call_id], result))
                else:
                    raise bad_request(f"{bw}.type {clip(str(kind))!r} is not supported in a user message (supported: "
                                      "text, tool_result)", f"{bw}.type")  # fmt: skip
            flush()
        elif role == "assistant":
            calling = any(b.get("type") == "tool_use" for b in blocks)
            for j, b in enumerate(blocks):
                bw = f"{where}.content[{j}]"
                kind = b.get("type")
                if kind == "thinking":
                    thought = _thinking(b, seal, bw)
                    if thought:
                        history.append(reasoning_message(thought))
                elif kind == "text":
                    if b.get("text"):
                        history.append(Message.assistant(b["text"], channel=COMMENTARY if calling else FINAL))
                elif kind == "tool_use":
                    name, call_id = b.get("name"), b.get("id")
                    if not name or not call_id:
                        raise bad_request(f"{bw} needs an 'id' and a 'name'", bw)
                    calls[call_id] = name
                    args = json.dumps(b.get("input") or {}, ensure_ascii=False, separators=(",", ":"))
                    history.append(Message.tool_call(FUNCTIONS + name, args))
                else:
                    raise bad_request(f"{bw}.type {clip(str(kind))!r} is not supported in an assistant message "
                                      "(supported: thinking, text, tool_use)", f"{bw}.type")  # fmt: skip
        elif role == "system":
            text = _texts(m.get("content"), f"{where}.content")
            if text:
                history.append(Message.developer(text))
        else:
            raise bad_request(f"{where}.role must be 'user', 'assistant' or 'system', not {clip(str(role))!r}",
                              f"{where}.role")  # fmt: skip
    if not history:
        raise bad_request("'messages' holds no content", "messages")
    return history


def _tools(tools: Any) -> list[dict] | None:
    """Anthropic's tools as Chat Completions function tools (tools.py reads those); server tools
    (`web_search_…`, `bash_…`: a `type` other than `custom`) are left out with a warning, as the
    Responses API does with tools the model cannot use here."""
    if tools is None:
        return None
    out, dropped = [], []
    for i, t in enumerate(tools):
        if t.get("defer_loading"):
            continue
        if t.get("type") not in (None, "custom"):
            dropped.append(f"tools[{i}] {clip(str(t.get('type')))!r}")
            continue
        fn = {"name": t["name"], "description": t.get("description"),
              "parameters": t.get("input_schema") or {"type": "object", "properties": {}}, "strict": t.get("strict")}  # fmt: skip
        out.append({"type": "function", "function": fn})
    if dropped:
        log.warning("Anthropic server tools this server does not run, left out of the prompt: %s", ", ".join(dropped))
    return out


def _tool_choice(value: Any) -> Any:
    """Anthropic's tool_choice in the shape tools.tool_choice reads."""
    if value is None:
        return None
    kind = value.get("type")
    if kind in ("auto", "none"):
        return kind
    if kind == "any":
        return "required"
    if kind == "tool":
        if not value.get("name"):
            raise bad_request("tool_choice of type 'tool' needs a 'name'", "tool_choice.name")
        return {"type": "function", "name": value["name"]}
    raise bad_request(f"tool_choice.type must be auto, any, tool or none, not {clip(str(kind))!r}", "tool_choice.type")


def _answer_format(body: dict) -> tuple[Any, str]:
    """(the format spec, its parameter): `output_config.format`, or the older `output_format`."""
    config = body.get("output_config") or {}
    if config.get("format") is not None:
        return config["format"], "output_config.format"
    return body.get("output_format"), "output_format"


def parse_request(body: dict, base: SamplingConfig, seal: ReasoningSeal) -> MessagesRequest:
    """Translate a Messages body that passed the MESSAGES (or COUNT_TOKENS) schema; 400 naming the path
    for what a schema cannot say."""
    history = _messages(body["messages"], seal)
    instructions = _system(body.get("system"))
    tools = parse_tools(_tools(body.get("tools")))
    choice = tool_choice(_tool_choice(body.get("tool_choice")), tools)
    eff, budget = thinking_settings(body.get("thinking"), body.get("output_config"))
    spec, param = _answer_format(body)
    fmt = response_format(spec, param)
    if fmt is not None and spec.get("type") != "json_schema":
        raise bad_request(f"{param}.type must be 'json_schema', not {clip(str(spec.get('type')))!r}", f"{param}.type")
    answer = StrictSchema(FINAL, fmt.schema, f"{param}.schema") if fmt is not None else None
    s = sampling(body, base)
    if body.get("top_k") is not None:
        s = replace(s, top_k=int(body["top_k"]))
    turn = Turn(tuple(history), instructions, tools, eff, fmt, body.get("max_tokens"), s,
                stop_strings(body.get("stop_sequences")), tool_choice=choice, answer_schema=answer,
                reasoning_budget=budget)  # fmt: skip
    return MessagesRequest(turn, bool(body.get("stream")), thinking_shown(body.get("thinking")))


def usage_json(u) -> dict:
    return {"input_tokens": u.prompt_tokens - u.cached_tokens, "output_tokens": u.completion_tokens,
            "cache_read_input_tokens": u.cached_tokens, "cache_creation_input_tokens": 0}  # fmt: skip


def _input(raw: str) -> dict:
    """A call's arguments as Anthropic's `input` object ({} when the model wrote no JSON object)."""
    try:
        value = json.loads(raw)
    except ValueError:  # not JSON, or nothing written
        return {}
    return value if isinstance(value, dict) else {}


class MessageBuilder:
    """Turns generation events into a Message object, or into Anthropic's stream events as they come
    (`start`, `feed`, `end`: lists of (event name, JSON))."""

    def __init__(self, model: str, seal: ReasoningSeal, prompt_tokens: int, show_thinking: bool = True) -> None:
        self.id = f"msg_{uuid.uuid4().hex[:24]}"
        self.show_thinking = show_thinking
        self._thought = ""  # the open thinking block's text (sealed into its signature; shown unless omitted)
        self.model = model
        self.seal = seal
        self.prompt_tokens = prompt_tokens
        self.content: list[dict] = []
        self._open: dict | None = None
        self._raw = ""
        self.finished: Finished | None = None

    def _message(self, content: list[dict], stop_reason: str | None, stop_sequence: str | None, usage: dict) -> dict:
        return {"id": self.id, "type": "message", "role": "assistant", "model": self.model, "content": content,
                "stop_reason": stop_reason, "stop_sequence": stop_sequence, "usage": usage}  # fmt: skip

    def start(self) -> list[tuple[str, dict]]:
        usage = {"input_tokens": self.prompt_tokens, "output_tokens": 0, "cache_read_input_tokens": 0,
                 "cache_creation_input_tokens": 0}  # fmt: skip
        return [("message_start", {"type": "message_start", "message": self._message([], None, None, usage)}),
                ("ping", {"type": "ping"})]  # fmt: skip

    def feed(self, ev: object) -> list[tuple[str, dict]]:
        """Record an event; -> the stream events it makes."""
        index = len(self.content) - 1
        if isinstance(ev, Finished):
            self.finished = ev
            return []
        if isinstance(ev, ItemStarted):
            block: dict | None = None
            if ev.kind == REASONING:
                block = {"type": "thinking", "thinking": "", "signature": ""}
                self._thought = ""
            elif ev.kind == MESSAGE:
                block = {"type": "text", "text": ""}
            elif ev.kind == FUNCTION_CALL:
                block = {"type": "tool_use", "id": f"toolu_{uuid.uuid4().hex[:24]}", "name": ev.name, "input": {}}
                self._raw = ""
            self._open = block
            if block is None:
                return []
            self.content.append(block)
            return [("content_block_start", {"type": "content_block_start", "index": index + 1, "content_block": dict(block)})]
        b = self._open
        if b is None:
            return []
        if isinstance(ev, ItemDelta):
            if not ev.text:
                return []
            if b["type"] == "thinking":
                self._thought += ev.text
                if not self.show_thinking:
                    return []
                b["thinking"] += ev.text
                delta = {"type": "thinking_delta", "thinking": ev.text}
            elif b["type"] == "text":
                b["text"] += ev.text
                delta = {"type": "text_delta", "text": ev.text}
            else:
                self._raw += ev.text
                delta = {"type": "input_json_delta", "partial_json": ev.text}
            return [("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})]
        if isinstance(ev, ItemDone):
            out = []
            if b["type"] == "thinking":
                b["signature"] = self.seal.seal(self._thought)
                out.append(("content_block_delta", {"type": "content_block_delta", "index": index,
                                                    "delta": {"type": "signature_delta", "signature": b["signature"]}}))  # fmt: skip
            elif b["type"] == "tool_use":
                b["input"] = _input(self._raw)
            self._open = None
            return [*out, ("content_block_stop", {"type": "content_block_stop", "index": index})]
        return []

    @property
    def stop_reason(self) -> str:
        f = self.finished
        if f is not None and f.stop_reason == "stop" and f.stop_sequence is not None:
            return "stop_sequence"
        return STOP_REASONS.get(f.stop_reason, "end_turn") if f is not None else "end_turn"

    def _usage(self) -> dict:
        if self.finished is None:
            return {"input_tokens": self.prompt_tokens, "output_tokens": 0, "cache_read_input_tokens": 0,
                    "cache_creation_input_tokens": 0}  # fmt: skip
        return usage_json(self.finished.usage)

    def end(self) -> list[tuple[str, dict]]:
        """message_delta (stop_reason, stop_sequence, the final usage) and message_stop."""
        f = self.finished
        delta = {"stop_reason": self.stop_reason, "stop_sequence": f.stop_sequence if f is not None else None}
        return [("message_delta", {"type": "message_delta", "delta": delta, "usage": self._usage()}),
                ("message_stop", {"type": "message_stop"})]  # fmt: skip

    def message(self) -> dict:
        f = self.finished
        return self._message(self.content, self.stop_reason, f.stop_sequence if f is not None else None, self._usage())
