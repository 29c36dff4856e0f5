"""Batched decode (issue 28, first slice): several sequences, one forward pass per step.

Decode is bound by reading the weights (memory bandwidth on a Mac; the 201k-row lm_head on the CPU).
`BatchGenerator` keeps B independent sequences, each with its own caches, tokens, ring snapshots and
`Sampler`, and advances all of them one token per `step()` with one `Model.step` call: the weights are
read once for B tokens. Each sequence gets what it gets alone through `Engine.generate` (the same
tokens, logits equal up to float rounding, the same seeded samples; tests/test_batch.py), whatever
else is in the batch: a sampler owns its PRNG key and logits processors, attention is per sequence.

Sequences join and leave between steps (continuous batching): `add()` prefills the new sequence alone
(the engine's chunked prefill, optionally resuming an `EngineState` from a prompt-cache pool), and a
finished or cancelled sequence leaves at once; its `EngineState` can be handed back (`keep_state`).
Not yet: prefill interleaved with decode steps (an `add` runs its whole prefill before the next step).
"""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass, field
from typing import Callable, Iterable, NamedTuple, Sequence

import mlx.core as mx

from mlx_oss import tokenizer as tk
from mlx_oss.engine import Engine, EngineState, Snapshot, settle, take_snapshot
from mlx_oss.sampling import Sampler, SamplingConfig

__all__ = ["BatchEvent", "BatchGenerator", "BatchResult", "generate_batch"]


class BatchEvent(NamedTuple):
    """What one `step()` did to one sequence: `token` it generated (None: cancelled before this step)
    and why it ended (`done`: "stop", "tool_call", "length", "context", "cancelled"; None: it goes on)."""

    seq_id: int
    token: int | None
    done: str | None


@dataclass
class _Sequence:
    """One sequence's own state: the Engine's invariant holds per sequence (`tokens` is exactly what
    `cache` holds: the prompt and every yielded token)."""

    cache: list
    tokens: list[int]
    snapshots: list[Snapshot]
    sampler: Sampler
    max_tokens: int | None
    stop_tokens: frozenset[int]
    keep_state: bool
    prompt_tokens: int
    reused_tokens: int
    y: mx.array  # the next token, sampled (lazily) but not yet fed
    generated: list[int] = field(default_factory=list)

    def context(self) -> Callable[[], mx.array] | None:
        """The token context for logits processors, as `Engine` builds it (only if there are any)."""
        return (lambda: mx.array(self.tokens, dtype=mx.int32)) if self.sampler.processors else None

    def state(self) -> EngineState:
        return EngineState(tuple(self.cache), tuple(self.tokens), tuple(self.snapshots))


class BatchGenerator:
    """B sequences over one model, one token each per `step()`, in one forward pass.

    `add(prompt, sampler, ...)` -> a sequence id (it is prefilled now, alone, and decodes from the next
    step); `step()` -> one `BatchEvent` per live sequence; `cancel(id)` (safe from another thread: it
    takes effect at the next step, which reports it). Use from one thread (MLX streams are per thread),
    like `Engine`. `max_context`, `prefill_chunk`, `kv_bits`, `kv_group_size`, `max_snapshots`: as
    `Engine`'s, for every sequence.
    """

    def __init__(
        self,
        model,
        *,
        max_context: int | None = None,
        max_snapshots: int = 16,
        prefill_chunk: int | None = None,
        kv_bits: int | None = None,
        kv_group_size: int | None = None,
    ) -> None:
        self.model = model
        # the prefill tool: a sequence is prefilled alone through the engine's own code, then detached
        self._engine = Engine(
            model, max_context=max_context, max_snapshots=max_snapshots, prefill_chunk=prefill_chunk,
            kv_bits=kv_bits, kv_group_size=kv_group_size,
        )  # fmt: skip
        self._live: dict[int, _Sequence] = {}
        self._ids = itertools.count()
        self._cancelled: set[int] = set()
        self._lock = threading.Lock()
        self._states: dict[int, EngineState] = {}

    @property
    def max_context(self) -> int:
        return self._engine.max_context

    def __len__(self) -> int:
        """Live sequences (what the next step advances)."""
        return len(self._live)

    @property
    def ids(self) -> list[int]:
        return list(self._live)

    def check_prompt(self, prompt: list[int]) -> None:
        """Raise ContextLengthError (or ValueError) now if `add(prompt, ...)` would, as `Engine.check_prompt`."""
        self._engine.check_prompt(prompt)

    def tokens(self, seq_id: int) -> list[int]:
        """What sequence `seq_id`'s caches hold (prompt + yielded tokens), a copy."""
        return list(self._live[seq_id].tokens)

    def generated(self, seq_id: int) -> list[int]:
        return list(self._live[seq_id].generated)

    # ------------------------------------------------------------------ join / leave

    def add(
        self,
        prompt: list[int],
        sampler: Sampler,
        *,
        max_tokens: int | None = None,
        stop_tokens: Iterable[int] = tk.STOP_TOKENS_FOR_ASSISTANT_ACTIONS,
        state: EngineState | None = None,
        boundaries: Iterable[int] = (),
        keep_state: bool = False,
        should_stop: Callable[[], bool] | None = None,
    ) -> int | None:
        """Prefill `prompt` for a new sequence (chunked, as `Engine.prefill`; from `state`'s longest
        reusable prefix if given: the batch takes ownership of it) and make it join the decode batch.

        -> its id, or None if `should_stop()` cut the prefill. Raises ContextLengthError (before any
        compute) as `Engine.generate` does. `keep_state`: when it ends, its `EngineState` (caches,
        tokens, snapshots) is kept for `take_state(id)`, e.g. to return it to a prompt-cache pool.
        """
        if max_tokens is not None and max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {max_tokens}")
        engine = self._engine
        engine.check_prompt(prompt)  # before taking `state`: a prompt that does not fit leaves it to the caller
        try:
            if state is not None:
                engine.attach(state)
            logits, reused = engine.prefill(prompt, should_stop, boundaries)
        finally:
            st = engine.detach()
        if logits is None:
            return None
        seq = _Sequence(
            list(st.cache), list(st.tokens), list(st.snapshots), sampler, max_tokens, frozenset(stop_tokens),
            keep_state, len(prompt), reused, y=mx.array([0]),
        )  # fmt: skip
        seq.y = sampler(logits, seq.context())
        mx.async_eval(seq.y)
        seq_id = next(self._ids)
        self._live[seq_id] = seq
        return seq_id

    def cancel(self, seq_id: int) -> None:
        """End sequence `seq_id` before the next step's forward pass (which then reports it as
        `BatchEvent(seq_id, None, "cancelled")`); its pending token is never fed. Thread-safe."""
        with self._lock:
            self._cancelled.add(seq_id)

    def take_state(self, seq_id: int) -> EngineState | None:
        """The state of an ended sequence added with `keep_state` (once; None otherwise)."""
        return self._states.pop(seq_id, None)

    def _leave(self, seq_id: int) -> None:
        seq = self._live.pop(seq_id)
        settle(seq.cache, seq.snapshots)  # nothing lazy outlives the sequence (streams are per thread)
        if seq.keep_state:
            self._states[seq_id] = seq.state()

    # ------------------------------------------------------------------ decode

    def step(self) -> list[BatchEvent]:
        """Advance every live sequence one token in one forward pass; -> one event per sequence
        (cancelled ones first). Pipelined like `Engine.generate`: the forward pass of the tokens
        sampled last step is queued before they are read, and a sequence's next token is sampled only
        once it is known to go on (stateful logits processors never see a step that will not happen)."""
        with self._lock:
            cancelled, self._cancelled = self._cancelled, set()
        events = []
        for seq_id in sorted(cancelled):
            if seq_id in self._live:
                self._leave(seq_id)
                events.append(BatchEvent(seq_id, None, "cancelled"))
        if not self._live:
            return events
        ids = list(self._live)
        seqs = [self._live[i] for i in ids]
        ys = [s.y for s in seqs]
        logits = self.model.step(mx.concatenate(ys) if len(ys) > 1 else ys[0], [s.cache for s in seqs])
        mx.async_eval(logits)
        sampled, ended = [], []
        for b, (seq_id, seq) in enumerate(zip(ids, seqs)):
            tok = int(seq.y.item())
            seq.tokens.append(tok)
            if tok == tk.END:
                take_snapshot(seq.snapshots, seq.cache, len(seq.tokens), "message", self._engine.max_snapshots)
            seq.generated.append(tok)
            done = self._done(seq, tok)
            if done is None:
                seq.y = seq.sampler(logits[b : b + 1], seq.context())
                sampled.append(seq.y)
            else:
                ended.append(seq_id)
            events.append(BatchEvent(seq_id, tok, done))
        if sampled:
            mx.async_eval(sampled)
        for seq_id in ended:
            self._leave(seq_id)
        return events

    def _done(self, seq: _Sequence, tok: int) -> str | None:
        """`Engine.generate`'s stop rules, in its order."""
        if tok in seq.stop_tokens:
            return "tool_call" if tok == tk.CALL else "stop"
        if seq.max_tokens is not None and len(seq.generated) >= seq.max_tokens:
            return "length"
        if len(seq.tokens) >= self._engine.max_context:
            return "context"
        return None


# ---------------------------------------------------------------------- offline jobs


@dataclass(frozen=True)
class BatchResult:
    """One prompt's generation: the tokens, why it stopped, and the raw text (harmony markup included;
    `mlx_oss.harmony.parse_completion(tokens, encoding=tokenizer)` gives the messages)."""

    tokens: list[int]
    stop_reason: str
    text: str


def generate_batch(
    model,
    tokenizer,
    prompts: Sequence[str | list[int]],
    *,
    sampling: SamplingConfig | Sequence[SamplingConfig] | None = None,
    max_tokens: int = 256,
    max_batch: int = 8,
    reasoning_effort: str = "medium",
    stop_tokens: Iterable[int] = tk.STOP_TOKENS_FOR_ASSISTANT_ACTIONS,
    max_context: int | None = None,
) -> list[BatchResult]:
    """Generate for many prompts at once (evals, offline jobs): up to `max_batch` decode together and
    a new prompt joins as soon as one ends. -> one `BatchResult` per prompt, in order.

    A prompt is token ids (e.g. `Chat.prompt_tokens()`) or a string, rendered as one user message after
    a default system message (`reasoning_effort`), ready for the assistant. `sampling`: one config for
    every prompt (each gets its own `Sampler`, so a seed gives each prompt what it gets alone) or one per
    prompt (per-prompt logits processors go there: a stateful processor must not be shared).
    """
    from mlx_oss.harmony import Message, Role, render_conversation_for_completion

    if max_batch < 1:
        raise ValueError(f"max_batch must be at least 1, got {max_batch}")
    configs = list(sampling) if isinstance(sampling, (list, tuple)) else [sampling or SamplingConfig()] * len(prompts)
    if len(configs) != len(prompts):
        raise ValueError(f"{len(configs)} sampling configs for {len(prompts)} prompts")

    def tokens_of(p: str | list[int]) -> list[int]:
        if isinstance(p, str):
            conv = [Message.system(reasoning_effort=reasoning_effort), Message(Role.USER, p)]
            return render_conversation_for_completion(conv, encoding=tokenizer)
        return list(p)

    batch = BatchGenerator(model, max_context=max_context)
    pending = list(enumerate(prompts))[::-1]
    owner: dict[int, int] = {}
    out: dict[int, list[int]] = {}
    results: list[BatchResult | None] = [None] * len(prompts)
    while pending or len(batch):
        while pending and len(batch) < max_batch:
            i, p = pending.pop()
            sid = batch.add(tokens_of(p), Sampler(configs[i]), max_tokens=max_tokens, stop_tokens=stop_tokens)
            owner[sid], out[sid] = i, []
        for ev in batch.step():
            out[ev.seq_id].append(ev.token)
            if ev.done is not None:
                toks = out.pop(ev.seq_id)
                results[owner.pop(ev.seq_id)] = BatchResult(toks, ev.done, tokenizer.decode(toks))
    return results  # type: ignore[return-value]
