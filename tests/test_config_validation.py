"""Impossible configs are refused where they are read (issue 25): every config.json value is checked for
type and range once, in mlx_oss/config.py, for convert and for load alike, and the refusal is one line
naming the file and the field. Also: JSON nested too deeply for Python's parser names its file."""

from __future__ import annotations

import json
import math
import shutil
import struct
from pathlib import Path

import pytest

from mlx_oss.cli.main import main
from mlx_oss.errors import UserError

NAN, INF = math.nan, math.inf


def _set(cfg: dict, field: str, value) -> None:
    """`field` may be dotted: rope_scaling.factor."""
    *path, last = field.split(".")
    for k in path:
        cfg = cfg[k]
    cfg[last] = value


# (field as the Hugging Face config.json names it, bad value)
HF_BAD = [
    ("rope_theta", NAN), ("rope_theta", INF), ("rope_theta", 0), ("rope_theta", -1.0), ("rope_theta", 1),
    ("rope_theta", "150000"), ("rope_theta", True), ("rope_theta", None),
    ("rms_norm_eps", INF), ("rms_norm_eps", NAN), ("rms_norm_eps", 0), ("rms_norm_eps", -1e-5), ("rms_norm_eps", "1e-5"),
    ("swiglu_limit", NAN), ("swiglu_limit", 0), ("swiglu_limit", -7.0),
    ("sliding_window", 0), ("sliding_window", -8), ("sliding_window", 8.0), ("sliding_window", True), ("sliding_window", NAN),
    ("num_hidden_layers", NAN), ("num_hidden_layers", 0), ("num_hidden_layers", -4), ("num_hidden_layers", 4.0),
    ("num_hidden_layers", True), ("num_hidden_layers", 10**12), ("num_hidden_layers", "4"),
    ("num_attention_heads", 0), ("num_attention_heads", 7), ("num_attention_heads", 16.0),
    ("num_key_value_heads", 0), ("num_key_value_heads", 3), ("num_key_value_heads", False),
    ("num_local_experts", 0), ("num_local_experts", -8), ("num_local_experts", 8.5),
    ("num_experts_per_tok", 0), ("num_experts_per_tok", 9), ("num_experts_per_tok", True),
    ("hidden_size", 0), ("hidden_size", 65), ("hidden_size", "64"), ("hidden_size", 64.0),
    ("intermediate_size", 0), ("intermediate_size", 48),
    ("head_dim", 0), ("head_dim", 15), ("head_dim", 16.0), ("head_dim", -16),
    ("vocab_size", 0), ("vocab_size", -1), ("vocab_size", 512.0), ("vocab_size", 2**40),
    ("max_position_embeddings", 0), ("max_position_embeddings", NAN),
    ("layer_types", ["sliding_attention"]), ("layer_types", "sliding_attention"), ("layer_types", ["x"] * 4),
    ("rope_scaling", "yarn"), ("rope_scaling.rope_type", "linear"),
    ("rope_scaling.factor", NAN), ("rope_scaling.factor", 0), ("rope_scaling.factor", -2.0), ("rope_scaling.factor", "32"),
    ("rope_scaling.beta_fast", NAN), ("rope_scaling.beta_fast", 0), ("rope_scaling.beta_fast", 0.5),
    ("rope_scaling.beta_slow", -1.0), ("rope_scaling.beta_slow", INF), ("rope_scaling.beta_slow", 64.0),
    ("rope_scaling.original_max_position_embeddings", 0), ("rope_scaling.original_max_position_embeddings", 4096.5),
    ("rope_scaling.original_max_position_embeddings", 8),
]  # fmt: skip

# (field as OpenAI's original/config.json names it, bad value)
ORIGINAL_BAD = [
    ("rope_theta", NAN), ("sliding_window", 0), ("num_experts", 0), ("experts_per_token", 16),
    ("rope_scaling_factor", NAN), ("rope_ntk_alpha", 0), ("rope_ntk_beta", INF), ("initial_context_length", -1),
    ("num_hidden_layers", 2.5), ("head_dim", True),
]  # fmt: skip

# (field as our converted config.json names it, bad value)
OURS_BAD = [
    ("rope_theta", NAN), ("rms_norm_eps", INF), ("sliding_window", 0), ("num_hidden_layers", NAN),
    ("num_experts", 0), ("experts_per_token", 4.0), ("rope_ntk_beta", -1), ("initial_context_length", 0),
    ("layer_types", ["full_attention"] * 3), ("vocab_size", True), ("max_position_embeddings", -1),
    ("quantization.dense", {"mode": "affine", "bits": 7, "group_size": 64, "modules": ["embed"]}),
    ("quantization.dense", {"mode": "affine", "bits": 8, "group_size": 0, "modules": ["embed"]}),
    ("quantization.dense", {"mode": "affine", "bits": 8.0, "group_size": 64, "modules": ["embed"]}),
    ("quantization.dense", "8-bit"), ("quantization.dense", {"mode": "nvfp4", "bits": 4, "group_size": 16}),
    ("quantization.dense", {"mode": "affine", "modules": [], "per_module": {"layers.0.attn.qkv": {"group_size": 64}}}),
    ("quantization.experts", {"mode": "nvfp4", "bits": 4, "group_size": 16}),
]  # fmt: skip


def _ids(cases):
    return [f"{f}={json.dumps(v)[:20]}" for f, v in cases]


def _assert_one_line(err: str, file: Path, field: str) -> None:
    assert err.count("\n") == 1 and err.startswith(f"mlx-oss: error: {file}: "), err
    assert field in err and "Traceback" not in err, err


@pytest.mark.parametrize("field,value", HF_BAD, ids=_ids(HF_BAD))
def test_convert_refuses_an_impossible_hf_config_value(tiny_hub, tmp_path, capsys, field, value):
    src = tmp_path / "src"
    shutil.copytree(tiny_hub, src, ignore=shutil.ignore_patterns("original"))
    cfg = json.loads((src / "config.json").read_text())
    _set(cfg, field, value)
    (src / "config.json").write_text(json.dumps(cfg))
    for extra in ([], ["--to", "mlx-lm"]):
        assert main(["convert", *extra, str(src), str(tmp_path / "dst"), "--no-progress"]) == 1
        _assert_one_line(capsys.readouterr().err, src / "config.json", field.split(".")[-1])
        assert not (tmp_path / "dst").exists()


@pytest.mark.parametrize("field,value", ORIGINAL_BAD, ids=_ids(ORIGINAL_BAD))
def test_convert_refuses_an_impossible_original_config_value(tiny_hub, tmp_path, capsys, field, value):
    src = tmp_path / "src"
    shutil.copytree(tiny_hub / "original", src)
    cfg = json.loads((src / "config.json").read_text())
    cfg[field] = value
    (src / "config.json").write_text(json.dumps(cfg))
    assert main(["convert", str(src), str(tmp_path / "dst"), "--no-progress"]) == 1
    _assert_one_line(capsys.readouterr().err, src / "config.json", field)
    assert not (tmp_path / "dst").exists()


@pytest.mark.parametrize("field,value", OURS_BAD, ids=_ids(OURS_BAD))
def test_loading_a_converted_folder_with_an_edited_config_names_file_and_field(tiny_converted, tmp_path, field, value):
    from mlx_oss.loader import load_model

    folder = tmp_path / "edited"
    shutil.copytree(tiny_converted, folder)
    cfg = json.loads((folder / "config.json").read_text())
    _set(cfg, field, value)
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError) as e:
        load_model(folder, "float32")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{folder / 'config.json'}: ") and field.split(".")[-1] in msg, msg


def test_the_error_shows_the_value_as_json_wrote_it(tiny_hub, tmp_path, capsys):
    src = tmp_path / "src"
    shutil.copytree(tiny_hub, src, ignore=shutil.ignore_patterns("original"))
    cfg = json.loads((src / "config.json").read_text())
    cfg["rope_theta"] = NAN
    (src / "config.json").write_text(json.dumps(cfg))
    assert main(["convert", str(src), str(tmp_path / "dst"), "--no-progress"]) == 1
    assert capsys.readouterr().err == f"mlx-oss: error: {src / 'config.json'}: rope_theta must be a finite number > 1, got NaN\n"


def test_valid_configs_still_convert_and_ints_are_fine_for_floats(tiny_hub, tmp_path):
    from mlx_oss.config import ModelArgs

    src = tmp_path / "src"
    shutil.copytree(tiny_hub, src, ignore=shutil.ignore_patterns("original"))
    cfg = json.loads((src / "config.json").read_text())
    cfg["rope_theta"], cfg["swiglu_limit"], cfg["rope_scaling"]["factor"] = 150000, 7, 32  # as the Hub writes them
    (src / "config.json").write_text(json.dumps(cfg))
    assert main(["convert", str(src), str(tmp_path / "dst"), "--no-progress"]) == 0
    args = ModelArgs.from_path(tmp_path / "dst")
    assert args.rope_theta == 150000.0 and isinstance(args.rope_theta, float) and args == ModelArgs.from_path(tiny_hub)


# ------------------------------------------------------------------ JSON nested too deeply

DEEP = "[" * 100_000 + "]" * 100_000


def test_a_deeply_nested_safetensors_header_names_the_shard(tiny_hub, tmp_path, capsys):
    src = tmp_path / "src"
    shutil.copytree(tiny_hub, src, ignore=shutil.ignore_patterns("original"))
    shard = src / "model-00002-of-00006.safetensors"
    header = ('{"x": ' + DEEP + "}").encode()
    shard.write_bytes(struct.pack("<Q", len(header)) + header)
    assert main(["convert", str(src), str(tmp_path / "dst"), "--no-progress"]) == 1
    err = capsys.readouterr().err
    _assert_one_line(err, shard, "nested")


@pytest.mark.parametrize("name", ["config.json", "model.safetensors.index.json"])
def test_a_deeply_nested_json_file_names_the_file(tiny_hub, tmp_path, capsys, name):
    src = tmp_path / "src"
    shutil.copytree(tiny_hub, src, ignore=shutil.ignore_patterns("original"))
    (src / name).write_text('{"x": ' + DEEP + "}")
    assert main(["convert", str(src), str(tmp_path / "dst"), "--no-progress"]) == 1
    _assert_one_line(capsys.readouterr().err, src / name, "nested")


@pytest.mark.parametrize("name", ["config.json", "manifest.json"])
def test_loading_a_deeply_nested_json_file_names_the_file(tiny_converted, tmp_path, name):
    from mlx_oss.loader import load_model

    folder = tmp_path / "deep"
    shutil.copytree(tiny_converted, folder)
    if name == "config.json":
        cfg = json.loads((folder / name).read_text())
        (folder / name).write_text(json.dumps(cfg)[:-1] + ', "x": ' + DEEP + "}")
    else:
        (folder / name).write_text('{"x": ' + DEEP + "}")
    with pytest.raises(UserError) as e:
        load_model(folder, "float32")
    assert "\n" not in str(e.value) and str(e.value).startswith(f"{folder / name}: ") and "nested" in str(e.value)


def test_safetensors_header_numbers_must_be_whole(tiny_hub, tmp_path, capsys):
    """A shape of 2.7 or true was read as 2 or 1 (int()): now the entry is refused."""
    from mlx_oss.convert.safetensors_io import read_header
    from mlx_oss.errors import ConvertError

    for shape, offsets in (([2.7], [0, 4]), ([True], [0, 2]), ([2], [0.0, 4]), ([-2, -1], [0, 4])):
        p = tmp_path / "t.safetensors"
        header = json.dumps({"t": {"dtype": "BF16", "shape": shape, "data_offsets": offsets}}).encode()
        p.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 8)
        with pytest.raises(ConvertError, match=f"^{p}: corrupt safetensors header entry for tensor t"):
            read_header(p)
