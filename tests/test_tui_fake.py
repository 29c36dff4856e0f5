"""A scripted stand-in for `mlx_oss.Chat` (docs/ENGINE_API.md) used by the TUI tests, and tests
that keep it honest: same public surface as the real Chat, same event types, same JSON round trip.

Deterministic: fixed text, fixed stats, optional per-event sleeps to exercise streaming and cancel.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from typing import Any, Iterator

from mlx_oss.events import AnswerDelta, Done, ReasoningDelta, Reply, Stats, ToolCall, ToolResult
from mlx_oss.harmony import Conversation, Message, Role

REASONING = "The user greets me. I should answer politely and show a code sample."
ANSWER = "**Hello!** Here is some code:\n\n```python\ndef greet(name):\n    return f\"hi {name}\"\n```\n\nAnything else?"


@dataclass
class Script:
    """What the fake model produces for one turn."""

    reasoning: str = REASONING
    answer: str = ANSWER
    tool: tuple[str, dict, str] | None = None  # (name, arguments, result)
    error: str | None = None  # Done(stop_reason="error") with this message
    raise_error: BaseException | None = None  # send() raises before any event
    chunk: int = 6  # characters per delta


def _chunks(text: str, n: int) -> list[str]:
    return [text[i : i + n] for i in range(0, len(text), n)]


@dataclass
class FakeChat:
    """Follows the Chat contract; `delay` seconds between events; records each turn's effort."""

    reasoning_effort: str = "medium"
    instructions: str | None = None
    delay: float = 0.0
    context_limit: int = 4096
    scripts: list[Script] = field(default_factory=list)
    turns: list[tuple[Message, ...]] = field(default_factory=list)
    prompts: list[dict[str, Any]] = field(default_factory=list)  # effort/instructions each send() used
    resets: int = 0
    closed: int = 0  # close() calls: a conversation the app left stops its python session
    warmed: list[int] = field(default_factory=list)  # what each warm() prefilled
    hold_at: int | None = None  # block before the n-th event (1-based) until `release` is set

    def __post_init__(self) -> None:
        self._cancel = threading.Event()
        self.sending = threading.Event()
        self.held = threading.Event()
        self.release = threading.Event()
        self._n = 0

    @property
    def messages(self) -> Conversation:
        head = [Message.system(reasoning_effort=self.reasoning_effort)]
        if self.instructions:
            head.append(Message.developer(self.instructions))
        return Conversation(tuple(head) + tuple(m for t in self.turns for m in t))

    @property
    def history(self) -> list[Message]:
        return [m for t in self.turns for m in t]

    @history.setter
    def history(self, messages: list[Message]) -> None:
        """Regroups into turns (each starts at a user message), like the real Chat's setter."""
        self.turns = []
        for m in messages:
            if m.role is Role.USER or not self.turns:
                self.turns.append((m,))
            else:
                self.turns[-1] = self.turns[-1] + (m,)

    def settings(self) -> dict[str, Any]:
        return {"reasoning_effort": str(self.reasoning_effort), "instructions": self.instructions}

    def warm(self, progress=None) -> int:
        """Stands for the real prefill: 100 "tokens" per message, reported in four steps."""
        total = 100 * len(self.history)
        self.warmed.append(total)
        for k in range(1, 5):
            if progress is not None:
                progress(total * k // 4, total)
        return total

    def cancel(self) -> None:
        self._cancel.set()

    def reset(self) -> None:
        self.turns.clear()
        self.resets += 1

    def close(self) -> None:
        self.closed += 1

    def _wait(self) -> bool:
        """Sleep between events (or hold, see `hold_at`); True if cancelled meanwhile."""
        self._n += 1
        if self.hold_at is not None and self._n == self.hold_at:
            self.held.set()
            while not self.release.wait(0.005) and not self._cancel.is_set():
                pass
        if self.delay:
            self._cancel.wait(self.delay)
        return self._cancel.is_set()

    def send(self, text: str | None = None, *, response_format: Any = ..., strict: bool | None = None) -> Iterator[Any]:
        """(`response_format` / `strict`: the real Chat's per-reply format; the TUI never sets them.)"""
        self._cancel.clear()
        self._n = 0
        if text is None:  # answer the last user message again (regenerate)
            if not self.turns or len(self.turns[-1]) != 1 or self.turns[-1][0].role is not Role.USER:
                raise ValueError("send() without text continues after a user message")
            text = self.turns.pop()[0].text
        script = self.scripts.pop(0) if self.scripts else Script()
        if script.raise_error is not None:
            raise script.raise_error
        self.prompts.append({"effort": str(self.reasoning_effort), "instructions": self.instructions, "text": text})
        self.sending.set()
        self.turns.append((Message.user(text),))  # like Chat: the user message is history from send() on
        return self._stream(text, script)

    def _stream(self, text: str, script: Script) -> Iterator[Any]:
        out: list[Message] = [Message.user(text)]
        acc = {"reasoning": "", "answer": ""}
        calls: list[ToolCall] = []
        stop = yield from self._body(script, out, acc, calls)
        if acc["reasoning"]:
            out.append(Message.assistant(acc["reasoning"], channel="analysis"))
        if acc["answer"]:
            out.append(Message.assistant(acc["answer"]))
        self.turns[-1] = tuple(out)
        used = 100 * len(self.turns)
        stats = Stats(
            prompt_tokens=used - 40, generated_tokens=40, reasoning_tokens=15, answer_tokens=25,
            ttft_s=0.25, decode_tps=42.0, peak_memory_bytes=123_000_000, stop_reason=stop,
            context_used=used, context_limit=self.context_limit, error=script.error,
        )  # fmt: skip
        yield Done(stats, Reply(acc["answer"], acc["reasoning"], tuple(calls), stats))

    def _body(self, script: Script, out: list[Message], acc: dict[str, str], calls: list[ToolCall]) -> Iterator[Any]:
        """Yields the deltas; returns the stop reason."""
        for piece in _chunks(script.reasoning, script.chunk):
            if self._wait():
                return "cancelled"
            acc["reasoning"] += piece
            yield ReasoningDelta(piece)
        if script.tool:
            name, args, result = script.tool
            call = ToolCall(name, args, json.dumps(args), id="call-1", recipient=f"functions.{name}")
            calls.append(call)
            yield call
            out += [Message.assistant(acc["reasoning"], channel="analysis"), Message.tool_call(f"functions.{name}", args),
                    Message.tool_result(f"functions.{name}", result)]  # fmt: skip
            acc["reasoning"] = ""
            yield ToolResult(name, result, id="call-1")
        if script.error:
            return "error"
        for piece in _chunks(script.answer, script.chunk):
            if self._wait():
                return "cancelled"
            acc["answer"] += piece
            yield AnswerDelta(piece)
        return "stop"

    def to_json(self) -> dict[str, Any]:
        def msg(m: Message) -> dict[str, Any]:
            return {"role": m.role.value, "text": m.text, "channel": m.channel, "recipient": m.recipient, "name": m.name}

        return {"format": "fake-chat", "reasoning_effort": str(self.reasoning_effort),
                "instructions": self.instructions, "turns": [[msg(m) for m in t] for t in self.turns]}  # fmt: skip

    @classmethod
    def from_json(cls, data: dict[str, Any], model: Any = None, tokenizer: Any = None, *, tools: Any = None,
                  **overrides: Any) -> FakeChat:
        if "messages" in data and "settings" in data:  # the real Chat's format (the chat database's)
            s = data["settings"]
            chat = cls(reasoning_effort=s.get("reasoning_effort", "medium"), instructions=s.get("instructions"))
            chat.history = [Message.from_dict(m) for m in data["messages"]]
            return chat
        if data.get("format") != "fake-chat":
            raise ValueError("not a saved fake-chat conversation")
        chat = cls(reasoning_effort=data["reasoning_effort"], instructions=data.get("instructions"))
        for t in data["turns"]:
            chat.turns.append(tuple(
                Message(Role(m["role"]), m["text"], name=m.get("name"), channel=m.get("channel"), recipient=m.get("recipient"))
                for m in t
            ))  # fmt: skip
        return chat


# --------------------------------------------------------------------------- the fake's own tests


def test_fake_stream_shape() -> None:
    chat = FakeChat()
    events = list(chat.send("hi"))
    assert isinstance(events[-1], Done) and events[-1].stats.stop_reason == "stop"
    assert "".join(e.text for e in events if isinstance(e, ReasoningDelta)) == REASONING
    assert "".join(e.text for e in events if isinstance(e, AnswerDelta)) == ANSWER
    assert [m.role for m in chat.messages][-3:] == [Role.USER, Role.ASSISTANT, Role.ASSISTANT]


def test_fake_cancel_and_json_round_trip() -> None:
    chat = FakeChat(delay=0.01)
    it = chat.send("hi")
    next(it)
    chat.cancel()
    rest = list(it)
    assert rest[-1].stats.stop_reason == "cancelled"
    again = FakeChat.from_json(chat.to_json())
    assert [m.text for m in again.messages] == [m.text for m in chat.messages]


def test_fake_matches_the_real_chat_surface() -> None:
    """If the engine's Chat changes its public surface, the fake (and so the TUI tests) must follow:
    same members, and the methods the app calls take the same parameters (names and kinds)."""
    import inspect

    from mlx_oss.chat import Chat

    def params(fn) -> list[tuple[str, object]]:
        return [(p.name, p.kind) for p in inspect.signature(fn).parameters.values()]

    for name in ("send", "cancel", "reset", "to_json", "from_json", "messages", "history", "settings", "warm"):
        assert hasattr(Chat, name) and hasattr(FakeChat, name), name
    for name in ("send", "cancel", "reset", "to_json", "from_json"):
        assert params(getattr(FakeChat, name)) == params(getattr(Chat, name)), name
    assert inspect.signature(FakeChat.send).parameters["text"].default is None  # send() continues after tools
