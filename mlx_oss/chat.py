"""`Chat`: a harmony conversation with its KV cache and settings; `send()` streams typed events.

The session keeps the history (user, assistant and tool messages, chain of thought included, for
display and saving) and derives the system/developer messages from the current settings at every
turn, so reasoning effort, instructions and tools can change between turns. The prompt is the
history with the chain of thought of earlier turns pruned (OpenAI's guidance for gpt-oss), rendered
token-exact; the `Engine` reuses the longest cached prefix. See docs/ENGINE.md and docs/ENGINE_API.md.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterator, Sequence

import mlx.core as mx

from mlx_oss.builtin import BuiltinTools
from mlx_oss.constraint import ReplyConstraint, reply_constraint
from mlx_oss.errors import VocabularyError
from mlx_oss.engine import ContextLengthError, Engine
from mlx_oss.events import AnswerDelta, Done, Event, Progress, ReasoningDelta, Reply, Stats, ToolCall, ToolResult, UnparsedDelta
from mlx_oss.harmony import (
    ANALYSIS,
    COMMENTARY,
    FINAL,
    UNPARSED,
    Conversation,
    Message,
    ParserState,
    ReasoningEffort,
    ResponseFormat,
    Role,
    StreamParser,
    SystemContent,
    prune_analysis,
    render_with_spans,
)
from mlx_oss.grammar import Grammar, Grammars
from mlx_oss.sampling import Sampler, SamplingConfig
from mlx_oss.tools import Tool, as_tools, parse_arguments, run_tool

__all__ = ["Chat", "ContextLengthError", "vocabulary_problem"]

_FUNCTIONS = "functions."
JSON_VERSION = 1


def _calls(calls: Sequence[ToolCall]) -> str:
    """`the call to functions.a` / `the calls to functions.a, functions.b` (for stop notes)."""
    names = ", ".join(dict.fromkeys(c.recipient or c.name for c in calls)) or "none"
    return f"the call{'s' if len(calls) > 1 else ''} to {names}"


def _effort(value: str | ReasoningEffort) -> ReasoningEffort:
    try:
        return ReasoningEffort(value.lower() if isinstance(value, str) else value)
    except ValueError:
        raise ValueError(f"reasoning_effort must be low, medium or high, not {value!r}") from None


def vocabulary_problem(model, tokenizer) -> str | None:
    """Why `model` cannot chat with `tokenizer` (None if it can): every id harmony renders must have
    an embedding row, else the first prompt would index past the table (see `check_token_ids`)."""
    rows, needed = model.args.vocab_size, tokenizer.n_vocab
    if rows >= needed:
        return None
    where = getattr(model, "source", None)
    return (
        f"{where or 'the model'}: vocabulary of {rows} tokens, but the o200k_harmony tokenizer needs {needed} "
        f"(ids up to {needed - 1}); this model cannot chat (synthetic models: use the 'tiny-chat' preset)"
    )


def _response_format(schema: dict[str, Any] | ResponseFormat | None) -> ResponseFormat | None:
    """A JSON schema (or OpenAI's `{"name", "schema"}` wrapper) -> harmony ResponseFormat."""
    if schema is None or isinstance(schema, ResponseFormat):
        return schema
    if not isinstance(schema, dict):
        raise TypeError(f"response_format must be a JSON schema dict, not {type(schema).__name__}")
    if isinstance(schema.get("schema"), dict):
        return ResponseFormat(schema.get("name") or "response", schema["schema"], schema.get("description"))
    return ResponseFormat(schema.get("title") or "response", schema, schema.get("description"))


@dataclass
class _Turn:
    """Accumulates what one send() produced."""

    answer: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    unparsed: list[str] = field(default_factory=list)
    unparsed_tokens: int = 0
    calls: list[ToolCall] = field(default_factory=list)
    reasoning_tokens: int = 0
    answer_tokens: int = 0
    generated: int = 0
    prompt_tokens: int = 0
    reused: int = 0
    prefilled: int = 0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    decode_steps: int = 0
    ttft_s: float | None = None
    rounds: int = 0


class Chat:
    """A gpt-oss conversation: harmony history, KV cache (via `Engine`) and settings."""

    progress_interval_s = 0.25  # how often send() yields a Progress event while tokens flow
    engine_class: type[Engine] = Engine  # mlx_oss.distributed: rank 0's engine that leads the other ranks

    def __init__(
        self,
        model,
        tokenizer,
        *,
        reasoning_effort: str | ReasoningEffort = "medium",
        instructions: str | None = None,
        tools: Sequence[Any] | None = None,
        auto_tools: bool = True,
        response_format: dict[str, Any] | None = None,
        strict: bool = True,
        max_reasoning_tokens: int | None = None,
        sampling: SamplingConfig | None = None,
        max_tokens: int | None = None,
        max_context: int | None = None,
        max_tool_rounds: int = 8,
        date: str | None = None,
        builtin_tools: Sequence[str] = (),
        browser_backend: Any = "auto",
        python_backend: Any = "jupyter",
        approve: Callable[[ToolCall], bool] | None = None,
        python_workdir: str | None = None,
        kv_bits: int | None = None,
        kv_group_size: int | None = None,
    ) -> None:
        problem = vocabulary_problem(model, tokenizer)
        if problem:
            raise VocabularyError(problem)
        self.model = model
        self.tokenizer = tokenizer
        self.reasoning_effort = reasoning_effort
        self.instructions = instructions
        self.tools = tools
        self.auto_tools = auto_tools
        self.response_format = response_format
        self.strict = strict
        self.max_reasoning_tokens = max_reasoning_tokens
        self._grammars: Grammars | None = None
        self._turn_format: tuple[ResponseFormat | None, bool] | None = None  # send(response_format=...): this turn only
        self.sampling = sampling or SamplingConfig()
        self.max_tokens = max_tokens
        self.max_tool_rounds = max_tool_rounds
        self.date = date
        # a quantized KV cache (None: as the model was loaded, `load(..., kv_bits=)`)
        kv = {} if kv_bits is None else {"kv_bits": kv_bits, "kv_group_size": 64 if kv_group_size is None else kv_group_size}
        self.engine = self.engine_class(model, max_context=max_context, **kv)
        self.builtins = BuiltinTools(
            builtin_tools, browser=browser_backend, python=python_backend, approve=approve,
            workdir=python_workdir, count_tokens=lambda text: len(tokenizer.encode_ordinary(text)),
        )  # fmt: skip
        self._history: list[Message] = []
        self._cancel = threading.Event()
        self._active: Iterator[Event] | None = None

    # ------------------------------------------------------------------ settings

    @property
    def reasoning_effort(self) -> str:
        return self._effort.value

    @reasoning_effort.setter
    def reasoning_effort(self, value: str | ReasoningEffort) -> None:
        """Applies from the next turn; it changes the system message, so the next prompt is prefilled
        again from there (see docs/ENGINE.md)."""
        self._effort = _effort(value)

    @property
    def tools(self) -> tuple[Tool, ...]:
        return self._tools

    @tools.setter
    def tools(self, value: Sequence[Any] | None) -> None:
        self._tools = as_tools(value)

    @property
    def response_format(self) -> ResponseFormat | None:
        return self._response_format

    @response_format.setter
    def response_format(self, value: dict[str, Any] | ResponseFormat | None) -> None:
        self._response_format = _response_format(value)

    @property
    def strict(self) -> bool:
        """True (the default): the answer is enforced to match `response_format` while sampling, not
        only asked for (see README "Structured output"); False: the format is only described."""
        return self._strict

    @strict.setter
    def strict(self, value: bool) -> None:
        if not isinstance(value, bool):
            raise TypeError(f"strict must be True or False, not {value!r}")
        self._strict = value

    @property
    def max_reasoning_tokens(self) -> int | None:
        """Analysis tokens per reply before the analysis is closed and the answer (or a call) begins;
        None: no limit."""
        return self._max_reasoning

    @max_reasoning_tokens.setter
    def max_reasoning_tokens(self, value: int | None) -> None:
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise ValueError(f"max_reasoning_tokens must be an integer >= 0 or None, got {value!r}")
        self._max_reasoning = value

    @property
    def grammars(self) -> Grammars:
        """The chat's compiled schemas (llguidance reads the vocabulary once, on first use)."""
        if self._grammars is None:
            self._grammars = Grammars(self.tokenizer)
        return self._grammars

    @property
    def max_tokens(self) -> int | None:
        return self._max_tokens

    @max_tokens.setter
    def max_tokens(self, value: int | None) -> None:
        if value is not None and value < 1:
            raise ValueError(f"max_tokens must be at least 1, got {value}")
        self._max_tokens = value

    @property
    def max_context(self) -> int:
        return self.engine.max_context

    @property
    def builtin_tools(self) -> tuple[str, ...]:
        """The built-in tools on (`browser`, `python`); see README "Built-in tools"."""
        return self.builtins.names

    @builtin_tools.setter
    def builtin_tools(self, names: Sequence[str]) -> None:
        """Turn built-in tools on or off from the next turn (the system message changes)."""
        self.builtins = self.builtins.with_names(names)

    @property
    def approve(self) -> Callable[[ToolCall], bool] | None:
        """Asked before each python call with the ToolCall (its `arguments` is the code); None refuses all."""
        return self.builtins.approve

    @approve.setter
    def approve(self, fn: Callable[[ToolCall], bool] | None) -> None:
        self.builtins.approve = fn

    def close(self) -> None:
        """Stop what runs outside this process for the chat (the python session). The chat stays usable:
        a later python call starts a new session."""
        self.builtins.close()

    # ------------------------------------------------------------------ conversation

    def _format(self) -> tuple[ResponseFormat | None, bool]:
        """(the response format of the turn being generated, enforced?)."""
        return self._turn_format if self._turn_format is not None else (self._response_format, self._strict)

    def _header_messages(self) -> list[Message]:
        """System (+ developer when there are instructions, tools or a response format) for the settings."""
        system = SystemContent(reasoning_effort=self._effort, conversation_start_date=self.date)
        out = [Message.system(system.with_tools(*self.builtins.namespaces()))]
        fmt = self._format()[0]
        if self.instructions is not None or self._tools or fmt is not None:
            out.append(
                Message.developer(
                    self.instructions,
                    functions=[t.description for t in self._tools],
                    response_formats=[fmt] if fmt else [],
                )
            )
        return out

    def _grammars_of_turn(self) -> tuple[Grammar | None, dict[str, Grammar]]:
        """(the answer's grammar, strict functions' argument grammars by recipient), compiled (cached)
        before any compute: a schema that cannot be enforced is a GrammarError naming the keyword."""
        fmt, strict = self._format()
        answer = self.grammars.json_schema(fmt.schema, f"response_format {fmt.name!r}") if fmt and strict else None
        args = {
            _FUNCTIONS + t.name: self.grammars.json_schema(t.description.parameters or {"type": "object"},
                                                           f"tool {t.name!r}: its parameters")
            for t in self._tools if t.strict
        }  # fmt: skip
        return answer, args

    def _constraint(self, turn: _Turn) -> ReplyConstraint | None:
        """The round's constraint (fresh each round): the strict answer format, strict functions'
        arguments and what is left of the reasoning budget."""
        answer, args = self._grammars_of_turn()
        budget = None if self._max_reasoning is None else max(0, self._max_reasoning - turn.reasoning_tokens)
        recipients = tuple(_FUNCTIONS + t.name for t in self._tools)
        return reply_constraint(self.tokenizer, recipients=recipients, answer=answer, arguments=args,
                                grammars=self._grammars, reasoning_budget=budget,
                                builtin_calls=bool(self.builtins.names))  # fmt: skip

    @property
    def history(self) -> list[Message]:
        """User, assistant and tool messages so far (a copy)."""
        return list(self._history)

    @history.setter
    def history(self, messages: Sequence[Message]) -> None:
        """Replace the conversation (edit a message, regenerate an answer, delete a message); the
        next prompt reuses the cache up to where it differs from the old one."""
        msgs = list(messages)
        for i, m in enumerate(msgs):
            if not isinstance(m, Message):
                raise TypeError(f"history[{i}] is a {type(m).__name__}, not a harmony Message")
            if m.role in (Role.SYSTEM, Role.DEVELOPER):
                raise ValueError(f"history[{i}] is a {m.role.value} message; the settings make those")
        self._close_active()
        self._history = msgs

    @property
    def messages(self) -> Conversation:
        """The whole conversation: system and developer messages for the current settings, then the history."""
        return Conversation(tuple(self._header_messages()) + tuple(self._history))

    def prompt_tokens(self, history: Sequence[Message] | None = None) -> list[int]:
        """The prompt for the next assistant turn: earlier turns' reasoning pruned, rendered token-exact."""
        return self._render(history)[0]

    def _render(self, history: Sequence[Message] | None = None) -> tuple[list[int], tuple[int, ...]]:
        """(prompt tokens, snapshot points: the end of the system message, of the developer message
        and of the last message, i.e. before `<|start|>assistant`; see docs/ENGINE.md)."""
        hist = self._history if history is None else list(history)
        head = self._header_messages()
        hist = [m for m in hist if m.channel != UNPARSED]  # shown and saved, but not harmony the model wrote
        r = render_with_spans(head + prune_analysis(hist), Role.ASSISTANT, encoding=self.tokenizer)
        return r.tokens, (r.spans[0].end, r.spans[len(head) - 1].end, r.spans[-1].end)

    def pending_tool_calls(self) -> list[ToolCall]:
        """Calls of the current turn that have no result yet (for tools the caller runs itself)."""
        last_user = max((i for i, m in enumerate(self._history) if m.role is Role.USER), default=-1)
        pending: list[tuple[int, Message]] = []
        for i in range(last_user + 1, len(self._history)):
            m = self._history[i]
            if m.role is Role.ASSISTANT and m.recipient is not None:
                pending.append((i, m))
            elif m.role is Role.TOOL:
                j = next((k for k, (_, c) in enumerate(pending) if c.recipient == m.name), None)
                if j is not None:
                    del pending[j]
        return [self._tool_call(i, m) for i, m in pending]

    def _tool_call(self, index: int, m: Message) -> ToolCall:
        recipient = m.recipient or ""
        name = recipient[len(_FUNCTIONS) :] if recipient.startswith(_FUNCTIONS) else recipient
        owner = self.builtins.owner(recipient)
        if owner == "python":  # the code itself, not JSON
            return ToolCall(name, m.text, m.text, None, f"call_{index}", recipient, tool="python")
        args, err = parse_arguments(m.text)
        return ToolCall(name, args, m.text, err, f"call_{index}", recipient, tool=owner or "functions")

    def add_tool_result(self, call_id_or_name: str, content: str) -> None:
        """Answer a pending tool call (by its id, or its name); then `send()` with no text continues."""
        pending = self.pending_tool_calls()
        call = next((c for c in pending if c.id == call_id_or_name), None) or next(
            (c for c in pending if call_id_or_name in (c.name, c.recipient)), None
        )
        if call is None:
            have = ", ".join(f"{c.id} ({c.name})" for c in pending) or "none"
            raise ValueError(f"no pending tool call {call_id_or_name!r} (pending: {have})")
        if not isinstance(content, str):
            content = json.dumps(content, ensure_ascii=False, default=str)
        self._history.append(Message.tool_result(call.recipient, content))

    def reset(self) -> None:
        """Start a new conversation with the same settings; the cache keeps what the new prompts share
        (the system and developer messages)."""
        self._close_active()
        self._history = []
        self.builtins.reset()

    def warm(self, progress: Callable[[int, int], None] | None = None) -> int:
        """Prefill the conversation so far into the cache, exactly as the next user turn's prompt
        begins, so that turn prefills only its new message: what a reopened chat does in the
        background. `progress(cached, total)` after each chunk; `cancel()` stops it.
        -> the tokens now cached. Raises ContextLengthError if the conversation does not fit."""
        self._close_active()
        hist = prune_analysis(self._history + [Message.user("")])[:-1]  # the next turn drops this reasoning
        tokens, boundaries = self._render(hist)
        end = boundaries[-1]  # the last message's end: after it the next prompt differs
        self._cancel.clear()
        try:
            self.engine.prefill(tokens[:end], self._cancel.is_set, boundaries[:-1], progress=progress)
        finally:
            self.engine.settle()
        return len(self.engine.tokens)

    # ------------------------------------------------------------------ generation

    def cancel(self) -> None:
        """Stop the running `send()` (thread-safe): its stream ends with Done(stop_reason="cancelled")."""
        self._cancel.set()

    def _close_active(self) -> None:
        if self._active is not None:
            try:
                self._active.close()  # type: ignore[attr-defined]
            except ValueError:
                raise RuntimeError("a reply is being generated in another thread; cancel() it first") from None
            self._active = None

    def send(self, text: str | None = None, *, response_format: Any = ..., strict: bool | None = None) -> Iterator[Event]:
        """Add a user message (None: continue after `add_tool_result`) and stream the reply's events.
        `response_format` / `strict` apply to this reply only (the chat's settings otherwise).

        Raises ContextLengthError now, before any compute, if the prompt does not fit, and GrammarError
        if a strict schema cannot be enforced; the history is then unchanged. The stream always ends
        with `Done`.
        """
        self._close_active()
        self._turn_format = None
        if response_format is not ... or strict is not None:
            fmt = self._response_format if response_format is ... else _response_format(response_format)
            if strict is not None and not isinstance(strict, bool):
                raise TypeError(f"strict must be True or False, not {strict!r}")
            self._turn_format = (fmt, self._strict if strict is None else strict)
        self._grammars_of_turn()
        if text is None:
            if not self._history or self._history[-1].role not in (Role.USER, Role.TOOL):
                raise ValueError("send() without text continues after a user message or a tool result")
            history = list(self._history)
        else:
            history = self._history + [Message.user(text)]
        prompt, boundaries = self._render(history)
        self.engine.check_prompt(prompt)
        self._history = history
        self._cancel.clear()
        self._active = self._stream(prompt, boundaries)
        return self._active

    def ask(self, text: str | None = None, **turn: Any) -> Reply:
        """Blocking `send()` (same arguments): the Reply (answer, reasoning, tool calls, stats)."""
        done = None
        for ev in self.send(text, **turn):
            if isinstance(ev, Done):
                done = ev
        assert done is not None
        return done.reply

    def _stream(self, prompt: list[int], boundaries: tuple[int, ...]) -> Iterator[Event]:
        t0 = time.perf_counter()
        mx.reset_peak_memory()
        turn = _Turn()
        sampler = Sampler(self.sampling)
        stop_reason, error, detail = "stop", None, None
        try:
            while True:
                remaining = None if self._max_tokens is None else self._max_tokens - turn.generated
                if remaining is not None and remaining < 1:
                    stop_reason = "length"
                    break
                stop_reason = yield from self._round(prompt, boundaries, sampler, remaining, turn, t0)
                if stop_reason != "tool_call":
                    break
                pending = self.pending_tool_calls()
                if turn.rounds >= self.max_tool_rounds:
                    detail = f"tool round limit ({self.max_tool_rounds}) reached; {_calls(pending)} not run"
                    break
                detail = yield from self._run_tools(pending)
                if detail is not None:
                    break
                prompt, boundaries = self._render()
                if len(prompt) >= self.engine.max_context:
                    stop_reason = "context"
                    break
        except Exception as e:  # the stream reports it; the cache state is unknown, so drop it
            self.engine.reset()
            first = (str(e).strip().splitlines() or [""])[0]
            stop_reason, error = "error", f"{type(e).__name__}: {first}" if first else type(e).__name__
        stats = self._stats(turn, stop_reason, error, detail if stop_reason == "tool_call" else None)
        answer = "".join(turn.answer)
        parsed = None
        if self._format()[0] is not None and answer.strip() and stop_reason == "stop":
            parsed, _ = parse_arguments(answer)
        reasoning = "\n\n".join(r for r in turn.reasoning if r)
        citations = self.builtins.citations(answer)
        reply = Reply(answer, reasoning, tuple(turn.calls), stats, parsed, "".join(turn.unparsed), citations)
        self._active = None
        yield Done(stats, reply)

    def _round(
        self, prompt: list[int], boundaries: tuple[int, ...], sampler: Sampler, max_tokens: int | None, turn: _Turn, t0: float
    ):
        """One prefill + decode round; yields events, returns the round's stop reason."""
        constraint = self._constraint(turn)
        sampler.extra = (constraint,) if constraint is not None else ()
        gen = self.engine.generate(
            prompt, sampler, max_tokens=max_tokens, should_stop=self._cancel.is_set, boundaries=boundaries
        )
        parser = StreamParser(Role.ASSISTANT, encoding=self.tokenizer)
        turn.rounds += 1
        in_reasoning = False  # consecutive analysis deltas of one message join into one string
        loose: list[str] = []  # unparsed text outside any message, kept as one UNPARSED message
        shown = time.perf_counter()  # the first Progress after one interval (quick replies need none)
        try:
            for tok in gen:
                now = time.perf_counter()
                if turn.ttft_s is None:
                    turn.ttft_s = now - t0
                ev = parser.process(tok)
                placed = ev.channel in (ANALYSIS, FINAL, COMMENTARY) or ev.recipient is not None
                if ev.state is ParserState.CONTENT and not ev.header_done:
                    if ev.channel == ANALYSIS and ev.recipient is None:
                        turn.reasoning_tokens += 1
                    elif ev.channel == FINAL:
                        turn.answer_tokens += 1
                    elif not placed:
                        turn.unparsed_tokens += 1
                if ev.unparsed:  # outside any message, or an abandoned "header" (the parser counts its tokens)
                    loose.append(ev.unparsed)
                    yield from self._unparsed(turn, ev.unparsed)
                text = ev.delta or self._unstreamed_text(ev)
                if text and ev.recipient is None:
                    if ev.channel == ANALYSIS:
                        if not in_reasoning:
                            turn.reasoning.append("")
                            in_reasoning = True
                        turn.reasoning[-1] += text
                        yield ReasoningDelta(text)
                    elif ev.channel == FINAL:
                        turn.answer.append(text)
                        yield AnswerDelta(text)
                    elif ev.channel == COMMENTARY:
                        yield AnswerDelta(text, channel=COMMENTARY)
                    else:  # header_tokens: a header that ended without <|message|> (its tokens were that text)
                        turn.unparsed_tokens += ev.header_tokens
                        yield from self._unparsed(turn, text)
                if ev.message is not None:
                    in_reasoning = False
                    self._flush_loose(loose)
                    call = self._append(ev.message)
                    if call is not None:
                        turn.calls.append(call)
                        yield call
                if now - shown >= self.progress_interval_s:
                    shown = now
                    yield self._progress(turn, gen)
        finally:
            # Runs on normal end, cancel, errors and a closed stream alike: keep the history consistent.
            self._flush_loose(loose)
            tail = self._append_unfinished(parser)
            if tail:
                turn.unparsed.append(tail)
            turn.unparsed_tokens += parser.unparsed_tokens
            turn.generated += len(gen.generated)
            turn.prompt_tokens = gen.prompt_tokens
            turn.reused += gen.reused_tokens
            turn.prefilled += gen.prefilled_tokens
            turn.prefill_s += gen.prefill_s
            turn.decode_s += gen.decode_s
            turn.decode_steps += max(0, len(gen.generated) - 1)
        if tail:
            yield UnparsedDelta(tail)
        return gen.stop_reason or "cancelled"

    def _progress(self, turn: _Turn, gen) -> Progress:
        steps = turn.decode_steps + max(0, len(gen.generated) - 1)
        secs = turn.decode_s + gen.decode_s
        return Progress(turn.generated + len(gen.generated), len(self.engine.tokens), self.engine.max_context,
                        turn.ttft_s, steps / secs if secs > 0 else 0.0)  # fmt: skip

    @staticmethod
    def _unparsed(turn: _Turn, text: str) -> Iterator[Event]:
        turn.unparsed.append(text)
        yield UnparsedDelta(text)

    @staticmethod
    def _unstreamed_text(ev) -> str:
        """The text of a message that ended before `<|message|>` (its words were read as a header, so
        no delta carried them): shown once, where its channel puts it."""
        m = ev.message
        if m is not None and ev.error and "before <|message|>" in ev.error and m.recipient is None:
            return m.text
        return ""

    def _flush_loose(self, loose: list[str]) -> None:
        if loose:
            self._history.append(Message(Role.ASSISTANT, "".join(loose), channel=UNPARSED))
            loose.clear()

    def _append(self, m: Message) -> ToolCall | None:
        """Add a completed message to the history; -> its ToolCall if it is one. An assistant message on
        no known channel is kept as UNPARSED (it was shown as unparsed text)."""
        if m.role is Role.ASSISTANT and m.recipient is None and m.channel not in (ANALYSIS, FINAL, COMMENTARY):
            m = replace(m, channel=UNPARSED)
        self._history.append(m)
        if m.role is Role.ASSISTANT and m.recipient is not None:
            return self._tool_call(len(self._history) - 1, m)
        return None

    def _append_unfinished(self, parser: StreamParser) -> str:
        """A message cut off (cancel, max_tokens, context) is kept as incomplete if it has text,
        except a tool call: half a call cannot be answered, so it is dropped. -> unparsed text the end
        of the stream released (a cut-off "header" that was not one), kept as an UNPARSED message."""
        before, seen = len(parser.messages), len(parser.unparsed_text)
        msgs = parser.finish()
        for m in msgs[before:]:
            if m.text and m.recipient is None and m.role is Role.ASSISTANT:
                self._append(m)
        tail = parser.unparsed_text[seen:]
        if tail:
            self._history.append(Message(Role.ASSISTANT, tail, channel=UNPARSED, incomplete=True))
        return tail

    def _run_tools(self, pending: list[ToolCall]):
        """With auto_tools, answer the pending calls of callable tools (errors and unknown tools get an
        error text the model can react to); yields ToolResult events. -> None if generation continues,
        else why it stops here (the `Stats.stop_detail` of a "tool_call" stop)."""
        if not pending:
            return "the model ended its turn with <|call|> but wrote no complete tool call"
        if not self.auto_tools:
            return f"{_calls(pending)} not run (auto_tools is off: answer with add_tool_result)"
        by_name = {t.name: t for t in self._tools}
        left = []
        for call in pending:
            if self.builtins.enabled(call.recipient):
                result = self.builtins.run(call, self._cancel.is_set)
                channel = self._history[int(call.id.removeprefix("call_"))].channel
                self._history.append(Message.tool_result(call.recipient, result.content, channel=channel))
                yield result
                continue
            tool = by_name.get(call.name) if call.recipient.startswith(_FUNCTIONS) else None
            if tool is not None and tool.fn is None:
                left.append(call)  # a schema-only tool: the caller answers it with add_tool_result
                continue
            if tool is None:
                have = ", ".join(t.name for t in self._tools) or "none configured"
                content, failed = f"Error: unknown tool {call.recipient!r} (tools: {have})", True
            elif call.error is not None:
                content, failed = f"Error: {call.error}", True
            else:
                content, failed = run_tool(tool, call.arguments)
            self._history.append(Message.tool_result(call.recipient, content))
            yield ToolResult(call.name, content, call.id, failed, tool=call.tool)
        return f"waiting for the result of {_calls(left)} (schema-only: answer with add_tool_result)" if left else None

    def _stats(self, turn: _Turn, stop_reason: str, error: str | None, detail: str | None = None) -> Stats:
        return Stats(
            prompt_tokens=turn.prompt_tokens,
            reused_tokens=turn.reused,
            prefilled_tokens=turn.prefilled,
            generated_tokens=turn.generated,
            reasoning_tokens=turn.reasoning_tokens,
            answer_tokens=turn.answer_tokens,
            ttft_s=turn.ttft_s or 0.0,
            prefill_tps=turn.prefilled / turn.prefill_s if turn.prefill_s > 0 else 0.0,
            decode_tps=turn.decode_steps / turn.decode_s if turn.decode_s > 0 else 0.0,
            peak_memory_bytes=int(mx.get_peak_memory()),
            stop_reason=stop_reason,
            context_used=len(self.engine.tokens),
            context_limit=self.engine.max_context,
            error=error,
            prefill_s=turn.prefill_s,
            decode_s=turn.decode_s,
            rounds=turn.rounds,
            unparsed_tokens=turn.unparsed_tokens,
            stop_detail=detail,
        )

    # ------------------------------------------------------------------ save / reopen

    def settings(self) -> dict[str, Any]:
        """The settings as JSON-compatible values (tools as their schemas)."""
        rf = self._response_format
        return {
            "reasoning_effort": self.reasoning_effort,
            "instructions": self.instructions,
            "tools": [t.to_dict() for t in self._tools],
            "auto_tools": self.auto_tools,
            "response_format": None if rf is None else {"name": rf.name, "schema": rf.schema, "description": rf.description},
            "strict": self._strict,
            "max_reasoning_tokens": self._max_reasoning,
            "sampling": self.sampling.to_dict(),
            "max_tokens": self._max_tokens,
            "max_context": self.engine.max_context,
            "max_tool_rounds": self.max_tool_rounds,
            "date": self.date,
            **self.builtins.settings(),
            **self._kv_settings(),
        }

    def _kv_settings(self) -> dict[str, int]:
        """kv_bits / kv_group_size, only for a quantized cache (an unquantized chat saves what it always did)."""
        e = self.engine
        return {} if e.kv_bits is None else {"kv_bits": e.kv_bits, "kv_group_size": e.kv_group_size}

    def to_json(self) -> dict[str, Any]:
        """A JSON-compatible dict (settings + history); `json.dumps` it to save."""
        return {"version": JSON_VERSION, "settings": self.settings(), "messages": [m.to_dict() for m in self._history]}

    @classmethod
    def from_json(
        cls, data: dict[str, Any] | str, model, tokenizer, *, tools: Sequence[Any] | None = None, **overrides: Any
    ) -> Chat:
        """Reopen a saved conversation (`to_json()` output, or its JSON text). Callable `tools` given
        here replace the saved schemas of the same name (callables cannot be saved); `overrides`
        replace saved settings."""
        if isinstance(data, (str, bytes)):
            data = json.loads(data)
        if not isinstance(data, dict) or "messages" not in data:
            raise ValueError("not a saved chat: expected an object with 'settings' and 'messages'")
        s = dict(data.get("settings") or {})
        saved = {t["name"]: t for t in s.pop("tools", []) or []}
        given = {t.name: t for t in as_tools(tools)}
        s["tools"] = [given.pop(n, t) for n, t in saved.items()] + list(given.values())
        samp = s.pop("sampling", None) or {}
        s["sampling"] = replace(SamplingConfig(), **{k: v for k, v in samp.items() if k in SamplingConfig.__dataclass_fields__})
        s.update(overrides)
        chat = cls(model, tokenizer, **s)
        chat._history = [Message.from_dict(m) for m in data["messages"]]
        chat.builtins.restore(chat._history)  # earlier pages: cursors and citations resolve as before
        return chat
