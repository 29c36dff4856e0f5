"""One request's generation on the worker thread: pool -> engine -> harmony parser -> output events.

The events are API-neutral output items (a reasoning message, a text message, a function call, a
built-in call), each opened when its harmony header is complete, fed with deltas, and closed with its
full text; a built-in call the server ran is followed by `ToolDone` and the next round's items; then
`Finished` with the usage the engine measured (summed over rounds). The API modules turn them into their own
chunks/events. Runs in `GenerationWorker`'s thread only.

Each round gets a fresh `ReplyConstraint` from its turn (`Turn.constraint`: tool_choice, strict schemas,
the reasoning budget left) as the sampler's `extra` processor, after the request's own; the sampler (and
its random key) carries across rounds.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from typing import Callable

import tiktoken

from mlx_oss.builtin import BuiltinTools
from mlx_oss.engine import Engine
from mlx_oss.events import Citation, ToolCall, ToolResult
from mlx_oss.grammar import Grammars
from mlx_oss.harmony import ANALYSIS, UNPARSED, Message, ParserState, Role, StreamParser
from mlx_oss.sampling import Sampler, SamplingConfig
from mlx_oss.server.cache_pool import PromptCachePool
from mlx_oss.server.conversation import Turn
from mlx_oss.server.errors import APIError
from mlx_oss.server.token_output import TokenOutput, strip_markup
from mlx_oss.server.tools import call_name

__all__ = ["REASONING", "MESSAGE", "FUNCTION_CALL", "BROWSER_CALL", "PYTHON_CALL", "ItemStarted", "ItemDelta",
           "ItemDone", "ToolDone", "Finished", "Usage", "StopMatcher", "run_generation", "run_tool"]  # fmt: skip

REASONING, MESSAGE, FUNCTION_CALL = "reasoning", "message", "function_call"
BROWSER_CALL, PYTHON_CALL = "browser_call", "python_call"  # calls the server runs itself


@dataclass(frozen=True)
class ItemStarted:
    kind: str  # REASONING, MESSAGE, FUNCTION_CALL, BROWSER_CALL or PYTHON_CALL
    name: str | None = None  # the function's name for a call (`browser.search`, `python` for built-ins)
    channel: str | None = None
    recipient: str | None = None  # a call's harmony recipient (`functions.get_weather`, `multi_agent_v1.spawn_agent`)


@dataclass(frozen=True)
class ItemDelta:
    text: str
    logprobs: tuple[dict, ...] = ()  # OpenAI logprob entries of the answer tokens in `text` (on request)


@dataclass(frozen=True)
class ItemDone:
    kind: str
    text: str
    name: str | None = None
    complete: bool = True  # False: cut off (max tokens, cancel, stop string)
    channel: str | None = None
    citations: tuple[Citation, ...] = ()  # a message's `【cursor†L…】` markers resolved by the browser


@dataclass(frozen=True)
class ToolDone:
    """The server ran the built-in call just closed: `call` is the model's harmony message, `reply`
    the tool message fed back (both as rendered, for a later turn), `result` what the tool said."""

    call: Message
    reply: Message
    result: ToolResult


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = 0
    unparsed_tokens: int = 0  # tokens that were not well-formed harmony (their markup never reaches text)


@dataclass(frozen=True)
class Finished:
    usage: Usage
    stop_reason: str  # stop, tool_call, length, context, cancelled, error, tool_limit
    error: str | None = None


class StopMatcher:
    """Client stop strings over streamed text: holds back a tail that could still start one."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = stops
        self._held = ""

    def feed(self, delta: str) -> tuple[str, bool]:
        """-> (text safe to emit now, stopped)."""
        text = self._held + delta
        cut = min((i for i in (text.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self._held = ""
            return text[:cut], True
        keep = 0
        for s in self.stops:
            for n in range(min(len(s) - 1, len(text)), 0, -1):
                if text.endswith(s[:n]):
                    keep = max(keep, n)
                    break
        self._held = text[len(text) - keep :] if keep else ""
        return text[: len(text) - keep], False

    def flush(self) -> str:
        out, self._held = self._held, ""
        return out


def _kind(channel: str | None, recipient: str | None, tools: BuiltinTools | None) -> str:
    if recipient is not None:
        owner = tools.owner(recipient) if tools is not None else None
        return {"browser": BROWSER_CALL, "python": PYTHON_CALL}.get(owner or "", FUNCTION_CALL)
    return REASONING if channel == ANALYSIS else MESSAGE


def _call_limit_text(limit: int) -> str:
    return (f"Error: the limit of {limit} built-in tool calls for this response is reached, so this call was not run. "
            "Answer now with what you have.")  # fmt: skip


def run_tool(tools: BuiltinTools, recipient: str, raw: str, should_stop: Callable[[], bool]) -> ToolResult:
    """Run one built-in call; whatever goes wrong becomes the result's text (never raised)."""
    owner = tools.owner(recipient) or "functions"
    call = ToolCall(recipient, raw, raw, None, "", recipient, tool=owner)
    try:
        return tools.run(call, should_stop)
    except Exception as e:  # BuiltinTools.run does not raise; a bug must not end the response either
        first = (str(e).strip().splitlines() or [""])[0]
        return ToolResult(recipient, f"Error: the {owner} tool failed: {type(e).__name__}: {first}", "", True, tool=owner)


def run_generation(
    engine: Engine,
    pool: PromptCachePool,
    encoding: tiktoken.Encoding,
    prompt: list[int],
    boundaries: tuple[int, ...],
    sampling: SamplingConfig,
    max_tokens: int | None,
    stops: tuple[str, ...],
    cancelled: threading.Event,
    emit: Callable[[object], None],
    turn: Turn | None = None,
    tools: BuiltinTools | None = None,
    max_calls: int = 8,
    grammars: Grammars | None = None,
) -> None:
    """Generate a reply to `prompt`, emitting ItemStarted/ItemDelta/ItemDone, then Finished. With
    `tools` (and the `turn` that made `prompt`), a call to a built-in tool is run here, its result
    emitted as ToolDone and fed back, and generation goes on, all in one reply: at most `max_calls`
    calls are run (later ones are answered with an error text; one round more ends the reply).
    The `turn`'s constraint (with `grammars`, which compiled its schemas) applies to every round."""
    sampler = Sampler(sampling)
    history = list(turn.history) if turn is not None else []
    totals = [0, 0, 0, 0, 0]  # prompt, cached, completion, reasoning, unparsed tokens over all rounds
    calls = 0
    while True:
        budget = None if max_tokens is None else max_tokens - totals[2]
        if budget is not None and budget < 1:
            emit(Finished(Usage(*totals), "length"))
            return
        c = turn.constraint(encoding, grammars, totals[3]) if turn is not None else None
        sampler.extra = (c,) if c is not None else ()  # fresh each round: a constraint is stateful
        r = _round(engine, pool, encoding, prompt, boundaries, sampler, budget, stops, cancelled, emit, tools)
        totals = [a + b for a, b in zip(totals, r.counts)]
        last = r.messages[-1] if r.messages else None
        if (r.reason != "tool_call" or tools is None or turn is None or last is None or last.recipient is None
                or tools.owner(last.recipient) is None):  # fmt: skip
            emit(Finished(Usage(*totals), r.reason, r.error))
            return
        if calls >= max_calls + 1:  # the model was told the limit and called again
            emit(Finished(Usage(*totals), "tool_limit"))
            return
        if calls >= max_calls:
            result = ToolResult(last.recipient, _call_limit_text(max_calls), "", True, tool=tools.owner(last.recipient) or "")
        else:
            result = run_tool(tools, last.recipient, last.text, cancelled.is_set)
        calls += 1
        reply = Message.tool_result(last.recipient, result.content, channel=last.channel)
        emit(ToolDone(last, reply, result))
        if cancelled.is_set():
            emit(Finished(Usage(*totals), "cancelled"))
            return
        history += [*r.messages, reply]
        try:
            prompt, boundaries = replace(turn, history=tuple(history)).render(encoding, engine.max_context)
            fits = len(prompt) < engine.max_context
        except APIError:  # `truncation: "auto"`, and not even the last turn fits any more
            fits = False
        if not fits:
            emit(Finished(Usage(*totals), "context"))
            return


@dataclass
class _Round:
    messages: list[Message]
    reason: str
    error: str | None
    counts: tuple[int, int, int, int, int]


def _round(engine, pool, encoding, prompt, boundaries, sampler, max_tokens, stops, cancelled, emit, tools) -> _Round:
    """One prefill + decode; emits the items the model writes."""
    engine.check_prompt(prompt)
    pool.prepare(engine, prompt)
    stop_hit = threading.Event()
    out = TokenOutput(encoding, sampler)
    gen = engine.generate(
        prompt, sampler, max_tokens=max_tokens, boundaries=boundaries,
        should_stop=lambda: cancelled.is_set() or stop_hit.is_set(),
    )  # fmt: skip
    parser = StreamParser(Role.ASSISTANT, encoding=encoding)
    matcher = StopMatcher(stops)
    open_item: ItemStarted | None = None
    text: list[str] = []
    messages: list[Message] = []
    reasoning_tokens = 0
    headers_unparsed = 0  # tokens of headers ended without <|message|> (their words are shown as unparsed)
    error = None
    logprobs: list[dict] = []  # entries of answer tokens whose text is not emitted yet

    def send(delta: str, flush: bool = False) -> None:
        """Emit `delta` with the logprob entries of the tokens whose text it releases (text the
        stop matcher holds back keeps its entries pending)."""
        nonlocal logprobs
        keep, n = 0, 0
        while keep < len(logprobs) and (flush or n + len(logprobs[keep]["token"]) <= len(delta)):
            n += len(logprobs[keep]["token"])
            keep += 1
        lps, logprobs = tuple(logprobs[:keep]), logprobs[keep:]
        if delta or lps:
            text.append(delta)
            emit(ItemDelta(delta, lps))

    def close(complete: bool) -> None:
        nonlocal open_item
        if open_item is not None:
            if open_item.kind == MESSAGE:
                if complete:
                    send(matcher.flush(), flush=True)
                logprobs.clear()  # of text cut off (stop string, max tokens): never shown
            body = "".join(text)
            cites = tools.citations(body) if tools is not None and open_item.kind == MESSAGE else ()
            emit(ItemDone(open_item.kind, body, open_item.name, complete, open_item.channel, cites))
            open_item = None

    def show_unparsed(raw: str) -> None:
        """Text that is not harmony: shown as answer text (markup removed), in its own message."""
        nonlocal open_item, text
        shown = strip_markup(raw)
        if not shown:
            return
        if open_item is None or open_item.channel != UNPARSED:
            close(True)
            open_item, text = ItemStarted(MESSAGE, None, UNPARSED), []
            emit(open_item)
        send(shown)

    try:
        for step, tok in enumerate(gen):
            ev = parser.process(tok)
            if ev.unparsed:  # outside any message, or an abandoned "header" (the parser counts its tokens)
                show_unparsed(ev.unparsed)
                continue
            if ev.header_tokens:  # a "message" that ended before <|message|>: its header's words, shown
                show_unparsed(ev.message.text)  # (after other unparsed text too: an item may be open)
                headers_unparsed += ev.header_tokens  # not kept in `messages`: no prompt is rendered with it
                continue
            if ev.header_done:
                close(True)
                name = call_name(ev.recipient) if ev.recipient is not None else None
                open_item = ItemStarted(_kind(ev.channel, ev.recipient, tools), name, ev.channel, ev.recipient)
                text = []
                emit(open_item)
                continue
            if ev.state is ParserState.CONTENT and ev.channel == ANALYSIS and ev.recipient is None:
                reasoning_tokens += 1
            if open_item is not None and open_item.kind == MESSAGE and out.want_logprobs \
                    and ev.state is ParserState.CONTENT and ev.message is None and not out.is_markup(tok):  # fmt: skip
                logprobs.append(out.logprob(step))
            if ev.delta and open_item is not None:
                delta = out.content(tok, ev.delta)
                if open_item.kind == MESSAGE and stops:
                    delta, hit = matcher.feed(delta)
                    if hit:
                        stop_hit.set()
                send(delta)
                if stop_hit.is_set():
                    close(False)
                    break
            if ev.message is not None:
                messages.append(ev.message)
                close(not ev.message.incomplete)
    except Exception as e:  # the cache state is unknown after a failure: start clean
        engine.reset()
        first = (str(e).strip().splitlines() or [""])[0]
        error = f"{type(e).__name__}: {first}" if first else type(e).__name__
    if open_item is None and parser.state is ParserState.HEADER and not error:
        seen = len(parser.unparsed_text)
        parser.finish()  # a reply cut inside what was not a header: its text is still shown
        show_unparsed(parser.unparsed_text[seen:])
    close(False)
    reason = gen.stop_reason or ("error" if error else "stop")
    if stop_hit.is_set():
        reason = "stop"
    elif error:
        reason = "error"
    counts = (len(prompt), gen.reused_tokens, len(gen.generated), reasoning_tokens,
              out.unparsed_tokens + parser.unparsed_tokens + headers_unparsed)  # fmt: skip
    return _Round(messages, reason, error, counts)

