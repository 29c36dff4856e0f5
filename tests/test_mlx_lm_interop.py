"""mlx-lm interop: mlx-lm folders (made by mlx-lm's own code) load in mlx-oss, our exports load in mlx-lm.

mlx-lm folders are built the way mlx-lm builds them: `mlx_lm.utils.load_model` on the Hub-layout
checkpoint (its gpt_oss `sanitize` splits gate/up with ::2 / 1::2), optionally `quantize_model` to
8-bit affine (mlx-community's "MXFP4-Q8" recipe: experts stay MXFP4, attention/router/embedding/
lm_head 8-bit group 64), then `save_model` + `save_config`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from mlx_oss.convert.convert import convert_checkpoint
from mlx_oss.errors import ConvertError
from mlx_oss.convert.export_mlx_lm import export_mlx_lm
from mlx_oss.convert.reader import open_source
from mlx_oss.loader import load_model

TOKENS = mx.array([[1, 5, 100, 7, 300, 2, 9, 11, 4, 3, 17, 260, 8, 1, 99, 42]])


def _rel(a: mx.array, b: mx.array) -> float:
    a, b = a.astype(mx.float32), b.astype(mx.float32)
    return (mx.linalg.norm(a - b) / mx.linalg.norm(b)).item()


def _mlx_lm_folder(hub: Path, dst: Path, bits: int | None) -> Path:
    from mlx_lm.utils import load_model as lm_load_model
    from mlx_lm.utils import quantize_model, save_config, save_model

    model, config = lm_load_model(hub)
    if bits:
        model, config = quantize_model(model, config, 64, bits)
    save_model(dst, model)
    save_config(config, dst / "config.json")
    return dst


@pytest.fixture(scope="module")
def lm_bf16(tiny_hf, tmp_path_factory) -> Path:
    return _mlx_lm_folder(tiny_hf, tmp_path_factory.mktemp("lm") / "bf16", None)


@pytest.fixture(scope="module")
def lm_q8(tiny_hf, tmp_path_factory) -> Path:
    return _mlx_lm_folder(tiny_hf, tmp_path_factory.mktemp("lm") / "q8", 8)


@pytest.fixture(scope="module")
def exported(tiny_hf, tmp_path_factory) -> Path:
    """`mlx-oss convert --to mlx-lm` of the Hub-layout checkpoint (writes the tokenizer files once)."""
    from mlx_oss.cli.main import main

    dst = tmp_path_factory.mktemp("export") / "tiny-mlx-lm"
    assert main(["convert", "--to", "mlx-lm", str(tiny_hf), str(dst), "--no-progress"]) == 0
    return dst


@pytest.fixture(scope="module")
def ours_ref(tiny_original) -> mx.array:
    return load_model(tiny_original, "float32")(TOKENS)


# ---------------------------------------------------------------- mlx-lm folder -> mlx-oss


def test_mlx_lm_folder_maps_to_our_bytes_exactly(lm_bf16, tiny_hf):
    src, ref = open_source(lm_bf16), open_source(tiny_hf)
    assert src.layout == "mlx-lm" and src.dense_quant == {}
    assert [s.name for s in src.specs()] == [s.name for s in ref.specs()]
    for s in ref.specs():
        np.testing.assert_array_equal(src.tensor(s.name), ref.tensor(s.name), err_msg=s.name)


def test_our_logits_on_mlx_lm_folder_equal_original(lm_bf16, ours_ref):
    assert _rel(load_model(lm_bf16, "float32")(TOKENS), ours_ref) <= 1e-5


def test_8bit_folder_carried_without_dequantizing(lm_q8, tiny_original, ours_ref):
    model = load_model(lm_q8, "float32")
    assert isinstance(model.embed, nn.QuantizedEmbedding) and model.embed.bits == 8
    for m in (model.layers[0].attn.qkv, model.layers[0].attn.out, model.layers[0].mlp.router, model.unembed):
        assert isinstance(m, nn.QuantizedLinear) and (m.bits, m.group_size) == (8, 64)
    y = model(TOKENS)
    # The original float model with every quantized matrix replaced by its dequantized copy gives the
    # same logits, so the stored words/scales/biases reached the right modules untouched.
    deq = [
        (f"{path}.weight", mx.dequantize(m.weight, m.scales, m.biases, m.group_size, m.bits))
        for path, m in model.named_modules()
        if isinstance(m, (nn.QuantizedLinear, nn.QuantizedEmbedding))
    ]
    assert len(deq) == 2 + 4 * 3  # embed, unembed; qkv, out, router per layer
    float_model = load_model(tiny_original, "float32")
    float_model.load_weights(deq, strict=False)
    assert _rel(y, float_model(TOKENS)) <= 1e-5
    err = _rel(y, ours_ref)
    print(f"\n8-bit mlx-lm folder vs original, float32 logits: relative error {err:.3e}")
    assert 0 < err < 0.15  # what 8-bit dense (router included) costs on this random tiny model


def test_convert_mlx_lm_folder_to_ours_keeps_per_module_quantization(lm_q8, tmp_path):
    r = convert_checkpoint(lm_q8, tmp_path / "conv", progress=False)
    dense = json.loads((r.dst / "config.json").read_text())["quantization"]["dense"]
    assert dense["per_module"]["layers.0.mlp.router"] == {"bits": 8, "group_size": 64}
    assert (dense["mode"], dense["modules"]) == ("affine", [])  # per module, not the --dense-bits modules
    assert mx.array_equal(load_model(r.dst, "float32")(TOKENS), load_model(lm_q8, "float32")(TOKENS))
    with pytest.raises(ConvertError, match="mlx-lm folder; its own quantization"):
        convert_checkpoint(lm_q8, tmp_path / "again", dense_bits=4, progress=False)


def test_cli_paths_accept_mlx_lm_folder_in_place(lm_q8, tiny_hf, capsys):
    from mlx_oss import load
    from mlx_oss.cli.main import main
    from mlx_oss.store import resolve_model

    assert resolve_model(str(lm_q8)) == lm_q8  # chat/generate/bench: no second copy
    model, tok = load(lm_q8, "float32")
    assert tok.n_vocab == 201088
    assert main(["info", str(lm_q8), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["layout"] == "mlx-lm" and "affine dense" in info["parameters"]
    assert sum(info["parameters"].values()) == sum(json.loads(_info_json(tiny_hf))["parameters"].values())


def _info_json(path: Path) -> str:
    from mlx_oss.info import describe, info_json

    return json.dumps(info_json(describe(path), [4096]))


# ---------------------------------------------------------------- mlx-oss -> mlx-lm folder


def test_mlx_lm_logits_on_export_equal_hub_checkpoint(exported, tiny_hf):
    from mlx_lm import load as lm_load
    from mlx_lm.utils import load_model as lm_load_model

    model, tok = lm_load(str(exported))  # the full mlx-lm path: weights, config and tokenizer
    hub_model, _ = lm_load_model(tiny_hf)
    assert mx.array_equal(model(TOKENS), hub_model(TOKENS))
    assert tok.encode("Hello world") == [13225, 2375]
    assert 200002 in tok.eos_token_ids


def test_export_of_8bit_folder_runs_in_mlx_lm(exported, tiny_hf, tiny_converted, tmp_path):
    from mlx_lm.utils import load_model as lm_load_model

    conv8 = convert_checkpoint(tiny_hf, tmp_path / "conv8", dense_bits=8, progress=False).dst
    r = export_mlx_lm(conv8, tmp_path / "exp8", tokenizer_dir=exported, progress=False)
    assert set(r.dense) == {"embed", "unembed"} | {f"layers.{i}.attn.{m}" for i in range(4) for m in ("qkv", "out")}
    cfg = json.loads((r.dst / "config.json").read_text())["quantization"]
    assert cfg["model.layers.0.self_attn.k_proj"] == {"group_size": 64, "bits": 8, "mode": "affine"}
    lm_model, _ = lm_load_model(r.dst)
    assert isinstance(lm_model.model.layers[0].self_attn.q_proj, nn.QuantizedLinear)
    hub = lm_load_model(tiny_hf)[0](TOKENS)
    err = _rel(lm_model(TOKENS), hub)
    print(f"\nmlx-lm on our 8-bit export vs mlx-lm on the Hub checkpoint: relative error {err:.3e}")
    assert err < 0.2
    # and back: the exported folder is ours again, bit for bit
    assert mx.array_equal(load_model(r.dst, "float32")(TOKENS), load_model(conv8, "float32")(TOKENS))


def test_chat_template_renders_harmony(exported):
    from transformers import AutoTokenizer

    from mlx_oss.harmony import Message, render_conversation_for_completion

    tok = AutoTokenizer.from_pretrained(str(exported))
    chat = [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4."},
        {"role": "user", "content": "And 3+3?"},
    ]
    got = tok.apply_chat_template(chat, add_generation_prompt=True, reasoning_effort="high", current_date="2025-06-28", tokenize=True)
    if not isinstance(got, list):  # transformers 5 returns a BatchEncoding
        got = got["input_ids"]
    conv = [
        Message.system(reasoning_effort="high", conversation_start_date="2025-06-28"),
        Message.developer("Answer briefly."),
        Message.user("What is 2+2?"),
        Message.assistant("4."),
        Message.user("And 3+3?"),
    ]
    assert list(got) == render_conversation_for_completion(conv)


def test_export_refuses_mlx_lm_source_and_nonempty_dst(lm_bf16, tiny_converted, tmp_path):
    with pytest.raises(ConvertError, match="already an mlx-lm folder"):
        export_mlx_lm(lm_bf16, tmp_path / "x", progress=False)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "f").write_text("x")
    with pytest.raises(ConvertError, match="not empty"):
        export_mlx_lm(tiny_converted, tmp_path / "full", progress=False)


# ---------------------------------------------------------------- bad quantization configs


def _edit(src: Path, dst: Path, edit) -> Path:
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    edit(cfg["quantization"])
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


Q = "model.layers.0.self_attn.q_proj"


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda q: q[Q].update(mode="nvfp4", bits=4, group_size=16), f"{Q} is nvfp4 4-bit group 16; mlx-oss supports dense modules unquantized or affine"),
        (lambda q: q[Q].update(bitz=8), f"'{Q}'\\]: unknown setting 'bitz'"),
        (lambda q: q[Q].update(mode="int3"), "mode 'int3' is unknown"),
        (lambda q: q.update({k: {"group_size": 64, "bits": 4} for k in (Q, Q.replace("q_", "k_"), Q.replace("q_", "v_"))}),
         f"tensor {Q}.weight has shape \\[256, 16\\], expected \\[256, 8\\] for affine 4-bit group 64"),
        (lambda q: q.update({Q: {"group_size": 64, "bits": 4}}), "layers.0.attn.qkv is one matrix in mlx-oss but its parts are quantized differently"),
        (lambda q: q.update({"model.layers.0.mlp.experts.gate_proj": {"group_size": 64, "bits": 4}}), "experts.gate_proj is affine 4-bit group 64; mlx-oss runs experts only as MXFP4"),
        (lambda q: q.update({"model.layers.9.mlp.router": {"bits": 8}}), "model.layers.9.mlp.router'\\]: no such module"),
        (lambda q: q.update(foo=3), "unknown setting 'foo'"),
        (lambda q: q.update({"model.layers.0.mlp.router": False}), "router.weight has dtype U32, expected BF16 for unquantized \\(config.json quantization of model.layers.0.mlp.router\\)"),
    ],
)
def test_bad_quantization_config_is_one_clear_line(lm_q8, tmp_path, edit, message):
    bad = _edit(lm_q8, tmp_path / "bad", edit)
    with pytest.raises(ConvertError, match=message) as e:
        open_source(bad)
    assert "\n" not in str(e.value)


def test_bad_config_through_cli_is_one_line(lm_q8, tmp_path, capsys):
    from mlx_oss.cli.main import main

    bad = _edit(lm_q8, tmp_path / "bad", lambda q: q[Q].update(mode="mxfp8"))
    assert main(["convert", str(bad), str(tmp_path / "out"), "--no-progress"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("mlx-oss: error:") and Q in err and "mxfp8" in err and "\n" not in err


WEATHER_PARAMS = {"type": "object", "description": "Where.", "properties": {
    "city": {"type": "string", "description": "The city"},
    "unit": {"type": "string", "enum": ["c", "f"], "default": "c"},
    "days": {"type": "integer", "title": "Days", "default": 3},
    "tags": {"type": "array", "items": {"type": "string"}, "examples": ["x"]},
    "opts": {"type": "object", "properties": {"deep": {"type": "boolean", "nullable": True}}, "required": ["deep"]},
    "either": {"type": ["string", "integer"]}}, "required": ["city"]}  # fmt: skip


@pytest.mark.parametrize("arguments", ['{"city": "Paris"}', {"city": "Paris"}])  # a string (OpenAI) or parsed (mlx_lm.server)
def test_chat_template_renders_tool_conversations(exported, arguments):
    """mlx_lm.server hands `tools` and the messages to the template: it must give the same harmony
    as our server renders for the same conversation (function namespace, call, result, kept reasoning)."""
    from transformers import AutoTokenizer

    from mlx_oss.harmony import Message, prune_analysis, render_conversation_for_completion
    from mlx_oss.server.tools import parse_tools

    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Current weather\nin a city",
                                               "parameters": WEATHER_PARAMS}},
             {"type": "function", "function": {"name": "now", "description": "The time"}}]  # fmt: skip
    chat = [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "Checking.", "reasoning_content": "Need the tool.", "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": arguments}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"sky": "sunny"}'},
    ]  # fmt: skip
    tok = AutoTokenizer.from_pretrained(str(exported))
    got = tok.apply_chat_template(chat, tools=tools, add_generation_prompt=True, reasoning_effort="high",
                                  current_date="2025-06-28", tokenize=True)  # fmt: skip
    if not isinstance(got, list):
        got = got["input_ids"]
    conv = [
        Message.system(reasoning_effort="high", conversation_start_date="2025-06-28"),
        Message.developer("Answer briefly.", functions=parse_tools(tools).functions),
        Message.user("Weather in Paris?"),
        Message.assistant("Need the tool.", channel="analysis"),
        Message.assistant("Checking.", channel="commentary"),
        Message.tool_call("functions.get_weather", arguments),
        Message.tool_result("functions.get_weather", '{"sky": "sunny"}'),
    ]
    assert list(got) == render_conversation_for_completion(prune_analysis(conv))
    # The turn after: the call's reasoning is dropped (an earlier turn), the answer is final.
    chat += [{"role": "assistant", "content": "Sunny."}, {"role": "user", "content": "Thanks"}]
    got = tok.apply_chat_template(chat, tools=tools, add_generation_prompt=True, reasoning_effort="high",
                                  current_date="2025-06-28", tokenize=True)  # fmt: skip
    if not isinstance(got, list):
        got = got["input_ids"]
    conv += [Message.assistant("Sunny."), Message.user("Thanks")]
    assert list(got) == render_conversation_for_completion(prune_analysis(conv))
