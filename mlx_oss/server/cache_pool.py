"""A bounded pool of engine states, so stateless HTTP requests still reuse the KV cache.

Every request resends the whole conversation. The engine holds one state (the conversation it
served last); the pool keeps others, e.g. a second client's, or the shared system prompt of a
branch. Before a request runs, `prepare` puts the state with the longest reusable token prefix into
the engine:

- if that state only loses the reply it generated last (the request diverges at or after the
  prompt it was built for — an agent loop resending the conversation), it is moved, no copy;
- if the request diverges earlier (a new conversation sharing instructions, a regenerate), the
  state stays in the pool as well and the engine gets a fork of it: buffers are shared and copied
  only when written, so the other conversation keeps its cache.

The pool's states are bounded by `max_bytes` (least recently used evicted first); the state in the
engine is not counted. Not thread-safe: used only from the generation worker thread.

Batched generation (`--max-batch` > 1, issue 28) has no engine state: `take(prompt)` hands out the best
state for a prompt (moved or forked by the same rule as `prepare`) for `BatchGenerator.add(state=)`, and
`release(state, prompt_end)` takes an ended sequence's state back; the newest released state is not
counted (it plays the engine state's part), the others are bounded as above.

"""

from __future__ import annotations

from dataclasses import dataclass

from mlx_oss.engine import Engine, EngineState

__all__ = ["PromptCachePool"]


@dataclass
class _Entry:
    state: EngineState
    prompt_end: int  # length of the prompt this state was last built for
    nbytes: int
    last_used: int


class PromptCachePool:
    """States not in the engine, bounded by bytes; `prepare(engine, prompt)` before each generation."""

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self._entries: list[_Entry] = []
        self._live_prompt_end = 0
        self._clock = 0

    @property
    def nbytes(self) -> int:
        return sum(e.nbytes for e in self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def prepare(self, engine: Engine, prompt: list[int]) -> int:
        """Give `engine` the best state for `prompt`; -> the tokens it will reuse."""
        self._clock += 1
        live = engine.reusable(prompt) if engine.tokens else 0
        best = max(self._entries, key=lambda e: (e.state.reusable(prompt), e.last_used), default=None)
        best_reuse = best.state.reusable(prompt) if best is not None else 0
        if best is not None and best_reuse > live:
            self._stash(engine.detach(), self._live_prompt_end)
            if best_reuse >= best.prompt_end:
                self._entries.remove(best)
                engine.attach(best.state)
            else:
                best.last_used = self._clock
                engine.attach(best.state.fork())
            reuse = best_reuse
        else:
            if engine.tokens and live < self._live_prompt_end:
                state = engine.detach()
                self._stash(state.fork(), self._live_prompt_end)
                engine.attach(state)
            reuse = live
        self._live_prompt_end = len(prompt)
        self._evict()
        return reuse

    def take(self, prompt: list[int]) -> tuple[EngineState | None, int]:
        """The best state for `prompt`, handed out (batched generation): moved out of the pool when
        `prompt` diverges at or after the prompt it was built for, else a fork (the pool keeps it);
        -> (state or None when nothing is reusable, the tokens it will reuse)."""
        self._clock += 1
        best = max(self._entries, key=lambda e: (e.state.reusable(prompt), e.last_used), default=None)
        reuse = best.state.reusable(prompt) if best is not None else 0
        if best is None or reuse == 0:
            return None, 0
        if reuse >= best.prompt_end:
            self._entries.remove(best)
            return best.state, reuse
        best.last_used = self._clock
        return best.state.fork(), reuse

    def release(self, state: EngineState, prompt_end: int) -> None:
        """Take back an ended sequence's state, built for a prompt of `prompt_end` tokens (batched
        generation). It is the newest: kept even past `max_bytes` (as the engine's state would be)
        until a newer one comes back; older ones are evicted first."""
        self._clock += 1
        if not state.tokens:
            return
        self._entries.append(_Entry(state, prompt_end, state.nbytes, self._clock))
        self._evict(spare_newest=True)

    def _stash(self, state: EngineState, prompt_end: int) -> None:
        if not state.tokens or self.max_bytes == 0:
            return
        self._entries.append(_Entry(state, prompt_end, state.nbytes, self._clock))

    def _evict(self, spare_newest: bool = False) -> None:
        self._entries.sort(key=lambda e: e.last_used)
        newest = self._entries[-1] if spare_newest and self._entries else None
        while self._entries and self.nbytes - (newest.nbytes if newest is not None else 0) > self.max_bytes:
            if self._entries[0] is newest:
                break
            self._entries.pop(0)
