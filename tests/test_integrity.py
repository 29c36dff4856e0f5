"""Damaged mlx-oss folders: every load checks the manifest, sizes and safetensors headers and names the
file in one line; `info --verify` / `load(verify=True)` hash every byte; folders without a manifest
(mlx-lm, LM Studio) still load as they are."""

from __future__ import annotations

import json
import os
import shutil

import pytest

import mlx_oss
from mlx_oss.cli.main import main
from mlx_oss.convert.manifest import verify_folder
from mlx_oss.errors import ConvertError

SHARD = "model-00001-of-00001.safetensors"


def _flip(p, at: int, n: int = 64) -> None:
    b = bytearray(p.read_bytes())
    for i in range(n):
        b[at + i] ^= 0xFF
    p.write_bytes(bytes(b))


def _truncate(p, n: int = 1000) -> None:
    p.write_bytes(p.read_bytes()[:-n])


DAMAGE = {
    "manifest deleted": (lambda d: os.remove(d / "manifest.json"), "manifest.json: missing"),
    "manifest not JSON": (lambda d: (d / "manifest.json").write_text("{oops"), "manifest.json: not valid JSON"),
    "manifest wrong shape": (lambda d: (d / "manifest.json").write_text('{"files": {"config.json": {"bytes": "1"}}}'),
                             "manifest.json: entry 'config.json' is not"),
    "shard truncated": (lambda d: _truncate(d / SHARD), f"{SHARD}: "),
    "shard header corrupt": (lambda d: _flip(d / SHARD, 12, 8), f"{SHARD}: corrupt safetensors header"),
    "shard deleted": (lambda d: os.remove(d / SHARD), f"{SHARD}: missing"),
    "stray shard": (lambda d: shutil.copy(d / SHARD, d / "model-extra.safetensors"), "model-extra.safetensors: not listed"),
}  # fmt: skip


@pytest.fixture
def damaged(tiny_chat_converted, tmp_path):
    def make(kind: str, how=None):
        d = tmp_path / kind.replace(" ", "-")
        shutil.copytree(tiny_chat_converted, d)
        (how or DAMAGE[kind][0])(d)
        return d

    return make


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_load_and_info_name_the_damaged_file_in_one_line(damaged, kind, capsys):
    d = damaged(kind)
    expect = DAMAGE[kind][1]
    with pytest.raises(ConvertError) as e:
        mlx_oss.load(d, dtype="float32")
    msg = str(e.value)
    assert expect in msg and "\n" not in msg and f"mlx-oss info --verify {d}" in msg
    for argv in (["info", str(d)], ["info", "--verify", str(d)], ["generate", "-m", str(d), "--max-tokens", "1", "x"]):
        assert main(argv) == 1, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and expect in err and "Traceback" not in err and "RuntimeError" not in err


def test_flipped_bytes_inside_tensor_data_are_found_by_the_full_check(damaged, capsys):
    d = damaged("data flipped", lambda d: _flip(d / SHARD, (d / SHARD).stat().st_size // 2))
    mlx_oss.load(d, dtype="float32")  # the cheap check cannot see it (same size, intact header)
    assert main(["info", str(d)]) == 0
    assert "sha256 not checked: --verify" in capsys.readouterr().out
    with pytest.raises(ConvertError, match=f"{SHARD}: sha256 differs from manifest.json"):
        mlx_oss.load(d, dtype="float32", verify=True)
    assert main(["info", "--verify", str(d)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "sha256 differs" in err and SHARD in err
    assert any("sha256" in p for p in verify_folder(d))


def test_an_intact_folder_verifies_and_an_mlx_lm_folder_needs_no_manifest(tiny_chat_converted, tiny_hf, tmp_path, capsys):
    assert main(["info", "--verify", str(tiny_chat_converted)]) == 0
    assert "verified: the sha256 of every file matches manifest.json" in capsys.readouterr().out
    mlx_oss.load(tiny_chat_converted, dtype="float32", verify=True)
    out = tmp_path / "mlxlm"
    assert main(["convert", "--to", "mlx-lm", str(tiny_hf), str(out), "--no-progress"]) == 0
    capsys.readouterr()
    assert not (out / "manifest.json").exists()
    mlx_oss.load(out, dtype="float32")
    assert main(["info", "--json", "--verify", str(out)]) == 0
    assert "no manifest.json" in json.loads(capsys.readouterr().out)["integrity"]
