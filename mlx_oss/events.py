"""Typed events a `Chat.send()` stream yields, and the statistics of a turn.

Plain frozen dataclasses (no MLX import), so UIs can `match` on them and tests can compare them.
`Done` is always the last event of a stream, also after a cancel or an error.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Union

__all__ = [
    "STOP_REASONS",
    "ReasoningDelta",
    "AnswerDelta",
    "UnparsedDelta",
    "Progress",
    "ToolCall",
    "ToolResult",
    "Citation",
    "Stats",
    "Reply",
    "Done",
    "Event",
]

STOP_REASONS = ("stop", "tool_call", "length", "context", "cancelled", "error")


@dataclass(frozen=True)
class ReasoningDelta:
    """Text added to the chain of thought (analysis channel)."""

    text: str


@dataclass(frozen=True)
class AnswerDelta:
    """Text added to what the user sees: the final channel, or a commentary preamble
    (`channel="commentary"`, a message to the user the model writes before calling a tool)."""

    text: str
    channel: str = "final"


@dataclass(frozen=True)
class UnparsedDelta:
    """Output that is not in harmony format (a model not writing harmony, e.g. random weights): shown
    as it is, never taken as the answer or the reasoning. It adds up to `Reply.unparsed`."""

    text: str


@dataclass(frozen=True)
class Progress:
    """How the running turn stands, about every `Chat.progress_interval_s` while tokens flow (also
    when they produce no text yet), so a UI can show live figures."""

    generated_tokens: int
    context_used: int
    context_limit: int
    ttft_s: float | None
    decode_tps: float


@dataclass(frozen=True)
class ToolCall:
    """A call the model made. `arguments` is the parsed JSON (None when `raw` is not valid JSON;
    `error` then says why). `name` is the function name (`get_weather`), `recipient` the full
    harmony address (`functions.get_weather`). `id` identifies it for `Chat.add_tool_result`.

    `tool` says whose call it is: `functions` (a function tool), or a built-in tool, `browser`
    (name `browser.search` / `browser.open` / `browser.find`) or `python` (name `python`,
    `arguments` the code as text)."""

    name: str
    arguments: Any
    raw: str
    error: str | None = None
    id: str = ""
    recipient: str = ""
    tool: str = "functions"


@dataclass(frozen=True)
class Citation:
    """A `【cursor†L10-L15】` reference the model wrote, resolved to the page it cites.

    `start`/`end` locate `marker` in the answer text; `line_start`/`line_end` are the cited lines
    of the browsing display with that cursor (None when the marker names no lines), `quote` their text."""

    marker: str
    start: int
    end: int
    cursor: int
    url: str
    title: str
    line_start: int | None = None
    line_end: int | None = None
    quote: str = ""


@dataclass(frozen=True)
class ToolResult:
    """What an automatically run tool returned; it was fed back to the model.
    `error` is True when the tool failed or was refused (then `content` holds the text the model saw).

    `tool` is `functions`, `browser` or `python` (see ToolCall). A browser result carries the page it
    shows (`url`, `title`); a python result the paths of the `images` the code saved, and whether it
    `timed_out` (the session was then restarted) or was `refused` (not approved; nothing ran)."""

    name: str
    content: str
    id: str = ""
    error: bool = False
    tool: str = "functions"
    url: str = ""
    title: str = ""
    images: tuple[str, ...] = ()
    timed_out: bool = False
    refused: bool = False


@dataclass(frozen=True)
class Stats:
    """Measurements of one `send()` (all its generation rounds when tools run automatically).

    `prompt_tokens` is the length of the last prompt; `reused_tokens`/`prefilled_tokens` add up over
    rounds (reused + prefilled == prompt tokens for a single round). `ttft_s` is from the start of
    the stream to the first sampled token. `stop_reason` is one of `STOP_REASONS`; `stop_detail` says why
a "tool_call" stop happened (round limit, a schema-only tool to answer, auto_tools off).
    """

    prompt_tokens: int = 0
    reused_tokens: int = 0
    prefilled_tokens: int = 0
    generated_tokens: int = 0
    reasoning_tokens: int = 0
    answer_tokens: int = 0
    ttft_s: float = 0.0
    prefill_tps: float = 0.0
    decode_tps: float = 0.0
    peak_memory_bytes: int = 0
    stop_reason: str = "stop"
    context_used: int = 0
    context_limit: int = 0
    error: str | None = None
    prefill_s: float = 0.0
    decode_s: float = 0.0
    rounds: int = 0
    unparsed_tokens: int = 0  # generated tokens that were not harmony (see UnparsedDelta)
    stop_detail: str | None = None  # for "tool_call": which calls were left unrun and why

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Reply:
    """The outcome of a turn: the final answer, the chain of thought, tool calls made, statistics.
    `parsed` is the answer parsed as JSON when the chat has a `response_format` (else None); `unparsed`
    is output that was not harmony (see `UnparsedDelta`); `citations` are the browser citations in the
    answer, resolved to URLs."""

    answer: str = ""
    reasoning: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    stats: Stats = field(default_factory=Stats)
    parsed: Any = None
    unparsed: str = ""
    citations: tuple[Citation, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "answer": self.answer,
            "reasoning": self.reasoning,
            "tool_calls": [asdict(c) for c in self.tool_calls],
            "parsed": self.parsed,
            "unparsed": self.unparsed,
            "stats": self.stats.to_dict(),
            "citations": [asdict(c) for c in self.citations],
        }


@dataclass(frozen=True)
class Done:
    """Last event of every stream."""

    stats: Stats
    reply: Reply


Event = Union[ReasoningDelta, AnswerDelta, UnparsedDelta, Progress, ToolCall, ToolResult, Done]
