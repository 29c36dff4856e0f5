"""The acceptance bar: our MLX model against OpenAI's torch reference (float32) on the synthetic 'tiny'
checkpoint. Fixtures: tests/fixtures/golden_tiny.{npz,json}, written by scripts/make_golden.py.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from mlx_oss.convert.synthetic import preset
from mlx_oss.engine import prefill_chunks
from mlx_oss.loader import load, load_model

FIX = Path(__file__).parent / "fixtures"
ROOT = Path(__file__).resolve().parents[1]


def _golden():
    g = np.load(FIX / "golden_tiny.npz")
    meta = json.loads((FIX / "golden_tiny.json").read_text())
    return g["tokens"].astype(np.int32), g["logits"].astype(np.float64), int(g["prompt_len"]), meta


def _kl(ref: np.ndarray, ours: np.ndarray) -> np.ndarray:
    lp = ref - np.logaddexp.reduce(ref, -1, keepdims=True)
    lq = ours - np.logaddexp.reduce(ours, -1, keepdims=True)
    return (np.exp(lp) * (lp - lq)).sum(-1)


def _logits(model, tokens: np.ndarray) -> np.ndarray:
    return np.array(model(mx.array(tokens[None])).astype(mx.float32))[0].astype(np.float64)


def _greedy(model, prompt: np.ndarray, n: int) -> list[int]:
    cache = model.make_cache()
    logits = prefill_chunks(model, cache, mx.array(prompt[None]))
    out = []
    for _ in range(n):
        t = int(mx.argmax(logits[0, -1]).item())
        out.append(t)
        logits = model(mx.array([[t]], dtype=mx.int32), cache)
    return out


@pytest.fixture(scope="module")
def f32(tiny_original):
    return load_model(tiny_original, "float32")


def test_fixture_matches_generator(tiny_original):
    """The committed logits are only meaningful for the exact tensors the generator writes today."""
    spec = importlib.util.spec_from_file_location("make_golden", ROOT / "scripts" / "make_golden.py")
    mg = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mg)
    _, _, _, meta = _golden()
    assert meta["spec"]["dims"] == preset(meta["preset"]).dims.ours()
    assert mg.tensor_digest(tiny_original) == meta["tensor_sha256"], (
        "synthetic generator drift: rerun `/tmp/tvenv/bin/python scripts/make_golden.py`"
    )
    ev = meta["evidence"]
    assert ev["sequence_length"] > 2 * ev["sliding_window"]
    assert ev["glu_clamped_fraction"] > 0 and ev["lin_clamped_fraction"] > 0 and ev["mean_sink_probability"] > 0.02


def test_float32_matches_reference(f32):
    tokens, ref, P, meta = _golden()
    out = _logits(f32, tokens)
    rel = np.linalg.norm(out - ref) / np.linalg.norm(ref)
    assert rel <= 5e-4, rel
    # every greedy token identical, decoded incrementally through the KV caches
    assert _greedy(f32, tokens[:P], meta["new_tokens"]) == meta["greedy_tokens"]


def test_bfloat16_kl_against_float32_reference(tiny_original):
    tokens, ref, _, _ = _golden()
    model = load_model(tiny_original, "bfloat16")
    assert model.embed.weight.dtype == mx.bfloat16
    kl = _kl(ref, _logits(model, tokens))
    assert np.median(kl) <= 0.02, np.median(kl)


def test_layouts_give_bit_identical_logits(f32, tiny_hf, tiny_converted):
    tokens, _, _, _ = _golden()
    a = _logits(f32, tokens)
    for path in (tiny_hf, tiny_converted):
        b = _logits(load_model(path, "float32"), tokens)
        assert np.array_equal(a, b), path


def test_dense_quantized_folder_loads(tiny_hf, tmp_path):
    from mlx_oss.convert.convert import convert_checkpoint

    dst = convert_checkpoint(tiny_hf, tmp_path / "q8", dense_bits=8, progress=False).dst
    model, tok = load(dst, "float32")
    import mlx.nn as nn

    assert isinstance(model.layers[0].attn.qkv, nn.QuantizedLinear)
    assert isinstance(model.embed, nn.QuantizedEmbedding) and isinstance(model.unembed, nn.QuantizedLinear)
    assert tok.n_vocab > 200000
    tokens, ref, _, _ = _golden()
    kl = _kl(ref, _logits(model, tokens))
    assert np.median(kl) < 0.02, np.median(kl)
