"""The pieces of the conversation view: user and assistant messages, reasoning and tool blocks,
the prompt box and the status line.

Blocks are appended in the order the model produced them (reasoning, tool call, tool result,
reasoning, answer...), so a turn reads top to bottom the way it happened.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from rich.text import Text
from textual import events
from textual.containers import Vertical, VerticalScroll
from textual.message import Message
from textual.widgets import Collapsible, Label, Markdown, Static, TextArea
from textual.widgets.markdown import MarkdownStream

__all__ = [
    "AnswerBlock",
    "AssistantMessage",
    "ChatView",
    "ErrorNote",
    "PromptInput",
    "ReasoningBlock",
    "StatusInfo",
    "StatusLine",
    "ToolBlock",
    "UserMessage",
    "Welcome",
    "format_bytes",
    "status_text",
]


def format_bytes(n: float) -> str:
    """Human-readable size with decimal units (what Activity Monitor shows)."""
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


class ChatView(VerticalScroll, can_focus=True):
    """The scrollable conversation; anchored to the bottom while following a streaming answer."""

    def on_mount(self) -> None:
        self.anchor()

    def clear(self) -> None:
        """Forget every message (new chat, reopened conversation)."""
        self.remove_children()

    @property
    def assistant_messages(self) -> list[AssistantMessage]:
        return list(self.query(AssistantMessage))


class Welcome(Static):
    """Shown in an empty chat: what to do first."""

    def __init__(self, model: str) -> None:
        t = Text()
        t.append(f"Chat with {model}\n\n", style="bold")
        t.append("Enter sends · ctrl+j new line · Esc stops an answer\n"
                 "ctrl+t reasoning effort · ctrl+g instructions · ctrl+p all commands · F1 keys", style="dim")  # fmt: skip
        super().__init__(t)


class UserMessage(Static):
    """What the user typed; `queued` while it waits for the current answer to finish."""

    def __init__(self, text: str, *, queued: bool = False) -> None:
        super().__init__(Text(text), classes="-queued" if queued else "")
        self.text = text
        self.border_title = "You · queued" if queued else "You"

    def set_queued(self, queued: bool) -> None:
        self.set_class(queued, "-queued")
        self.border_title = "You · queued" if queued else "You"


class ReasoningBlock(Collapsible):
    """The analysis channel: expanded while it streams, collapsed once the answer starts."""

    def __init__(self, text: str = "", *, live: bool = True) -> None:
        self._body = Static(Text(text), classes="reasoning-text")
        self.text = text
        self.live = live
        super().__init__(self._body, title=self._make_title(), collapsed=not live)

    def _make_title(self) -> str:
        words = len(self.text.split())
        if self.live:
            return "Reasoning…" if not words else f"Reasoning… ({words} words)"
        return f"Reasoning ({words} words)"

    def append(self, text: str) -> None:
        self.text += text
        self._body.update(Text(self.text))
        self.title = self._make_title()

    def finish(self, *, collapse: bool = True) -> None:
        """The stream moved on (answer, tool call or end of turn): stop showing it as live."""
        if self.live:
            self.live = False
            self.title = self._make_title()
            if collapse:
                self.collapsed = True


def _short_args(raw: str, limit: int = 60) -> str:
    one = " ".join(raw.split())
    return one if len(one) <= limit else one[: limit - 1] + "…"


class ToolBlock(Collapsible):
    """A tool call and (once it ran) its result, collapsed to one line: `⚙ name(args) → result`."""

    def __init__(self, name: str, arguments: Any = None, raw: str = "", *, error: str | None = None, call_id: str = "") -> None:
        self.tool_name = name
        self.call_id = call_id
        self.raw = raw
        self.result: str | None = None
        self.result_error = False
        self.call_error = error
        shown = raw if arguments is None else json.dumps(arguments, ensure_ascii=False, indent=2)
        self._call = Static(Text(shown or "(no arguments)"), classes="tool-args")
        self._result = Static(Text("waiting for the result…"), classes="tool-result -pending")
        children: list[Static] = [Label("arguments", classes="tool-label"), self._call]
        if error:
            children.append(Static(Text(f"could not parse the arguments: {error}"), classes="tool-error"))
        children += [Label("result", classes="tool-label"), self._result]
        super().__init__(*children, title=self._make_title(), collapsed=True)

    def _make_title(self) -> str:
        head = f"⚙ {self.tool_name}({_short_args(self.raw)})"
        if self.result is None:
            return head + (" · invalid arguments" if self.call_error else "")
        mark = "✗" if self.result_error else "→"
        return f"{head} {mark} {_short_args(self.result, 40)}"

    def set_result(self, content: str, *, error: bool = False) -> None:
        self.result = content
        self.result_error = error
        self._result.update(Text(content))
        self._result.set_class(False, "-pending")
        self._result.set_class(error, "-error")
        self.title = self._make_title()


class AnswerBlock(Markdown):
    """The final answer (or a commentary preamble) as Markdown, streamed through a MarkdownStream
    so that fast token rates coalesce into fewer re-parses."""

    def __init__(self, text: str = "", *, channel: str = "final") -> None:
        super().__init__(text, classes="-commentary" if channel == "commentary" else "")
        self.text = text
        self.channel = channel
        self._stream: MarkdownStream | None = None

    async def append_text(self, text: str) -> None:
        self.text += text
        if self._stream is None:
            self._stream = Markdown.get_stream(self)
        await self._stream.write(text)

    async def finish(self) -> None:
        if self._stream is not None:
            stream, self._stream = self._stream, None
            await stream.stop()


class UnparsedBlock(Static):
    """Output the harmony parser could not place (a model not writing harmony): shown as plain text
    under a note, so it is seen, but never mistaken for the answer (ctrl+l does not copy it)."""

    NOTE = "not in harmony format: shown as is, not taken as the answer"

    def __init__(self, text: str = "") -> None:
        super().__init__(classes="unparsed")
        self.text = text
        self.border_title = self.NOTE
        self.update(Text(text))

    def append(self, text: str) -> None:
        self.text += text
        self.update(Text(self.text))


class ErrorNote(Static):
    """An error or a notice inside the conversation (never a traceback)."""

    def __init__(self, text: str, *, kind: str = "error") -> None:
        super().__init__(Text(text), classes=f"-{kind}")
        self.text = text


class AssistantMessage(Vertical):
    """One assistant turn: its blocks in production order, a state line while it runs, and a
    one-line summary (tokens, speed, stop reason) when it ends."""

    def __init__(self, who: str = "gpt-oss") -> None:
        super().__init__()
        self.who = who
        self.state = "waiting for the model…"
        self._header = Label(self._header_text(), classes="who")
        self._footer = Static("", classes="turn-stats")
        self._last: Any = None

    def compose(self):  # noqa: ANN201 - textual's ComposeResult
        yield self._header

    def _header_text(self) -> Text:
        t = Text(self.who, style="bold")
        if self.state:
            t.append(f"  {self.state}", style="italic")
        return t

    def set_state(self, state: str) -> None:
        self.state = state
        self._header.update(self._header_text())

    @property
    def reasoning_blocks(self) -> list[ReasoningBlock]:
        return list(self.query(ReasoningBlock))

    @property
    def tool_blocks(self) -> list[ToolBlock]:
        return list(self.query(ToolBlock))

    @property
    def answer_text(self) -> str:
        """The text shown to the user: final-channel answers only."""
        return "".join(b.text for b in self.query(AnswerBlock) if b.channel == "final")

    @property
    def reasoning_text(self) -> str:
        return "".join(b.text for b in self.reasoning_blocks)

    def _end_reasoning(self) -> None:
        if isinstance(self._last, ReasoningBlock):
            self._last.finish()

    async def _end_answer(self) -> None:
        if isinstance(self._last, AnswerBlock):
            await self._last.finish()

    async def add_reasoning(self, text: str, *, live: bool = True) -> None:
        if not isinstance(self._last, ReasoningBlock):
            await self._end_answer()
            self._last = ReasoningBlock(live=live)
            await self.mount(self._last)
            if live:
                self.set_state("thinking…")
        self._last.append(text)

    async def add_answer(self, text: str, *, channel: str = "final") -> None:
        if not (isinstance(self._last, AnswerBlock) and self._last.channel == channel):
            self._end_reasoning()
            await self._end_answer()
            self._last = AnswerBlock(channel=channel)
            await self.mount(self._last)
            self.set_state("answering…")
        await self._last.append_text(text)

    async def add_unparsed(self, text: str) -> None:
        if not isinstance(self._last, UnparsedBlock):
            self._end_reasoning()
            await self._end_answer()
            self._last = UnparsedBlock()
            await self.mount(self._last)
            self.set_state("writing (not harmony)…")
        self._last.append(text)

    async def add_tool_call(self, name: str, arguments: Any, raw: str, *, error: str | None = None, call_id: str = "") -> ToolBlock:
        self._end_reasoning()
        await self._end_answer()
        self._last = ToolBlock(name, arguments, raw, error=error, call_id=call_id)
        await self.mount(self._last)
        self.set_state(f"calling {name}…")
        return self._last

    async def add_tool_result(self, name: str, content: str, *, error: bool = False, call_id: str = "",
                              url: str = "", images: tuple[str, ...] = ()) -> None:  # fmt: skip
        pending = [b for b in self.tool_blocks if b.result is None]
        match = next((b for b in pending if call_id and b.call_id == call_id), None)
        match = match or next((b for b in pending if b.tool_name == name), None)
        if match is None:  # a result without a visible call (e.g. reopened conversation)
            match = await self.add_tool_call(name, None, "")
        extra = ([f"page: {url}"] if url else []) + [f"image: {p}" for p in images]
        match.set_result(content + ("\n\n" + "\n".join(extra) if extra else ""), error=error)
        self.set_state("thinking…")

    async def add_sources(self, citations) -> None:
        """Browser citations as links: each `【3†L2-L4】` in the answer becomes `[n](url)`, and a
        numbered Sources list follows the answer (the answer's text, for copying, stays as written)."""
        finals = [b for b in self.query(AnswerBlock) if b.channel == "final"]
        if not finals:
            return
        block = finals[-1]
        numbers: dict[str, int] = {}
        for c in citations:
            numbers.setdefault(c.url, len(numbers) + 1)
        shown = block.text
        for c in sorted(citations, key=lambda c: c.start, reverse=True):
            if shown[c.start : c.end] == c.marker:
                shown = f"{shown[: c.start]} [[{numbers[c.url]}]]({c.url}){shown[c.end :]}"
        await block.finish()
        await block.update(shown)
        lines = []
        for url, n in numbers.items():
            c = next(c for c in citations if c.url == url)
            ranges = ", ".join(dict.fromkeys(f"L{x.line_start}-L{x.line_end}" for x in citations
                                             if x.url == url and x.line_start is not None))  # fmt: skip
            title = (c.title or url).replace("[", "(").replace("]", ")")
            lines.append(f"{n}. [{title}]({url})" + (f" ({ranges})" if ranges else ""))
        await self.mount(Markdown("**Sources**\n\n" + "\n".join(lines), classes="sources"), before=self._footer if self._footer.is_mounted else None)

    async def add_note(self, text: str, *, kind: str = "error") -> None:
        self._end_reasoning()
        await self._end_answer()
        self._last = ErrorNote(text, kind=kind)
        await self.mount(self._last)

    async def finish(self, summary: str = "") -> None:
        """End of the turn: close streams, collapse live reasoning, show the summary line."""
        for block in self.reasoning_blocks:
            block.finish()
        for block in self.query(AnswerBlock):
            await block.finish()
        self.set_state("")
        if summary:
            self._footer.update(Text(summary))
            if not self._footer.is_mounted:
                await self.mount(self._footer)


class PromptInput(TextArea):
    """The message box: Enter sends, ctrl+j inserts a newline (shift+enter too where the
    terminal reports it); pasting multi-line text keeps the newlines."""

    class Submitted(Message):
        def __init__(self, prompt: PromptInput, text: str) -> None:
            super().__init__()
            self.prompt = prompt
            self.text = text

    async def _on_key(self, event: events.Key) -> None:
        if event.key == "enter":
            event.stop()
            event.prevent_default()
            text = self.text
            if text.strip():
                self.clear()
                self.post_message(self.Submitted(self, text))
            return
        if event.key in ("ctrl+j", "shift+enter", "alt+enter", "newline"):
            event.stop()
            event.prevent_default()
            self.insert("\n")
            return
        await super()._on_key(event)


@dataclass
class StatusInfo:
    """Everything the status line shows; None means "not measured yet"."""

    model: str = ""
    effort: str = "medium"
    context_used: int = 0
    context_limit: int | None = None
    ttft_s: float | None = None
    decode_tps: float | None = None
    memory_bytes: int | None = None
    state: str = ""


def status_text(info: StatusInfo) -> str:
    """The status line as plain text (also what tests read)."""
    limit = f"{info.context_limit:,}" if info.context_limit else "?"
    parts = [
        info.model or "no model",
        f"effort {info.effort}",
        f"ctx {info.context_used:,}/{limit}",
        f"TTFT {info.ttft_s:.2f} s" if info.ttft_s is not None else "TTFT –",
        f"{info.decode_tps:.1f} tok/s" if info.decode_tps is not None else "– tok/s",
        f"mem {format_bytes(info.memory_bytes)}" if info.memory_bytes else "mem –",
    ]
    if info.state:
        parts.insert(0, info.state)
    return " │ ".join(parts)


class StatusLine(Static):
    """One line under the prompt: model, effort, context, speed, memory."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("", **kwargs)
        self.info = StatusInfo()
        self.text = ""

    def show(self, info: StatusInfo) -> None:
        self.info = info
        self.text = status_text(info)
        t = Text()
        for i, part in enumerate(self.text.split(" │ ")):
            if i:
                t.append(" │ ", style="dim")
            style = "bold" if part.startswith("effort") else ("bold yellow" if part in ("generating…", "stopping…") or part.startswith("queued") else "")
            t.append(part, style=style)
        self.update(t)
