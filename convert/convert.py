"""`mlx-oss convert SRC DST`: checkpoint (HF or original layout) -> self-contained mlx-oss folder.

Streams tensor by tensor (one expert at a time) with positioned reads, so peak memory does not grow
with the checkpoint. MXFP4 experts are byte-copied (gate/up rows reordered, see docs/FORMAT.md).
Everything is written into a hidden sibling folder that is renamed into place only when complete, so
a failed or interrupted run never leaves a DST that looks valid. An existing DST is replaced only with
--force and only if it is a complete mlx-oss output outside the source (convert/safe_paths.py).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from mlx_oss.convert import dense_quant
from mlx_oss.config import read_json_object
from mlx_oss.convert.manifest import read_manifest, write_manifest
from mlx_oss.convert.reader import FORMAT_NAME, FORMAT_VERSION, SourceCheckpoint, open_source
from mlx_oss.convert.safetensors_io import nbytes_of
from mlx_oss.convert.safe_paths import check_destination, overlap, refusal, source_folders
from mlx_oss.convert.staging import OutTensor, plan_shards, staged_folder, write_shards
from mlx_oss.errors import ConvertError

MAX_SHARD_BYTES = 2 * 1024**3
TOKENIZER_FILE = "o200k_base.tiktoken"


def bundled_vocab() -> Path:
    from mlx_oss.tokenizer import bundled_vocab_path

    return bundled_vocab_path()


@dataclass
class ConvertResult:
    dst: Path
    layout: str
    bytes_written: int
    files: int
    dense_errors: dict[str, float] = field(default_factory=dict)
    skipped: bool = False
    force_refused: str | None = None  # skipped: why --force would not replace DST either (None: it would)


def _plan(src: SourceCheckpoint, dense_bits: int | None) -> tuple[list[OutTensor], dict[str, dense_quant.ErrorMeter]]:
    outs: list[OutTensor] = []
    meters: dict[str, dense_quant.ErrorMeter] = {}
    for spec in src.specs():
        if dense_bits and dense_quant.is_quantizable(spec.name):
            outs += _quantized_outs(src, spec.name, spec.shape, dense_bits, meters)
            continue
        outs.append(OutTensor(spec.name, spec.dtype, spec.shape, lambda n=spec.name: src.chunks(n)))  # copied: reads its own size
    return outs, meters


def _quantized_outs(src: SourceCheckpoint, name: str, shape: tuple[int, ...], bits: int, meters: dict) -> list[OutTensor]:
    """X.weight -> X.weight/X.scales/X.biases; scales and biases (1/16 of the weight) wait in memory."""
    specs = dense_quant.quantized_specs(name, shape, bits)
    meter = meters[name] = dense_quant.ErrorMeter(shape[1])
    held: dict[str, list[np.ndarray]] = {"scales": [], "biases": []}

    def weight() -> Iterator[np.ndarray]:
        for chunk in src.chunks(name):
            for r0 in range(0, chunk.shape[0], dense_quant.ROWS_PER_CHUNK):
                wq, s, b = dense_quant.quantize_chunk(chunk[r0 : r0 + dense_quant.ROWS_PER_CHUNK], bits, meter)
                held["scales"].append(s)
                held["biases"].append(b)
                yield wq

    def drain(key: str) -> Callable[[], Iterator[np.ndarray]]:
        def it() -> Iterator[np.ndarray]:
            yield from held[key]
            held[key] = []

        return it

    return [
        OutTensor(*specs[0], weight, nbytes_of("BF16", shape)),
        OutTensor(*specs[1], drain("scales")),
        OutTensor(*specs[2], drain("biases")),
    ]


def is_complete(dst: Path) -> bool:
    """A finished mlx-oss folder: our config plus a manifest whose files are all present at full size."""
    try:
        cfg = read_json_object(dst / "config.json")
        man = read_manifest(dst)
        return cfg.get("format") == FORMAT_NAME and all(
            (dst / rel).is_file() and (dst / rel).stat().st_size == meta["bytes"] for rel, meta in man.items()
        )
    except (OSError, ConvertError):
        return False


def convert_checkpoint(
    src: str | Path,
    dst: str | Path,
    *,
    dense_bits: int | None = None,
    force: bool = False,
    max_shard_bytes: int = MAX_SHARD_BYTES,
    progress: bool = True,
) -> ConvertResult:
    """Convert `src` into `dst`; raises ConvertError (one line) on bad input or a failed write."""
    if dense_bits not in (None, 4, 8):
        raise ConvertError(f"--dense-bits must be 4 or 8, not {dense_bits}")
    dst = Path(dst).expanduser().absolute()
    source = open_source(src)
    if source.layout == "mlx-oss":
        raise ConvertError(f"{source.root}: already an mlx-oss folder; nothing to convert")
    if dense_bits and source.dense_quant:
        raise ConvertError(f"--dense-bits: {source.root} is an mlx-lm folder; its own quantization is kept as it is")
    sources = source_folders(src, [source.root / "config.json", *(f for f, _ in source.files.values())])
    if not force and is_complete(dst) and overlap(dst, sources) is None:
        return ConvertResult(dst, source.layout, 0, 0, skipped=True, force_refused=refusal(dst, sources))
    check_destination(dst, sources, force=force)
    outs, meters = _plan(source, dense_bits)
    shards = plan_shards(outs, max_shard_bytes)
    with staged_folder(dst, sum(o.nbytes for o in outs), sources) as tmp:
        written = _write(tmp, source, shards, meters, dense_bits, progress)
    errors = {n: m.relative_error for n, m in meters.items()}
    return ConvertResult(dst, source.layout, written, len(shards), errors)


def _write(tmp: Path, source: SourceCheckpoint, shards: list[list[OutTensor]], meters, dense_bits, progress: bool) -> int:
    files, weight_map = write_shards(tmp, shards, "converting", progress)
    written = sum(f["bytes"] for f in files.values())
    (tmp / "tokenizer").mkdir()
    shutil.copyfile(bundled_vocab(), tmp / "tokenizer" / TOKENIZER_FILE)
    quant: dict = {"experts": {"mode": "mxfp4", "bits": 4, "group_size": 32}, "dense": None}
    if dense_bits:
        quant["dense"] = {
            "mode": "affine", "bits": dense_bits, "group_size": dense_quant.GROUP_SIZE,
            "modules": ["attn.qkv", "attn.out", "embed", "unembed"],
            "relative_error": {n: round(m.relative_error, 6) for n, m in meters.items()},
        }  # fmt: skip
    elif source.dense_quant:  # mlx-lm folder: its per-module affine quantization, carried as it is
        per = {m: {"bits": q.bits, "group_size": q.group_size} for m, q in source.dense_quant.items()}
        quant["dense"] = {"mode": "affine", "modules": [], "per_module": per}
    config = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "model_type": "gpt_oss",
        **source.dims.ours(),
        "quantization": quant,
        "gate_up_layout": "halves",
        "source": {"layout": source.layout, "path": str(source.root)},
    }
    (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    index = {"metadata": {"total_size": sum(f["bytes"] for f in files.values())}, "weight_map": weight_map}
    (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    write_manifest(tmp, files, ["config.json", "model.safetensors.index.json", f"tokenizer/{TOKENIZER_FILE}"])
    return written
