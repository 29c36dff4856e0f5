"""Token-level generation with prompt-cache reuse across turns.

The engine owns the model's KV caches and `tokens`, the exact sequence whose keys/values they hold
(prompts and sampled tokens as fed). A new prompt reuses the longest prefix it shares with `tokens`:

- full-attention layers keep any prefix (`KVCache.trim`);
- sliding-window layers hold only the last `window` positions, so rolling back past the newest
  token needs the ring as it was at that point: the engine snapshots the rings (a few KB to MB,
  no copy until the next write) right after every prompt is prefilled and after every message a
  generation ends (`<|end|>`), keeps the newest `max_snapshots`, and restores the newest snapshot at
  or before the divergence point. Full layers are trimmed to the same point.

A typical turn diverges exactly at the previous prompt's end (harmony drops the previous turn's
analysis), where a snapshot was taken, so turn k prefills only "previous answer + new user message +
headers" whatever the conversation length. See docs/ENGINE.md.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Generator, Iterable, Iterator, TypeVar

import mlx.core as mx

from mlx_oss import tokenizer as tk
from mlx_oss.nn.cache import CacheState, KVCache, RotatingKVCache
from mlx_oss.harmony import common_prefix_length
from mlx_oss.sampling import Sampler

__all__ = ["ContextLengthError", "Engine", "EngineState", "Generation", "Snapshot", "check_token_ids"]

Stop = Callable[[], bool]
Progress = Callable[[int, int], None]
_T = TypeVar("_T")


DEFAULT_PREFILL_CHUNK = 2048  # tokens per forward call while prefilling: a long prompt never builds a T x T mask
DEFAULT_MAX_SNAPSHOTS = 16  # ring snapshots an engine (or a batch, per sequence) keeps, the newest


def prefill_chunks(model, cache: list, tokens: mx.array, **kw) -> mx.array | bool:
    """Feed `tokens` [B, T] into `cache`, `chunk` tokens per forward call (the one prefill loop: the
    engine's and the benchmark's), stoppable between chunks: `prefill_chunk_steps` run to its end, with
    its keywords (`chunk`, `total`, `want_logits`, `should_stop`, `on_chunk`).

    -> the last position's logits [B, 1, vocab] (evaluated) if `want_logits`, else True; False if
    stopped. Only the caches are evaluated for the other chunks, so MLX skips their last-layer MoE and
    lm_head.
    """
    return drain(prefill_chunk_steps(model, cache, tokens, **kw))


def prefill_chunk_steps(
    model,
    cache: list,
    tokens: mx.array,
    *,
    chunk: int = DEFAULT_PREFILL_CHUNK,
    total: int | None = None,
    want_logits: bool = True,
    should_stop: Stop | None = None,
    on_chunk: Callable[[int, int], None] | None = None,
) -> Generator[int, int | None, mx.array | bool]:
    """`prefill_chunks` one chunk at a time: before each chunk it yields the chunk's size in tokens, and
    the next `next()` feeds it, or `send(n)` only its first n (so its caller, e.g. a batch between
    decode steps, knows what the next step of the prefill costs and can make it smaller); returns what
    `prefill_chunks` returns. `total` (default: where the cache ends up) lets full-layer caches grow
    once; `on_chunk(a, b)` after tokens[:, a:b] went in."""
    T = tokens.shape[1]
    total = cache[0].offset + T if total is None else total
    logits = None
    s = 0
    while s < T:
        if should_stop is not None and should_stop():
            return False
        e = min(T, s + chunk)
        want = yield e - s
        if want is not None and 0 < want < e - s:
            e = s + want
        logits = model(tokens[:, s:e], cache, last_only=True)
        if want_logits and e == T:
            mx.eval(logits)
        else:
            mx.eval([c.state for c in cache])
        for c in cache:
            if isinstance(c, KVCache) and c.keys is not None:
                c.reserve(total)
        if on_chunk is not None:
            on_chunk(s, e)
        s = e
    return logits if want_logits else True


def drain(steps: Generator[int, int | None, _T]) -> _T:
    """Run a step generator (`prefill_chunk_steps`, `Engine.prefill_steps`) to its end; -> its value."""
    while True:
        try:
            next(steps)
        except StopIteration as e:
            return e.value


class ContextLengthError(ValueError):
    """The prompt does not fit the context limit (raised before any compute)."""


def check_token_ids(tokens: list[int], vocab_size: int) -> None:
    """Refuse ids the embedding has no row for: MLX does not bounds-check a gather, so an id past the
    vocabulary reads arbitrary memory (a segfault on the CPU backend) instead of raising."""
    lo, hi = min(tokens), max(tokens)
    if lo < 0 or hi >= vocab_size:
        bad = hi if hi >= vocab_size else lo
        raise ValueError(
            f"token id {bad} (position {tokens.index(bad)}) is outside the model's vocabulary of {vocab_size} ids"
        )


@dataclass(frozen=True)
class Snapshot:
    """Sliding-layer rings at `position` (None for full layers, which only need a trim)."""

    position: int
    states: tuple[CacheState | None, ...]
    kind: str = "prompt"  # "prompt" (a prompt's end) or "message" (a message boundary in a generation)


def _reusable(tokens: list[int] | tuple[int, ...], cache: list, snapshots: Iterable[Snapshot], prompt: list[int]) -> int:
    """Tokens of `prompt` that caches holding `tokens` serve without compute: the common prefix,
    lowered to the newest snapshot at or before it when the sliding rings cannot be trimmed back."""
    keep = min(common_prefix_length(tokens, prompt), len(prompt) - 1)
    drop = len(tokens) - keep
    if drop == 0 or all(c.can_trim(drop) for c in cache):
        return keep
    snap = next((s for s in reversed(list(snapshots)) if s.position <= keep), None)
    return snap.position if snap else 0


def take_snapshot(snapshots: list[Snapshot], cache: list, pos: int, kind: str, limit: int) -> None:
    """Append the sliding rings of `cache` at `pos` to `snapshots` (none if one is there already),
    keeping the newest `limit` (message ones go first): the one rule for the engine and a batch."""
    if snapshots and snapshots[-1].position == pos:
        return
    states = tuple(c.snapshot() if isinstance(c, RotatingKVCache) else None for c in cache)
    snapshots.append(Snapshot(pos, states, kind))
    while len(snapshots) > limit:
        victims = [i for i, s in enumerate(snapshots[:-1]) if s.kind == "message"]
        del snapshots[victims[0] if victims else 0]


def settle(cache: Iterable, snapshots: Iterable[Snapshot]) -> None:
    """Evaluate every pending write of `cache` and the rings `snapshots` hold (`Engine.settle`)."""
    pending = [c.state for c in cache] + [s.arrays for snap in snapshots for s in snap.states if s is not None]
    mx.eval(pending)


@dataclass(frozen=True)
class EngineState:
    """Everything an engine's cache reuse depends on (caches, their tokens, snapshots), detached
    from the engine so that a server can keep several conversations and resume any of them
    (`Engine.detach` / `Engine.attach`). Whoever holds a state owns its cache objects."""

    cache: tuple
    tokens: tuple[int, ...]
    snapshots: tuple[Snapshot, ...]

    def reusable(self, prompt: list[int]) -> int:
        """What `Engine.reusable(prompt)` would say with this state attached."""
        return _reusable(self.tokens, list(self.cache), self.snapshots, prompt)

    @property
    def nbytes(self) -> int:
        """Bytes of the buffers this state holds (cache buffers + snapshot rings not in use by them)."""
        seen = {id(a) for c in self.cache for a in c.state}
        extra = 0
        for snap in self.snapshots:
            for st in snap.states:
                held = [] if st is None else [a for a in st.arrays if id(a) not in seen]
                seen.update(id(a) for a in held)
                extra += sum(a.nbytes for a in held)
        return sum(c.nbytes for c in self.cache) + extra

    def fork(self) -> EngineState:
        """An independent copy that costs nothing now: buffers are shared, and the first write
        to one of them (by either copy) copies it."""
        return EngineState(tuple(c.clone() for c in self.cache), self.tokens, self.snapshots)


@dataclass
class Generation:
    """One prefill + decode round. Iterate it for the sampled token ids; fields fill in as it runs."""

    prompt_tokens: int = 0
    reused_tokens: int = 0
    prefilled_tokens: int = 0
    generated: list[int] = field(default_factory=list)
    prefill_s: float = 0.0
    ttft_s: float = 0.0
    decode_s: float = 0.0
    stop_reason: str | None = None
    _it: Iterator[int] | None = field(default=None, repr=False)

    def __iter__(self) -> Iterator[int]:
        assert self._it is not None, "a Generation is iterated once"
        it, self._it = self._it, None
        return it

    @property
    def prefill_tps(self) -> float:
        return self.prefilled_tokens / self.prefill_s if self.prefill_s > 0 else 0.0

    @property
    def decode_tps(self) -> float:
        n = len(self.generated) - 1
        return n / self.decode_s if n > 0 and self.decode_s > 0 else 0.0


class Engine:
    """Caches + the token sequence they hold; `generate(prompt, sampler)` reuses what it can.

    Not thread-safe: one generation at a time (the `should_stop` callback may be driven by another
    thread, which is how cancel works). `kv_bits` 8 or 4 keeps the caches quantized (`kv_group_size`
    32, 64 or 128 values per scale and bias; docs/MODEL.md, "Quantized KV cache"); None (default): as the
    model was loaded (`load(..., kv_bits=)`; unquantized unless it said otherwise).
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
    ) -> None:
        self.model = model
        limit = model.args.max_position_embeddings
        self.max_context = limit if max_context is None else int(max_context)
        if not 2 <= self.max_context <= limit:
            raise ValueError(f"max_context must be between 2 and the model's {limit} tokens, got {self.max_context}")
        self.max_snapshots = max_snapshots
        self.prefill_chunk = prefill_chunk or DEFAULT_PREFILL_CHUNK
        # None: unquantized caches; 8 or 4: quantized (mlx_oss.nn.cache, docs/MODEL.md)
        self.kv_bits = getattr(model, "kv_bits", None) if kv_bits is None else kv_bits
        self.kv_group_size = (getattr(model, "kv_group_size", 64) if kv_group_size is None else kv_group_size)
        self.cache = self._new_cache()  # raises here on bits / group size that cannot apply
        self._tokens: list[int] = []
        self._snapshots: list[Snapshot] = []

    # ------------------------------------------------------------------ state

    @property
    def tokens(self) -> list[int]:
        """The tokens whose keys/values the caches hold (a copy)."""
        return list(self._tokens)

    @property
    def snapshots(self) -> list[Snapshot]:
        return list(self._snapshots)

    def _new_cache(self) -> list:
        if self.kv_bits is None:
            return self.model.make_cache()
        return self.model.make_cache(kv_bits=self.kv_bits, kv_group_size=self.kv_group_size)

    def reset(self) -> None:
        """Forget everything (fresh caches)."""
        self.cache = self._new_cache()
        self._tokens = []
        self._snapshots = []

    def check_prompt(self, prompt: list[int]) -> None:
        """Raise ContextLengthError unless `prompt` leaves room for at least one generated token."""
        if not prompt:
            raise ValueError("empty prompt")
        check_token_ids(prompt, self.model.args.vocab_size)
        if len(prompt) >= self.max_context:
            raise ContextLengthError(
                f"prompt is {len(prompt)} tokens but the context limit is {self.max_context} "
                f"(at least one token must be left to generate)"
            )

    def reusable(self, prompt: list[int]) -> int:
        """Tokens of `prompt` that would come from the cache (no compute): the common prefix,
        lowered to the newest snapshot when the sliding rings cannot be trimmed back that far."""
        return _reusable(self._tokens, self.cache, self._snapshots, prompt)

    def detach(self) -> EngineState:
        """Hand over the current state (the engine starts empty); `attach` it back later to resume.
        Call between generations only."""
        state = EngineState(tuple(self.cache), tuple(self._tokens), tuple(self._snapshots))
        self.reset()
        return state

    def attach(self, state: EngineState) -> None:
        """Resume from a detached state (the engine takes ownership; the current state is dropped)."""
        self.cache = list(state.cache)
        self._tokens = list(state.tokens)
        self._snapshots = list(state.snapshots)

    def snapshot(self, kind: str = "prompt") -> None:
        """Remember the sliding rings at the current position (cheap: references, no copy)."""
        take_snapshot(self._snapshots, self.cache, len(self._tokens), kind, self.max_snapshots)

    def _snapshot_at_or_before(self, pos: int) -> Snapshot | None:
        return next((s for s in reversed(self._snapshots) if s.position <= pos), None)

    def _rewind(self, prompt: list[int]) -> int:
        """Roll the caches back to the longest reusable prefix of `prompt`; -> its length."""
        keep = self.reusable(prompt)
        drop = len(self._tokens) - keep
        if drop and all(c.can_trim(drop) for c in self.cache):
            for c in self.cache:
                c.trim(drop)
        elif drop:
            snap = self._snapshot_at_or_before(keep)
            if snap is None or snap.position == 0:
                self.cache = self._new_cache()
                keep = 0
            else:
                keep = snap.position
                for c, st in zip(self.cache, snap.states):
                    if st is not None:
                        c.restore(st)
                    else:
                        c.trim(c.offset - keep)
        self._tokens = self._tokens[:keep]
        self._snapshots = [s for s in self._snapshots if s.position <= keep]
        return keep

    # ------------------------------------------------------------------ forward

    def _prefill_steps(
        self, tokens: list[int], should_stop: Stop, total: int, want_logits: bool, progress: Progress | None = None
    ) -> Generator[int, int | None, mx.array | bool]:
        """`prefill_chunk_steps` into the engine's caches, recording the tokens fed; `progress(cached, total)`
        after each chunk."""

        def fed(a: int, b: int) -> None:
            self._tokens.extend(tokens[a:b])
            if progress is not None:
                progress(len(self._tokens), total)

        return prefill_chunk_steps(
            self.model, self.cache, mx.array([tokens], dtype=mx.int32), chunk=self.prefill_chunk, total=total,
            want_logits=want_logits, should_stop=should_stop, on_chunk=fed,
        )  # fmt: skip

    def prefill(
        self, prompt: list[int], should_stop: Stop | None = None, boundaries: Iterable[int] = (),
        progress: Progress | None = None,
    ) -> tuple[mx.array | None, int]:  # fmt: skip
        """Make the caches hold `prompt`, reusing what they can; -> (logits [1, vocab] of its last
        position or None if stopped, reused tokens).

        Snapshots the rings at the prompt's end and at each of `boundaries` that has to be prefilled
        (the Chat passes the end of the system/developer messages and of the last message, so that
        a new conversation with the same settings, or a turn that ended without an assistant
        message, e.g. cancelled, does not force a full re-prefill). Each costs one more forward call.
        `progress(cached, total)` is called after each chunk (a reopened chat's progress bar).
        """
        return self._fill(prompt, should_stop, boundaries, progress)

    def prefill_steps(
        self, prompt: list[int], should_stop: Stop | None = None, boundaries: Iterable[int] = ()
    ) -> Generator[int, int | None, tuple[mx.array | None, int]]:
        """`prefill` one chunk (at most `prefill_chunk` tokens) at a time: yields the size of the next
        chunk, which the next `next()` feeds (`send(n)`: only its first n tokens); returns what `prefill`
        returns. The engine is mid-prefill
        until the generator ends: use nothing else of it meanwhile (a batch interleaves a joining
        prompt's chunks with its decode steps this way)."""
        return self._fill_steps(prompt, should_stop, boundaries)

    def _fill(
        self, prompt: list[int], should_stop: Stop | None, boundaries: Iterable[int], progress: Progress | None = None,
    ) -> tuple[mx.array | None, int]:  # fmt: skip
        """`prefill`'s work, also the first half of `generate` (a subclass that announces a public
        `prefill` to other ranks must not announce generate's own)."""
        return drain(self._fill_steps(prompt, should_stop, boundaries, progress))

    def _fill_steps(
        self, prompt: list[int], should_stop: Stop | None, boundaries: Iterable[int], progress: Progress | None = None,
    ) -> Generator[int, int | None, tuple[mx.array | None, int]]:  # fmt: skip
        self.check_prompt(prompt)
        stop = should_stop or (lambda: False)
        keep = self._rewind(prompt)
        cuts = sorted({b for b in boundaries if keep < b < len(prompt)}) + [len(prompt)]
        start, out = keep, None
        for end in cuts:
            out = yield from self._prefill_steps(prompt[start:end], stop, len(prompt), end == len(prompt), progress)
            if out is False:
                return None, keep
            self.snapshot("prompt")
            start = end
        return out.reshape(1, -1), keep

    # ------------------------------------------------------------------ generation

    def generate(
        self,
        prompt: list[int],
        sampler: Sampler,
        *,
        max_tokens: int | None = None,
        should_stop: Stop | None = None,
        stop_tokens: Iterable[int] = tk.STOP_TOKENS_FOR_ASSISTANT_ACTIONS,
        boundaries: Iterable[int] = (),
    ) -> Generation:
        """Prefill `prompt` (reusing the cache) and sample until a stop token, `max_tokens`, the
        context limit or `should_stop()`. Raises ContextLengthError now, before any compute.

        Every yielded token has been fed to the model (decoding is pipelined: the step for token i
        is queued before token i is read), so `tokens` is always prompt + yielded tokens.
        """
        self.check_prompt(prompt)
        if max_tokens is not None and max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {max_tokens}")
        gen = Generation(prompt_tokens=len(prompt))
        stop = should_stop or (lambda: False)
        gen._it = self._run(gen, prompt, sampler, max_tokens, stop, frozenset(stop_tokens), tuple(boundaries))
        return gen

    def _run(
        self, gen: Generation, prompt: list[int], sampler: Sampler, max_tokens: int | None,
        should_stop: Stop, stop_tokens: frozenset[int], boundaries: tuple[int, ...],
    ) -> Iterator[int]:  # fmt: skip
        try:
            yield from self._decode(gen, prompt, sampler, max_tokens, should_stop, stop_tokens, boundaries)
        finally:
            self.settle()

    def settle(self) -> None:
        """Evaluate every pending cache write. MLX streams are per thread: a lazy array left for
        another thread (the next turn may run in a different worker) fails there, so nothing lazy
        outlives a generation."""
        settle(self.cache, self._snapshots)

    def _decode(
        self, gen: Generation, prompt: list[int], sampler: Sampler, max_tokens: int | None,
        should_stop: Stop, stop_tokens: frozenset[int], boundaries: tuple[int, ...],
    ) -> Iterator[int]:  # fmt: skip
        t0 = time.perf_counter()
        logits, keep = self._fill(prompt, should_stop, boundaries)
        gen.reused_tokens = keep
        gen.prefilled_tokens = len(self._tokens) - keep
        if logits is None:
            gen.prefill_s = time.perf_counter() - t0
            gen.stop_reason = "cancelled"
            return
        ctx = (lambda: mx.array(self._tokens, dtype=mx.int32)) if sampler.processors else None
        y = sampler(logits, ctx)
        mx.async_eval(y)
        gen.prefill_s = time.perf_counter() - t0
        t_first = None
        while True:
            if should_stop():
                gen.stop_reason = "cancelled"
                break
            # Queue the forward pass of token y before reading y, so the device works while this
            # thread hands y out. Sampling from it is queued only once y is known not to end the
            # generation, so (stateful) logits processors never see a step that will not happen.
            logits = self.model(y.reshape(1, 1), self.cache, last_only=True).reshape(1, -1)
            mx.async_eval(logits)
            tok = int(y.item())
            self._tokens.append(tok)
            if tok == tk.END:
                self.snapshot("message")
            if t_first is None:
                t_first = time.perf_counter()
                gen.ttft_s = t_first - t0
            gen.generated.append(tok)
            if tok in stop_tokens:
                gen.stop_reason = "tool_call" if tok == tk.CALL else "stop"
            elif max_tokens is not None and len(gen.generated) >= max_tokens:
                gen.stop_reason = "length"
            elif len(self._tokens) >= self.max_context:
                gen.stop_reason = "context"
            else:
                y = sampler(logits, ctx)
                mx.async_eval(y)
            gen.decode_s = time.perf_counter() - t_first
            yield tok
            if gen.stop_reason is not None:
                break
        if t_first is not None:
            gen.decode_s = time.perf_counter() - t_first


