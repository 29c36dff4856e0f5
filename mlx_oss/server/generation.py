"""One request's generation on the worker thread: pool -> engine -> harmony parser -> output events.

The events are API-neutral output items (a reasoning message, a text message, a function call, a
built-in call), each opened when its harmony header is complete, fed with deltas, and closed with its
full text; a built-in call the server ran is followed by `ToolDone` and the next round's items; then
`Finished` with the usage the engine measured (summed over rounds). The API modules turn them into their own
chunks/events. Runs in `GenerationWorker`'s thread only.

The request's logic is one `generation_program` (a generator that asks for rounds of decode and for
built-in calls); `run_generation` drives it on the engine, one request at a time (`--max-batch 1`), and
`BatchRunner` drives several at once through a `BatchGenerator` (`--max-batch N`): the same code decides
what each request emits, whichever way its tokens are produced.

Each round gets a fresh `ReplyConstraint` from its turn (`Turn.constraint`: tool_choice, strict schemas,
the reasoning budget left) as the sampler's `extra` processor, after the request's own; the sampler (and
its random generator) carries across rounds.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from typing import Callable, Generator

import tiktoken

from mlx_oss.builtin import BuiltinTools
from mlx_oss.engine import Engine
from mlx_oss.events import Citation, ToolCall, ToolResult
from mlx_oss.grammar import Grammars
from mlx_oss.harmony import ANALYSIS, UNPARSED, Message, ParserState, StreamParser
from mlx_oss.sampling import Sampler, SamplingConfig
from mlx_oss.server.cache_pool import PromptCachePool
from mlx_oss.server.conversation import Turn
from mlx_oss.server.errors import APIError
from mlx_oss.server.token_output import TokenOutput, strip_markup
from mlx_oss.server.tools import call_name

__all__ = ["REASONING", "MESSAGE", "FUNCTION_CALL", "BROWSER_CALL", "PYTHON_CALL", "ItemStarted", "ItemDelta",
           "ItemDone", "ToolDone", "Finished", "Usage", "StopMatcher", "BatchRunner", "generation_program",
           "run_generation", "run_tool"]  # fmt: skip

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
    stop_sequence: str | None = None  # the client stop string that ended it (stop_reason "stop")


class StopMatcher:
    """Client stop strings over streamed text: holds back a tail that could still start one."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = stops
        self._held = ""
        self.hit: str | None = None  # the stop string found (the earliest in the text)

    def feed(self, delta: str) -> tuple[str, bool]:
        """-> (text safe to emit now, stopped)."""
        text = self._held + delta
        cut, self.hit = min(((i, s) for s in self.stops if (i := text.find(s)) >= 0), default=(-1, None))
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
        return BROWSER_CALL if owner == "browser" else PYTHON_CALL if owner == "python" else FUNCTION_CALL
    return REASONING if channel == ANALYSIS else MESSAGE


def _call_limit_text(limit: int) -> str:
    return (f"Error: the limit of {limit} built-in tool calls for this response is reached, so this call was not run. "
            "Answer now with what you have.")  # fmt: skip


def run_tool(tools: BuiltinTools, recipient: str, raw: str, should_stop: Callable[[], bool]) -> ToolResult:
    """Run one call to a built-in tool (`recipient` is `browser.*` or `python`); whatever goes wrong
    becomes the result's text (never raised)."""
    owner = tools.owner(recipient)
    call = ToolCall(recipient, raw, raw, None, "", recipient, tool=owner)
    try:
        return tools.run(call, should_stop)
    except Exception as e:  # BuiltinTools.run does not raise; a bug must not end the response either
        first = (str(e).strip().splitlines() or [""])[0]
        return ToolResult(recipient, f"Error: the {owner} tool failed: {type(e).__name__}: {first}", "", True, tool=owner)


@dataclass
class _Decode:
    """What a generation program asks its driver for: one prefill + decode of `prompt`, each token fed
    to `out` (`out.feed` -> True: stop now); the driver answers with `_Decoded`."""

    prompt: list[int]
    boundaries: tuple[int, ...]
    sampler: Sampler
    max_tokens: int | None
    out: "_RoundOutput"
    should_stop: Callable[[], bool]


@dataclass
class _Decoded:
    reason: str | None  # the engine's stop reason (None: the consumer stopped it, or it failed)
    reused: int
    error: str | None = None


@dataclass
class _RunTool:
    """What a generation program asks its driver for: run a built-in call (blocking; not MLX), answer its ToolResult."""

    run: Callable[[], ToolResult]


def _error_text(e: BaseException) -> str:
    first = (str(e).strip().splitlines() or [""])[0]
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


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
    turn: Turn | None,
    tools: BuiltinTools | None,
    max_calls: int,
    grammars: Grammars | None,
) -> None:
    """Generate a reply to `prompt`, emitting ItemStarted/ItemDelta/ItemDone, then Finished. With
    `tools` (and the `turn` that made `prompt`), a call to a built-in tool is run here, its result
    emitted as ToolDone and fed back, and generation goes on, all in one reply: at most `max_calls`
    calls are run (later ones are answered with an error text; one round more ends the reply).
    The `turn`'s constraint (with `grammars`, which compiled its schemas) applies to every round.

    This is the one-at-a-time driver (the engine, the pool's `prepare`) of `generation_program`;
    `BatchRunner` drives the same program through a `BatchGenerator`."""
    prog = generation_program(encoding, prompt, boundaries, sampling, max_tokens, stops, cancelled, emit, turn,
                              tools, max_calls, grammars, engine.max_context)  # fmt: skip
    answer: object = None
    while True:
        try:
            ask = prog.send(answer)
        except StopIteration:
            return
        if isinstance(ask, _RunTool):
            answer = ask.run()
            continue
        answer = _decode_alone(engine, pool, ask)


def _decode_alone(engine: Engine, pool: PromptCachePool, ask: _Decode) -> _Decoded:
    """One round on the engine: the pool's best state moved in, prefill + decode."""
    engine.check_prompt(ask.prompt)
    pool.prepare(engine, ask.prompt)
    gen = engine.generate(ask.prompt, ask.sampler, max_tokens=ask.max_tokens, boundaries=ask.boundaries,
                          should_stop=ask.should_stop)  # fmt: skip
    error = None
    try:
        for tok in gen:
            if ask.out.feed(tok):
                break
    except Exception as e:  # the cache state is unknown after a failure: start clean
        engine.reset()
        error = _error_text(e)
    return _Decoded(gen.stop_reason, gen.reused_tokens, error)


def generation_program(
    encoding: tiktoken.Encoding,
    prompt: list[int],
    boundaries: tuple[int, ...],
    sampling: SamplingConfig,
    max_tokens: int | None,
    stops: tuple[str, ...],
    cancelled: threading.Event,
    emit: Callable[[object], None],
    turn: Turn | None,
    tools: BuiltinTools | None,
    max_calls: int,
    grammars: Grammars | None,
    max_context: int,
) -> Generator[object, object, None]:
    """`run_generation`'s request logic, apart from where its tokens come from: a generator that
    yields `_Decode` (answered with `_Decoded`) for each round and `_RunTool` (answered with its
    ToolResult) for each built-in call, and emits the request's events itself."""
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
        out = _RoundOutput(encoding, sampler, stops, emit, tools)
        done = yield _Decode(prompt, boundaries, sampler, budget, out,
                             lambda out=out: cancelled.is_set() or out.stop_hit)  # fmt: skip
        assert isinstance(done, _Decoded)
        r = out.result(prompt, done)
        totals = [a + b for a, b in zip(totals, r.counts)]
        last = r.messages[-1] if r.messages else None
        if (r.reason != "tool_call" or tools is None or turn is None or last is None or last.recipient is None
                or tools.owner(last.recipient) is None):  # fmt: skip
            emit(Finished(Usage(*totals), r.reason, r.error, r.stop_sequence))
            return
        if calls >= max_calls + 1:  # the model was told the limit and called again
            emit(Finished(Usage(*totals), "tool_limit"))
            return
        if calls >= max_calls:
            result = ToolResult(last.recipient, _call_limit_text(max_calls), "", True, tool=tools.owner(last.recipient))
        else:
            recipient, raw = last.recipient, last.text
            result = yield _RunTool(lambda: run_tool(tools, recipient, raw, cancelled.is_set))
        calls += 1
        reply = Message.tool_result(last.recipient, result.content, channel=last.channel)
        emit(ToolDone(last, reply, result))
        if cancelled.is_set():
            emit(Finished(Usage(*totals), "cancelled"))
            return
        history += [*r.messages, reply]
        try:
            prompt, boundaries = replace(turn, history=tuple(history)).render(encoding, max_context)
            fits = len(prompt) < max_context
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
    stop_sequence: str | None = None


class _RoundOutput:
    """One round's output side: each token through the harmony parser into the items it emits."""

    def __init__(self, encoding, sampler: Sampler, stops: tuple[str, ...], emit, tools) -> None:
        self.emit = emit
        self.tools = tools
        self.stops = stops
        self.stop_hit = False
        self.out = TokenOutput(encoding, sampler)
        self.parser = StreamParser(encoding=encoding)  # an assistant's reply
        self.matcher = StopMatcher(stops)
        self.open_item: ItemStarted | None = None
        self.text: list[str] = []
        self.messages: list[Message] = []
        self.reasoning_tokens = 0
        self.headers_unparsed = 0  # tokens of headers ended without <|message|> (their words are shown as unparsed)
        self.logprobs: list[dict] = []  # entries of answer tokens whose text is not emitted yet
        self.shown = 0  # characters of the first pending entry's text already emitted (a stop string's held tail)
        self.step = 0  # tokens fed: the round's completion tokens (in both drivers, a failure's too)

    def send(self, delta: str, flush: bool = False) -> None:
        """Emit `delta` with the logprob entries of the tokens whose text it releases (text the
        stop matcher holds back keeps its entries pending)."""
        keep, n = 0, -self.shown  # n: characters of `delta` the released entries account for
        lp = self.logprobs
        while keep < len(lp) and (flush or n + len(lp[keep]["token"]) <= len(delta)):
            n += len(lp[keep]["token"])
            keep += 1
        lps, self.logprobs = tuple(lp[:keep]), lp[keep:]
        self.shown = len(delta) - n if self.logprobs else 0
        if delta or lps:
            self.text.append(delta)
            self.emit(ItemDelta(delta, lps))

    def close(self, complete: bool) -> None:
        item = self.open_item
        if item is not None:
            if item.kind == MESSAGE:
                if complete:
                    self.send(self.matcher.flush(), flush=True)
                self.logprobs.clear()  # of text cut off (stop string, max tokens): never shown
            body = "".join(self.text)
            cites = self.tools.citations(body) if self.tools is not None and item.kind == MESSAGE else ()
            self.emit(ItemDone(item.kind, body, item.name, complete, item.channel, cites))
            self.open_item = None

    def show_unparsed(self, raw: str) -> None:
        """Text that is not harmony: shown as answer text (markup removed), in its own message."""
        shown = strip_markup(raw)
        if not shown:
            return
        if self.open_item is None:  # (text outside a message comes while no message is open, or unparsed text is)
            self.open_item, self.text = ItemStarted(MESSAGE, None, UNPARSED), []
            self.emit(self.open_item)
        self.send(shown)

    def feed(self, tok: int) -> bool:
        """One generated token; -> True when a stop string was hit (generation must stop now)."""
        step, self.step = self.step, self.step + 1
        ev = self.parser.process(tok)
        if ev.unparsed:  # outside any message, or an abandoned "header" (the parser counts its tokens)
            self.show_unparsed(ev.unparsed)
            return False
        if ev.header_tokens:  # a "message" that ended before <|message|>: its header's words, shown
            self.show_unparsed(ev.message.text)  # (after other unparsed text too: an item may be open)
            self.headers_unparsed += ev.header_tokens  # not kept in `messages`: no prompt is rendered with it
            return False
        if ev.header_done:
            self.close(True)
            name = call_name(ev.recipient) if ev.recipient is not None else None
            self.open_item = ItemStarted(_kind(ev.channel, ev.recipient, self.tools), name, ev.channel, ev.recipient)
            self.text = []
            self.emit(self.open_item)
            return False
        if ev.state is ParserState.CONTENT and ev.channel == ANALYSIS and ev.recipient is None:
            self.reasoning_tokens += 1
        out, item = self.out, self.open_item
        if item is not None and item.kind == MESSAGE and out.want_logprobs \
                and ev.state is ParserState.CONTENT and ev.message is None and not out.is_markup(tok):  # fmt: skip
            self.logprobs.append(out.logprob(step))
        if ev.delta and item is not None:
            delta = out.content(tok, ev.delta)
            if item.kind == MESSAGE and self.stops:
                delta, hit = self.matcher.feed(delta)
                if hit:
                    self.stop_hit = True
            self.send(delta)
            if self.stop_hit:
                self.close(False)
                return True
        if ev.message is not None:
            self.messages.append(ev.message)
            self.close(not ev.message.incomplete)
        return False

    def result(self, prompt: list[int], done: _Decoded) -> _Round:
        """The round once its decode ended (`done`): the open item closed, the reason and the counts."""
        error, parser = done.error, self.parser
        if not error:
            seen = len(parser.unparsed_text)
            parser.finish()  # a reply cut inside what was not a header: its text is still shown
            self.show_unparsed(parser.unparsed_text[seen:])
        self.close(done.reason == "stop" and not error)  # text outside harmony that a stop token ended is whole
        reason = done.reason or "stop"
        if self.stop_hit:
            reason = "stop"
        elif error:
            reason = "error"
        counts = (len(prompt), done.reused, self.step, self.reasoning_tokens,
                  self.out.unparsed_tokens + parser.unparsed_tokens + self.headers_unparsed)  # fmt: skip
        return _Round(self.messages, reason, error, counts, self.matcher.hit)


@dataclass
class _Task:
    """A request's generation program in a `BatchRunner`: its round in the batch (`seq_id`) or its tool call."""

    key: object
    prog: Generator[object, object, None]
    ask: _Decode | None = None
    seq_id: int | None = None
    reused: int = 0


# A joining prompt is prefilled between decode steps (`BatchGenerator(prefill_step=, prefill_balance=)`): at
# most BATCH_PREFILL_STEP tokens per step, and while others decode no longer than BATCH_PREFILL_BALANCE decode
# passes, so their inter-token time grows at most 5x while a prompt joins and the prompt's prefill runs at
# 4/5 of its speed alone or better. Measured on this CPU backend: tiny-chat (float32) prefills a 128-token
# chunk in 76 ms, 256 in 185 ms, 512 in 1070 ms (the fallback attention's scores grow with the chunk), and
# a decode pass of 4 sequences takes 44 ms: the cap decides there. 20b-slice layers: ~75 ms per prompt token
# against ~0.26 s per pass: the time rule decides (~14 tokens a step). Balance 1 was tried: tiny-chat's
# TTFT p95 at 4 clients rose from 200 to 719 ms (docs/BENCH.md). A Mac's costs are not measured.
BATCH_PREFILL_STEP = 128
BATCH_PREFILL_BALANCE = 4.0


class BatchRunner:
    """Drives several requests' `generation_program`s at once through one `BatchGenerator`
    (`mlx-oss serve --max-batch N`, N > 1; docs/SERVER.md "Several clients at once"). Each round is one
    `add` with the state `pool.take` hands out for its prompt; an ended sequence's state goes back with
    `pool.release`. A built-in call runs on a helper thread (it is not MLX work) while the others decode.
    `start(key, prog)`, then `step()` until `busy` is False; `step()` -> the keys of the programs that
    ended, each with the exception that ended it or None. Create and use it on one thread."""

    def __init__(self, model, pool: PromptCachePool, *, max_context: int | None = None, tool_threads: int) -> None:
        from concurrent.futures import ThreadPoolExecutor

        from mlx_oss.batch import BatchGenerator

        self._new_batch = lambda: BatchGenerator(model, max_context=max_context, prefill_step=BATCH_PREFILL_STEP,
                                                 prefill_balance=BATCH_PREFILL_BALANCE)
        self.batch = self._new_batch()
        self.pool = pool
        self._tasks: dict[int, _Task] = {}  # seq_id -> the task decoding it
        self._tools: list[tuple[_Task, object]] = []  # (task, Future of its ToolResult)
        self._ended: list[tuple[object, BaseException | None]] = []
        self._prompt_end: dict[int, int] = {}  # seq_id -> its prompt's length (for `pool.release`); absent: drop its state
        self._executor = ThreadPoolExecutor(tool_threads, thread_name_prefix="mlx-oss-tool")  # one per program at most

    @property
    def max_context(self) -> int:
        return self.batch.max_context

    @property
    def busy(self) -> bool:
        return bool(self._tasks or self._tools or self._ended or len(self.batch))

    def __len__(self) -> int:
        """Programs in the runner (decoding or running a tool)."""
        return len(self._tasks) + len(self._tools)

    def start(self, key: object, prog: Generator[object, object, None]) -> None:
        self._advance(_Task(key, prog), None)

    def close(self) -> None:
        self._executor.shutdown(wait=False)

    def _advance(self, task: _Task, answer: object) -> None:
        """Resume `task`'s program with `answer`: it ends, or waits on a tool or on the batch (queued there)."""
        try:
            ask = task.prog.send(answer)
        except StopIteration:
            self._ended.append((task.key, None))
            return
        except BaseException as e:  # noqa: BLE001 - reported to the request, as the engine path raises it
            self._ended.append((task.key, e))
            return
        if isinstance(ask, _RunTool):
            self._tools.append((task, self._executor.submit(ask.run)))
            return
        assert isinstance(ask, _Decode)
        try:
            self.batch.check_prompt(ask.prompt)  # raised to the request, as `_decode_alone` does
        except Exception as e:
            task.prog.close()
            self._ended.append((task.key, e))
            return
        state, reuse = self.pool.take(ask.prompt)
        # queued (the batch has a prefill_step): its prefill runs in later steps, and a cut, a failure or a
        # cancel comes back as its event there (`step`)
        sid = self.batch.add(ask.prompt, ask.sampler, max_tokens=ask.max_tokens, state=state,
                             boundaries=ask.boundaries, keep_state=True, should_stop=ask.should_stop)  # fmt: skip
        task.ask, task.seq_id, task.reused = ask, sid, reuse
        self._tasks[sid] = task
        self._prompt_end[sid] = len(ask.prompt)

    def _end_round(self, task: _Task, reason: str | None, error: str | None = None) -> None:
        del self._tasks[task.seq_id]
        self._advance(task, _Decoded(reason, task.reused, error))

    def _ended_sequence(self, seq_id: int) -> None:
        """A sequence left the batch: its state back to the pool (or dropped after a failure)."""
        state = self.batch.take_state(seq_id)
        end = self._prompt_end.pop(seq_id, None)
        if state is not None and end is not None:
            self.pool.release(state, end)

    def step(self) -> list[tuple[object, BaseException | None]]:
        for sid, task in list(self._tasks.items()):
            if task.ask.should_stop():  # cancelled (client gone, server stopping): ends before the next pass
                self.batch.cancel(sid)
        if self._tools and not len(self.batch):
            from concurrent.futures import FIRST_COMPLETED, wait

            wait([f for _, f in self._tools], timeout=0.05, return_when=FIRST_COMPLETED)
        for entry in [t for t in self._tools if t[1].done()]:
            self._tools.remove(entry)
            task, fut = entry
            try:
                result = fut.result()
            except Exception as e:  # run_tool does not raise; a bug must not end the others
                self._ended.append((task.key, e))
                continue
            self._advance(task, result)
        if len(self.batch):
            try:
                events = self.batch.step()
            except Exception as e:  # the whole batch's state is unknown: every live round fails, start clean
                error = _error_text(e)
                self.batch, self._prompt_end = self._new_batch(), {}
                for task in list(self._tasks.values()):
                    self._end_round(task, None, error)
                events = []
            for ev in events:
                task = self._tasks.get(ev.seq_id)
                stop, error = False, None
                if task is not None and ev.token is not None:
                    try:
                        stop = task.ask.out.feed(ev.token)
                    except Exception as e:  # the state is unknown after a failure: dropped
                        error = _error_text(e)
                        del self._prompt_end[ev.seq_id]
                if ev.done is not None:
                    self._ended_sequence(ev.seq_id)
                if task is None:  # its round already ended (a stop string, a failure)
                    continue
                if ev.done is not None or stop or error:
                    if ev.done is None:
                        self.batch.cancel(ev.seq_id)  # leaves before the next pass; its state follows then
                    reason = ev.done
                    if ev.error is not None:  # its queued prefill (or first sampling) failed: the round ends with it
                        reason, error = None, _error_text(ev.error)
                    self._end_round(task, reason, error)
        ended, self._ended = self._ended, []
        return ended
