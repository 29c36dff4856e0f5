"""Random gpt-oss checkpoints in the real on-disk layouts (Hugging Face and OpenAI `original/`).

Pure numpy (it also runs in the torch-only venv that regenerates the golden fixtures). Every tensor is
drawn from its own generator seeded by (seed, tensor, chunk), so both layouts hold the same model and the
output does not depend on write order. Experts are genuinely MXFP4-quantized from float weights, with
gate/up rows interleaved as OpenAI stores them. Files are written layer by layer, expert by expert, so a
real-size slice never needs more than one layer's packed experts in memory.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from mlx_oss.convert import mxfp4
from mlx_oss.config import Dims
from mlx_oss.convert.safetensors_io import StreamingWriter

ROW_CHUNK = 8192  # rows per random draw for big dense matrices (fixed: part of the seed scheme)


@dataclass(frozen=True)
class SyntheticSpec:
    """Dimensions plus the weight scales that make the synthetic model exercise every code path."""

    dims: Dims
    expert_scale: float = 3.0  # pre-activation std ~3 so the SwiGLU clamps at +-7 fire
    sink_scale: float = 1.5  # sinks comparable to attention logits, so their column matters

    @property
    def name(self) -> str:
        return f"L{self.dims.num_hidden_layers}-H{self.dims.hidden_size}-E{self.dims.num_experts}-V{self.dims.vocab_size}"


_TINY = Dims(
    num_hidden_layers=4, num_experts=8, experts_per_token=4, vocab_size=512, hidden_size=64,
    intermediate_size=64, head_dim=16, num_attention_heads=16, num_key_value_heads=2, sliding_window=8,
)  # fmt: skip

PRESETS: dict[str, Dims] = {
    "tiny": _TINY,  # unit tests and golden fixtures: ~1 MB
    "tiny-chat": replace(_TINY, vocab_size=201088),  # full harmony vocabulary for engine/TUI tests
    "20b-slice": Dims(num_hidden_layers=4, num_experts=32),  # real gpt-oss-20b layers, 4 of 24
    "120b-slice": Dims(num_hidden_layers=4, num_experts=128),  # real gpt-oss-120b layers, 4 of 36
    "20b": Dims(num_hidden_layers=24, num_experts=32),
    "120b": Dims(num_hidden_layers=36, num_experts=128),
}


def preset(name: str, **overrides) -> SyntheticSpec:
    """A named size; `overrides` replace Dims fields (e.g. num_hidden_layers=2)."""
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    if "num_hidden_layers" in overrides and "layer_types" not in overrides:
        overrides["layer_types"] = ()  # re-derived for the new depth (sliding on even layers)
    return SyntheticSpec(replace(PRESETS[name], **overrides))


def to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16), round to nearest even."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def bf16_bits_to_f32(b: np.ndarray) -> np.ndarray:
    return (b.astype(np.uint32) << 16).view(np.float32)


def _rng(seed: int, name: str, chunk: int = 0) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(name.encode()), chunk])


# ---------------------------------------------------------------- logical tensors (original naming)


@dataclass(frozen=True)
class _T:
    name: str  # original-layout name
    dtype: str
    shape: tuple[int, ...]
    make: Callable[[], Iterator[np.ndarray]]  # yields chunks along axis 0


def _dense(seed: int, name: str, shape: tuple[int, ...], std: float, mean: float = 0.0) -> Callable[[], Iterator[np.ndarray]]:
    def make() -> Iterator[np.ndarray]:
        rows = shape[0]
        for c, r0 in enumerate(range(0, rows, ROW_CHUNK)):
            n = min(ROW_CHUNK, rows - r0)
            x = _rng(seed, name, c).standard_normal((n, *shape[1:]), dtype=np.float32)
            yield to_bf16_bits(x * std + mean)

    return make


def _layer_tensors(spec: SyntheticSpec, seed: int, i: int) -> list[_T]:
    d = spec.dims
    H, E, I, hd = d.hidden_size, d.num_experts, d.intermediate_size, d.head_dim
    nq, nkv = d.num_attention_heads, d.num_key_value_heads
    qkv = (nq + 2 * nkv) * hd
    p = f"block.{i}."
    out: list[_T] = []

    def dense(name: str, shape: tuple[int, ...], std: float, mean: float = 0.0) -> None:
        out.append(_T(p + name, "BF16", shape, _dense(seed, p + name, shape, std, mean)))

    dense("attn.norm.scale", (H,), 0.1, 1.0)
    dense("attn.qkv.weight", (qkv, H), H**-0.5)
    dense("attn.qkv.bias", (qkv,), 0.1)
    dense("attn.sinks", (nq,), spec.sink_scale)
    dense("attn.out.weight", (H, nq * hd), (nq * hd) ** -0.5)
    dense("attn.out.bias", (H,), 0.1)
    dense("mlp.norm.scale", (H,), 0.1, 1.0)
    dense("mlp.gate.weight", (E, H), 2.0 * H**-0.5)
    dense("mlp.gate.bias", (E,), 0.5)
    out += _experts(seed, p + "mlp.mlp1_weight", E, 2 * I, H, spec.expert_scale * H**-0.5)
    dense("mlp.mlp1_bias", (E, 2 * I), 0.5)
    out += _experts(seed, p + "mlp.mlp2_weight", E, H, I, I**-0.5)
    dense("mlp.mlp2_bias", (E, H), 0.1)
    return out


def _experts(seed: int, name: str, E: int, rows: int, k: int, std: float) -> list[_T]:
    """MXFP4 blocks + scales; the scales of the expert being written are kept for the second tensor."""
    scales: list[np.ndarray] = []

    def blocks() -> Iterator[np.ndarray]:
        scales.clear()
        for e in range(E):
            w = _rng(seed, name, e).standard_normal((rows, k), dtype=np.float32) * std
            b, s = mxfp4.quantize(w)
            scales.append(s)
            yield b[None]

    def scale_chunks() -> Iterator[np.ndarray]:
        if len(scales) != E:  # blocks not generated in this pass: recompute (costly, but never hit by our writers)
            list(blocks())
        for s in scales:
            yield s[None]

    G = k // mxfp4.GROUP
    return [
        _T(name + ".blocks", "U8", (E, rows, G, mxfp4.BYTES_PER_BLOCK), blocks),
        _T(name + ".scales", "U8", (E, rows, G), scale_chunks),
    ]


def _top_tensors(spec: SyntheticSpec, seed: int) -> tuple[list[_T], list[_T]]:
    d = spec.dims
    V, H = d.vocab_size, d.hidden_size
    head = [_T("embedding.weight", "BF16", (V, H), _dense(seed, "embedding.weight", (V, H), 1.0))]
    tail = [
        _T("norm.scale", "BF16", (H,), _dense(seed, "norm.scale", (H,), 0.1, 1.0)),
        _T("unembedding.weight", "BF16", (V, H), _dense(seed, "unembedding.weight", (V, H), 2.0 * H**-0.5)),
    ]
    return head, tail


# ---------------------------------------------------------------- layouts


def _to_hf(t: _T, d: Dims) -> list[_T]:
    """Original-named logical tensor -> the Hugging Face tensor(s) holding the same bytes."""
    n = t.name
    if n == "embedding.weight":
        return [replace(t, name="model.embed_tokens.weight")]
    if n == "norm.scale":
        return [replace(t, name="model.norm.weight")]
    if n == "unembedding.weight":
        return [replace(t, name="lm_head.weight")]
    _, i, rest = n.split(".", 2)
    p = f"model.layers.{i}."
    simple = {
        "attn.norm.scale": "input_layernorm.weight",
        "attn.sinks": "self_attn.sinks",
        "attn.out.weight": "self_attn.o_proj.weight",
        "attn.out.bias": "self_attn.o_proj.bias",
        "mlp.norm.scale": "post_attention_layernorm.weight",
        "mlp.gate.weight": "mlp.router.weight",
        "mlp.gate.bias": "mlp.router.bias",
        "mlp.mlp1_weight.blocks": "mlp.experts.gate_up_proj_blocks",
        "mlp.mlp1_weight.scales": "mlp.experts.gate_up_proj_scales",
        "mlp.mlp1_bias": "mlp.experts.gate_up_proj_bias",
        "mlp.mlp2_weight.blocks": "mlp.experts.down_proj_blocks",
        "mlp.mlp2_weight.scales": "mlp.experts.down_proj_scales",
        "mlp.mlp2_bias": "mlp.experts.down_proj_bias",
    }
    if rest in simple:
        return [replace(t, name=p + simple[rest])]
    # attn.qkv.{weight,bias}: split rows into q, k, v (no permutation, as transformers' converter does)
    kind = rest.rsplit(".", 1)[1]
    sizes = [d.num_attention_heads * d.head_dim, d.num_key_value_heads * d.head_dim, d.num_key_value_heads * d.head_dim]
    full = np.concatenate(list(t.make()), axis=0)  # attention matrices are small enough to hold
    parts, r0 = [], 0
    for x, r in zip("qkv", sizes):
        part = full[r0 : r0 + r]
        parts.append(_T(f"{p}self_attn.{x}_proj.{kind}", t.dtype, part.shape, lambda a=part: iter([a])))
        r0 += r
    return parts


def _write_file(path: Path, tensors: list[_T], metadata: dict | None = None) -> None:
    w = StreamingWriter(path, [(t.name, t.dtype, t.shape) for t in tensors], metadata)
    try:
        for t in tensors:
            for chunk in t.make():
                w.write(t.name, chunk)
        w.close()
    except BaseException:
        w.abort()
        raise


def write_checkpoint(dst: str | Path, spec: SyntheticSpec | str, layout: str = "hf", seed: int = 0) -> Path:
    """Write a random checkpoint of `spec` in `layout` ("hf" or "original") into folder `dst`."""
    if isinstance(spec, str):
        spec = preset(spec)
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    d = spec.dims
    head, tail = _top_tensors(spec, seed)
    if layout == "original":
        (dst / "config.json").write_text(json.dumps(d.original_config(), indent=2) + "\n")
        tensors = head + [t for i in range(d.num_hidden_layers) for t in _layer_tensors(spec, seed, i)] + tail
        dtypes = {t.name: ("FP4" if t.name.endswith(".blocks") else "UE8" if t.name.endswith(".scales") else t.dtype) for t in tensors}
        (dst / "dtypes.json").write_text(json.dumps(dtypes, indent=2) + "\n")
        _write_file(dst / "model.safetensors", tensors)
    elif layout == "hf":
        (dst / "config.json").write_text(json.dumps(d.hf_config(), indent=2) + "\n")
        (dst / "generation_config.json").write_text(
            json.dumps({"bos_token_id": 199998, "do_sample": True, "eos_token_id": [200002, 199999, 200012], "pad_token_id": 199999}, indent=2) + "\n"
        )
        groups = [head] + [_layer_tensors(spec, seed, i) for i in range(d.num_hidden_layers)] + [tail]
        n = len(groups)
        weight_map: dict[str, str] = {}
        total = 0
        for k, group in enumerate(groups):
            fname = f"model-{k + 1:05d}-of-{n:05d}.safetensors"
            hf = [h for t in group for h in _to_hf(t, d)]
            _write_file(dst / fname, hf, {"format": "pt"})
            for h in hf:
                weight_map[h.name] = fname
                total += int(np.prod(h.shape)) * (2 if h.dtype == "BF16" else 1)
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (dst / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    else:
        raise ValueError(f"layout must be 'hf' or 'original', not {layout!r}")
    return dst


def write_hub_snapshot(dst: str | Path, spec: SyntheticSpec | str, seed: int = 0) -> Path:
    """A folder shaped like a Hub download of openai/gpt-oss-*: HF layout at the root, original/ inside."""
    dst = Path(dst)
    write_checkpoint(dst, spec, "hf", seed)
    write_checkpoint(dst / "original", spec, "original", seed)
    return dst


def main(argv: list[str] | None = None) -> int:
    """`python -m mlx_oss.convert.synthetic DST --preset tiny --layout hf|original|both` (for benchmarks)."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m mlx_oss.convert.synthetic", description=main.__doc__)
    ap.add_argument("dst")
    ap.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    ap.add_argument("--layout", default="hf", choices=["hf", "original", "both"])
    ap.add_argument("--layers", type=int, default=None, help="override the number of layers")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    spec = preset(a.preset, **({"num_hidden_layers": a.layers} if a.layers else {}))
    if a.layout == "both":
        write_hub_snapshot(a.dst, spec, a.seed)
    else:
        write_checkpoint(a.dst, spec, a.layout, a.seed)
    print(f"wrote {spec.name} ({a.layout}) to {a.dst}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
