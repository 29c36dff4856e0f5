"""The model side of the server: one engine, its prompt-cache pool and the generation worker.

Routes hand it a `Turn`; it renders the prompt (so a context overflow is refused before any
compute), queues the generation and gives back the job whose events the route streams.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import replace
from typing import Any, AsyncIterator, Callable, Sequence

from mlx_oss.engine import Engine
from mlx_oss.sampling import LogitsProcessor, SamplingConfig
from mlx_oss.server.cache_pool import PromptCachePool
from mlx_oss.server.conversation import Turn
from mlx_oss.server.errors import APIError
from mlx_oss.server.generation import Finished, run_generation
from mlx_oss.server.worker import END, GenerationWorker, Job, QueueFull

__all__ = ["Backend", "ProcessorHook"]

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
        sampling: SamplingConfig | None = None,
        max_tokens: int | None = None,
        processors: ProcessorHook | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.engine = Engine(model, max_context=max_context)
        self.pool = PromptCachePool(cache_bytes)
        self.worker = GenerationWorker(max_queue)
        self._processors = processors
        self._sampling = sampling or SamplingConfig()
        self._max_tokens = max_tokens
        self.outcomes: Counter[str] = Counter()  # finished generations by stop reason (GET /health)
        self.worker.start()

    @property
    def max_context(self) -> int:
        return self.engine.max_context

    def sampling(self, body: dict[str, Any]) -> SamplingConfig:
        """The server's sampling defaults, with the test hook's processors for this request."""
        if self._processors is None:
            return self._sampling
        return replace(self._sampling, logits_processors=tuple(self._processors(body)))

    def prompt(self, turn: Turn) -> tuple[list[int], tuple[int, ...]]:
        """Render; 400 context_length_exceeded when it does not fit (nothing computed yet)."""
        tokens, boundaries = turn.render(self.tokenizer)
        if len(tokens) >= self.max_context:
            raise APIError(
                400,
                f"This model's maximum context length is {self.max_context} tokens; the prompt is {len(tokens)} "
                f"tokens (at least one must be left to generate).",
                param="messages",
                code="context_length_exceeded",
            )
        return tokens, boundaries

    def submit(self, turn: Turn, prompt: list[int], boundaries: tuple[int, ...]) -> Job:
        """Queue the generation; 429 with Retry-After when the queue is full."""

        def fn(emit, cancelled) -> None:
            def counted(ev: object) -> None:
                if isinstance(ev, Finished):
                    self.outcomes[ev.stop_reason] += 1
                emit(ev)

            run_generation(
                self.engine, self.pool, self.tokenizer, prompt, boundaries, turn.generation_sampling(self.tokenizer), turn.max_tokens or self._max_tokens,
                turn.stop, cancelled, counted,
            )  # fmt: skip

        try:
            return self.worker.submit(fn, asyncio.get_running_loop())
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

    def shutdown(self) -> None:
        """Cancel every queued and running generation (their streams end cleanly) and stop the worker."""
        self.worker.stop()
