"""Rank 0 decides, the other ranks follow: the same `Engine`s run on every rank, fed the same commands.

Rank 0's `LeaderEngine` broadcasts each engine-level command before running it; `follow()` runs the
same command on the other ranks. A command names the engine it is for (rank 0 may hold several: the
TUI's chats) and, for detached states (the server's prompt-cache pool), the state: create (on an
engine's first command), reset, prefill, generate (prefill + decode), detach, attach, fork, drop (ids
rank 0 let go of ride with the next command). Engines whose inputs are equal make equal cache
decisions (reuse, snapshots, rollbacks, trims), so the KV caches stay in step across turns with no
cache traffic at all.

During decode rank 0's sampled token rides in a two-int32 "packet" [token, stop] all-summed from the
sampler, a lazy op, so the pipelined decode loop is unchanged; the stop bit carries rank 0's cancel
decision to the next step's check on every rank. While prefilling, rank 0's stop answer is broadcast
once per chunk.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import mlx.core as mx

from mlx_oss import tokenizer as tk
from mlx_oss.chat import Chat
from mlx_oss.distributed.layers import Comm
from mlx_oss.distributed.session import broadcast_ints
from mlx_oss.engine import Engine, EngineState, Generation
from mlx_oss.sampling import LogitsProcessor, Sampler

EXIT, RESET, GENERATE, PREFILL, DETACH, ATTACH, FORK = range(1, 8)


@dataclass(frozen=True)
class Command:
    """One command's fixed-size header (then one payload: dropped ids, prompt, stop tokens, boundaries)."""

    op: int
    engine: int = 0  # the engine it runs on
    state: int = 0  # DETACH: the new state's id; ATTACH: the state attached; FORK: the source
    other: int = 0  # FORK: the new state's id
    n_drop: int = 0
    n_prompt: int = 0
    max_tokens: int = -1  # -1: none
    n_stop: int = 0
    n_cut: int = 0
    max_context: int = 0  # the engine's settings (rank 0 may change them between commands)
    prefill_chunk: int = 0
    max_snapshots: int = 0
    held: int = 0  # tokens rank 0's engine holds before the command, and (prefill, generate) the ones
    reuse: int = 0  # it will reuse: a follower whose engine disagrees stops with an error, not a hang
    kv_bits: int = 0  # the engine's KV cache: 8 or 4 quantized, 0 unquantized (or, with kv_group_size 0:
    kv_group_size: int = 0  # the model's setting, which every rank agreed on when loading)

    @classmethod
    def size(cls) -> int:
        return len(cls.__dataclass_fields__)

    def ints(self) -> list[int]:
        return [getattr(self, f) for f in self.__dataclass_fields__]

    @property
    def payload(self) -> int:
        return self.n_drop + self.n_prompt + self.n_stop + self.n_cut


HEADER = Command.size()


def send(comm: Comm, cmd: Command, drops: list[int], prompt: Iterable[int] = (), stops: Iterable[int] = (),
         cuts: Iterable[int] = ()) -> None:  # fmt: skip
    """Rank 0: broadcast one command (header, then its payload if any)."""
    broadcast_ints(comm, cmd.ints(), HEADER)
    body = list(drops) + list(prompt) + list(stops) + list(cuts)
    if body:
        broadcast_ints(comm, body, len(body))


def _command(comm: Comm, op: int, **fields: int) -> None:
    """A command that runs on no engine (FORK, EXIT): finish the running generation, send the drops."""
    comm.mirror.finish_active()
    drops = comm.mirror.take_dropped()
    send(comm, Command(op, n_drop=len(drops), **fields), drops)


class _Step:
    """Sampler + should_stop of one distributed generation or prefill (one per rank, in lockstep)."""

    def __init__(self, comm: Comm, sampler: Sampler | None, should_stop: Callable[[], bool]) -> None:
        self.comm = comm
        self.inner = sampler
        self.user_stop = should_stop  # rank 0 only; followers read rank 0's answer
        self.closing = False
        self.packet: mx.array | None = None

    @property
    def processors(self) -> tuple[LogitsProcessor, ...]:
        """Rank 0's sampler's (the engine builds their token context only if there are any)."""
        return self.inner.processors if self.inner is not None else ()

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


@dataclass(frozen=True)
class MirroredState(EngineState):
    """A state detached from a `LeaderEngine`; every follower holds its copy under `id`."""

    id: int = 0
    comm: Comm | None = field(default=None, compare=False, repr=False)

    def fork(self) -> "MirroredState":
        new = self.comm.mirror.new_id()
        _command(self.comm, FORK, state=self.id, other=new)
        return _mirrored(EngineState.fork(self), new, self.comm)


def _mirrored(state: EngineState, sid: int, comm: Comm) -> MirroredState:
    out = MirroredState(state.cache, state.tokens, state.snapshots, sid, comm)
    weakref.finalize(out, comm.mirror.drop, sid)  # the followers drop theirs with rank 0's next command
    return out


class LeaderEngine(Engine):
    """Rank 0's engine: every command is broadcast to the followers before it runs here (with the
    engine's settings, its KV cache quantization included: each rank's caches hold its own heads)."""

    def __init__(self, model, **kw) -> None:
        super().__init__(model, **kw)
        self.comm: Comm = model.comm
        self.id = self.comm.mirror.new_id()
        weakref.finalize(self, self.comm.mirror.drop, self.id)

    def _send(self, op: int, *, state: int = 0, prompt: list[int] = (), stops: list[int] = (),
              cuts: list[int] = (), max_tokens: int | None = None) -> None:  # fmt: skip
        mirror = self.comm.mirror
        mirror.finish_active()  # a generation its consumer dropped: finish it on every rank first
        drops = mirror.take_dropped()
        cmd = Command(
            op, self.id, state, 0, len(drops), len(prompt), -1 if max_tokens is None else max_tokens, len(stops),
            len(cuts), self.max_context, self.prefill_chunk, self.max_snapshots, len(self._tokens),
            self.reusable(list(prompt)) if prompt else 0, self.kv_bits or 0, self.kv_group_size,
        )  # fmt: skip
        send(self.comm, cmd, drops, prompt, stops, cuts)

    def reset(self) -> None:
        self._send(RESET)
        super().reset()

    def detach(self) -> MirroredState:
        sid = self.comm.mirror.new_id()
        self._send(DETACH, state=sid)
        state = EngineState(tuple(self.cache), tuple(self._tokens), tuple(self._snapshots))
        Engine.reset(self)  # the followers' DETACH resets theirs; no RESET command
        return _mirrored(state, sid, self.comm)

    def attach(self, state: EngineState) -> None:
        if not isinstance(state, MirroredState) or state.comm is not self.comm:
            raise TypeError("a LeaderEngine attaches only states detached (or forked) from an engine of its group")
        self._send(ATTACH, state=state.id)
        super().attach(state)

    def prefill(self, prompt: list[int], should_stop=None, boundaries: Iterable[int] = (), progress=None):
        self.check_prompt(prompt)  # errors before the followers hear of it
        cuts = list(boundaries)
        self._send(PREFILL, prompt=list(prompt), cuts=cuts)
        step = _Step(self.comm, None, should_stop or (lambda: False))
        return super().prefill(prompt, step.should_stop, cuts, progress)

    def generate(
        self, prompt: list[int], sampler: Sampler, *, max_tokens: int | None = None,
        should_stop: Callable[[], bool] | None = None,
        stop_tokens: Iterable[int] = tk.STOP_TOKENS_FOR_ASSISTANT_ACTIONS, boundaries: Iterable[int] = (),
    ) -> Generation:  # fmt: skip
        self.check_prompt(prompt)  # errors before the followers hear of it
        if max_tokens is not None and max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {max_tokens}")
        stops, cuts = list(stop_tokens), list(boundaries)
        self._send(GENERATE, prompt=list(prompt), stops=stops, cuts=cuts, max_tokens=max_tokens)
        step = _Step(self.comm, sampler, should_stop or (lambda: False))
        gen = super().generate(prompt, step, max_tokens=max_tokens, should_stop=step.should_stop,
                               stop_tokens=stops, boundaries=cuts)  # fmt: skip
        gen._it = self.comm.mirror.active = _drained(gen._it, step)
        return gen


def end_followers(comm: Comm) -> None:
    """Rank 0 at the end of a run: the followers return from `follow()`."""
    _command(comm, EXIT)


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


class DivergedError(RuntimeError):
    """A follower's engine no longer matches rank 0's (never expected: the commands keep them equal)."""


class Follower:
    """A follower rank's engines and detached states, by the ids rank 0 gave them."""

    def __init__(self, model, comm: Comm) -> None:
        self.model, self.comm = model, comm
        self.engines: dict[int, Engine] = {}
        self.states: dict[int, EngineState] = {}

    def engine(self, c: Command, prompt: list[int] = ()) -> Engine:
        eng = self.engines.get(c.engine)
        kv = {"kv_bits": c.kv_bits or None, "kv_group_size": c.kv_group_size} if c.kv_group_size else {}
        if eng is None:
            eng = self.engines[c.engine] = Engine(self.model, max_context=c.max_context, **kv)
        eng.max_context, eng.prefill_chunk, eng.max_snapshots = c.max_context, c.prefill_chunk, c.max_snapshots
        if kv:
            eng.kv_bits, eng.kv_group_size = kv["kv_bits"], kv["kv_group_size"]  # used by its next fresh caches
        held, reuse = len(eng.tokens), eng.reusable(list(prompt)) if prompt else 0
        if (held, reuse) != (c.held, c.reuse):
            raise DivergedError(
                f"rank {self.comm.rank}: engine {c.engine} holds {held} tokens and would reuse {reuse}; rank 0's "
                f"holds {c.held} and reuses {c.reuse}: the ranks' caches diverged (a bug); stopping"
            )
        return eng

    def run(self, c: Command, body: list[int]) -> bool:
        """Run one command; False for EXIT."""
        for oid in body[: c.n_drop]:
            self.engines.pop(oid, None)
            self.states.pop(oid, None)
        if c.op == EXIT:
            return False
        a = c.n_drop
        prompt, b = body[a : a + c.n_prompt], a + c.n_prompt
        stops, cuts = body[b : b + c.n_stop], body[b + c.n_stop : b + c.n_stop + c.n_cut]
        if c.op == FORK:
            self.states[c.other] = self.states[c.state].fork()
        elif c.op == RESET:
            self.engine(c).reset()
        elif c.op == DETACH:
            self.states[c.state] = self.engine(c).detach()
        elif c.op == ATTACH:
            self.engine(c).attach(self.states.pop(c.state))
        elif c.op == PREFILL:
            eng, step = self.engine(c, prompt), _Step(self.comm, None, lambda: False)
            try:
                eng.prefill(prompt, step.should_stop, cuts)
            finally:
                eng.settle()
        elif c.op == GENERATE:
            step = _Step(self.comm, None, lambda: False)
            gen = self.engine(c, prompt).generate(
                prompt, step, max_tokens=None if c.max_tokens < 0 else c.max_tokens, should_stop=step.should_stop,
                stop_tokens=stops, boundaries=cuts,
            )  # fmt: skip
            for _ in gen:
                pass
        else:
            raise RuntimeError(f"rank {self.comm.rank}: unknown command {c.op} from rank 0")
        return True


def follow(model, comm: Comm) -> None:
    """A follower rank: run rank 0's commands on this rank's engines until it says EXIT."""
    me = Follower(model, comm)
    while True:
        c = Command(*broadcast_ints(comm, None, HEADER))
        body = broadcast_ints(comm, None, c.payload) if c.payload else []
        if not me.run(c, body):
            return


class DistributedChat(Chat):
    """`Chat` on rank 0 of a group: its engine broadcasts to the followers."""

    engine_class = LeaderEngine
