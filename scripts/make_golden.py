#!/usr/bin/env python
"""Regenerate the golden fixtures: OpenAI's torch reference, in float32, on our synthetic checkpoint.

Run with the reference venv (torch==2.13.0 CPU, `gpt-oss==0.0.9` installed with --no-deps):

    /tmp/tvenv/bin/python scripts/make_golden.py            # writes tests/fixtures/golden_tiny.{npz,json}

The synthetic 'tiny' checkpoint (convert/synthetic.py, pure numpy) is written in OpenAI's original
layout and loaded by `gpt_oss.torch.model.Transformer.from_checkpoint`, upcast to float32. A 40-token
prompt is extended by 20 greedy tokens, recomputing the whole sequence each step as the reference's
TokenGenerator does, and the logits of all 60 positions are stored. The json records the spec, the
seed, a sha256 of every generated tensor (tests recompute it to detect generator drift) and evidence
that the fixture exercises what it must: the sliding window is crossed, SwiGLU clamps fire, sinks
take real probability mass.

Not part of the test run; tests only read the fixtures. Only this module's top level is importable
without torch (tests import `tensor_digest`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mlx_oss.convert.safetensors_io import read_header, read_tensor  # noqa: E402
from mlx_oss.convert.synthetic import preset, write_checkpoint  # noqa: E402

FIXTURES = ROOT / "tests" / "fixtures"
PRESET = "tiny"
SEED = 0
PROMPT_SEED = 1234
PROMPT_LEN = 40
NEW_TOKENS = 20


def tensor_digest(folder: str | Path) -> str:
    """sha256 over (name, dtype, shape, bytes) of every tensor in the folder's safetensors, by name."""
    entries = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        infos, _ = read_header(f)
        for name, info in infos.items():
            entries[name] = (f, info)
    h = hashlib.sha256()
    for name in sorted(entries):
        f, info = entries[name]
        h.update(f"{name}|{info.dtype}|{list(info.shape)}|".encode())
        h.update(np.ascontiguousarray(read_tensor(f, info)).tobytes())
    return h.hexdigest()


def prompt_tokens(vocab_size: int) -> np.ndarray:
    return np.random.default_rng(PROMPT_SEED).integers(0, vocab_size, PROMPT_LEN).astype(np.int32)


def _run_reference(ckpt: Path, prompt: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict]:
    import torch
    from gpt_oss.torch import model as ref

    torch.manual_seed(0)
    stats = {"glu_clamped": 0, "lin_clamped": 0, "swiglu_values": 0, "sink_mass": []}
    orig_swiglu, orig_sdpa = ref.swiglu, ref.sdpa

    def swiglu(x, alpha: float = 1.702, limit: float = 7.0):
        g, lin = x[..., ::2], x[..., 1::2]
        stats["glu_clamped"] += int((g > limit).sum())
        stats["lin_clamped"] += int((lin.abs() > limit).sum())
        stats["swiglu_values"] += g.numel()
        return orig_swiglu(x, alpha, limit)

    def sdpa(Q, K, V, S, sm_scale, sliding_window=0):
        n, h, m, _ = Q.shape
        qk = torch.einsum("qhmd,khmd->hmqk", Q, K[:, :, None, :].expand(-1, -1, m, -1)) * sm_scale
        mask = torch.triu(Q.new_full((n, n), -float("inf")), diagonal=1)
        if sliding_window > 0:
            mask += torch.tril(mask.new_full((n, n), -float("inf")), diagonal=-sliding_window)
        qk = torch.cat([qk + mask, S.reshape(h, m, 1, 1).expand(-1, -1, n, -1)], dim=-1)
        stats["sink_mass"].append(float(torch.softmax(qk, dim=-1)[..., -1].mean()))
        return orig_sdpa(Q, K, V, S, sm_scale, sliding_window)

    ref.swiglu, ref.sdpa = swiglu, sdpa
    try:
        model = ref.Transformer.from_checkpoint(str(ckpt), device="cpu").to(torch.float32)
        tokens = [int(t) for t in prompt]
        with torch.inference_mode():
            for _ in range(NEW_TOKENS):  # greedy, full recompute each step (as TokenGenerator)
                logits = model(torch.as_tensor(tokens, dtype=torch.int32))
                tokens.append(int(torch.argmax(logits[-1]).item()))
            stats.update(glu_clamped=0, lin_clamped=0, swiglu_values=0, sink_mass=[])
            logits = model(torch.as_tensor(tokens, dtype=torch.int32)).numpy().astype(np.float32)
    finally:
        ref.swiglu, ref.sdpa = orig_swiglu, orig_sdpa
    top2 = np.sort(logits[PROMPT_LEN - 1 : -1], axis=-1)[:, -2:]
    evidence = {
        "glu_clamped_fraction": stats["glu_clamped"] / stats["swiglu_values"],
        "lin_clamped_fraction": stats["lin_clamped"] / stats["swiglu_values"],
        "mean_sink_probability": float(np.mean(stats["sink_mass"])),
        "min_greedy_margin": float((top2[:, 1] - top2[:, 0]).min()),
    }
    return np.asarray(tokens, np.int32), logits, evidence


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("--out", type=Path, default=FIXTURES)
    a = ap.parse_args(argv)
    import gpt_oss
    import torch

    spec = preset(PRESET)
    d = spec.dims
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = write_checkpoint(Path(tmp) / "original", spec, "original", seed=SEED)
        digest = tensor_digest(ckpt)
        prompt = prompt_tokens(d.vocab_size)
        tokens, logits, evidence = _run_reference(ckpt, prompt)
    evidence["sliding_window"] = d.sliding_window
    evidence["sequence_length"] = int(tokens.size)
    assert tokens.size > 2 * d.sliding_window, "the prompt must cross the sliding window"
    assert evidence["glu_clamped_fraction"] > 0.005 and evidence["lin_clamped_fraction"] > 0.005, evidence
    assert evidence["mean_sink_probability"] > 0.02, evidence
    a.out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        a.out / f"golden_{PRESET}.npz", tokens=tokens, logits=logits, prompt_len=np.int32(PROMPT_LEN)
    )
    meta = {
        "preset": PRESET,
        "seed": SEED,
        "layout": "original",
        "spec": {"dims": d.ours(), "expert_scale": spec.expert_scale, "sink_scale": spec.sink_scale},
        "tensor_sha256": digest,
        "prompt_seed": PROMPT_SEED,
        "prompt_len": PROMPT_LEN,
        "new_tokens": NEW_TOKENS,
        "greedy_tokens": tokens[PROMPT_LEN:].tolist(),
        "reference": {
            "package": f"gpt-oss=={getattr(gpt_oss, '__version__', '0.0.9')}",
            "torch": torch.__version__,
            "dtype": "float32",
            "module": "gpt_oss.torch.model.Transformer",
        },
        "evidence": evidence,
    }
    (a.out / f"golden_{PRESET}.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(json.dumps(evidence, indent=2))
    print(f"wrote {a.out}/golden_{PRESET}.npz and .json ({tokens.size} tokens, sha256 {digest[:12]}...)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
