"""Sampler: seeds reproduce, filters (mlx-lm's) restrict the support, processors apply."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from mlx_oss.sampling import Sampler, SamplingConfig, ScriptedTokens, TokenLogprobs, gumbel_noise

LOGITS = mx.array(np.log(np.array([[0.5, 0.3, 0.15, 0.05] + [1e-6] * 60], dtype=np.float32)))


def draws(cfg: SamplingConfig, n: int = 200) -> list[int]:
    s = Sampler(cfg)
    return [int(s(LOGITS).item()) for _ in range(n)]


def test_seed_reproduces_and_differs():
    a, b, c = draws(SamplingConfig(seed=1)), draws(SamplingConfig(seed=1)), draws(SamplingConfig(seed=2))
    assert a == b and a != c
    mx.random.seed(0)  # the global generators do not matter
    np.random.seed(0)
    assert draws(SamplingConfig(seed=1)) == a


def test_gumbel_noise_is_standard_gumbel_and_finite_at_both_ends():
    out = np.empty(400_000, dtype=np.float32)
    g = gumbel_noise(np.random.default_rng(0), out)
    assert g is out and abs(g.mean() - 0.5772) < 0.01 and abs(g.var() - np.pi**2 / 6) < 0.02  # gamma, pi^2/6

    class Ends:  # numpy's float32 uniforms reach 0 and 1 - 2^-24, never 1
        def random(self, out, dtype):
            out[:] = np.array([0.0, 1 - 2.0**-24, 0.5], dtype=dtype)

    ends = gumbel_noise(Ends(), np.empty(3, dtype=np.float32))
    assert np.isfinite(ends).all() and ends[1] > 16
    assert ends[0] == pytest.approx(-np.log(25 * np.log(2)), rel=1e-6)  # u = 2^-25 for k = 0


def test_temperature_one_follows_the_distribution():
    counts = np.bincount(draws(SamplingConfig(seed=0), 2000), minlength=64)[:4] / 2000
    assert np.allclose(counts, [0.5, 0.3, 0.15, 0.05], atol=0.05)


@pytest.mark.parametrize(
    "cfg, support",
    [
        (SamplingConfig(temperature=0), {0}),
        (SamplingConfig(top_k=2, seed=0), {0, 1}),
        (SamplingConfig(top_p=0.7, seed=0), {0, 1}),
        (SamplingConfig(min_p=0.35, seed=0), {0, 1}),
        (SamplingConfig(top_k=1000, seed=0), {0, 1, 2, 3}),
        (SamplingConfig(top_k=64, seed=0), {0, 1, 2, 3}),  # the whole vocabulary: no filter
        (SamplingConfig(top_k=1, seed=0), {0}),
    ],
)
def test_filters_restrict_support(cfg, support):
    got = set(draws(cfg, 300))
    assert got == support


@pytest.mark.parametrize("cfg, support", [(SamplingConfig(top_p=0.7, seed=0), {0, 1}), (SamplingConfig(top_p=0.9, seed=1), {0, 1, 2})])
def test_filters_see_normalized_log_probabilities_whatever_the_logits_offset(cfg, support):
    s = Sampler(cfg)  # the model's logits are not log-probabilities: top-p needs them normalized
    assert {int(s(LOGITS + 50.0).item()) for _ in range(300)} == support  # exp(2 x 50) would overflow


def test_low_temperature_sharpens():
    hot = np.mean(np.array(draws(SamplingConfig(seed=0, temperature=2.0), 1000)) == 0)
    cold = np.mean(np.array(draws(SamplingConfig(seed=0, temperature=0.3), 1000)) == 0)
    assert cold > 0.75 and hot < 0.45  # expected 0.83 and 0.37


def test_processors_see_context_and_apply():
    seen = []

    def ban_zero(ctx, logits):
        seen.append(ctx.tolist())
        return mx.where(mx.arange(logits.shape[-1]) == 0, -mx.inf, logits)

    s = Sampler(SamplingConfig(seed=0, temperature=0, logits_processors=(ban_zero,)))
    assert int(s(LOGITS, lambda: mx.array([7, 8])).item()) == 1 and seen == [[7, 8]]
    forced = Sampler(SamplingConfig(seed=0, logits_processors=(ScriptedTokens([5, 9]),)))
    assert [int(forced(LOGITS).item()) for _ in range(2)] == [5, 9]


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(temperature=-0.1), "temperature must be >= 0, got -0.1"),
        (dict(top_p=0), r"top_p must be in \(0, 1\], got 0"),
        (dict(top_p=1.5), r"top_p must be in \(0, 1\], got 1.5"),
        (dict(top_k=-1), "top_k must be >= 0, got -1"),
        (dict(min_p=2), r"min_p must be in \[0, 1\], got 2"),
        (dict(min_p=-0.5), r"min_p must be in \[0, 1\], got -0.5"),
        (dict(logprobs=-1), "logprobs must be >= 0, got -1"),
    ],
)
def test_invalid_settings(kw, message):
    with pytest.raises(ValueError, match=message):
        SamplingConfig(**kw)


def test_the_edges_of_each_range_are_valid_and_processors_become_a_tuple():
    for kw in (dict(temperature=0), dict(top_p=1), dict(top_k=0), dict(min_p=0), dict(min_p=1), dict(logprobs=0)):
        SamplingConfig(**kw)
    c = SamplingConfig(logits_processors=[ScriptedTokens([3])])  # a list, as a caller may pass
    assert isinstance(c.logits_processors, tuple) and int(Sampler(c)(LOGITS).item()) == 3


def test_no_filter_no_mlx_lm(monkeypatch):
    """mlx-lm's filters are loaded only when one is on (importing them costs about a second)."""
    from mlx_oss import sampling

    def boom():
        raise AssertionError("mlx-lm's sample_utils loaded without a filter")

    monkeypatch.setattr(sampling, "_mlx_lm_sample_utils", boom)
    for c in (SamplingConfig(), SamplingConfig(temperature=0, top_k=2, top_p=0.5, min_p=0.2), SamplingConfig(top_p=1)):
        assert Sampler(c)._filters == []
    with pytest.raises(AssertionError, match="without a filter"):
        Sampler(SamplingConfig(top_k=1))


def test_logprobs_are_the_models_own_distribution_with_the_top_k_best_first():
    probs = np.array([0.5, 0.3, 0.15, 0.05] + [1e-6] * 60)
    want = np.log(probs / probs.sum())

    def ban_zero(ctx, logits):  # what is sampled changes, what is reported does not
        return mx.where(mx.arange(logits.shape[-1]) == 0, -mx.inf, logits)

    s = Sampler(SamplingConfig(seed=3, temperature=0, logprobs=3, logits_processors=(ban_zero,)))
    toks = [int(s(LOGITS * 2 + 1).item()), int(s(LOGITS).item())]  # a shift and a scale, then as is
    assert toks == [1, 1] and len(s.records) == 2
    first, second = s.logprobs(0), s.logprobs(1)
    assert first.token == 1 and first.logprob == pytest.approx(np.log(0.3**2 / (probs**2).sum()), abs=1e-5)
    assert [i for i, _ in first.top] == [0, 1, 2]  # best first
    assert second == TokenLogprobs(1, pytest.approx(want[1], abs=1e-5), tuple(second.top))
    assert [i for i, _ in second.top] == [0, 1, 2]
    assert [v for _, v in second.top] == pytest.approx(want[:3], abs=1e-5)

    none = Sampler(SamplingConfig(seed=3, logprobs=0))
    tok = int(none(LOGITS).item())
    assert none.logprobs(0).top == () and none.logprobs(0).logprob == pytest.approx(want[tok], abs=1e-5)
    assert none.logprobs(0).token == tok
    wide = Sampler(SamplingConfig(temperature=0, logprobs=100))  # more than the vocabulary: all of it
    wide(LOGITS)
    assert len(wide.logprobs(0).top) == 64
    one = Sampler(SamplingConfig(temperature=0, logprobs=1))
    one(LOGITS)
    assert one.logprobs(0).top == ((0, pytest.approx(want[0], abs=1e-5)),)


def test_the_top_logprobs_are_the_k_best_in_order_not_by_id():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(1, 5000)).astype(np.float32) * 3
    s = Sampler(SamplingConfig(seed=1, logprobs=7))
    s(mx.array(x))
    lp = x[0] - np.log(np.exp(x[0].astype(np.float64)).sum())
    best = np.argsort(-lp)[:7]
    top = s.logprobs(0).top
    assert [i for i, _ in top] == best.tolist() and best.tolist() != sorted(best.tolist())
    assert [v for _, v in top] == pytest.approx(lp[best], abs=1e-4)
    off = Sampler(SamplingConfig(seed=3))
    off(LOGITS)
    assert off.records == []


def test_the_config_saves_the_settings_of_a_chat_not_the_per_request_ones():
    c = SamplingConfig(temperature=0.7, top_p=0.9, top_k=5, min_p=0.1, seed=11, logprobs=2, logits_processors=(abs,))
    d = c.to_dict()  # what a saved chat keeps (chat.py); logprobs and processors belong to a request
    assert d == {"temperature": 0.7, "top_p": 0.9, "top_k": 5, "min_p": 0.1, "seed": 11}
    assert SamplingConfig(**d) == SamplingConfig(temperature=0.7, top_p=0.9, top_k=5, min_p=0.1, seed=11)
