"""`mlx-oss info`, Hub ids and the convert-once model cache."""

import json
import shutil
import subprocess
import sys

import pytest

from mlx_oss.convert.synthetic import PRESETS
from mlx_oss.cli.main import main
from mlx_oss.info import describe
from mlx_oss.store import resolve_model


def _real_config(tmp_path, name: str, layout: str = "hf"):
    d = PRESETS[name]
    folder = tmp_path / name
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(d.hf_config() if layout == "hf" else d.original_config()))
    return folder


def test_info_on_real_20b_config(tmp_path, capsys):
    folder = _real_config(tmp_path, "20b")
    info = describe(folder)
    assert 20.8e9 < info.total_params < 21.0e9  # OpenAI: 21B total
    assert info.weight_bytes <= 13.5 * 2**30  # MXFP4 experts + bf16 dense
    assert info.kv_bytes_per_token("bfloat16") == 12 * 2 * 8 * 64 * 2  # 12 full layers, K and V
    # sliding layers cost a fixed 128 tokens, whatever the context
    assert info.kv_bytes(131072) - info.kv_bytes(4096) == info.kv_bytes_per_token() * (131072 - 4096)
    assert main(["info", str(folder), "--json", "--context", "4096,131072"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["weight_bytes"] == info.weight_bytes
    assert out["memory_bytes"]["131072"]["bfloat16"] == info.weight_bytes + info.kv_bytes(131072)


def test_info_on_120b_original_config_file(tmp_path, capsys):
    folder = _real_config(tmp_path, "120b", "original")
    assert main(["info", str(folder / "config.json")]) == 0
    text = capsys.readouterr().out
    assert "36 (18 sliding-window 128, 18 full)" in text and "116.83 B" in text


def test_info_same_for_checkpoint_and_converted_folder(tiny_original, tiny_converted):
    a, b = describe(tiny_original), describe(tiny_converted)
    assert a.layout == "original" and b.layout == "mlx-oss"
    assert a.params == b.params and a.bytes == b.bytes


def test_info_counts_quantized_dense(tiny_hf, tmp_path):
    from mlx_oss.convert.convert import convert_checkpoint

    q = convert_checkpoint(tiny_hf, tmp_path / "q8", dense_bits=8, progress=False).dst
    base, quant = describe(tiny_hf), describe(q)
    assert quant.total_params == base.total_params  # same model, other storage
    assert quant.bytes["affine dense"] < base.bytes["bf16 dense"]


def test_bad_arguments_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["info"])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        main(["convert", "a", "b", "--dense-bits", "3"])
    assert e.value.code == 2


def test_convert_from_hub_id(tiny_hub, tmp_path, monkeypatch, capsys):
    calls = []

    def fake_snapshot_download(repo_id, revision=None, allow_patterns=None):
        calls.append((repo_id, allow_patterns))
        return str(tiny_hub)

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    monkeypatch.chdir(tmp_path)
    assert main(["convert", "openai/gpt-oss-20b", str(tmp_path / "dst"), "--no-progress"]) == 0
    assert calls[0][0] == "openai/gpt-oss-20b"
    assert not any(p.startswith(("original", "metal")) for p in calls[0][1])  # one layout, not three


def test_hub_errors_and_missing_extra_are_one_line(tmp_path, monkeypatch, capsys):
    import huggingface_hub

    def boom(*a, **k):
        raise ConnectionError("Cannot reach huggingface.co\nmore detail")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", boom)
    assert main(["convert", "openai/gpt-oss-20b", "dst"]) == 1
    err = capsys.readouterr().err
    assert err == ("mlx-oss: error: openai/gpt-oss-20b: no such local folder, and the download from the Hugging Face Hub "
                   "failed (Cannot reach huggingface.co)\n")
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    assert main(["convert", "openai/gpt-oss-20b", "dst"]) == 1
    assert "pip install 'mlx-oss[hub]'" in capsys.readouterr().err


def test_a_mistyped_relative_path_is_not_sent_to_the_hub(tmp_path, monkeypatch, capsys):
    """`-m models/gpt-oss-20b` next to a `models/` folder is a path that does not exist, not a Hub id."""
    import huggingface_hub

    calls = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda *a, **k: calls.append(a))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    for argv in (["generate", "-m", "models/gpt-oss-20b", "x"], ["info", "models/gpt-oss-20b"],
                 ["convert", "models/gpt-oss-20b", "out"]):  # fmt: skip
        assert main(argv) == 1
        assert capsys.readouterr().err == "mlx-oss: error: models/gpt-oss-20b: no such file or folder\n"
    assert calls == []


def test_resolve_model_converts_once_into_cache(tiny_hub, tmp_path, monkeypatch):
    import huggingface_hub

    downloads = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo_id, **k: downloads.append(repo_id) or str(tiny_hub))
    monkeypatch.setenv("MLX_OSS_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    first = resolve_model("openai/gpt-oss-20b", progress=False)
    assert first == tmp_path / "home" / "openai--gpt-oss-20b"
    assert resolve_model("openai/gpt-oss-20b", progress=False) == first
    assert downloads == ["openai/gpt-oss-20b"]  # second call: straight from the cache
    assert resolve_model(str(first)) == first  # a converted folder is used as it is
    local = resolve_model(str(tiny_hub / "original"), progress=False)
    assert local.parent == tmp_path / "home" and (local / "manifest.json").is_file()


def test_info_names_a_bad_config_json(tiny_converted, tmp_path, capsys):
    bad = tmp_path / "bad"
    shutil.copytree(tiny_converted, bad)
    (bad / "config.json").write_text("{bad")
    for target in (bad, bad / "config.json"):
        assert main(["info", str(target)]) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"mlx-oss: error: {bad / 'config.json'}: not valid JSON") and err.count("\n") == 1


def test_a_closed_pipe_ends_quietly_like_other_unix_tools(tiny_converted):
    """`mlx-oss info X | head -1`: no BrokenPipeError traceback, the SIGPIPE status (141)."""
    p = subprocess.Popen([sys.executable, "-m", "mlx_oss.cli.main", "info", str(tiny_converted), "--context", ",".join(["4096"] * 2000)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    p.stdout.readline()
    p.stdout.close()  # the reader goes away while info still writes
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 141 and err == ""


def test_hub_progress_bars_only_on_a_terminal(tmp_path, monkeypatch, capsys):
    """huggingface_hub's tqdm bars redraw with \\r: not into a log file or a pipe (stderr is captured here)."""
    import huggingface_hub
    from huggingface_hub.utils import are_progress_bars_disabled

    seen = []

    def fake(*a, **k):
        seen.append(are_progress_bars_disabled())
        raise ConnectionError("offline")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    assert not are_progress_bars_disabled()
    assert main(["convert", "openai/gpt-oss-20b", "dst"]) == 1
    assert seen == [True] and not are_progress_bars_disabled()  # off for the download, restored after
    from mlx_oss.convert.hub import download

    with pytest.raises(Exception):
        download("openai/gpt-oss-20b", bars=True)  # the TUI captures them for its loading screen
    assert seen == [True, False]
    capsys.readouterr()
