"""`mlx-oss convert --to mlx-lm SRC DST`: any gpt-oss checkpoint -> a folder `mlx_lm.load` opens.

The folder is what mlx-lm itself writes for gpt-oss (its `sanitize` names, MXFP4 experts as uint32
words + uint8 scales, dense modules float or affine-quantized as in SRC, a `quantization` block with one
entry per quantized dense module) plus the tokenizer files the Hub's gpt-oss repositories ship, so
mlx-lm, LM Studio and other MLX tools run it. Tensors are streamed (one expert at a time) and only
sliced (our qkv -> q/k/v rows, our gate_up halves -> gate_proj / up_proj); nothing is requantized.
Like the converter, it writes into a hidden sibling folder renamed into place only when complete, and
lists what it wrote in `.mlx-oss-manifest.json` (mlx-lm folders carry no manifest.json): that record is
what lets `--force` replace the folder later, and nothing without one is ever replaced.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path


from mlx_oss.errors import ConvertError
from mlx_oss.convert.chat_template import CHAT_TEMPLATE
from mlx_oss.convert.layouts import Spec
from mlx_oss.convert.manifest import EXPORT_MANIFEST, write_manifest
from mlx_oss.convert.mlx_lm_layout import Quant, modules, quantization_block
from mlx_oss.convert.reader import SourceCheckpoint, open_source
from mlx_oss.convert.safe_paths import check_destination, source_folders
from mlx_oss.convert.staging import OutTensor, plan_shards, staged_folder, write_shards

MAX_SHARD_BYTES = 5 * 1024**3  # mlx-lm's own MAX_FILE_SIZE_GB
# What a Hub gpt-oss repository ships besides weights; copied from SRC when present, else written.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json", "chat_template.jinja")
WRITTEN_FILES = TOKENIZER_FILES[:4]

GENERATION_CONFIG = {"bos_token_id": 199998, "do_sample": True, "eos_token_id": [200002, 199999, 200012], "pad_token_id": 199999}
SPECIAL_TOKENS = {"bos_token": "<|startoftext|>", "eos_token": "<|return|>", "pad_token": "<|endoftext|>"}


@dataclass
class ExportResult:
    dst: Path
    layout: str  # the source layout
    bytes_written: int
    files: int
    dense: dict[str, Quant]  # our module -> affine quantization carried over


def _dense_quant(specs: dict[str, Spec], d) -> dict[str, Quant]:
    """Our quantized dense modules, read off their tensors (as mlx-lm's infer_quant_config does)."""
    out = {}
    for m in modules(d):
        s, w = specs.get(m.ours + ".scales"), specs.get(m.ours + ".weight")
        if m.kind in ("linear", "embedding") and s is not None and w is not None and w.dtype == "U32":
            out[m.ours] = Quant("affine", w.shape[-1] * 32 // m.k, m.k // s.shape[-1])
    return out


def _plan(src: SourceCheckpoint) -> list[OutTensor]:
    """Our tensors -> mlx-lm tensors: copies, or row slices of our fused qkv / gate_up."""
    specs = {s.name: s for s in src.specs()}
    outs: list[OutTensor] = []
    for m in modules(src.dims):
        if m.kind == "tensor":
            s = specs[m.ours]
            outs.append(OutTensor(m.theirs[0], s.dtype, s.shape, lambda n=m.ours: src.chunks(n)))
            continue
        for key in ("weight", "scales", "biases", "bias"):
            s = specs.get(f"{m.ours}.{key}")
            if s is None:
                continue
            off = 0
            for t, r in zip(m.theirs, m.rows):
                shape = list(s.shape)
                shape[m.axis] = r
                if len(m.theirs) == 1:
                    fn = lambda n=s.name: src.chunks(n)  # noqa: E731
                elif m.axis == 0:  # q/k/v: rows of one small matrix
                    fn = lambda n=s.name, a=off, b=off + r: iter([src.tensor(n)[a:b]])  # noqa: E731
                else:  # gate/up halves, one expert at a time
                    fn = lambda n=s.name, a=off, b=off + r: (c[:, a:b] for c in src.chunks(n))  # noqa: E731
                outs.append(OutTensor(f"{t}.{key}", s.dtype, tuple(shape), fn))
                off += r
    return outs


def _config(src: SourceCheckpoint, dense: dict[str, Quant]) -> dict:
    cfg = src.dims.hf_config()
    cfg.pop("quantization_config")  # Hugging Face's mxfp4 blocks; mlx-lm's block replaces it
    block = quantization_block(dense, src.dims)
    cfg["quantization"] = block
    cfg["quantization_config"] = dict(block)  # mlx-lm writes both (for tools that read the HF key)
    return dict(sorted(cfg.items()))


def write_tokenizer_files(dst: Path, copy_from: list[Path]) -> list[str]:
    """Tokenizer files as mlx-lm / transformers expect them; copied from the first folder of
    `copy_from` that has each one (the Hub's own files win), otherwise written. -> names written."""
    from mlx_oss.tokenizer import load_tokenizer, write_tokenizer_json

    written = []
    for name in TOKENIZER_FILES:
        found = next((d / name for d in copy_from if (d / name).is_file()), None)
        if found is not None:
            shutil.copyfile(found, dst / name)
        elif name == "tokenizer.json":
            write_tokenizer_json(dst / name, load_tokenizer(None))
        elif name == "tokenizer_config.json":
            cfg = {
                **SPECIAL_TOKENS, "chat_template": CHAT_TEMPLATE, "clean_up_tokenization_spaces": False,
                "model_input_names": ["input_ids", "attention_mask"], "model_max_length": 1000000000000000019884624838656,
                "tokenizer_class": "PreTrainedTokenizerFast",
            }  # fmt: skip
            (dst / name).write_text(json.dumps(cfg, indent=2) + "\n")
        elif name == "special_tokens_map.json":
            (dst / name).write_text(json.dumps(SPECIAL_TOKENS, indent=2) + "\n")
        elif name == "generation_config.json":
            (dst / name).write_text(json.dumps(GENERATION_CONFIG, indent=2) + "\n")
        else:
            continue
        written.append(name)
    return written


def export_mlx_lm(
    src: str | Path,
    dst: str | Path,
    *,
    force: bool = False,
    tokenizer_dir: str | Path | None = None,
    max_shard_bytes: int = MAX_SHARD_BYTES,
    progress: bool = True,
) -> ExportResult:
    """Write `src` (HF, original, or mlx-oss folder) as an mlx-lm folder `dst`. Raises ConvertError.

    Tokenizer files come from `tokenizer_dir` if given, else from SRC (a Hub snapshot has them), else
    they are written from the bundled o200k_harmony with a harmony chat template.
    """
    dst = Path(dst).expanduser().absolute()
    source = open_source(src)
    if source.layout == "mlx-lm":
        raise ConvertError(f"{source.root}: already an mlx-lm folder; nothing to export")
    sources = source_folders(src, [source.root / "config.json", *(f for f, _ in source.files.values())])
    check_destination(dst, sources, force=force)
    dense = _dense_quant({s.name: s for s in source.specs()}, source.dims)
    outs = _plan(source)
    shards = plan_shards(outs, max_shard_bytes)
    copy_from = [Path(tokenizer_dir)] if tokenizer_dir else [source.root] + ([source.root.parent] if source.layout == "original" else [])
    with staged_folder(dst, sum(o.nbytes for o in outs), sources) as tmp:
        files, weight_map = write_shards(tmp, shards, "exporting", progress, single_name="model.safetensors")
        written = sum(f["bytes"] for f in files.values())
        index = {"metadata": {"total_size": written}, "weight_map": dict(sorted(weight_map.items()))}
        (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=4) + "\n")
        (tmp / "config.json").write_text(json.dumps(_config(source, dense), indent=4) + "\n")
        tokenizer = write_tokenizer_files(tmp, copy_from)
        write_manifest(tmp, files, ["model.safetensors.index.json", "config.json", *tokenizer], EXPORT_MANIFEST)
    return ExportResult(dst, source.layout, written, len(shards), dense)


