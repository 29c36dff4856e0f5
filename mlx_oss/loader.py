"""`load(path, dtype=None) -> (model, tokenizer)` for converted folders, original checkpoints and
mlx-lm / mlx-community folders (read in place through the same reader; their affine-quantized dense
modules stay quantized, per module, see docs/INTEROP.md).

A converted (mlx-oss) folder is read with `mx.load`, tensors already in our names and layout. An
OpenAI `original/` or Hugging Face checkpoint (or a Hub snapshot holding both) is converted in memory
through `mlx_oss.convert.reader`, the converter's own reader, so both paths produce the same bytes and hence
bit-identical logits.

Dtypes: dense floats are cast to the compute dtype; RMSNorm weights stay float32 (the reference keeps
them in float32); MXFP4 words/scales and affine-quantized words stay as stored.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterable

import mlx.core as mx
import numpy as np

from mlx_oss.backend import cpu, device
from mlx_oss.errors import ConvertError
from mlx_oss.config import DenseQuant, ModelArgs
from mlx_oss.nn.model import Model, build_model

DTYPES = {"float32": mx.float32, "bfloat16": mx.bfloat16, "float16": mx.float16}


def resolve_dtype(dtype: str | mx.Dtype | None) -> mx.Dtype:
    """None -> the device default (bfloat16 on a Metal GPU, float32 on the CPU backend)."""
    if dtype is None:
        dtype = device.default_dtype()
    if isinstance(dtype, mx.Dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
    return DTYPES[dtype]


def _cast(name: str, a: mx.array, dtype: mx.Dtype) -> mx.array:
    if not mx.issubdtype(a.dtype, mx.floating):
        return a  # MXFP4 / affine words and e8m0 scales
    if name.endswith("norm.weight"):
        return a.astype(mx.float32)
    return a.astype(dtype)


def _is_converted(path: Path) -> bool:
    cfg = path / "config.json"
    if not cfg.is_file():
        return False
    try:
        data = json.loads(cfg.read_text())
    except (ValueError, RecursionError):
        return False  # the reader then names the file and what is wrong with it
    return isinstance(data, dict) and data.get("format") == "mlx-oss"


def check_converted(path: Path, verify: bool = False) -> None:
    """An mlx-oss folder against its manifest (sizes and headers; sha256 too with `verify`), so a damaged
    folder fails with one line naming the file, not a raw MLX message or silently wrong weights."""
    from mlx_oss.convert.manifest import check_folder, reconvert_hint, verify_folder

    check_folder(path)
    if verify:
        found = verify_folder(path)
        if found:
            raise ConvertError(f"{found[0]}" + (f" (+{len(found) - 1} more)" if len(found) > 1 else "")
                               + f"; {reconvert_hint(path)}")  # fmt: skip


def _converted_weights(path: Path) -> Iterable[tuple[str, mx.array]]:
    from mlx_oss.convert.manifest import repair_hint
    from mlx_oss.convert.reader import _shard_files

    for f in _shard_files(path, "mlx-oss"):
        try:
            tensors = mx.load(str(f))
        except (RuntimeError, ValueError) as e:  # what the header check cannot see
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ConvertError(f"{f}: MLX cannot read it ({first}); {repair_hint(path)}") from None
        yield from tensors.items()


def _source_weights(src: Any) -> Iterable[tuple[str, mx.array]]:
    """Tensors of a `mlx_oss.convert.reader.SourceCheckpoint`, bf16 carried as uint16 bits."""
    for spec, arr in src.tensors():
        a = mx.array(np.ascontiguousarray(arr))
        if spec.dtype == "BF16":
            a = a.view(mx.bfloat16)
        yield spec.name, a


def _evaluated(weights: Iterable[tuple[str, mx.array]], batch_bytes: int = 1 << 30) -> list[tuple[str, mx.array]]:
    """Materialise cast weights about 1 GiB at a time, so a bf16 source and its float32 copy never
    coexist for the whole model (peak ~ final size + 1 GiB)."""
    out, pending, size = [], [], 0
    for n, a in weights:
        out.append((n, a))
        pending.append(a)
        size += a.nbytes
        if size >= batch_bytes:
            mx.eval(pending)
            pending, size = [], 0
    mx.eval(pending)
    return out


def load_model(path: str | Path, dtype: str | mx.Dtype | None = None, verify: bool = False) -> Model:
    """Build the model for `path` and load its weights in the compute `dtype` (weights evaluated).
    An mlx-oss folder is checked against its manifest first; `verify` adds the sha256 of every file."""
    path = Path(path).expanduser()
    dt = resolve_dtype(dtype)
    if _is_converted(path):
        args = ModelArgs.from_path(path)  # first: an impossible value is named, not just the edit's size
        check_converted(path, verify)
        weights = _converted_weights(path)
    else:
        from mlx_oss.convert.reader import open_source

        src = open_source(path)
        args = ModelArgs.from_dict(src.config, str(src.root / "config.json"))
        if src.dense_quant:
            per = tuple((m, q.bits, q.group_size) for m, q in src.dense_quant.items())
            args = replace(args, dense_quant=DenseQuant(modules=(), per_module=per))
        weights = _source_weights(src)
    model = build_model(args)
    cpu.prepare(model)  # backend-specific layouts (CPU: transposed lm_head), docs/BENCH.md
    model.load_weights(_evaluated(((n, _cast(n, a, dt)) for n, a in cpu.adapt_weights(model, weights, dt))), strict=True)
    model.eval()
    model.source = path  # the folder it came from, for error messages (e.g. Chat's vocabulary check)
    return model


def load(
    path: str | Path,
    dtype: str | mx.Dtype | None = None,
    verify: bool = False,
    *,
    kv_bits: int | None = None,
    kv_group_size: int = 64,
):
    """-> (model, tokenizer). The tokenizer is o200k_harmony from the folder, else the bundled copy.
    `verify=True` hashes every file of an mlx-oss folder against its manifest (a damaged folder raises
    ConvertError naming the file); without it only sizes and headers are checked. `kv_bits` 8 or 4:
    every cache made for this model is quantized (`Chat`, `Engine`, the server; docs/MODEL.md,
    "Quantized KV cache"); a bad value raises ValueError before any weight is read."""
    from mlx_oss.config import check_kv_quant
    from mlx_oss.tokenizer import load_tokenizer

    path = Path(path).expanduser()
    check_kv_quant(kv_bits, kv_group_size)
    model = load_model(path, dtype, verify)
    model.set_kv_quant(kv_bits, kv_group_size)
    try:
        tok = load_tokenizer(path)
    except ValueError:
        tok = load_tokenizer(None)
    return model, tok
