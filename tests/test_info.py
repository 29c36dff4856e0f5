"""`mlx-oss info`'s memory figures: KV cache bytes per setting, weights after --dense-bits, the
activation estimate, the longest context per Mac and the advice (issue #30). Every expected number is
worked out here by hand from the dimensions, not read back from `mlx_oss.info`."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from mlx_oss.cli.main import main
from mlx_oss.config import Dims
from mlx_oss.convert.synthetic import PRESETS
from mlx_oss.info import (
    MAC_MEMORY_GB,
    OS_RESERVE,
    Mac,
    ModelInfo,
    Setup,
    advice_text,
    advise,
    default_gpu_limit,
    describe,
    fit_macs,
    format_info,
    info_json,
    mac_sizes,
    raised_gpu_limit,
)

GiB = 2**30
# 4 layers (sliding, full, sliding, full), 2 kv heads of 64, window 8
SMALL = Dims(num_hidden_layers=4, num_experts=8, experts_per_token=2, vocab_size=512, hidden_size=128,
             intermediate_size=96, head_dim=64, num_attention_heads=4, num_key_value_heads=2, sliding_window=8,
             max_position_embeddings=4096)  # fmt: skip


def _config(tmp_path, name: str, folder_name: str | None = None) -> str:
    """A folder holding only preset `name`'s config.json (named `folder_name`, default `name`)."""
    folder = tmp_path / (folder_name or name)
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(PRESETS[name].hf_config()))
    return str(folder)


@pytest.fixture(scope="module")
def m20b(tmp_path_factory) -> ModelInfo:
    return describe(_config(tmp_path_factory.mktemp("cfg"), "20b"))


def _small(weights: int = 10 * 2**20) -> ModelInfo:
    return ModelInfo(SMALL, "hf", params={"bf16 dense": weights // 2}, bytes={"bf16 dense": weights})


# ---------------------------------------------------------------- KV cache bytes


def test_kv_bytes_by_hand_for_each_setting():
    info = _small()
    # one position, one layer: K and V x 2 heads x 64 values, at 2 bytes (bf16) / 4 bytes (float32)
    assert info.kv_bytes_per_token("bfloat16") == 2 * (2 * 2 * 64 * 2)  # 2 full layers
    assert info.kv_bytes_per_token("float32") == 2 * (2 * 2 * 64 * 4)
    # 8-bit: 64 one-byte codes + a scale and a bias (compute dtype) per group of 64, for K and V, 2 heads
    assert info.kv_bytes_per_token("bfloat16", 8) == 2 * (2 * 2 * (64 + 2 * 2))
    assert info.kv_bytes_per_token("bfloat16", 4) == 2 * (2 * 2 * (32 + 2 * 2))
    assert info.kv_bytes_per_token("bfloat16", 8, 32) == 2 * (2 * 2 * (64 + 2 * 2 * 2))  # two groups per row
    assert info.kv_bytes_per_token("float32", 4) == 2 * (2 * 2 * (32 + 2 * 4))
    # full layers keep every position; the 2 sliding layers a ring of 8 slots, whole from the first
    # token and unquantized whatever the bits
    ring = 2 * 8 * (2 * 2 * 64 * 2)
    for bits, slot in ((None, 2 * 2 * 64 * 2), (8, 2 * 2 * 68), (4, 2 * 2 * 36)):
        assert info.kv_bytes(5, "bfloat16", bits) == 2 * 5 * slot + ring
        assert info.kv_bytes(100, "bfloat16", bits) == 2 * 100 * slot + ring
    assert info.kv_bytes(0) == 0


def test_kv_ratios_on_gpt_oss_20b(m20b):
    base = m20b.kv_bytes_per_token("bfloat16")
    assert base == 12 * 2 * 8 * 64 * 2
    assert m20b.kv_bytes_per_token("bfloat16", 8) / base == 68 / 128  # 0.53x
    assert m20b.kv_bytes_per_token("bfloat16", 4) / base == 36 / 128  # 0.28x
    assert m20b.kv_bytes(131072, "bfloat16", 8) == 12 * 2 * 8 * 68 * 131072 + 12 * 128 * 2 * 8 * 64 * 2


def test_kv_bytes_equal_the_real_caches():
    """info's figure is what the caches hold after `context` positions (full layers reserve exactly)."""
    import mlx.core as mx

    from mlx_oss.nn.cache import make_cache

    info, context = _small(), 512
    for bits in (None, 8, 4):
        cache = make_cache(SMALL.layer_types, SMALL.sliding_window, bits, 64)
        k = mx.zeros((1, SMALL.num_key_value_heads, context, SMALL.head_dim), dtype=mx.float32)
        for c in cache:
            c.update_and_fetch(k, k)
        assert sum(c.nbytes for c in cache) == info.kv_bytes(context, "float32", bits), bits


def test_a_group_size_that_does_not_divide_head_dim_is_refused():
    info = ModelInfo(Dims(head_dim=16), "hf")
    with pytest.raises(ValueError, match="does not divide"):
        info.kv_bytes_per_token("bfloat16", 8, 32)


# ---------------------------------------------------------------- weights after --dense-bits


def test_dense_bits_weights_by_hand(m20b):
    d = PRESETS["20b"]
    qkv = (d.num_attention_heads + 2 * d.num_key_value_heads) * d.head_dim * d.hidden_size
    out = d.hidden_size * d.num_attention_heads * d.head_dim
    n = 2 * d.vocab_size * d.hidden_size + d.num_hidden_layers * (qkv + out)  # embed, unembed, attention
    for bits in (8, 4):
        # bf16 (2 bytes) -> bits/8 bytes of codes + a bf16 scale and bias per 64 values
        assert m20b.weight_bytes_dense_bits(bits) == m20b.weight_bytes - 2 * n + n * bits // 8 + n * 4 // 64
    assert 11.2 * GiB < m20b.weight_bytes_dense_bits(8) < 11.3 * GiB


@pytest.mark.parametrize("bits", [8, 4])
def test_dense_bits_weights_equal_a_real_conversion(tiny_hf, tmp_path, bits):
    from mlx_oss.convert.convert import convert_checkpoint

    q = describe(convert_checkpoint(tiny_hf, tmp_path / "q", dense_bits=bits, progress=False).dst)
    assert describe(tiny_hf).weight_bytes_dense_bits(bits) == q.weight_bytes
    assert q.weight_bytes_dense_bits(bits) is None  # already quantized: the converter keeps it
    # the same parameters, counted by their unquantized shapes: codes, scales and biases are not parameters
    plain = describe(tiny_hf)
    assert q.total_params == plain.total_params and q.params["mxfp4 experts"] == plain.params["mxfp4 experts"]
    assert q.params["affine dense"] + q.params["bf16 dense"] == plain.params["bf16 dense"]
    assert 0 < q.params["bf16 dense"] < q.params["affine dense"]  # norms, sinks, router stay bf16


def test_each_stored_tensor_counts_in_its_format():
    """Parameters and bytes per format, from the tensors' names, dtypes and shapes: packed MXFP4 codes hold 8
    values per uint32 and their uint8 scales none; an affine-quantized dense weight counts its unquantized
    shape, its scales and biases none; other dense tensors count as stored, named by dtype (an mlx-lm folder
    may hold float16 or float32)."""
    from mlx_oss.convert.layouts import Spec, our_specs
    from mlx_oss.info import _count_bytes

    info = ModelInfo(SMALL, "mlx-lm")
    q = next(s for s in our_specs(SMALL) if s.name.endswith("attn.qkv.weight"))
    specs = [
        Spec("layers.0.mlp.gate_up.weight", "U32", (4, 2, 3)), Spec("layers.0.mlp.gate_up.scales", "U8", (4, 2, 1)),
        Spec(q.name, "U32", (q.shape[0], 8)), Spec(q.name[: -len("weight")] + "scales", "BF16", (q.shape[0], 2)),
        Spec(q.name[: -len("weight")] + "biases", "BF16", (q.shape[0], 2)),
        Spec("norm.weight", "F32", (128,)), Spec("embedding.weight", "BF16", (512, 128)), Spec("sinks", "F16", (4,)),
        Spec("layers.0.mlp.router.bias", "U8", (8,)),
    ]  # fmt: skip
    _count_bytes(info, specs)
    assert info.params == {"mxfp4 experts": 4 * 2 * 3 * 8, "affine dense": q.shape[0] * q.shape[1], "f32 dense": 128,
                           "bf16 dense": 512 * 128, "f16 dense": 4, "u8 dense": 8}  # fmt: skip
    assert info.bytes == {"mxfp4 experts": 4 * 2 * 3 * 4 + 8, "affine dense": q.shape[0] * (8 * 4 + 2 * 2 + 2 * 2),
                          "f32 dense": 128 * 4, "bf16 dense": 512 * 128 * 2, "f16 dense": 8, "u8 dense": 8}  # fmt: skip


# ---------------------------------------------------------------- activations


def test_activation_estimate_by_hand(m20b):
    from mlx_oss.engine import DEFAULT_PREFILL_CHUNK
    from mlx_oss.info import PREFILL_CHUNK

    assert PREFILL_CHUNK == DEFAULT_PREFILL_CHUNK
    T = 2048
    moe = T * 4 * (2880 + 3 * 2880)  # top-4 rows: input copy, gate_up (2I), SwiGLU (I)
    assert m20b.activation_bytes(131072) == moe * 2 == m20b.activation_bytes(4096)  # no scores: fused kernel
    assert m20b.activation_bytes(100) == 100 * 4 * (4 * 2880) * 2  # a short prompt is one short chunk
    # quantized: the scores of one block of queries, 3 copies (float32, at most 64 MiB a block)
    assert m20b.activation_bytes(32768, bits=8) == moe * 2 + 3 * (64 << 20)
    assert m20b.activation_bytes(3, bits=8) == 3 * 4 * (4 * 2880) * 2 + 3 * 4 * 64 * 3 * 3  # a small one whole


def test_quantized_attention_peak_is_what_the_estimate_assumes():
    """QUANTIZED_SCORE_COPIES is measured: the peak of `quantized_attention` over its score array."""
    import mlx.core as mx

    from mlx_oss.info import QUANTIZED_SCORE_COPIES
    from mlx_oss.nn.attention import quantized_attention
    from mlx_oss.nn.cache import QArray

    T, S = 128, 2048
    q = mx.random.normal((1, 64, T, 64))
    k = QArray(*mx.quantize(mx.random.normal((1, 8, S, 64)), group_size=64, bits=8))
    sinks = mx.zeros((64,))
    mx.eval(q, k, sinks)
    base = mx.get_active_memory()
    mx.reset_peak_memory()
    mx.eval(quantized_attention(q, k, k, 0.125, "causal", sinks))
    copies = (mx.get_peak_memory() - base) / (64 * T * S * 4)
    assert QUANTIZED_SCORE_COPIES - 0.5 < copies < QUANTIZED_SCORE_COPIES + 0.5


# ---------------------------------------------------------------- the GPU limit and the longest context


def test_default_gpu_limit():
    assert default_gpu_limit(16 * GiB) == 16 * GiB * 2 // 3  # 10.67 GiB, what a 16 GB Mac reports
    assert default_gpu_limit(32 * GiB) == 32 * GiB * 2 // 3
    assert default_gpu_limit(36 * GiB) == 27 * GiB
    assert default_gpu_limit(64 * GiB) == 48 * GiB
    odd = 36 * GiB + 1  # what Metal reports need not divide: whole bytes, as the JSON gives them
    assert default_gpu_limit(odd) == odd * 3 // 4 and isinstance(default_gpu_limit(odd), int)
    assert raised_gpu_limit(16 * GiB) == 12 * GiB == 16 * GiB - OS_RESERVE
    assert raised_gpu_limit(OS_RESERVE // 2) == 0  # nothing worth wiring, never below 0


@pytest.mark.parametrize("bits", [None, 8, 4])
def test_longest_context_is_exact_at_the_boundary(bits):
    info = _small()
    for context in (1, 7, 9, 1000, 2049, 3000):
        limit = info.needed_bytes(context, bits=bits)
        assert info.longest_context(limit, bits) == context  # fits exactly
        assert info.longest_context(limit - 1, bits) == context - 1  # one byte less: one token less
    assert info.needed_bytes(3001, bits=bits) > info.needed_bytes(3000, bits=bits)
    assert info.longest_context(10**12, bits) == SMALL.max_position_embeddings  # capped at the model's
    assert info.longest_context(info.weight_bytes, bits) == 0  # the weights alone fill it
    # the sum, by hand: weights + KV cache + activations
    assert info.needed_bytes(3000, bits=bits) == info.weight_bytes + info.kv_bytes(3000, "bfloat16", bits) + \
        info.activation_bytes(3000, "bfloat16", bits)  # fmt: skip


def test_longest_context_grows_with_memory(m20b):
    fits = fit_macs(m20b, mac_sizes(), [None, 8, 4])
    assert [f.mac.memory // GiB for f in fits] == list(MAC_MEMORY_GB)
    for key in ("unquantized", "8-bit", "4-bit"):
        got = [f.longest[key] for f in fits]
        assert got == sorted(got) and got[-1] == 131072, key
    by_gb = {f.mac.memory // GiB: f.longest for f in fits}
    assert by_gb[16] == {"unquantized": 0, "8-bit": 0, "4-bit": 0}  # 12.82 GiB of weights > 10.67 GiB
    assert by_gb[24] == {"unquantized": 131072, "8-bit": 131072, "4-bit": 131072}  # 12.82 + 3.0 GiB + activations < 16 GiB
    (f21,) = fit_macs(m20b, mac_sizes([21]), [None, 8, 4])  # a 21 GB Mac: 14 GiB for the GPU
    n = f21.longest["8-bit"]
    assert m20b.needed_bytes(n, bits=8) <= default_gpu_limit(21 * GiB) < m20b.needed_bytes(n + 1, bits=8)
    assert 0 < f21.longest["unquantized"] < n < f21.longest["4-bit"] < 131072  # a quantized cache: a longer context
    # below ~17k tokens the quantized attention's score blocks (3 x 64 MiB) outweigh what the cache saves
    (f20,) = fit_macs(m20b, mac_sizes([20]), [None, 8])
    assert f20.longest["unquantized"] > f20.longest["8-bit"] > 0


# ---------------------------------------------------------------- advice


def test_advice_for_20b_on_a_16_gb_mac_names_what_makes_it_fit(m20b):
    mac = mac_sizes([16])[0]
    a = advise(m20b, mac, 4096, [None, 8, 4])
    assert a.default_longest == 0 and a.setup is not None and a.fits
    # weights as stored (12.82 GiB) exceed even the raised limit (12 GiB): a --dense-bits conversion is
    # needed, and --dense-bits 8 (11.25 GiB) exceeds the default 10.67 GiB: the limit is raised
    assert m20b.weight_bytes > raised_gpu_limit(mac.memory)
    assert a.setup.dense_bits is not None and a.setup.raised and a.limit == 12 * GiB
    assert a.wired_limit_mb == 12288
    need = m20b.needed_bytes(4096, bits=a.setup.kv_bits, dense_bits=a.setup.dense_bits)
    assert need <= a.limit
    assert m20b.needed_bytes(a.longest + 1, bits=a.setup.kv_bits, dense_bits=a.setup.dense_bits) > a.limit
    # every cheaper setup falls short
    setups = [Setup(d, k, r) for d in (None, 8, 4) for k in (None, 8, 4) for r in (False, True)]
    for s in setups:
        if s.cost(False) < a.setup.cost(False):
            limit = a.limit if s.raised else mac.gpu_limit
            assert m20b.needed_bytes(4096, bits=s.kv_bits, dense_bits=s.dense_bits) > limit, s
    text = format_info(m20b, [4096], macs=[mac])
    advice = text[text.index("advice") :]
    assert "sudo sysctl iogpu.wired_limit_mb=12288" in advice
    assert f"--dense-bits {a.setup.dense_bits}`" in advice and f"up to {a.longest} tokens" in advice
    first = advice.split(" Up to ")[0]  # the recommendation, before any longer-context option
    assert ("keep the cache unquantized" in first) == (a.setup.kv_bits is None)
    assert (f"`--kv-bits {a.setup.kv_bits}`" in first) == (a.setup.kv_bits is not None)


def test_a_setup_that_reaches_the_target_exactly_is_chosen(m20b):
    """The cheapest setup whose longest context is the target itself counts as reaching it: on a Mac whose
    limit is exactly what --dense-bits 8 needs for 4096 tokens (and no room to raise it), that is the
    advice, not the --dense-bits 4 that reaches further."""
    limit = m20b.needed_bytes(4096, dense_bits=8)
    mac = Mac("exact", limit, limit)  # raised_gpu_limit(limit) is below the limit: nothing to raise
    a = advise(m20b, mac, 4096, [None])
    assert (a.setup.dense_bits, a.setup.raised, a.longest, a.fits) == (8, False, 4096, True)
    assert a.longer is not None and a.longer[0].dense_bits == 4 and a.longer[1] > 4096


def test_advice_keeps_the_cache_setting_asked_for(m20b):
    for bits in (8, 4):
        for f in fit_macs(m20b, mac_sizes([16]), [bits], target=8192):
            a = f.advice
            assert a is not None and a.setup.kv_bits == bits
            assert list(f.longest) == [f"{bits}-bit"]
            # the same setup with an unquantized cache, said alongside where it reaches further (no score blocks)
            assert a.unquantized_longest == m20b.longest_context(a.limit, None, 64, a.setup.dense_bits)
            said = f"without --kv-bits: up to {a.unquantized_longest} tokens" in advice_text(m20b, a, 64, "CHECKPOINT")
            assert said == (a.unquantized_longest > a.longest)


def test_no_advice_where_it_already_fits_and_none_where_nothing_can(m20b, tmp_path):
    assert all(f.advice is None for f in fit_macs(m20b, mac_sizes([24, 192]), [None, 8, 4]))
    m120 = describe(_config(tmp_path, "120b"))
    a = advise(m120, mac_sizes([16])[0], 4096, [None, 8, 4])
    assert a.setup is None and a.least_weights == m120.weight_bytes_dense_bits(4)
    text = format_info(m120, [4096], macs=mac_sizes([16, 24, 96]))
    assert "16 GB and 24 GB Macs: too small with any setting" in text and "96 GB Mac" not in text


def test_a_mac_as_set_now_uses_its_own_limit(m20b):
    """The row for the Mac `info` runs on takes Metal's limit as set (a raised wired limit included)."""
    raised = Mac("this Mac", 16 * GiB, 12 * GiB)
    f = fit_macs(m20b, [raised], [None])[0]
    assert f.longest["unquantized"] == m20b.longest_context(12 * GiB) == 0  # as stored: still too big
    assert f.advice.setup == Setup(8, None, False)  # nothing left to raise: --dense-bits 8 is enough


def test_the_row_for_this_mac(tmp_path, monkeypatch, capsys):
    import platform

    from mlx_oss.backend import device

    monkeypatch.setattr(platform, "system", lambda: "Darwin")
    fake = {"device_name": "Apple M9", "memory_size": 16 * GiB, "max_recommended_working_set_size": 11 * GiB}
    monkeypatch.setattr(device, "device_info", lambda *a, **k: dict(fake))
    cfg = _config(tmp_path, "20b")
    assert main(["info", cfg, "--json"]) == 0
    macs = json.loads(capsys.readouterr().out)["memory_fit"]["macs"]
    assert macs[-1]["label"] == "this Mac (Apple M9, 16 GB)" and macs[-1]["gpu_limit_bytes"] == 11 * GiB
    assert len(macs) == len(MAC_MEMORY_GB) + 1
    assert main(["info", cfg, "--json", "--memory", "16"]) == 0  # sizes chosen: only those
    assert len(json.loads(capsys.readouterr().out)["memory_fit"]["macs"]) == 1
    assert main(["info", cfg]) == 0
    text = capsys.readouterr().out
    assert "this Mac (Apple M9, 16 GB)   11.00 GiB" in text
    assert ("GPU limit: macOS's default, about 2/3 of RAM below 36 GB and 3/4 from 36 GB (`iogpu.wired_limit_mb`); "
            "this Mac: Metal's, as set now\n") in text  # fmt: skip


# ---------------------------------------------------------------- the command


DOCS = Path(__file__).resolve().parents[1] / "docs"


@pytest.fixture
def hub_configs(tmp_path, monkeypatch) -> None:
    """The working folder holds gpt-oss-20b/config.json and gpt-oss-120b/config.json (the Hub's
    dimensions), and this is not a Mac (no "this Mac" row)."""
    import platform

    monkeypatch.setattr(platform, "system", lambda: "Linux")
    for name in ("20b", "120b"):
        _config(tmp_path, name, f"gpt-oss-{name}")
    monkeypatch.chdir(tmp_path)


def test_the_docs_show_what_info_prints(hub_configs, capsys):
    """docs/MODEL.md's `$ mlx-oss info ...` blocks are the command's exact output, every character (the
    layout of each table, the units, each advice sentence), for the 20b and 120b configs as the Hub has
    them. The "this Mac" row is left out (as on Linux). After an intended change: run the block's command
    in a folder holding gpt-oss-20b/config.json and gpt-oss-120b/config.json and paste its output."""
    blocks = re.findall(r"^```\n\$ mlx-oss (info .*?)\n(.*?)^```", (DOCS / "MODEL.md").read_text(), re.S | re.M)
    assert [b[0].split()[1] for b in blocks] == ["gpt-oss-20b/config.json", "gpt-oss-120b/config.json"]
    for command, shown in blocks:
        assert main(command.split()) == 0
        assert capsys.readouterr().out == shown, command


def test_info_outputs_are_the_fixture(hub_configs, capsys):
    """The text (line by line) and `--json` of twelve commands equal tests/fixtures/info_outputs.json: the
    docs' two, group sizes other than 64 (in the commands advised and the bytes, with --kv-bits; one the
    head size cannot hold, which leaves the cache unquantized), a Mac where some context fits as stored
    (with --kv-bits too), an advice whose second option changes nothing but the limit, an advice of one
    step, no setting reaching the context (with --kv-bits and without), the same without --kv-bits
    reaching further, one Mac too small and several (120b by default). What a reader or a script sees
    does not change by accident. After an intended change, in such a folder, for each key K: `mlx-oss K`
    (lines) and `mlx-oss K --json`. The Python API's defaults are the command's: `format_info` and
    `info_json` given only the contexts."""
    want = json.loads((Path(__file__).parent / "fixtures" / "info_outputs.json").read_text())
    assert len(want) == 12
    for command, expected in want.items():
        assert main(command.split()) == 0
        assert capsys.readouterr().out.splitlines() == expected["text"], command
        assert main([*command.split(), "--json"]) == 0
        assert json.loads(capsys.readouterr().out) == expected["json"], command
    plain = want["info gpt-oss-20b/config.json"]
    info = describe("gpt-oss-20b/config.json")
    assert format_info(info, [4096, 32768, 131072]).splitlines() == plain["text"]
    assert json.loads(json.dumps(info_json(info, [4096, 32768, 131072]))) == plain["json"]


def test_bytes_in_binary_units():
    """Bytes as the text shows them: GiB, MiB from exactly one of the unit up, else KiB."""
    from mlx_oss.info import _gib

    assert [_gib(n) for n in (1536, 2**20 - 1, 2**20, 3 * 2**19, 2**30, 13_761_264_768)] == [
        "1.50 KiB", "1024.00 KiB", "1.00 MiB", "1.50 MiB", "1.00 GiB", "12.82 GiB"]  # fmt: skip


def test_counts_in_units():
    """Parameter counts as the text shows them: B, M, K from exactly one of the unit up."""
    from mlx_oss.info import _count

    assert [_count(n) for n in (999, 1000, 1500, 10**6, 2_500_000, 10**9, 20_914_757_184)] == [
        "999", "1.00 K", "1.50 K", "1.00 M", "2.50 M", "1.00 B", "20.91 B"]  # fmt: skip


def test_info_kv_bits_selects_the_numbers_shown(tmp_path, capsys):
    cfg = _config(tmp_path, "20b")
    m = describe(cfg)
    assert main(["info", cfg, "--kv-bits", "8", "--context", "4096", "--memory", "16", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["kv_bits"] == 8 and out["kv_bytes_per_token"]["bfloat16"] == 12 * 2 * 8 * 68
    assert out["memory_bytes"]["4096"]["bfloat16"] == m.weight_bytes + m.kv_bytes(4096, "bfloat16", 8)
    fit = out["memory_fit"]
    assert fit["kv_settings"] == ["8-bit"] and [x["label"] for x in fit["macs"]] == ["16 GB"]
    advice = fit["macs"][0]["advice"]
    assert advice["kv_bits"] == 8 and advice["wired_limit_mb"] == 12288
    assert "`--kv-bits 8`" in advice["text"]
    assert main(["info", cfg, "--kv-bits", "4", "--memory", "16"]) == 0
    text = capsys.readouterr().out
    assert "4-bit" in text and "unquantized" not in text and "8-bit" not in text
    assert main(["info", cfg, "--memory", "16"]) == 0  # without --kv-bits: all three side by side
    text = capsys.readouterr().out
    assert all(k in text for k in ("unquantized", "8-bit", "4-bit"))


def test_info_json_matches_the_text(m20b):
    macs = mac_sizes([16, 24])
    out = info_json(m20b, [4096], macs=macs)
    text = format_info(m20b, [4096], macs=macs)
    for mac in out["memory_fit"]["macs"]:
        adv = mac["advice"]
        assert adv is None or adv["text"] in text
        for n in mac["longest_context"].values():
            assert (str(n) if n else "-") in text


def test_advice_names_the_folder_to_convert(tiny_hf, tiny_converted, tmp_path):
    mac = [Mac("tiny", 2**20, 2**20 // 2)]  # too small for the weights as stored, room after --dense-bits 4

    def advice(path):
        info = describe(path)
        return format_info(info, [64], macs=mac, source=str(path))

    assert f"`mlx-oss convert {tiny_hf} FOLDER --dense-bits" in advice(tiny_hf)
    assert "`mlx-oss convert CHECKPOINT FOLDER --dense-bits" in advice(tiny_converted)  # already converted
    assert "`mlx-oss convert CHECKPOINT FOLDER --dense-bits" in advice(tiny_hf / "config.json")  # no weights
    (fit,) = info_json(describe(tiny_hf), [64], macs=mac, source=str(tiny_hf))["memory_fit"]["macs"]
    assert f"`mlx-oss convert {tiny_hf} FOLDER --dense-bits" in fit["advice"]["text"]  # --json says the same


def test_a_config_alone_names_its_layout(tiny_hf, tiny_original, tiny_converted):
    """`mlx-oss info CONFIG.json` (before downloading): the layout read from the config itself (ours says
    "format": "mlx-oss", the Hub's "model_type": "gpt_oss", the original checkpoint neither), with the same
    dimensions and byte counts as the whole folder."""
    for folder, layout in ((tiny_hf, "hf"), (tiny_original, "original"), (tiny_converted, "mlx-oss")):
        alone, whole = describe(folder / "config.json"), describe(folder)
        assert (alone.layout, alone.from_config, alone.integrity) == (layout, True, None), folder
        assert alone.dims == whole.dims and alone.total_params == whole.total_params, folder
        assert whole.integrity == ("sizes and headers match manifest.json" if layout == "mlx-oss" else None)


def test_quantized_settings_only_where_head_dim_allows(tiny_converted, capsys):
    assert main(["info", str(tiny_converted), "--memory", "16"]) == 0  # head_dim 16: no group of 64
    text = capsys.readouterr().out
    assert "unquantized" in text and "8-bit" not in text


@pytest.mark.parametrize("argv", [
    ["--kv-bits", "3"], ["--kv-group-size", "48"], ["--memory", "0"], ["--context", "0"],
    ["--context", "200000"], ["--kv-bits", "8", "--kv-group-size", "32"],
])  # fmt: skip
def test_bad_flags_exit_2_in_one_line(tiny_converted, capsys, argv):
    with pytest.raises(SystemExit) as e:  # argparse's own errors
        rc = main(["info", str(tiny_converted), *argv])
        raise SystemExit(rc)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("mlx-oss info: error: ")


# ---------------------------------------------------------------- the Python API's defaults


def test_the_python_api_defaults_are_the_commands(m20b, tiny_hf):
    """What `mlx_oss.info` computes when a caller leaves an argument out is what `mlx-oss info` shows by
    default: bfloat16 on Metal, the unquantized cache, group size 64, and a source folder named CHECKPOINT."""
    from mlx_oss.info import kv_settings

    assert m20b.slot_bytes() == m20b.slot_bytes("bfloat16", None, 64) == 2 * 8 * 64 * 2
    assert m20b.slot_bytes(bits=8) == m20b.slot_bytes("bfloat16", 8, 64) == 2 * 8 * (64 + 2 * 2 * 64 // 64)
    assert m20b.kv_bytes(4096) == m20b.kv_bytes(4096, "bfloat16", None, 64)
    assert m20b.needed_bytes(4096) == m20b.needed_bytes(4096, "bfloat16", None, 64, None)
    assert kv_settings(m20b, None) == kv_settings(m20b, None, 64) == [None, 8, 4]
    assert kv_settings(m20b, None, 128) == [None]  # 128 does not divide a head of 64
    mac = [Mac("tiny", 2**20, 2**20 // 2)]  # too small for the weights as stored: --dense-bits is advised
    info = describe(tiny_hf)
    assert format_info(info, [64], macs=mac) == format_info(info, [64], macs=mac, source="CHECKPOINT")
    assert "`mlx-oss convert CHECKPOINT FOLDER --dense-bits" in format_info(info, [64], macs=mac)
    (fit,) = info_json(info, [64], macs=mac)["memory_fit"]["macs"]
    assert "`mlx-oss convert CHECKPOINT FOLDER --dense-bits" in fit["advice"]["text"]


def test_the_dtype_reaches_every_figure_it_changes(m20b):
    """float32 (the CPU backend) doubles the dense weights held, the cache and the activations."""
    c = 4096
    f32 = m20b.weight_bytes_at("float32")
    assert f32 == m20b.weight_bytes + m20b.bytes["bf16 dense"]
    assert m20b.needed_bytes(c, "float32") == f32 + m20b.kv_bytes(c, "float32") + m20b.activation_bytes(c, "float32")
    assert m20b.activation_bytes(c, "float32") == 2 * m20b.activation_bytes(c)
    limit = m20b.needed_bytes(c, "float32")
    assert m20b.longest_context(limit, dtype="float32") == c  # exactly what fits in float32
    assert m20b.longest_context(limit) > c  # in bfloat16 the same limit holds more


def test_weights_without_bf16_dense_tensors_are_held_as_stored():
    """A folder converted with --dense-bits keeps no bf16 dense tensor: its weights are the same bytes in
    any compute dtype, and a second --dense-bits is refused in words."""
    info = ModelInfo(SMALL, "mlx-oss", params={"mxfp4 experts": 100, "affine dense": 50},
                     bytes={"mxfp4 experts": 60, "affine dense": 40})  # fmt: skip
    assert info.weight_bytes_at("float32") == info.weight_bytes_at("bfloat16") == 100
    with pytest.raises(ValueError, match=r"^the dense weights are already quantized: --dense-bits does not apply$"):
        info.weights_with(8)


def test_an_attention_heavy_layer_counts_its_attention_temporaries():
    """SMALL's layer has a narrow MoE (2 experts of 96): per token its attention holds more (qkv twice,
    the output, four hidden rows) than the MoE (input copy, gate_up, SwiGLU), and the larger one counts."""
    qkv = (4 + 2 * 2) * 64
    attn, moe = 2 * qkv + 4 * 64 + 4 * 128, 2 * (128 + 3 * 96)
    assert attn > moe
    info = _small()
    assert info.activation_bytes(100) == 100 * attn * 2
    assert info.activation_bytes(4096, "float32") == 2048 * attn * 4


def test_each_format_counts_its_parameters_and_none_counted_reads_zero():
    info = ModelInfo(SMALL, "hf", bytes={"bf16 dense": 10 * 2**20})  # bytes known, parameters not counted
    row = next(line for line in format_info(info, [64], macs=[]).splitlines() if line.strip().startswith("bf16 dense"))
    assert row.split() == ["bf16", "dense", "0", "params", "10.00", "MiB"]


def test_the_advice_uses_the_group_size_asked_for(m20b):
    """`fit_macs` hands its group size to the advice: on a Mac whose limit holds 65536 tokens of an 8-bit
    cache at group 64, the advice at group 32 (whose cache costs more per token) starts from fewer tokens."""
    mac = Mac("24 GB", 24 * GiB, m20b.needed_bytes(65536, "bfloat16", 8, 64))
    (fit,) = fit_macs(m20b, [mac], [8], 32, target=131072)
    assert fit.advice == advise(m20b, mac, 131072, [8], 32) != advise(m20b, mac, 131072, [8], 64)
    assert fit.advice.default_longest == m20b.longest_context(mac.gpu_limit, 8, 32) < 65536
    assert advise(m20b, mac, 131072, [8], 64).default_longest == 65536
