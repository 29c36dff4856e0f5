"""The model side of the server: one engine, its prompt-cache pool and the generation worker.

Routes hand it a `Turn`; it compiles the turn's strict schemas (`compile`, with the one `Grammars`
of this tokenizer, so a schema that cannot be enforced is refused before anything is queued), renders
the prompt (so a context overflow is refused before any compute), queues the generation and gives
back the job whose events the route streams.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from dataclasses import replace
from typing import Any, AsyncIterator, Callable, Sequence

from mlx_oss.builtin import BuiltinTools
from mlx_oss.engine import Engine
from mlx_oss.grammar import Grammars
from mlx_oss.sampling import LogitsProcessor, SamplingConfig
from mlx_oss.server.cache_pool import PromptCachePool
from mlx_oss.server.conversation import Turn
from mlx_oss.server.errors import APIError
from mlx_oss.server.generation import BatchRunner, Finished, Usage, generation_program, run_generation
from mlx_oss.server.worker import END, GenerationWorker, Job, QueueFull

__all__ = ["Backend", "ProcessorHook"]

PEER_GRACE_S = 10.0  # a failed step in a group: how long to wait for the watchdog's reason

# Test-only sampling hook: called with each request's JSON body, returns logits processors
# (e.g. `ScriptedTokens`) that make a random-weight model write harmony. Never set in production.
ProcessorHook = Callable[[dict[str, Any]], Sequence[LogitsProcessor]]


class Backend:
    def __init__(
        self,
        model,
        tokenizer,
        *,
        max_context: int | None = None,
        cache_bytes: int = 8 << 30,
        max_queue: int = 16,
        max_batch: int = 1,
        sampling: SamplingConfig | None = None,
        max_tokens: int | None = None,
        processors: ProcessorHook | None = None,
        engine_class: type[Engine] = Engine,
        end_group: Callable[[], None] | None = None,
    ) -> None:
        if max_batch > 1 and engine_class is not Engine:
            raise ValueError("batched generation (max_batch > 1) is not supported in a group (--hosts) yet")
        self.tokenizer = tokenizer
        self.engine = engine_class(model, max_context=max_context)  # LeaderEngine: rank 0 of a group
        self.pool = PromptCachePool(cache_bytes)
        self.max_batch = max_batch
        runner = None
        if max_batch > 1:  # made on the worker thread; the engine above stays unused (the batch prefills)
            runner = lambda: BatchRunner(model, self.pool, max_context=self.engine.max_context, tool_threads=max_batch)  # noqa: E731
        self.worker = GenerationWorker(max_queue, max_batch, runner)
        self._end_group = end_group  # rank 0 of a group: run on the worker thread as it stops
        self._lost = threading.Event()  # a rank of the group was lost: fail_all answers the requests
        self._processors = processors
        self._sampling = sampling or SamplingConfig()
        self._max_tokens = max_tokens
        self.outcomes: Counter[str] = Counter()  # finished generations by stop reason (GET /health)
        self._grammars: Grammars | None = None
        self._grammars_lock = threading.Lock()
        self.worker.start()

    @property
    def grammars(self) -> Grammars:
        """The compiled JSON schemas of this tokenizer (made on first use: llguidance's view of the
        vocabulary takes about a second to build, the first time a schema is compiled)."""
        with self._grammars_lock:
            if self._grammars is None:
                self._grammars = Grammars(self.tokenizer)
            return self._grammars

    def compile(self, turn: Turn) -> Turn:
        """The turn with its strict schemas compiled (cached by hash); 400 naming the parameter and
        the keyword for one that cannot be enforced. Blocking (the first time about a second): call
        it off the event loop. A turn without strict schemas is returned as it is."""
        return turn.compile(self.grammars) if turn.schemas() else turn

    @property
    def max_context(self) -> int:
        return self.engine.max_context

    def sampling(self, body: dict[str, Any]) -> SamplingConfig:
        """The server's sampling defaults, with the test hook's processors for this request."""
        if self._processors is None:
            return self._sampling
        return replace(self._sampling, logits_processors=tuple(self._processors(body)))

    def prompt(self, turn: Turn) -> tuple[list[int], tuple[int, ...]]:
        """Render (a `truncation: "auto"` turn drops its oldest turns to fit); 400
        context_length_exceeded when it does not fit (nothing computed yet)."""
        tokens, boundaries = turn.render(self.tokenizer, self.max_context)
        if len(tokens) >= self.max_context:
            raise APIError(
                400,
                f"This model's maximum context length is {self.max_context} tokens; the prompt is {len(tokens)} "
                f"tokens (at least one must be left to generate).",
                param="messages",
                code="context_length_exceeded",
            )
        return tokens, boundaries

    def submit(
        self, turn: Turn, prompt: list[int], boundaries: tuple[int, ...], tools: BuiltinTools | None = None,
        max_calls: int = 8, done: Callable[[], None] | None = None,
    ) -> Job:  # fmt: skip
        """Queue the generation (built-in calls run by `tools`, at most `max_calls`; `done` is called on
        the worker when it ends, run or cancelled); 429 with Retry-After when the queue is full.
        With `max_batch` > 1 it runs alongside up to `max_batch - 1` others (one `BatchRunner`)."""

        def fn(emit, cancelled):
            def counted(ev: object) -> None:
                if isinstance(ev, Finished):
                    self.outcomes[ev.stop_reason] += 1
                emit(ev)

            if self.max_batch > 1:  # the program, for the worker's BatchRunner to drive with the others
                return generation_program(
                    self.tokenizer, prompt, boundaries, turn.generation_sampling(), turn.max_tokens or self._max_tokens,
                    turn.stop, cancelled, counted, turn, tools, max_calls, self.grammars if turn.schemas() else None,
                    self.engine.max_context,
                )  # fmt: skip
            try:
                run_generation(
                    self.engine, self.pool, self.tokenizer, prompt, boundaries, turn.generation_sampling(),
                    turn.max_tokens or self._max_tokens, turn.stop, cancelled, counted, turn, tools, max_calls,
                    self.grammars if turn.schemas() else None,
                )  # fmt: skip
            except Exception:
                # In a group, a collective fails when a rank is lost; the watchdog notices it too,
                # within moments, and `fail_all` answers this request with the reason instead.
                if self._end_group is not None and self._lost.wait(PEER_GRACE_S):
                    return
                raise

        try:
            return self.worker.submit(fn, asyncio.get_running_loop(), done)
        except QueueFull as e:
            raise APIError(
                429, f"The server is busy ({e}); retry shortly.", type="rate_limit_error", code="rate_limit_exceeded",
                headers={"Retry-After": "1"},
            ) from None  # fmt: skip

    @staticmethod
    async def events(job: Job) -> AsyncIterator[object]:
        """The job's events until it ends; an exception raised in the worker is re-raised here."""
        while True:
            item = await job.events.get()
            if item is END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def shutdown(self) -> bool:
        """Cancel every queued and running generation (their streams end cleanly) and stop the worker,
        running `end_group` on its thread first. -> False if the worker did not end (stuck in a step)."""
        end_group, self._end_group = self._end_group, None
        return self.worker.stop(last=end_group)

    def fail_all(self, message: str) -> None:
        """Any thread: end every running and queued request now with a server error (`message`),
        when generation cannot go on (a rank of the group was lost); bounded wait for the replies."""
        self._lost.set()
        self.worker.fail_all(Finished(Usage(), "error", message))
