"""Batched decode (issue 28, first slice): several sequences, one forward pass per step.

Decode is bound by reading the weights (memory bandwidth on a Mac; the 201k-row lm_head on the CPU).
`BatchGenerator` keeps B independent sequences, each with its own caches, tokens, ring snapshots and
`Sampler`, and advances all of them one token per `step()` with one `Model.step` call: the weights are
read once for B tokens. Each sequence gets what it gets alone through `Engine.generate` (the same
tokens, logits equal up to float rounding, the same seeded samples; tests/test_batch.py), whatever
else is in the batch: a sampler owns its random generator and logits processors, attention is per sequence.

Sequences join and leave between steps (continuous batching): a new sequence is prefilled alone (the
engine's chunked prefill, optionally resuming an `EngineState` from a prompt-cache pool), and a finished
or cancelled sequence leaves at once; its `EngineState` can be handed back (`keep_state`).

The prefill is interleaved with the decode steps when the generator has a `prefill_step`: `add()` only
queues the sequence, and each `step()` feeds at most `prefill_step` tokens of the queued prompts (oldest
first) before the decode pass, so a joining prompt costs the running sequences a chunk's time per token
instead of its whole prefill at once (a long prompt would otherwise stall every stream for seconds); the
sequence joins the decode pass of the step that finishes its prefill. With `prefill_balance` the chunk
is also held to that many decode passes' time, measured as it runs (a token budget alone means 30 ms on
one model and seconds on another). Without `prefill_step`, `add()` prefills at once (offline jobs, where
only the total counts).
"""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Generator, Iterable, NamedTuple, Sequence

import mlx.core as mx

from mlx_oss import tokenizer as tk
from mlx_oss.engine import DEFAULT_MAX_SNAPSHOTS, Engine, EngineState, Snapshot, drain, settle, take_snapshot
from mlx_oss.sampling import Sampler, SamplingConfig

__all__ = ["BatchEvent", "BatchGenerator", "BatchResult", "generate_batch"]


class BatchEvent(NamedTuple):
    """What one `step()` did to one sequence: `token` it generated (None: it ended without one) and why
    it ended (`done`: "stop", "tool_call", "length", "context", "cancelled", "failed" (its queued prefill
    raised: `error`); None: it goes on)."""

    seq_id: int
    token: int | None
    done: str | None
    error: BaseException | None = None


@dataclass
class _Queued:
    """A sequence `add` queued: prefilled chunk by chunk by `step()` (with a `prefill_step`)."""

    prompt: list[int]
    sampler: Sampler
    max_tokens: int | None
    stop_tokens: frozenset[int]
    state: EngineState | None
    boundaries: tuple[int, ...]
    keep_state: bool
    should_stop: Callable[[], bool] | None
    steps: Generator[int, int | None, tuple[mx.array | None, int]] | None = None  # the engine's prefill, once started
    next_chunk: int = 0  # tokens the next `next(steps)` feeds


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
    `Engine`'s, for every sequence. `prefill_step`: tokens of a queued prompt prefilled per `step()`
    (interleaved prefill, module docstring; it is the prefill's chunk then); None: `add` prefills at once.
    `prefill_balance` (with `prefill_step`): while sequences decode, a step's prefill takes at most that
    many times a decode pass's time (both measured as the batch runs: `prefill_budget`), so a joining
    prompt at most (1 + balance)x the others' inter-token time whatever the model and machine.
    """

    def __init__(
        self,
        model,
        *,
        max_context: int | None = None,
        max_snapshots: int = DEFAULT_MAX_SNAPSHOTS,
        prefill_chunk: int | None = None,
        kv_bits: int | None = None,
        kv_group_size: int | None = None,
        prefill_step: int | None = None,
        prefill_balance: float | None = None,
    ) -> None:
        self.model = model
        if prefill_step is not None and prefill_step < 1:
            raise ValueError(f"prefill_step must be at least 1, got {prefill_step}")
        if prefill_balance is not None and prefill_balance <= 0:
            raise ValueError(f"prefill_balance must be above 0, got {prefill_balance}")
        self.prefill_step = prefill_step
        self.prefill_balance = prefill_balance
        self._decode_s: float | None = None  # a decode pass's wall time, smoothed
        self._token_s: float | None = None  # a prefilled token's wall time, smoothed
        # the prefill tool: a sequence is prefilled alone through the engine's own code, then detached
        self._engine = Engine(
            model, max_context=max_context, max_snapshots=max_snapshots, prefill_chunk=prefill_step or prefill_chunk,
            kv_bits=kv_bits, kv_group_size=kv_group_size,
        )  # fmt: skip
        self._live: dict[int, _Sequence] = {}
        self._queued: dict[int, _Queued] = {}  # in arrival order; the first is the one being prefilled
        self._ids = itertools.count()
        self._cancelled: set[int] = set()
        self._lock = threading.Lock()
        self._states: dict[int, EngineState] = {}

    @property
    def max_context(self) -> int:
        return self._engine.max_context

    def __len__(self) -> int:
        """Sequences in the batch: decoding, and queued for their prefill (what `step()` advances)."""
        return len(self._live) + len(self._queued)

    @property
    def ids(self) -> list[int]:
        return list(self._live) + list(self._queued)

    @property
    def decoding(self) -> int:
        """Sequences past their prefill (the rows of the next decode pass)."""
        return len(self._live)

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
        With a `prefill_step` the prefill is only queued: `step()` does it, chunk by chunk.

        -> its id, or None if `should_stop()` cut the prefill (queued: that step reports it "cancelled").
        Raises ContextLengthError (before any compute) as `Engine.generate` does. `keep_state`: when it
        ends, its `EngineState` (caches, tokens, snapshots) is kept for `take_state(id)`, e.g. to return it
        to a prompt-cache pool.
        """
        if max_tokens is not None and max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {max_tokens}")
        self._engine.check_prompt(prompt)  # before taking `state`: a prompt that does not fit leaves it to the caller
        q = _Queued(list(prompt), sampler, max_tokens, frozenset(stop_tokens), state, tuple(boundaries), keep_state,
                    should_stop)  # fmt: skip
        seq_id = next(self._ids)
        if self.prefill_step is not None:
            self._queued[seq_id] = q
            return seq_id
        logits, _ = self._prefill(q, all_at_once=True)
        if logits is None:
            return None
        self._join(seq_id, q, logits)
        return seq_id

    def _prefill(self, q: _Queued, all_at_once: bool = False, feed: int | None = None) -> tuple[mx.array | None, int] | None:
        """Run `q`'s prefill in the engine: all of it, or (queued) its next chunk (`q.next_chunk` tokens, or
        the first `feed` of them).
        -> (logits or None if stopped, reused tokens) when it is over, else None (more chunks to go). The
        sequence's state is then `q.state` (the engine is free again)."""
        engine = self._engine
        try:
            if q.steps is None:
                if q.state is not None:
                    engine.attach(q.state)
                q.state = None
                q.steps = engine.prefill_steps(q.prompt, q.should_stop, q.boundaries)
                q.next_chunk = next(q.steps)  # the rewind; what the first chunk costs
                if not all_at_once:
                    return None
            if all_at_once:
                done = drain(q.steps)
            else:
                q.next_chunk = q.steps.send(feed)
                return None
        except StopIteration as e:
            done = e.value
        except BaseException:
            q.steps = None
            engine.detach()  # the engine must be free for the next prompt; this state is lost
            raise
        q.steps = None
        q.state = engine.detach()
        return done

    def _join(self, seq_id: int, q: _Queued, logits: mx.array) -> None:
        """`q`'s prefill is done: sample its first token; it decodes from the next pass on."""
        st = q.state
        seq = _Sequence(
            list(st.cache), list(st.tokens), list(st.snapshots), q.sampler, q.max_tokens, q.stop_tokens,
            q.keep_state, y=mx.array([0]),
        )  # fmt: skip
        seq.y = q.sampler(logits, seq.context())
        mx.async_eval(seq.y)
        self._live[seq_id] = seq

    def prefill_budget(self) -> int:
        """Prefill tokens the next step may feed: `prefill_step`; with `prefill_balance` and sequences
        decoding, no more than fit `prefill_balance` decode passes at the measured costs (at least 1)."""
        step = self.prefill_step or 0
        if self.prefill_balance is None or not self._live or self._decode_s is None or self._token_s is None:
            return step
        return max(1, min(step, int(self.prefill_balance * self._decode_s / self._token_s)))

    @staticmethod
    def _smooth(old: float | None, new: float) -> float:
        return new if old is None else 0.7 * old + 0.3 * new

    def _prefill_queued(self) -> list[BatchEvent]:
        """Prefill the queued prompts, oldest first, `prefill_budget()` tokens in all (short prompts fit
        one step together; a chunk is cut to what the budget leaves; the budget is asked again after each
        chunk, so a step that began with nobody decoding holds back once someone joins); -> the events of
        those whose prefill ended without joining (cut, failed)."""
        events, fed = [], 0
        while self._queued and fed < self.prefill_budget():  # the budget drops once a sequence joins
            seq_id, q = next(iter(self._queued.items()))
            try:
                n = None
                if q.steps is not None:
                    n = min(q.next_chunk, self.prefill_budget() - fed)
                    fed += n
                t = time.perf_counter()
                done = self._prefill(q, feed=n)  # not started: the rewind only, and the size of its first chunk
                if n is not None:
                    self._token_s = self._smooth(self._token_s, (time.perf_counter() - t) / n)
            except Exception as e:  # this sequence fails; the batch goes on
                del self._queued[seq_id]
                events.append(BatchEvent(seq_id, None, "failed", e))
                continue
            if done is None:
                continue
            del self._queued[seq_id]
            logits, _ = done
            if logits is None:
                events.append(BatchEvent(seq_id, None, "cancelled"))
                continue
            try:
                self._join(seq_id, q, logits)
            except Exception as e:  # the first sampling failed (a logits processor)
                events.append(BatchEvent(seq_id, None, "failed", e))
                continue
            if self.prefill_balance is not None and self._decode_s is None:
                break  # it decodes now: its first pass is timed before the balance holds more prefill back
        return events

    def cancel(self, seq_id: int) -> None:
        """End sequence `seq_id` before the next step's forward pass (which then reports it as
        `BatchEvent(seq_id, None, "cancelled")`); its pending token is never fed, a queued prefill stops
        where it is (its state is dropped). Thread-safe."""
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
            elif seq_id in self._queued:
                q = self._queued.pop(seq_id)
                if q.steps is not None:
                    q.steps.close()
                    self._engine.detach()
                events.append(BatchEvent(seq_id, None, "cancelled"))
        prefilled = bool(self._queued)
        if prefilled:
            if self._live:  # the last decode pass first, so the chunks are timed alone
                mx.eval([q.y for q in self._live.values()])
            events += self._prefill_queued()
        if not self._live:
            return events
        t = time.perf_counter()
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
            if prefilled:  # timed alone (the next step's prefill would wait for it anyway)
                mx.eval(sampled)
            else:
                mx.async_eval(sampled)
        # pipelined, a step waits for the pass before it: either way its time is one pass's cost
        self._decode_s = self._smooth(self._decode_s, time.perf_counter() - t)
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
