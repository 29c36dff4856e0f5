"""Sampling settings and the sampler the engine calls once per token.

The filters are mlx-lm's (`apply_top_p`, `apply_min_p`, `apply_top_k`, in mlx-lm's order), imported
only when a filter is on because importing mlx-lm costs about a second. Randomness comes from the
sampler's own generator instead of a global one, so a `seed` reproduces a reply exactly whatever else
the process samples in between (another chat, another thread, the other sequences of a batch). A draw
is Gumbel-max, so a logits processor that masks tokens changes a draw only if it masked the one drawn.

The Gumbel noise is drawn on the host with numpy (SFC64 and its vectorized log), not with MLX's
`random`: a draw needs noise for every one of the 201,088 tokens, which cost 2.5 ms a token with MLX's
threefry and two logs on the CPU backend against 0.7 ms with numpy, and the host work overlaps the
forward pass the engine has already queued (the sampler is called before the logits are computed).
With a batch that is one draw per sequence per step: at B = 4 the noise had cost as much as the
forward pass (docs/BENCH.md, "Sampling noise").
"""

from __future__ import annotations

import functools
import secrets
from dataclasses import dataclass, field
from typing import Callable

import mlx.core as mx
import numpy as np

__all__ = ["SamplingConfig", "Sampler", "LogitsProcessor", "ScriptedTokens", "TokenLogprobs"]

# (context tokens [n] int32, logits [1, vocab]) -> logits, mlx-lm's processor signature.
LogitsProcessor = Callable[[mx.array, mx.array], mx.array]


@dataclass(frozen=True)
class SamplingConfig:
    """temperature 1.0 is OpenAI's recommendation for gpt-oss; 0 means greedy (argmax).
    top_p 1.0, top_k 0 and min_p 0.0 disable those filters. `seed` None draws a fresh seed
    per reply. `logits_processors` (mlx-lm signature) run before the filters. `logprobs` (None: off)
    makes the sampler record, per token, the log-probability of the sampled token and of the
    `logprobs` most likely ones under the model's own distribution (`Sampler.records`)."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    seed: int | None = None
    logits_processors: tuple[LogitsProcessor, ...] = field(default=(), compare=False)
    logprobs: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "logits_processors", tuple(self.logits_processors))
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0 <= self.min_p <= 1:
            raise ValueError(f"min_p must be in [0, 1], got {self.min_p}")
        if self.logprobs is not None and self.logprobs < 0:
            raise ValueError(f"logprobs must be >= 0, got {self.logprobs}")

    def to_dict(self) -> dict:
        return {"temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k,
                "min_p": self.min_p, "seed": self.seed}  # fmt: skip


@functools.lru_cache(maxsize=1)
def _mlx_lm_sample_utils():
    """mlx-lm's `sample_utils` module. The `mlx_lm` package's __init__ imports transformers (1-3 s);
    `sample_utils.py` itself needs only MLX, so it is loaded from its file unless mlx_lm is already
    imported (falls back to the normal import if that ever stops working)."""
    import importlib.util
    import sys

    name = "mlx_lm.sample_utils"
    if name in sys.modules:
        return sys.modules[name]
    try:
        pkg = importlib.util.find_spec("mlx_lm")
        path = next(iter(pkg.submodule_search_locations or ())) + "/sample_utils.py"
        spec = importlib.util.spec_from_file_location("_mlx_oss_mlx_lm_sample_utils", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    except Exception:
        import mlx_lm.sample_utils

        return mlx_lm.sample_utils


@dataclass(frozen=True)
class TokenLogprobs:
    """One sampled token's log-probability and the `top` most likely (id, logprob), best first."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


class _Record:
    """Lazy log-probabilities of one step, read (evaluated) only when asked for."""

    def __init__(self, token: mx.array, chosen: mx.array, top_ids: mx.array | None, top_lps: mx.array | None):
        self.arrays = (token, chosen, top_ids, top_lps)

    def read(self) -> TokenLogprobs:
        token, chosen, ids, lps = self.arrays
        mx.eval([a for a in self.arrays if a is not None])
        top: tuple[tuple[int, float], ...] = ()
        if ids is not None:
            pairs = sorted(zip(ids.reshape(-1).tolist(), lps.reshape(-1).tolist()), key=lambda p: -p[1])
            top = tuple((int(i), float(v)) for i, v in pairs)
        return TokenLogprobs(int(token.item()), float(chosen.item()), top)


class Sampler:
    """logits [1, vocab] -> token [1] (lazy, so the engine can pipeline the next forward pass).

    With `config.logprobs` set, `records[i]` (read with `logprobs(i)`) holds step i's
    log-probabilities: log-softmax of the model's logits as they came in, before logits processors,
    temperature and filters (what OpenAI reports: the model's distribution, not the sampling one)."""

    def __init__(self, config: SamplingConfig) -> None:
        self.config = config
        seed = config.seed if config.seed is not None else secrets.randbits(63)
        self._rng = np.random.Generator(np.random.SFC64(seed))  # numpy's fastest; PCG64 costs 20% more
        self._noise = np.empty(0, dtype=np.float32)  # reused: see `gumbel_noise`
        self._filters = self._make_filters(config)
        self.records: list[_Record] = []
        # after the config's processors: per round of a reply (a fresh `ReplyConstraint` each round),
        # while the random generator carries on across rounds
        self.extra: tuple[LogitsProcessor, ...] = ()

    @property
    def processors(self) -> tuple[LogitsProcessor, ...]:
        """The logits processors of the next step: the config's, then `extra`."""
        return self.config.logits_processors + self.extra

    @staticmethod
    def _make_filters(c: SamplingConfig) -> list[Callable[[mx.array], mx.array]]:
        if c.temperature == 0 or (c.top_p >= 1 and c.min_p == 0 and c.top_k == 0):
            return []
        su = _mlx_lm_sample_utils()
        apply_min_p, apply_top_k, apply_top_p = su.apply_min_p, su.apply_top_k, su.apply_top_p

        out: list[Callable[[mx.array], mx.array]] = []
        if c.top_p < 1:
            out.append(lambda x: apply_top_p(x, c.top_p))
        if c.min_p > 0:
            out.append(lambda x: apply_min_p(x, c.min_p))
        if c.top_k > 0:
            out.append(lambda x: x if c.top_k >= x.shape[-1] else apply_top_k(x, c.top_k))
        return out

    def __call__(self, logits: mx.array, context: Callable[[], mx.array] | None = None) -> mx.array:
        """`context` returns the token context for logits processors (built only if there are any)."""
        logits = logits.reshape(1, -1)
        raw = logits
        token = self._sample(logits, context)
        if self.config.logprobs is not None:
            self.records.append(self._record(raw, token, self.config.logprobs))
        return token

    def logprobs(self, step: int) -> TokenLogprobs:
        """Step `step`'s log-probabilities (config.logprobs must be set)."""
        return self.records[step].read()

    @staticmethod
    def _record(raw: mx.array, token: mx.array, k: int) -> _Record:
        x = raw.astype(mx.float32)
        lp = x - mx.logsumexp(x, axis=-1, keepdims=True)
        chosen = mx.take_along_axis(lp, token.reshape(1, 1), axis=-1)
        if k == 0:
            return _Record(token, chosen, None, None)
        k = min(k, lp.shape[-1])
        ids = mx.argpartition(-lp, k - 1, axis=-1)[:, :k]
        return _Record(token, chosen, ids, mx.take_along_axis(lp, ids, axis=-1))

    def _sample(self, logits: mx.array, context: Callable[[], mx.array] | None) -> mx.array:
        processors = self.processors
        if processors:
            ctx = context() if context is not None else mx.array([], dtype=mx.int32)
            for p in processors:
                logits = p(ctx, logits)
        logits = logits.astype(mx.float32)
        if self.config.temperature == 0:
            return mx.argmax(logits, axis=-1)
        logprobs = logits
        if self._filters:  # they expect normalized log-probabilities; the draw does not
            logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        for f in self._filters:
            logprobs = f(logprobs)
        # Gumbel-max: argmax(logits / T + Gumbel noise) is a draw from softmax(logits / T), and with the
        # noise fixed by the generator, masking tokens the draw did not pick leaves it unchanged, so a
        # constraint changes a reply only where it must (MLX's `categorical` shifts every draw).
        scaled = logprobs * (1 / self.config.temperature)
        if self._noise.shape[0] != scaled.shape[-1]:
            self._noise = np.empty(scaled.shape[-1], dtype=np.float32)
        return mx.argmax(scaled + mx.array(gumbel_noise(self._rng, self._noise)), axis=-1)  # mx.array copies


def gumbel_noise(rng: np.random.Generator, out: np.ndarray) -> np.ndarray:
    """Fills `out` (float32) with standard Gumbel draws, -log(-log(u)), and returns it. numpy's float32
    uniforms are k / 2^24 for k = 0 .. 2^24 - 1; k = 0 stands for its bin's middle, 2^-25, instead of
    log(0), so every draw is finite. In place: a fresh 800 KB array per step costs more in page faults
    than the logs."""
    rng.random(out=out, dtype=np.float32)
    np.maximum(out, np.float32(2.0**-25), out=out)
    np.log(out, out=out)
    np.negative(out, out=out)
    np.log(out, out=out)
    return np.negative(out, out=out)


class ScriptedTokens:
    """A logits processor that makes the model "say" `tokens`, one per sampling step, then lets it
    go on freely. For tests and benchmarks on random-weight models, which would never emit a
    well-formed harmony reply by themselves; the model still runs every forward pass as usual."""

    def __init__(self, tokens: list[int]) -> None:
        self.tokens = list(tokens)
        self.step = 0

    def __call__(self, context: mx.array, logits: mx.array) -> mx.array:
        if self.step >= len(self.tokens):
            return logits
        tok = self.tokens[self.step]
        self.step += 1
        onehot = mx.arange(logits.shape[-1]) == tok
        # 0, but computed from the logits: MLX evaluates lazily, and a token that did not depend on
        # the logits would let the forward pass be skipped (a benchmark would time nothing).
        zero = mx.minimum(mx.abs(mx.max(logits, axis=-1, keepdims=True)), 0.0)
        return mx.where(onehot, zero, mx.array(-mx.inf, logits.dtype))
