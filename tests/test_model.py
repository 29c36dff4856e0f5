"""Block-level checks against numpy transcriptions of OpenAI's reference (gpt_oss/torch/model.py)."""

from __future__ import annotations

import json
import math

import mlx.core as mx
import numpy as np
import pytest

from mlx_oss.convert.synthetic import preset
from mlx_oss.nn.attention import sliding_mask
from mlx_oss.config import FULL, SLIDING, ModelArgs
from mlx_oss.loader import load_model, resolve_dtype
from mlx_oss.nn.moe import MoE
from mlx_oss.nn.rope import YarnRoPE, yarn_inv_freq


def test_yarn_matches_reference_formula_with_fractional_range():
    # gpt-oss-20b/120b rope: head_dim 64, theta 150000, factor 32, beta_fast 32, beta_slow 1, ctx 4096
    c, inv = yarn_inv_freq(64, 150000.0, 32.0, 4096, 1.0, 32.0)
    assert c == pytest.approx(0.1 * math.log(32) + 1)
    d_half = 32
    low = d_half * math.log(4096 / (32 * 2 * math.pi)) / math.log(150000)
    high = d_half * math.log(4096 / (1 * 2 * math.pi)) / math.log(150000)
    assert low == pytest.approx(8.09, abs=0.01) and high == pytest.approx(17.40, abs=0.01)
    freq = 150000.0 ** (np.arange(0, 64, 2) / 64)
    mask = 1 - np.clip((np.arange(d_half) - low) / (high - low), 0, 1)
    want = (1 / (32 * freq)) * (1 - mask) + (1 / freq) * mask
    np.testing.assert_allclose(inv, want, rtol=2e-6)
    # mlx-lm rounds the range to 8..18: a visibly different frequency inside the ramp
    mask_rounded = 1 - np.clip((np.arange(d_half) - 8) / (18 - 8), 0, 1)
    rounded = (1 / (32 * freq)) * (1 - mask_rounded) + (1 / freq) * mask_rounded
    assert abs(rounded[12] / want[12] - 1) > 0.02


def test_rope_is_half_split_rotation_with_offset():
    rope = YarnRoPE(64, 150000.0, 32.0, 4096, 1.0, 32.0)
    x = np.random.default_rng(0).standard_normal((1, 2, 5, 64)).astype(np.float32)
    out = np.array(rope(mx.array(x), offset=1000)) * rope.concentration
    cos, sin = rope.cos_sin(np.arange(1000, 1005))
    x1, x2 = x[..., :32], x[..., 32:]
    want = np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    np.testing.assert_allclose(out, want, atol=2e-4)


def test_sliding_mask_sees_self_and_window_minus_one_before():
    W = 4
    for T, r in [(6, 0), (5, 3), (2, 3), (9, 2)]:
        m = sliding_mask(T, r, W)
        if r + T <= W:
            assert m == "causal"
            continue
        m = np.array(m)
        for i in range(T):
            q = r + i
            assert [j for j in range(r + T) if m[i, j]] == list(range(max(0, q - W + 1), q + 1))
    assert sliding_mask(1, 3, W) is None


def _ref_moe(x, router_w, router_b, w1, b1, w2, b2, k, limit=7.0, alpha=1.702):
    """numpy MLPBlock (without norm/residual); w1 rows are [gate; up] halves as our converter stores them."""
    I = w2.shape[-1]
    out = np.zeros_like(x)
    g = x @ router_w.T + router_b
    for n in range(x.shape[0]):
        top = np.argsort(-g[n])[:k]
        wts = np.exp(g[n, top] - g[n, top].max())
        wts /= wts.sum()
        for e, w in zip(top, wts):
            h = w1[e] @ x[n] + b1[e]
            glu, lin = np.minimum(h[:I], limit), np.clip(h[I:], -limit, limit)
            a = glu / (1 + np.exp(-alpha * glu)) * (lin + 1)
            out[n] += w * (w2[e] @ a + b2[e])
    return out


@pytest.mark.parametrize("tokens", [3, 40])  # below and above the sort-by-expert threshold
def test_moe_matches_reference_with_clamps_firing(tokens):
    args = ModelArgs(num_hidden_layers=1, num_experts=8, hidden_size=64, intermediate_size=64)
    moe = MoE(args)
    rng = np.random.default_rng(tokens)
    H, I, E = 64, 64, 8
    f = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    w1q = mx.quantize(mx.array(f(E, 2 * I, H) * 0.6), group_size=32, bits=4, mode="mxfp4")
    w2q = mx.quantize(mx.array(f(E, H, I) * 0.15), group_size=32, bits=4, mode="mxfp4")
    moe.gate_up.weight, moe.gate_up.scales = w1q
    moe.down.weight, moe.down.scales = w2q
    moe.gate_up.bias, moe.down.bias = mx.array(f(E, 2 * I) * 0.5), mx.array(f(E, H) * 0.1)
    moe.router.weight, moe.router.bias = mx.array(f(E, H) * 0.25), mx.array(f(E) * 0.5)
    deq = lambda q: np.array(mx.dequantize(*q, None, group_size=32, bits=4, mode="mxfp4").astype(mx.float32))  # noqa: E731
    x = f(tokens, H)
    want = _ref_moe(
        x, np.array(moe.router.weight), np.array(moe.router.bias), deq(w1q), np.array(moe.gate_up.bias),
        deq(w2q), np.array(moe.down.bias), args.experts_per_token,
    )  # fmt: skip
    pre = np.einsum("eih,nh->nei", deq(w1q), x)
    assert (pre[..., :I] > 7).any() and (np.abs(pre[..., I:]) > 7).any(), "clamps must fire"
    got = np.array(moe(mx.array(x)[None]))[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_model_args_from_every_config_flavour(tiny_hf, tiny_original, tiny_converted):
    a = ModelArgs.from_path(tiny_hf)
    assert a == ModelArgs.from_path(tiny_original) == ModelArgs.from_path(tiny_converted)
    d = preset("tiny").dims
    assert (a.hidden_size, a.num_experts, a.sliding_window, a.head_dim) == (
        d.hidden_size, d.num_experts, d.sliding_window, d.head_dim,
    )  # fmt: skip
    assert a.layer_types == (SLIDING, FULL, SLIDING, FULL)
    real = ModelArgs.from_dict(json.loads(json.dumps(preset("20b").dims.hf_config())))
    assert real.num_hidden_layers == 24 and real.rope_ntk_beta == 32.0 and real.sm_scale == 1 / 8


def test_loader_dtypes(tiny_converted):
    assert resolve_dtype("bfloat16") == mx.bfloat16 and resolve_dtype(mx.float32) == mx.float32
    with pytest.raises(ValueError):
        resolve_dtype("int8")
    m = load_model(tiny_converted)  # CPU backend here: float32 default
    assert resolve_dtype(None) == mx.float32 and m.embed.weight.dtype == mx.float32
    assert m.layers[0].mlp.gate_up.weight.dtype == mx.uint32 and m.layers[0].mlp.gate_up.scales.dtype == mx.uint8
    b = load_model(tiny_converted, "bfloat16")
    assert b.norm.weight.dtype == mx.float32 and b.layers[1].attn.qkv.weight.dtype == mx.bfloat16
    with pytest.raises(ValueError):
        m(mx.array([1, 2, 3]))  # tokens must be [B, T]


def test_loaded_bytes_match_mlx_oss_info(tiny_converted):
    """What `mlx-oss info` promises is what the model holds: experts stay packed, dense in the compute
    dtype; only the RMSNorm weights are kept in float32 (as the reference keeps them)."""
    from mlx.utils import tree_flatten

    from mlx_oss.info import describe

    info = describe(tiny_converted)
    a = ModelArgs.from_path(tiny_converted)
    norm_params = (2 * a.num_hidden_layers + 1) * a.hidden_size
    for dt, extra in (("float32", 0), ("bfloat16", 2 * norm_params)):
        m = load_model(tiny_converted, dt)
        held = sum(p.nbytes for _, p in tree_flatten(m.parameters()))
        assert held == info.weight_bytes_at(dt) + extra, dt
