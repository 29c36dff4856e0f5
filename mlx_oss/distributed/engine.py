"""Rank 0 decides, the other ranks follow: the same `Engine` runs on every rank, fed the same commands.

Rank 0's `LeaderEngine` broadcasts each engine-level command (generate: prompt, stop tokens, limits;
reset; exit) before running it; `follow()` runs the same command on the other ranks. Engines whose
inputs are equal make equal cache decisions (reuse, snapshots, rollbacks), so the KV caches stay in
step across turns with no cache traffic at all. During decode rank 0's sampled token rides in a
two-int32 "packet" [token, stop] all-summed from the sampler, a lazy op, so the pipelined decode loop
is unchanged; the stop bit carries rank 0's cancel decision to the next step's check on every rank.
"""

from __future__ import annotations

from typing import Callable, Iterable, Iterator

import mlx.core as mx

from mlx_oss import tokenizer as tk
from mlx_oss.chat import Chat
from mlx_oss.distributed.layers import Comm
from mlx_oss.distributed.session import broadcast_ints
from mlx_oss.engine import Engine, Generation
from mlx_oss.sampling import Sampler, SamplingConfig

GENERATE, RESET, EXIT = 1, 2, 3
HEADER = 7  # op, prompt length, max_tokens (-1: none), stop tokens, boundaries, max_context, prefill_chunk


class _Step:
    """Sampler + should_stop of one distributed generation (one per rank, used in lockstep)."""

    def __init__(self, comm: Comm, sampler: Sampler | None, should_stop: Callable[[], bool]) -> None:
        self.comm = comm
        self.inner = sampler
        self.config = sampler.config if sampler is not None else SamplingConfig()
        self.user_stop = should_stop  # rank 0 only; followers read rank 0's answer
        self.closing = False
        self.packet: mx.array | None = None

    def _wants_stop(self) -> bool:
        return self.comm.rank == 0 and (self.closing or bool(self.user_stop()))

    def __call__(self, logits: mx.array, context=None) -> mx.array:
        """Rank 0 samples; every rank gets [token, stop] (followers' argmax*0 keeps the logits,
        hence their all_gather, in the graph in the same order as on rank 0)."""
        if self.comm.rank == 0:
            y = self.inner(logits, context).reshape(1).astype(mx.int32)
        else:
            y = (mx.argmax(logits.reshape(1, -1), axis=-1) * 0).astype(mx.int32)
        flag = mx.array([int(self._wants_stop())], dtype=mx.int32)
        self.packet = self.comm.all_sum(mx.concatenate([y, flag]))
        return self.packet[:1]

    def should_stop(self) -> bool:
        """Decode: the stop bit of the newest packet (already computed). Prefill (no packet yet):
        a synchronous broadcast of rank 0's answer, once per chunk."""
        if self.packet is None:
            return bool(broadcast_ints(self.comm, [int(self._wants_stop())], 1)[0])
        return bool(self.packet[1].item())


class LeaderEngine(Engine):
    """Rank 0's engine: every command is broadcast to the followers before it runs here."""

    def __init__(self, model, **kw) -> None:
        super().__init__(model, **kw)
        self.comm: Comm = model.comm
        self._active: Iterator[int] | None = None

    def _send(self, op: int, *fields: int, payload: Iterable[int] = ()) -> None:
        if self._active is not None:  # a generation its consumer dropped: finish it on every rank
            self._active.close()
            self._active = None
        head = [op, *fields] + [0] * (HEADER - 1 - len(fields))
        broadcast_ints(self.comm, head, HEADER)
        body = list(payload)
        if body:
            broadcast_ints(self.comm, body, len(body))

    def reset(self) -> None:
        self._send(RESET)
        super().reset()

    def generate(
        self, prompt: list[int], sampler: Sampler, *, max_tokens: int | None = None,
        should_stop: Callable[[], bool] | None = None,
        stop_tokens: Iterable[int] = tk.STOP_TOKENS_FOR_ASSISTANT_ACTIONS, boundaries: Iterable[int] = (),
    ) -> Generation:  # fmt: skip
        self.check_prompt(prompt)  # errors before the followers hear of it
        if max_tokens is not None and max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {max_tokens}")
        stops, cuts = list(stop_tokens), list(boundaries)
        self._send(
            GENERATE, len(prompt), -1 if max_tokens is None else max_tokens, len(stops), len(cuts),
            self.max_context, self.prefill_chunk, payload=list(prompt) + stops + cuts,
        )  # fmt: skip
        step = _Step(self.comm, sampler, should_stop or (lambda: False))
        gen = super().generate(prompt, step, max_tokens=max_tokens, should_stop=step.should_stop,
                               stop_tokens=stops, boundaries=cuts)  # fmt: skip
        gen._it = self._active = _drained(gen._it, step)
        return gen


def end_followers(comm: Comm) -> None:
    """Rank 0 at the end of a run: the followers return from `follow()`."""
    broadcast_ints(comm, [EXIT] + [0] * (HEADER - 1), HEADER)


def _drained(it: Iterator[int], step: _Step) -> Iterator[int]:
    """Rank 0's token stream; closed early, it keeps stepping with the stop bit set until the
    followers (one step behind on that bit) have stopped too, so no rank is left in a collective."""
    try:
        for tok in it:  # not `yield from`: closing this must not close `it`, which still has steps to run
            yield tok
    finally:
        step.closing = True
        for _ in it:
            pass


def follow(model, comm: Comm) -> None:
    """A follower rank: run rank 0's commands on this rank's engine until it says EXIT."""
    engine = Engine(model)
    while True:
        op, n, max_tokens, n_stop, n_cut, max_context, chunk = broadcast_ints(comm, None, HEADER)
        if op == EXIT:
            return
        if op == RESET:
            engine.reset()
            continue
        if op != GENERATE:
            raise RuntimeError(f"rank {comm.rank}: unknown command {op} from rank 0")
        body = broadcast_ints(comm, None, n + n_stop + n_cut)
        engine.max_context, engine.prefill_chunk = max_context, chunk
        step = _Step(comm, None, lambda: False)
        gen = engine.generate(
            body[:n], step, max_tokens=None if max_tokens < 0 else max_tokens, should_stop=step.should_stop,
            stop_tokens=body[n : n + n_stop], boundaries=body[n + n_stop :],
        )  # fmt: skip
        for _ in gen:
            pass


class DistributedChat(Chat):
    """`Chat` on rank 0 of a group: its engine broadcasts to the followers."""

    engine_class = LeaderEngine
