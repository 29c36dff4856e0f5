"""`mlx-oss convert`: exact MXFP4 repacking, self-contained output, bad input never leaves a DST."""

import errno
import hashlib
import json
import shutil
import tracemalloc
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from mlx_oss.cli.main import main
from mlx_oss.convert import mxfp4
from mlx_oss.convert.convert import convert_checkpoint, is_complete
from mlx_oss.convert.manifest import verify_folder
from mlx_oss.convert.safetensors_io import StreamingWriter, read_header, read_tensor, write_file
from mlx_oss.convert.synthetic import preset, write_checkpoint
from mlx_oss.errors import ConvertError
from mlx_oss.tokenizer import bundled_vocab_path


def _load(folder: Path) -> dict[str, mx.array]:
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(mx.load(str(f)))
    return out


def _f32(a: mx.array) -> np.ndarray:
    return np.array(a.astype(mx.float32))


def test_both_layouts_convert_to_identical_bytes(tiny_hf, tiny_original, tmp_path, tiny_converted):
    b = convert_checkpoint(tiny_original, tmp_path / "b", progress=False).dst
    man_a = json.loads((tiny_converted / "manifest.json").read_text())["files"]
    man_b = json.loads((b / "manifest.json").read_text())["files"]
    shards = [k for k in man_a if k.endswith(".safetensors")]
    assert shards and all(man_a[k]["sha256"] == man_b[k]["sha256"] for k in shards)


def test_experts_stay_packed_bytes_permuted_not_requantized(tiny_original, tiny_converted):
    w = _load(tiny_converted)
    f = tiny_original / "model.safetensors"
    infos, _ = read_header(f)
    blocks = read_tensor(f, infos["block.1.mlp.mlp1_weight.blocks"])  # [E, 2I, G, 16], rows interleaved
    scales = read_tensor(f, infos["block.1.mlp.mlp1_weight.scales"])
    gu = w["layers.1.mlp.gate_up.weight"]
    assert gu.dtype == mx.uint32 and w["layers.1.mlp.gate_up.scales"].dtype == mx.uint8
    got = np.array(gu).view(np.uint8).reshape(blocks.shape)
    I = blocks.shape[1] // 2
    assert np.array_equal(got[:, :I], blocks[:, 0::2]) and np.array_equal(got[:, I:], blocks[:, 1::2])
    s = np.array(w["layers.1.mlp.gate_up.scales"])
    assert np.array_equal(s[:, :I], scales[:, 0::2]) and np.array_equal(s[:, I:], scales[:, 1::2])
    down = read_tensor(f, infos["block.1.mlp.mlp2_weight.blocks"])
    assert np.array_equal(np.array(w["layers.1.mlp.down.weight"]).view(np.uint8).reshape(down.shape), down)
    # MLX's mxfp4 kernels see the reference's values: gate rows then up rows
    deq = mx.dequantize(gu, w["layers.1.mlp.gate_up.scales"], None, group_size=32, bits=4, mode="mxfp4")
    ref = mxfp4.dequantize(blocks, scales)
    assert np.array_equal(_f32(deq), np.concatenate([ref[:, 0::2], ref[:, 1::2]], axis=1))


def test_output_is_self_contained_with_manifest(tiny_converted):
    cfg = json.loads((tiny_converted / "config.json").read_text())
    assert cfg["format"] == "mlx-oss" and cfg["format_version"] == 1
    assert cfg["num_experts"] == 8 and cfg["sliding_window"] == 8 and cfg["layer_types"][0] == "sliding_attention"
    assert cfg["quantization"]["experts"] == {"mode": "mxfp4", "bits": 4, "group_size": 32}
    tok = tiny_converted / "tokenizer" / "o200k_base.tiktoken"
    assert tok.read_bytes() == bundled_vocab_path().read_bytes()
    man = json.loads((tiny_converted / "manifest.json").read_text())["files"]
    for rel, meta in man.items():
        assert hashlib.sha256((tiny_converted / rel).read_bytes()).hexdigest() == meta["sha256"]
    assert {"config.json", "model.safetensors.index.json", "tokenizer/o200k_base.tiktoken"} <= set(man)
    index = json.loads((tiny_converted / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(_load(tiny_converted))
    assert verify_folder(tiny_converted) == []
    assert not list(tiny_converted.parent.glob(".*partial*"))


def test_verify_detects_a_flipped_byte(tiny_hf, tmp_path, capsys):
    dst = convert_checkpoint(tiny_hf, tmp_path / "v", progress=False).dst
    shard = next(dst.glob("*.safetensors"))
    data = bytearray(shard.read_bytes())
    data[-5] ^= 0xFF
    shard.write_bytes(bytes(data))
    assert any("sha256" in p for p in verify_folder(dst))
    assert main(["convert", str(tiny_hf), str(dst), "--verify", "--no-progress"]) == 1
    assert "verify failed" in capsys.readouterr().err


def test_existing_complete_dst_is_left_alone_unless_force(tiny_hf, tmp_path, capsys):
    dst = tmp_path / "d"
    assert main(["convert", str(tiny_hf), str(dst), "--no-progress"]) == 0
    shard = next(dst.glob("*.safetensors"))
    mtime = shard.stat().st_mtime_ns
    assert main(["convert", str(tiny_hf), str(dst), "--no-progress"]) == 0
    assert "already converted" in capsys.readouterr().out
    assert shard.stat().st_mtime_ns == mtime
    assert main(["convert", str(tiny_hf), str(dst), "--force", "--verify", "--no-progress"]) == 0
    assert "verified" in capsys.readouterr().out
    assert is_complete(dst) and not list(tmp_path.glob(".*"))


def test_hub_snapshot_and_bare_original_are_detected(tiny_hub, tmp_path):
    only_original = tmp_path / "snap"
    shutil.copytree(tiny_hub / "original", only_original / "original")
    r = convert_checkpoint(only_original, tmp_path / "o", progress=False)
    assert r.layout == "original"
    assert convert_checkpoint(tiny_hub, tmp_path / "h", progress=False).layout == "hf"


@pytest.mark.parametrize("bits,max_err", [(8, 0.02), (4, 0.3)])
def test_dense_quantization_reports_its_error(tiny_hf, tmp_path, bits, max_err, tiny_converted):
    r = convert_checkpoint(tiny_hf, tmp_path / f"q{bits}", dense_bits=bits, progress=False)
    w, ref = _load(r.dst), _load(tiny_converted)
    for name in ("embed", "unembed", "layers.0.attn.qkv", "layers.3.attn.out"):
        assert w[name + ".weight"].dtype == mx.uint32 and name + ".biases" in w
        deq = mx.dequantize(w[name + ".weight"], w[name + ".scales"], w[name + ".biases"], group_size=64, bits=bits)
        exact = _f32(ref[name + ".weight"])
        rel = np.linalg.norm(_f32(deq) - exact) / np.linalg.norm(exact)
        assert 0 < rel < max_err
    assert w["layers.0.mlp.gate_up.weight"].dtype == mx.uint32  # experts untouched
    assert np.array_equal(np.array(w["layers.0.mlp.gate_up.weight"]), np.array(ref["layers.0.mlp.gate_up.weight"]))
    dense = json.loads((r.dst / "config.json").read_text())["quantization"]["dense"]
    errs = dense.pop("relative_error")
    assert dense == {"mode": "affine", "bits": bits, "group_size": 64, "modules": ["attn.qkv", "attn.out", "embed", "unembed"]}
    assert set(errs) == set(r.dense_errors) and all(0 < e < max_err for e in errs.values())
    assert errs == {n: round(e, 6) for n, e in r.dense_errors.items()}


def _convert_peak(tmp_path, name: str, layers: int) -> tuple[int, int]:
    spec = preset("tiny", hidden_size=256, intermediate_size=256, num_experts=16, num_hidden_layers=layers)
    src = write_checkpoint(tmp_path / name, spec, "hf")
    size = sum(p.stat().st_size for p in src.glob("*.safetensors"))
    tracemalloc.start()
    convert_checkpoint(src, tmp_path / f"{name}-out", progress=False)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return size, peak


def test_peak_memory_does_not_grow_with_checkpoint(tmp_path):
    """Streaming: 6x the checkpoint, same peak allocation (one expert / row chunk at a time)."""
    small_size, small_peak = _convert_peak(tmp_path, "small", 2)
    big_size, big_peak = _convert_peak(tmp_path, "big", 12)
    assert big_size > 5 * small_size
    assert big_peak < 1.2 * small_peak + 256 * 1024
    assert big_peak < big_size / 4


# ------------------------------------------------------------------ bad input: one line, exit 1, no DST


def _rewrite(shard: Path, edit) -> None:
    """Rewrite a safetensors shard through `edit(dict name -> (dtype, array))`."""
    infos, meta = read_header(shard)
    tensors = {n: (i.dtype, read_tensor(shard, i)) for n, i in infos.items()}
    edit(tensors)
    write_file(shard, tensors, meta)


def _layer_shard(folder: Path) -> Path:
    return folder / "model-00002-of-00006.safetensors"


def _broken(tiny_hub, tmp_path, how: str) -> Path:
    src = tmp_path / "src"
    shutil.copytree(tiny_hub, src, ignore=shutil.ignore_patterns("original"))
    sinks = "model.layers.0.self_attn.sinks"
    if how == "missing tensor":
        _rewrite(_layer_shard(src), lambda t: t.pop(sinks))
        idx = json.loads((src / "model.safetensors.index.json").read_text())
        del idx["weight_map"][sinks]
        (src / "model.safetensors.index.json").write_text(json.dumps(idx))
    elif how == "unexpected tensor":
        _rewrite(_layer_shard(src), lambda t: t.update({"model.layers.0.extra": ("BF16", np.zeros(4, np.uint16))}))
    elif how == "wrong shape":
        _rewrite(_layer_shard(src), lambda t: t.update({sinks: ("BF16", np.zeros(15, np.uint16))}))
    elif how == "wrong dtype":
        _rewrite(_layer_shard(src), lambda t: t.update({sinks: ("F32", np.zeros(16, np.float32))}))
    elif how == "truncated shard":
        p = _layer_shard(src)
        p.write_bytes(p.read_bytes()[:-1000])
    elif how == "corrupt header":
        p = _layer_shard(src)
        data = bytearray(p.read_bytes())
        data[8:20] = b"\x00garbage!!\xff\xfe"
        p.write_bytes(bytes(data))
    elif how == "config disagrees":
        cfg = json.loads((src / "config.json").read_text())
        cfg["num_local_experts"] = 16
        (src / "config.json").write_text(json.dumps(cfg))
    elif how == "neither layout":
        shutil.rmtree(src)
        src.mkdir()
        (src / "notes.txt").write_text("hello")
    elif how == "src missing":
        shutil.rmtree(src)
    return src


@pytest.mark.parametrize(
    "how,expect",
    [
        ("src missing", "no such file or folder"),
        ("neither layout", "not a gpt-oss checkpoint"),
        ("missing tensor", "tensor model.layers.0.self_attn.sinks missing"),
        ("unexpected tensor", "unexpected tensor model.layers.0.extra"),
        ("wrong shape", "model.layers.0.self_attn.sinks has shape [15], expected [16]"),
        ("wrong dtype", "model.layers.0.self_attn.sinks has dtype F32, expected BF16"),
        ("truncated shard", "truncated"),
        ("corrupt header", "corrupt safetensors header"),
        ("config disagrees", "num_local_experts"),
    ],
)
def test_bad_input_is_one_line_and_leaves_no_dst(tiny_hub, tmp_path, capsys, how, expect):
    src = _broken(tiny_hub, tmp_path, how)
    dst = tmp_path / "out" / "dst"
    assert main(["convert", str(src), str(dst), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("mlx-oss: error: ") and expect in err, err
    assert "Traceback" not in err
    out = tmp_path / "out"
    assert not dst.exists() and (not out.exists() or not list(out.iterdir()))


def test_full_disk_before_writing(tiny_hf, tmp_path, capsys, monkeypatch):
    import mlx_oss.convert.convert as cc

    monkeypatch.setattr(cc.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9 - 10, 10))
    assert main(["convert", str(tiny_hf), str(tmp_path / "dst"), "--no-progress"]) == 1
    assert "no space left on device" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_disk_fills_mid_write_leaves_nothing(tiny_hf, tmp_path, capsys, monkeypatch):
    written = {"n": 0}
    real_put = StreamingWriter._put

    def put(self, data):
        written["n"] += len(data)
        if written["n"] > 200_000:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_put(self, data)

    monkeypatch.setattr(StreamingWriter, "_put", put)
    assert main(["convert", str(tiny_hf), str(tmp_path / "dst"), "--no-progress"]) == 1
    assert "no space left on device" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # neither DST nor the hidden partial folder


def test_read_only_destination(tiny_hf, tmp_path, capsys, monkeypatch):
    real_mkdir = Path.mkdir

    def mkdir(self, *a, **k):
        if self.name.startswith(".dst.partial"):
            raise OSError(errno.EROFS, "Read-only file system")
        return real_mkdir(self, *a, **k)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    assert main(["convert", str(tiny_hf), str(tmp_path / "dst"), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "not writable (Read-only file system)" in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_refuses_to_overwrite_a_foreign_folder(tiny_hf, tmp_path, capsys):
    dst = tmp_path / "mine"
    dst.mkdir()
    (dst / "precious.txt").write_text("keep me")
    for force in ([], ["--force"]):  # --force replaces only a complete mlx-oss output: never suggested here
        assert main(["convert", str(tiny_hf), str(dst), "--no-progress", *force]) == 1
        err = capsys.readouterr().err
        assert "not a complete mlx-oss output" in err and "--force" not in err
        assert (dst / "precious.txt").read_text() == "keep me"


def test_small_shard_size_splits_and_the_split_folder_loads_the_same_model(tiny_hf, tiny_converted, tmp_path, capsys):
    """What the real 20b/120b produce: several shards, an index naming each tensor's shard; loading
    gives the same weights and logits as the one-shard conversion."""
    from mlx_oss.loader import load_model

    dst = tmp_path / "sharded"
    limit = 200_000
    assert main(["convert", str(tiny_hf), str(dst), "--shard-size", str(limit / 1e9), "--no-progress", "--verify"]) == 0
    assert "verified" in capsys.readouterr().out
    files = sorted(p.name for p in dst.glob("*.safetensors"))
    n = len(files)
    assert n >= 3 and files == [f"model-{k:05d}-of-{n:05d}.safetensors" for k in range(1, n + 1)]
    index = json.loads((dst / "model.safetensors.index.json").read_text())["weight_map"]
    assert set(index.values()) == set(files)
    seen: set[str] = set()
    sizes = []
    for f in files:
        tensors = mx.load(str(dst / f))
        assert set(read_header(dst / f)[0]) == set(tensors)
        assert all(index[name] == f for name in tensors) and not seen & set(tensors)
        seen |= set(tensors)
        size = sum(t.nbytes for t in tensors.values())
        assert size <= limit or len(tensors) == 1  # a tensor bigger than the limit gets a shard of its own
        sizes.append(size)
    assert all(a + b > limit for a, b in zip(sizes, sizes[1:]))  # filled: the next shard's start did not fit
    one = _load(tiny_converted)
    assert seen == set(one) == set(index)
    assert all(np.array_equal(_f32(one[k]), _f32(v)) for k, v in _load(dst).items())
    tokens = mx.array([[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]])
    a = load_model(dst, "float32")(tokens)
    b = load_model(tiny_converted, "float32")(tokens)
    assert np.array_equal(np.array(a), np.array(b))


def test_refuses_to_convert_an_mlx_oss_folder(tiny_converted, tmp_path, capsys):
    dst = tmp_path / "again"
    assert main(["convert", str(tiny_converted), str(dst), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "already an mlx-oss folder" in err and err.count("\n") == 1
    assert not dst.exists()


# ------------------------------------------------------------------ what convert_checkpoint returns and writes


def test_result_config_index_and_manifest_in_full(tiny_hf, tmp_path, capsys):
    r = convert_checkpoint(tiny_hf, tmp_path / "full", progress=False)
    shards = sorted(r.dst.glob("*.safetensors"))
    size = sum(p.stat().st_size for p in shards)
    assert (r.dst, r.layout, r.files, r.bytes_written, r.dense_errors, r.skipped) == (
        tmp_path / "full", "hf", len(shards), size, {}, False)  # fmt: skip
    assert capsys.readouterr().err == ""  # progress=False: no bar
    cfg = json.loads((r.dst / "config.json").read_text())
    assert (cfg["format"], cfg["format_version"], cfg["model_type"], cfg["gate_up_layout"]) == ("mlx-oss", 1, "gpt_oss", "halves")
    assert cfg["source"] == {"layout": "hf", "path": str(tiny_hf)}
    assert cfg["quantization"] == {"experts": {"mode": "mxfp4", "bits": 4, "group_size": 32}, "dense": None}
    index = json.loads((r.dst / "model.safetensors.index.json").read_text())
    assert index["metadata"] == {"total_size": size}
    man = json.loads((r.dst / "manifest.json").read_text())
    assert man["format_version"] == 1 and set(man["files"]) == {p.name for p in shards} | {
        "config.json", "model.safetensors.index.json", "tokenizer/o200k_base.tiktoken"}  # fmt: skip
    for rel in ("config.json", "model.safetensors.index.json", "manifest.json"):  # readable JSON, one key a line
        text = (r.dst / rel).read_text()
        assert text.startswith('{\n  "') and text.endswith("}\n") and "\n\n" not in text

    again = convert_checkpoint(tiny_hf, tmp_path / "full", progress=False)
    assert (again.dst, again.layout, again.bytes_written, again.files, again.skipped) == (r.dst, "hf", 0, 0, True)


def test_progress_bar_by_default(tiny_hf, tmp_path, capsys):
    convert_checkpoint(tiny_hf, tmp_path / "p")  # not a terminal: a line per tenth, the last one at 100%
    lines = capsys.readouterr().err.splitlines()
    assert lines and all(l.startswith("converting [") for l in lines) and "] 100.0%" in lines[-1]


def test_progress_counts_the_source_bytes_a_quantized_weight_reads(tiny_hf):
    """--dense-bits: a weight's progress is the BF16 it reads, not the smaller packed output; its scales and
    biases (made from it) and every copied tensor count their own size."""
    from mlx_oss.convert import dense_quant
    from mlx_oss.convert.convert import _plan
    from mlx_oss.convert.reader import open_source
    from mlx_oss.convert.safetensors_io import nbytes_of

    source = open_source(tiny_hf)
    outs, _ = _plan(source, 8)
    shapes = {spec.name: spec.shape for spec in source.specs()}
    quantized = [o for o in outs if dense_quant.is_quantizable(o.name)]
    assert quantized and all(o.source_bytes == nbytes_of("BF16", shapes[o.name]) for o in quantized)
    assert all(o.source_bytes == 0 for o in outs if o not in quantized)


def test_quantizing_in_row_chunks_changes_nothing(tiny_hf, tmp_path, monkeypatch):
    """Rows are quantized a chunk at a time (memory): with 3-row chunks (every tensor spans many, the
    embedding has more rows than columns) the output is the same as in one piece."""
    from mlx_oss.convert import dense_quant

    whole = convert_checkpoint(tiny_hf, tmp_path / "whole", dense_bits=8, progress=False).dst
    monkeypatch.setattr(dense_quant, "ROWS_PER_CHUNK", 3)
    chunked = convert_checkpoint(tiny_hf, tmp_path / "chunked", dense_bits=8, progress=False).dst
    a, b = _tensors_of(whole), _tensors_of(chunked)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def _tensors_of(folder: Path) -> dict[str, np.ndarray]:
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        infos, _ = read_header(f)
        out.update({name: read_tensor(f, info) for name, info in infos.items()})
    return out


def test_default_shard_limit_is_2_gib(tiny_hf, tmp_path, monkeypatch):
    import mlx_oss.convert.convert as cc

    limits = []
    real = cc.plan_shards
    monkeypatch.setattr(cc, "plan_shards", lambda outs, max_bytes: limits.append(max_bytes) or real(outs, max_bytes))
    convert_checkpoint(tiny_hf, tmp_path / "s", progress=False)
    convert_checkpoint(tiny_hf, tmp_path / "t", progress=False, max_shard_bytes=12345)
    assert limits == [2 * 1024**3, 12345]


def test_destination_paths_expand_home_and_become_absolute(tiny_hf, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert convert_checkpoint(tiny_hf, "~/out", progress=False).dst == tmp_path / "home" / "out"
    monkeypatch.chdir(tmp_path)
    r = convert_checkpoint(tiny_hf, "rel", progress=False)
    assert r.dst == tmp_path / "rel" and r.dst.is_absolute() and is_complete(r.dst)


def test_dense_bits_other_than_4_or_8_are_refused_first(tmp_path):
    with pytest.raises(ConvertError) as e:
        convert_checkpoint(tmp_path / "no-such-src", tmp_path / "dst", dense_bits=3, progress=False)
    assert str(e.value) == "--dense-bits must be 4 or 8, not 3"
    assert not (tmp_path / "dst").exists()


def test_refusals_name_the_folder(tiny_converted, tmp_path, monkeypatch):
    import mlx_oss.convert.convert as cc

    with pytest.raises(ConvertError) as e:
        convert_checkpoint(tiny_converted, tmp_path / "x", progress=False)
    assert str(e.value) == f"{tiny_converted}: already an mlx-oss folder; nothing to convert"
    lm = type("Source", (), {"layout": "mlx-lm", "root": tmp_path / "lm", "dense_quant": {"embed": object()}})
    monkeypatch.setattr(cc, "open_source", lambda src: lm)
    for bits in (4, 8):
        with pytest.raises(ConvertError) as e:
            convert_checkpoint("lm", tmp_path / "y", dense_bits=bits, progress=False)
        assert str(e.value) == f"--dense-bits: {tmp_path / 'lm'} is an mlx-lm folder; its own quantization is kept as it is"
    assert not (tmp_path / "y").exists()


def test_is_complete_needs_our_config_and_every_file_at_full_size(tiny_converted, tmp_path):
    assert is_complete(tiny_converted)
    assert not is_complete(tmp_path / "missing")

    def copy(name: str) -> Path:
        d = tmp_path / name
        shutil.copytree(tiny_converted, d)
        return d

    d = copy("short")
    shard = next(d.glob("*.safetensors"))
    shard.write_bytes(shard.read_bytes()[:-1])
    assert not is_complete(d)
    d = copy("gone")
    next(d.glob("*.safetensors")).unlink()
    assert not is_complete(d)
    d = copy("shard-dir")  # a folder where a file should be
    shard = next(d.glob("*.safetensors"))
    shard.unlink()
    shard.mkdir()
    assert not is_complete(d)
    d = copy("other-format")
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "format": "mlx-lm"}))
    assert not is_complete(d)
    d = copy("no-format")
    (d / "config.json").write_text(json.dumps({k: v for k, v in cfg.items() if k != "format"}))
    assert not is_complete(d)
    d = copy("list-config")
    (d / "config.json").write_text("[1, 2]")
    assert not is_complete(d)
    d = copy("bad-json")
    (d / "config.json").write_text("{")
    assert not is_complete(d)
    d = copy("no-manifest")
    (d / "manifest.json").unlink()
    assert not is_complete(d)
    d = copy("bad-manifest")
    (d / "manifest.json").write_text('{"format_version": 1, "files": [1]}')
    assert not is_complete(d)


def test_an_incomplete_or_foreign_destination_is_refused_even_with_force(tiny_hf, tiny_converted, tmp_path):
    """--force replaces only what a manifest shows mlx-oss wrote, complete (convert/safe_paths.py)."""
    dst = tmp_path / "half"
    shutil.copytree(tiny_converted, dst)
    (dst / "manifest.json").unlink()  # an interrupted copy: nothing says mlx-oss wrote these files
    for force in (False, True):
        with pytest.raises(ConvertError) as e:
            convert_checkpoint(tiny_hf, dst, force=force, progress=False)
        assert str(e.value) == (f"{dst}: exists, is not empty and is not a complete mlx-oss output (no manifest.json); "
                                "remove it yourself or choose another DST")  # fmt: skip
    assert sorted(p.name for p in dst.iterdir()) == sorted(p.name for p in tiny_converted.iterdir() if p.name != "manifest.json")
    shutil.rmtree(dst)
    shutil.copytree(tiny_converted, dst)
    r = convert_checkpoint(tiny_hf, dst, force=True, progress=False)  # complete: --force replaces it
    assert not r.skipped and r.files >= 1 and is_complete(dst) and verify_folder(dst) == []

    f = tmp_path / "a-file"
    f.write_text("not a folder")
    for force in (False, True):
        with pytest.raises(ConvertError, match="exists and is not a folder; choose another DST"):
            convert_checkpoint(tiny_hf, f, force=force, progress=False)
    assert f.read_text() == "not a folder"

    empty = tmp_path / "empty"
    empty.mkdir()  # an empty folder is a fine destination
    assert is_complete(convert_checkpoint(tiny_hf, empty, progress=False).dst)
