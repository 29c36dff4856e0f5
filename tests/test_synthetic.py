"""The synthetic checkpoints are in the real on-disk formats and deterministic."""

import hashlib
import json
from pathlib import Path

import numpy as np

from mlx_oss.convert import mxfp4
from mlx_oss.config import ORIGINAL_CONFIG_FIELDS
from mlx_oss.convert.layouts import source_specs
from mlx_oss.convert.safetensors_io import read_header, read_tensor
from mlx_oss.convert.synthetic import PRESETS, bf16_bits_to_f32, preset, write_checkpoint


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.safetensors"))}


def _all_tensors(folder: Path) -> dict:
    out = {}
    for f in folder.glob("*.safetensors"):
        infos, _ = read_header(f)
        out.update({n: (f, i) for n, i in infos.items()})
    return out


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = write_checkpoint(tmp_path / "a", "tiny", "original", seed=7)
    b = write_checkpoint(tmp_path / "b", "tiny", "original", seed=7)
    c = write_checkpoint(tmp_path / "c", "tiny", "original", seed=8)
    assert _digest(a) == _digest(b)
    assert _digest(a) != _digest(c)


def test_hf_layout_matches_the_hub(tiny_hf):
    cfg = json.loads((tiny_hf / "config.json").read_text())
    assert cfg["model_type"] == "gpt_oss"
    assert cfg["quantization_config"]["quant_method"] == "mxfp4"
    assert cfg["rope_scaling"]["rope_type"] == "yarn" and cfg["rope_scaling"]["factor"] == 32.0
    assert cfg["layer_types"] == ["sliding_attention", "full_attention"] * 2
    index = json.loads((tiny_hf / "model.safetensors.index.json").read_text())
    tensors = _all_tensors(tiny_hf)
    assert set(index["weight_map"]) == set(tensors)
    assert all(tensors[n][0].name == f for n, f in index["weight_map"].items())
    # literal names and shapes as the Hub's openai/gpt-oss-20b stores them (tiny dims: E=8, I=H=64)
    expect = {
        "model.layers.1.self_attn.q_proj.weight": ("BF16", (256, 64)),
        "model.layers.1.self_attn.k_proj.bias": ("BF16", (32,)),
        "model.layers.1.self_attn.sinks": ("BF16", (16,)),
        "model.layers.1.mlp.router.weight": ("BF16", (8, 64)),
        "model.layers.1.mlp.experts.gate_up_proj_blocks": ("U8", (8, 128, 2, 16)),
        "model.layers.1.mlp.experts.gate_up_proj_scales": ("U8", (8, 128, 2)),
        "model.layers.1.mlp.experts.gate_up_proj_bias": ("BF16", (8, 128)),
        "model.layers.1.mlp.experts.down_proj_blocks": ("U8", (8, 64, 2, 16)),
        "model.embed_tokens.weight": ("BF16", (512, 64)),
        "model.norm.weight": ("BF16", (64,)),
        "lm_head.weight": ("BF16", (512, 64)),
    }
    for name, (dtype, shape) in expect.items():
        assert (tensors[name][1].dtype, tensors[name][1].shape) == (dtype, shape), name
    assert len(tensors) == len(source_specs("hf", preset("tiny").dims))


def test_original_layout_matches_openai(tiny_original):
    cfg = json.loads((tiny_original / "config.json").read_text())
    assert tuple(cfg) == ORIGINAL_CONFIG_FIELDS  # gpt_oss.torch ModelConfig(**cfg) accepts exactly these
    assert [p.name for p in tiny_original.glob("*.safetensors")] == ["model.safetensors"]
    tensors = _all_tensors(tiny_original)
    for name in ("block.0.attn.qkv.weight", "block.0.attn.sinks", "block.0.mlp.gate.weight",
                 "block.0.mlp.mlp1_weight.blocks", "block.0.mlp.mlp1_weight.scales", "block.0.mlp.mlp1_bias",
                 "block.3.mlp.mlp2_weight.blocks", "embedding.weight", "norm.scale", "unembedding.weight"):  # fmt: skip
        assert name in tensors, name
    assert tensors["block.0.attn.qkv.weight"][1].shape == ((16 + 2 * 2) * 16, 64)
    dtypes = json.loads((tiny_original / "dtypes.json").read_text())
    assert dtypes["block.0.mlp.mlp1_weight.blocks"] == "FP4" and dtypes["block.0.mlp.mlp1_weight.scales"] == "UE8"


def test_both_layouts_hold_the_same_weights(tiny_hf, tiny_original):
    hf, orig = _all_tensors(tiny_hf), _all_tensors(tiny_original)

    def get(t, n):
        return read_tensor(*t[n])

    qkv = get(orig, "block.2.attn.qkv.weight")
    q, k, v = (get(hf, f"model.layers.2.self_attn.{x}_proj.weight") for x in "qkv")
    assert np.array_equal(qkv, np.concatenate([q, k, v]))
    for o, h in [("block.2.mlp.mlp1_weight.blocks", "model.layers.2.mlp.experts.gate_up_proj_blocks"),
                 ("block.2.mlp.mlp2_bias", "model.layers.2.mlp.experts.down_proj_bias"),
                 ("embedding.weight", "model.embed_tokens.weight")]:  # fmt: skip
        assert np.array_equal(get(orig, o), get(hf, h))


def test_experts_are_genuinely_mxfp4(tiny_original):
    t = _all_tensors(tiny_original)
    blocks = read_tensor(*t["block.0.mlp.mlp1_weight.blocks"])
    scales = read_tensor(*t["block.0.mlp.mlp1_weight.scales"])
    w = mxfp4.dequantize(blocks, scales)
    # a quantized N(0, 3/sqrt(H)) matrix: right spread, all 16 codes used, scales spread around 2^-2..2^0
    assert 0.3 < w.std() < 0.45
    assert len(np.unique(blocks & 0xF)) == 16 and len(np.unique(blocks >> 4)) == 16
    assert 120 < scales.mean() < 130 and scales.min() != scales.max()
    # every group's largest magnitude lands in [4, 8) * scale, i.e. the scale is the tight one
    amax = np.abs(w.reshape(*w.shape[:-1], -1, 32)).max(-1)
    ratio = amax / np.exp2(scales.astype(np.float32) - 127)
    assert np.all((ratio >= 3.0) & (ratio <= 6.0))


def test_dense_tensors_are_bf16_with_intended_scale(tiny_original):
    t = _all_tensors(tiny_original)
    emb = bf16_bits_to_f32(read_tensor(*t["embedding.weight"]))
    assert abs(emb.std() - 1.0) < 0.05
    norm = bf16_bits_to_f32(read_tensor(*t["block.0.attn.norm.scale"]))
    assert abs(norm.mean() - 1.0) < 0.1


def test_real_size_presets_have_real_dimensions():
    for name, layers, experts in [("20b-slice", 4, 32), ("120b-slice", 4, 128)]:
        d = PRESETS[name]
        assert (d.hidden_size, d.num_attention_heads, d.num_key_value_heads, d.head_dim) == (2880, 64, 8, 64)
        assert (d.vocab_size, d.num_experts, d.num_hidden_layers, d.sliding_window) == (201088, experts, layers, 128)
    total = sum(int(np.prod(s.shape)) * (2 if s.dtype == "BF16" else 1) for s in source_specs("hf", PRESETS["20b-slice"]).values())
    assert 3.5e9 < total < 4.5e9  # the ~4 GB slice the benchmarks convert


def test_overriding_depth_rederives_layer_types():
    d = preset("20b-slice", num_hidden_layers=2).dims
    assert d.layer_types == ("sliding_attention", "full_attention")
