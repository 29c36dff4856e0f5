"""`POST /v1/chat/completions`: OpenAI Chat Completions <-> harmony.

Request: system/developer messages become the developer instructions; assistant messages become
harmony messages (reasoning sent back in `reasoning`, `reasoning_content` or `thinking` -> analysis,
`content` -> final, or a commentary preamble when the message has `tool_calls`; each tool call ->
a `functions.<name>` call); tool messages are answered by the call their `tool_call_id` names.
Response: reasoning in `reasoning`, mirrored in `reasoning_content` (clients disagree on the name),
answer text in `content`, calls in `tool_calls` with JSON-string arguments; harmony markup never
reaches `content`.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, replace
from typing import Any

from mlx_oss.sampling import SamplingConfig
from mlx_oss.harmony import COMMENTARY, Message
from mlx_oss.server.conversation import (
    REASONING_FIELDS,
    Turn,
    effort,
    logprobs_setting,
    first_of,
    logit_bias,
    reasoning_message,
    reasoning_budget,
    response_format,
    sampling,
    stop_strings,
    strict_answer,
    text_of,
)
from mlx_oss.server.errors import bad_request
from mlx_oss.server.generation import FUNCTION_CALL, MESSAGE, REASONING, Finished, ItemDelta, ItemDone, ItemStarted
from mlx_oss.server.tools import FUNCTIONS, parse_tools, tool_choice

__all__ = ["ChatRequest", "parse_request", "ChatAccumulator", "FINISH_REASONS"]

FINISH_REASONS = {"stop": "stop", "tool_call": "tool_calls", "length": "length", "context": "length", "cancelled": "stop"}


@dataclass(frozen=True)
class ChatRequest:
    turn: Turn
    stream: bool
    include_usage: bool


def _reasoning_sent_back(m: dict) -> str | None:
    """The first non-empty reasoning field (the schema lets only strings or null through)."""
    return next((m[key] for key in REASONING_FIELDS if m.get(key)), None)


def _messages(raw: list) -> tuple[list[Message], str | None]:
    history: list[Message] = []
    instructions: list[str] = []
    calls: dict[str, str] = {}  # tool_call_id -> function name
    for i, m in enumerate(raw):
        where = f"messages[{i}]"
        role = m.get("role")
        if role in ("system", "developer"):
            instructions.append(text_of(m.get("content"), f"{where}.content"))
        elif role == "user":
            history.append(Message.user(text_of(m.get("content"), f"{where}.content")))
        elif role == "assistant":
            reasoning = _reasoning_sent_back(m)
            if reasoning:
                history.append(reasoning_message(reasoning))
            content = text_of(m.get("content"), f"{where}.content", ("text", "output_text", "refusal"))
            tool_calls = m.get("tool_calls") or []
            if content:
                history.append(Message.assistant(content, channel=COMMENTARY if tool_calls else "final"))
            for j, call in enumerate(tool_calls):
                cw = f"{where}.tool_calls[{j}]"
                fn = call.get("function")
                if not fn or not fn.get("name"):
                    raise bad_request(f"{cw} needs a 'function' with a 'name'", cw)
                args = fn.get("arguments", "")
                if not isinstance(args, str):
                    args = json.dumps(args, ensure_ascii=False)
                if call.get("id") is not None:
                    calls[call["id"]] = fn["name"]
                history.append(Message.tool_call(FUNCTIONS + fn["name"], args))
        elif role == "tool":
            call_id = m.get("tool_call_id")
            if call_id not in calls:
                raise bad_request(f"{where}.tool_call_id {call_id!r} does not match any earlier assistant tool call",
                                  f"{where}.tool_call_id")  # fmt: skip
            history.append(Message.tool_result(FUNCTIONS + calls[call_id], text_of(m.get("content"), f"{where}.content")))
        else:
            raise bad_request(f"{where}.role must be system, developer, user, assistant or tool, not {role!r}", f"{where}.role")
    if not history:
        raise bad_request("'messages' needs at least one user, assistant or tool message", "messages")
    return history, "\n\n".join(instructions) if instructions else None


def parse_request(body: dict, base: SamplingConfig) -> ChatRequest:
    """Translate a Chat Completions body that passed the CHAT schema (server/request_body.py); 400
    naming the parameter for what a schema cannot say."""
    n = body.get("n")
    if n not in (None, 1):
        raise bad_request("only n=1 is supported (one generation at a time)", "n")
    top = logprobs_setting(body, bool(body.get("logprobs")), "'logprobs': true")
    stream = bool(body.get("stream"))
    opts = body.get("stream_options") or {}
    history, instructions = _messages(body["messages"])
    tools = parse_tools(body.get("tools"))
    choice = tool_choice(body.get("tool_choice"), tools)
    reasoning = body.get("reasoning") or {}
    eff = body.get("reasoning_effort")
    if eff is None:
        eff = reasoning.get("effort")
    fmt = body.get("response_format")
    turn = Turn(
        tuple(history), instructions, tools, effort(eff, "reasoning_effort"), response_format(fmt, "response_format"),
        first_of(body, "max_completion_tokens", "max_tokens"), replace(sampling(body, base), logprobs=top),
        stop_strings(body.get("stop")), tool_choice=choice, logit_bias=logit_bias(body.get("logit_bias")),
        answer_schema=strict_answer(fmt, "response_format"), reasoning_budget=reasoning_budget(reasoning),
    )  # fmt: skip
    return ChatRequest(turn, stream, bool(opts.get("include_usage")))


def usage_json(u) -> dict:
    return {
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cached_tokens},
        "completion_tokens_details": {"reasoning_tokens": u.reasoning_tokens,
                                      **({"unparsed_tokens": u.unparsed_tokens} if u.unparsed_tokens else {})},
    }


class ChatAccumulator:
    """Turns generation events into a completion object, or into stream chunks as they come."""

    def __init__(self, model: str, logprobs: bool = False) -> None:
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.logprobs: list[dict] | None = [] if logprobs else None
        self.created = int(time.time())
        self.model = model
        self.reasoning: list[str] = []
        self.content: list[str] = []
        self.calls: list[dict] = []
        self._kind: str | None = None
        self.finished: Finished | None = None

    def _chunk(self, delta: dict, finish: str | None = None, logprobs: tuple = ()) -> dict:
        lp = {"content": list(logprobs), "refusal": None} if logprobs else None
        return {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                "choices": [{"index": 0, "delta": delta, "logprobs": lp, "finish_reason": finish}]}  # fmt: skip

    def first_chunk(self) -> dict:
        return self._chunk({"role": "assistant", "content": ""})

    def feed(self, ev: object) -> dict | None:
        """Record an event; -> the stream chunk it makes (None if it makes none)."""
        if isinstance(ev, ItemStarted):
            self._kind = ev.kind
            if ev.kind == FUNCTION_CALL:
                call = {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                        "function": {"name": ev.name, "arguments": ""}}  # fmt: skip
                self.calls.append(call)
                fn = dict(call["function"])
                return self._chunk({"tool_calls": [{"index": len(self.calls) - 1, **call, "function": fn}]})
        elif isinstance(ev, ItemDelta):
            if self._kind == REASONING:
                self.reasoning.append(ev.text)
                return self._chunk({"reasoning": ev.text, "reasoning_content": ev.text})
            if self._kind == MESSAGE:
                self.content.append(ev.text)
                if self.logprobs is None:
                    return self._chunk({"content": ev.text})
                self.logprobs += ev.logprobs
                return self._chunk({"content": ev.text}, logprobs=ev.logprobs)
            if self._kind == FUNCTION_CALL:
                self.calls[-1]["function"]["arguments"] += ev.text
                return self._chunk({"tool_calls": [{"index": len(self.calls) - 1, "function": {"arguments": ev.text}}]})
        elif isinstance(ev, ItemDone):
            if ev.kind == REASONING:
                self.reasoning.append("\n\n")  # separates analysis messages; stripped at the end
            self._kind = None
        elif isinstance(ev, Finished):
            self.finished = ev
        return None

    @property
    def finish_reason(self) -> str:
        return FINISH_REASONS.get(self.finished.stop_reason, "stop") if self.finished else "stop"

    def last_chunks(self, include_usage: bool) -> list[dict]:
        out = [self._chunk({}, self.finish_reason)]
        if include_usage and self.finished is not None:
            out.append({"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                        "choices": [], "usage": usage_json(self.finished.usage)})  # fmt: skip
        return out

    def completion(self) -> dict:
        reasoning = "".join(self.reasoning).strip("\n") or None
        message: dict[str, Any] = {"role": "assistant", "content": "".join(self.content) or None,
                                   "reasoning": reasoning, "reasoning_content": reasoning}  # fmt: skip
        if self.calls:
            message["tool_calls"] = self.calls
        else:
            message["content"] = message["content"] or ""
        return {
            "id": self.id, "object": "chat.completion", "created": self.created, "model": self.model,
            "choices": [{"index": 0, "message": message, "finish_reason": self.finish_reason,
                         "logprobs": None if self.logprobs is None else {"content": self.logprobs, "refusal": None}}],
            "usage": usage_json(self.finished.usage) if self.finished else None,
        }  # fmt: skip
