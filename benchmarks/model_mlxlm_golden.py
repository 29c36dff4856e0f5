#!/usr/bin/env python
"""mlx-oss vs mlx-lm's own gpt_oss model on the golden test (tests/fixtures/golden_tiny.*).

    /tmp/venv/bin/python benchmarks/model_mlxlm_golden.py

Writes the synthetic 'tiny' checkpoint in its Hugging Face layout (what mlx-lm loads) and in
OpenAI's original layout (same bytes), then scores both implementations against OpenAI's float32
torch reference: relative logit error over the 60 positions, greedy-token agreement (20 tokens,
decoded with each implementation's own KV cache), and median / max per-position KL(ref || impl).
A third row swaps mlx-lm's rounded YaRN correction range for the reference's fractional one, to show
how much of mlx-lm's error that one difference explains.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import mlx.core as mx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mlx_oss.convert.synthetic import preset, write_hub_snapshot  # noqa: E402
from mlx_oss.loader import load_model  # noqa: E402
from mlx_oss.nn.rope import yarn_inv_freq  # noqa: E402


def kl(ref: np.ndarray, ours: np.ndarray) -> np.ndarray:
    lp = ref - np.logaddexp.reduce(ref, -1, keepdims=True)
    lq = ours - np.logaddexp.reduce(ours, -1, keepdims=True)
    return (np.exp(lp) * (lp - lq)).sum(-1)


def score(model, cache_fn, tokens: np.ndarray, P: int, ref: np.ndarray) -> dict:
    out = np.array(model(mx.array(tokens[None])).astype(mx.float32))[0].astype(np.float64)
    cache = cache_fn()
    logits = model(mx.array(tokens[None, :P]), cache)
    gen = []
    for _ in range(len(tokens) - P):
        t = int(mx.argmax(logits[0, -1]).item())
        gen.append(t)
        logits = model(mx.array([[t]]), cache)
    k = kl(ref.astype(np.float64), out)
    agree = sum(a == b for a, b in zip(gen, tokens[P:].tolist()))
    return {
        "rel": float(np.linalg.norm(out - ref) / np.linalg.norm(ref)),
        "greedy": f"{agree}/{len(gen)}",
        "kl_median": float(np.median(k)),
        "kl_max": float(k.max()),
    }


def main() -> int:
    from mlx_lm.utils import load_model as mlxlm_load

    g = np.load(ROOT / "tests" / "fixtures" / "golden_tiny.npz")
    ref, tokens, P = g["logits"], g["tokens"].astype(np.int64), int(g["prompt_len"])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        hub = write_hub_snapshot(Path(tmp) / "tiny", preset("tiny"), seed=0)
        for dt in ("float32", "bfloat16"):
            ours = load_model(hub / "original", dt)
            rows.append((f"mlx-oss {dt}", score(ours, ours.make_cache, tokens, P, ref)))
        lm, _ = mlxlm_load(hub)
        for dt in ("float32", "bfloat16"):
            lm.set_dtype(getattr(mx, dt))
            rows.append((f"mlx-lm {dt}", score(lm, lm.make_cache, tokens, P, ref)))
        # diagnosis: mlx-lm with the reference's fractional YaRN range (its concentration is already right)
        d = preset("tiny").dims
        _, inv = yarn_inv_freq(d.head_dim, d.rope_theta, d.rope_scaling_factor, d.initial_context_length,
                               d.rope_ntk_alpha, d.rope_ntk_beta)  # fmt: skip
        lm.set_dtype(mx.float32)
        for layer in lm.layers:
            layer.self_attn.rope._freqs = mx.array(1.0 / inv.astype(np.float64), dtype=mx.float32)
        rows.append(("mlx-lm float32, fractional YaRN range patched in", score(lm, lm.make_cache, tokens, P, ref)))
    print("| implementation | rel. error | greedy | median KL | max KL |")
    print("| --- | --- | --- | --- | --- |")
    for name, r in rows:
        print(f"| {name} | {r['rel']:.2e} | {r['greedy']} | {r['kl_median']:.2e} | {r['kl_max']:.2e} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
