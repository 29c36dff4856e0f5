"""Open a checkpoint folder in any layout and serve its tensors in OUR naming and layout.

`open_source` detects the layout (Hugging Face, OpenAI `original/`, mlx-lm / mlx-community, or an
mlx-oss folder), reads every
safetensors header, and checks names, dtypes and shapes against the config before anything is
converted, so bad input fails fast with one line and nothing half-written.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from mlx_oss.convert import mlx_lm_layout, mxfp4
from mlx_oss.errors import ConvertError
from mlx_oss.config import Dims, read_json_object
from mlx_oss.convert.layouts import Source, Spec, our_specs, source_map, source_specs
from mlx_oss.convert.safetensors_io import TensorInfo, read_header, read_tensor

FORMAT_NAME = "mlx-oss"
FORMAT_VERSION = 1
DENSE_ROW_CHUNK = 16384  # rows per read for big dense matrices (bounded memory)


def _has_mlx_lm_names(path: Path) -> bool:
    """mlx-lm's sanitized expert names (`experts.gate_proj.*`), from the index or the first shard's header."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        names = (read_json_object(index).get("weight_map") or {}).keys()
    else:
        files = sorted(path.glob("*.safetensors"))
        names = read_header(files[0])[0].keys() if files else ()
    return any(".experts.gate_proj." in n or n.endswith(".experts.down_proj.weight") for n in names)


def detect_layout(path: Path) -> tuple[str, Path]:
    """-> (layout, folder): "hf", "original", "mlx-lm" or "mlx-oss"; looks inside `original/` of a Hub
    snapshot. mlx-lm folders have model_type gpt_oss like HF ones, plus mlx-lm's `quantization` block
    or its split expert names."""
    path = Path(path)
    if not path.exists():
        raise ConvertError(f"{path}: no such file or folder")
    if not path.is_dir():
        raise ConvertError(f"{path}: expected a checkpoint folder, got a file")
    cfg_path = path / "config.json"
    if cfg_path.is_file():
        cfg = read_json_object(cfg_path)
        has_st = any(path.glob("*.safetensors"))
        if cfg.get("format") == FORMAT_NAME:
            return "mlx-oss", path
        if cfg.get("model_type") == "gpt_oss" and (has_st or (path / "model.safetensors.index.json").is_file()):
            if isinstance(cfg.get("quantization"), dict) or _has_mlx_lm_names(path):
                return "mlx-lm", path
            return "hf", path
        if "num_experts" in cfg and "experts_per_token" in cfg and has_st:
            return "original", path
    if (path / "original" / "config.json").is_file():
        return detect_layout(path / "original")
    raise ConvertError(
        f"{path}: not a gpt-oss checkpoint (expected config.json with model_type gpt_oss and model*.safetensors, "
        "or OpenAI's original/ layout with config.json and model.safetensors)"
    )


@dataclass
class SourceCheckpoint:
    """A validated checkpoint; `tensors()` yields our tensors one by one, in file order."""

    root: Path
    layout: str
    dims: Dims
    config: dict
    files: dict[str, tuple[Path, TensorInfo]]  # source name -> (file, header entry)
    sources: dict[str, Source]  # our name -> how to build it
    planned: list[Spec] | None = None  # mlx-lm: our tensors (their dtypes and quantization decide them)
    dense_quant: dict[str, mlx_lm_layout.Quant] | None = None  # mlx-lm: our module -> affine quantization

    def specs(self) -> list[Spec]:
        """Our tensors (name, dtype, shape), in the order they are written."""
        if self.planned is not None:
            return list(self.planned)
        if self.layout == "mlx-oss":
            return [Spec(n, i.dtype, i.shape) for n, (_, i) in self.files.items()]
        return list(our_specs(self.dims))

    @property
    def source_bytes(self) -> int:
        return sum(info.nbytes for _, info in self.files.values())

    def chunks(self, name: str) -> Iterator[np.ndarray]:
        """Our tensor `name` in pieces along axis 0 (one expert, or up to 16k rows at a time)."""
        src = self.sources[name]
        if src.kind == "concat":
            for n in src.names:
                yield self._read(n)
            return
        if src.kind == "halves":  # mlx-lm gate_proj + up_proj -> our gate_up, one expert at a time
            parts = [self.files[n] for n in src.names]
            for e in range(parts[0][1].shape[0]):
                yield np.concatenate([read_tensor(p, i, slice(e, e + 1)) for p, i in parts], axis=1)
            return
        path, info = self.files[src.names[0]]
        rows = info.shape[0] if info.shape else 1
        step = 1 if src.kind != "copy" or len(info.shape) == 3 else DENSE_ROW_CHUNK
        if len(info.shape) <= 1:
            yield read_tensor(path, info)
            return
        for r0 in range(0, rows, step):
            c = read_tensor(path, info, slice(r0, min(rows, r0 + step)))
            if src.kind in ("deint", "deint_words"):
                n = c.shape[1]
                perm = np.concatenate([np.arange(0, n, 2), np.arange(1, n, 2)])
                c = c[:, perm]
            if src.kind in ("mx_words", "deint_words"):
                c = mxfp4.blocks_to_words(c)
            yield c

    def tensor(self, name: str) -> np.ndarray:
        return np.concatenate(list(self.chunks(name)), axis=0)

    def tensors(self) -> Iterator[tuple[Spec, np.ndarray]]:
        """Every tensor, whole (for in-memory loading; the converter streams `chunks` instead)."""
        for s in self.specs():
            yield s, self.tensor(s.name).reshape(s.shape)

    def _read(self, source_name: str) -> np.ndarray:
        path, info = self.files[source_name]
        return read_tensor(path, info)


def dims_for(layout: str, cfg: dict, cfg_path: Path) -> Dims:
    """The config of a `layout` folder, every value checked (ConvertError naming the file and field)."""
    if layout in ("hf", "mlx-lm"):
        return Dims.from_hf(cfg, str(cfg_path))
    if layout == "original":
        return Dims.from_original(cfg, str(cfg_path))
    return Dims.from_ours(cfg, str(cfg_path))


def _shard_files(root: Path, layout: str) -> list[Path]:
    index = root / "model.safetensors.index.json"
    if layout in ("hf", "mlx-oss", "mlx-lm") and index.is_file():
        wm = read_json_object(index).get("weight_map")
        if not isinstance(wm, dict):
            raise ConvertError(f"{index}: field weight_map missing")
        files = []
        for fname in dict.fromkeys(wm.values()):
            p = root / fname
            if not p.is_file():
                raise ConvertError(f"{p}: shard listed in {index.name} is missing")
            files.append(p)
        return files
    files = sorted(root.glob("*.safetensors"))
    if not files:
        raise ConvertError(f"{root}: no .safetensors files")
    return files


def _expected_field(spec_name: str, layout: str) -> str:
    if any(k in spec_name for k in ("expert", "mlp1", "mlp2", "router", "mlp.gate")):
        return "num_local_experts" if layout == "hf" else "num_experts"
    if "embed" in spec_name or "lm_head" in spec_name:
        return "vocab_size/hidden_size"
    return "hidden_size/head_dim/num_attention_heads/num_key_value_heads"


def open_source(path: str | Path) -> SourceCheckpoint:
    """Detect, read headers, validate every tensor against the config. Raises ConvertError."""
    layout, root = detect_layout(Path(path))
    cfg_path = root / "config.json"
    cfg = read_json_object(cfg_path)
    if layout == "mlx-oss" and cfg.get("format_version") != FORMAT_VERSION:
        raise ConvertError(f"{cfg_path}: field format_version is {cfg.get('format_version')!r}, expected {FORMAT_VERSION}")
    dims = dims_for(layout, cfg, cfg_path)
    files: dict[str, tuple[Path, TensorInfo]] = {}
    for f in _shard_files(root, layout):
        infos, _ = read_header(f)
        for name, info in infos.items():
            if name in files:
                raise ConvertError(f"{f}: tensor {name} also appears in {files[name][0].name}")
            files[name] = (f, info)
    if layout == "mlx-oss":
        return SourceCheckpoint(root, layout, dims, cfg, files, {n: Source((n,)) for n in files})
    if layout == "mlx-lm":
        return _open_mlx_lm(root, cfg, cfg_path, dims, files)
    expected = source_specs(layout, dims)
    for name, spec in expected.items():
        if name not in files:
            raise ConvertError(f"{root}: tensor {name} missing (expected {spec.dtype} {list(spec.shape)})")
        f, info = files[name]
        if info.dtype != spec.dtype:
            raise ConvertError(f"{f}: tensor {name} has dtype {info.dtype}, expected {spec.dtype}")
        if info.shape != spec.shape:
            field = _expected_field(name, layout)
            raise ConvertError(
                f"{f}: tensor {name} has shape {list(info.shape)}, expected {list(spec.shape)} "
                f"from {cfg_path.name} ({field})"
            )
    for name, (f, _) in files.items():
        if name not in expected:
            raise ConvertError(f"{f}: unexpected tensor {name} (not part of a {layout} gpt-oss checkpoint with this config)")
    return SourceCheckpoint(root, layout, dims, cfg, files, source_map(layout, dims))


def _open_mlx_lm(root: Path, cfg: dict, cfg_path: Path, dims: Dims, files: dict) -> SourceCheckpoint:
    """Validate an mlx-lm folder against its own quantization block; tensors map to ours unchanged."""
    p = mlx_lm_layout.plan(cfg, cfg_path, dims, files)
    module_of = {n: t for t in p.quant for n in (t + ".weight", t + ".scales", t + ".biases")}
    for name, spec in p.expected.items():
        if name not in files:
            raise ConvertError(f"{root}: tensor {name} missing (expected {spec.dtype} {list(spec.shape)})")
        f, info = files[name]
        mod = module_of.get(name)
        how = f" for {p.quant[mod] or 'unquantized'} ({cfg_path.name} quantization of {mod})" if mod else ""
        if info.dtype != spec.dtype:
            raise ConvertError(f"{f}: tensor {name} has dtype {info.dtype}, expected {spec.dtype}{how}")
        if info.shape != spec.shape:
            src = how or f" from {cfg_path.name} ({_expected_field(name, 'hf')})"
            raise ConvertError(f"{f}: tensor {name} has shape {list(info.shape)}, expected {list(spec.shape)}{src}")
    for name, (f, _) in files.items():
        if name not in p.expected:
            t = name.rsplit(".", 1)[0]
            if name.endswith((".scales", ".biases")) and t in p.quant:
                raise ConvertError(f"{f}: tensor {name} present but {cfg_path.name} quantization says {t} is "
                                   f"{p.quant[t] or 'unquantized'}")
            raise ConvertError(f"{f}: unexpected tensor {name} (not part of an mlx-lm gpt-oss folder with this config)")
    return SourceCheckpoint(root, "mlx-lm", dims, cfg, files, p.sources, p.specs, p.dense)
