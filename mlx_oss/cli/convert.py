"""`mlx-oss convert`: a checkpoint (HF or OpenAI original layout, local or Hub id) -> an mlx-oss or mlx-lm folder."""

from __future__ import annotations

import argparse

from mlx_oss.errors import ConvertError


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `convert` subcommand."""
    c = sub.add_parser("convert", help="convert a checkpoint (HF or original layout, local or Hub id) to an mlx-oss folder")
    c.add_argument("src", help="checkpoint folder (Hugging Face layout, OpenAI original/ layout) or Hub id like openai/gpt-oss-20b")
    c.add_argument("dst", help="output folder (created; written to a temporary sibling and renamed at the end)")
    c.add_argument("--to", choices=["mlx-oss", "mlx-lm"], default="mlx-oss", help="output format: mlx-oss (default) or an mlx-lm folder for mlx_lm / LM Studio")
    c.add_argument("--dense-bits", type=int, choices=[4, 8], default=None, help="quantize attention, embedding and lm_head (affine, group 64)")
    c.add_argument("--force", action="store_true", help="replace DST if it is a complete mlx-oss output outside SRC (nothing else is ever replaced)")
    c.add_argument("--verify", action="store_true", help="re-read DST and check every file against manifest.json")
    c.add_argument("--shard-size", type=float, default=2.0, metavar="GB", help="maximum shard size (default 2)")
    c.add_argument("--no-progress", action="store_true", help="no progress bar")
    c.set_defaults(func=_cmd_convert)


def _cmd_convert(a: argparse.Namespace) -> int:
    from mlx_oss.convert.convert import convert_checkpoint, is_complete
    from mlx_oss.convert.hub import download, is_repo_id
    from mlx_oss.convert.manifest import verify_folder

    src = download(a.src) if is_repo_id(a.src) else a.src
    if a.to == "mlx-lm":
        return _export_mlx_lm(a, src)
    r = convert_checkpoint(
        src, a.dst, dense_bits=a.dense_bits, force=a.force,
        max_shard_bytes=int(a.shard_size * 1e9), progress=not a.no_progress,
    )  # fmt: skip
    if r.skipped:
        print(f"{r.dst}: already converted" + ("" if r.force_refused else " (pass --force to convert again)"))
    else:
        print(f"converted {r.layout} checkpoint into {r.dst} ({r.bytes_written / 1e9:.2f} GB in {r.files} shard(s))")
        for name, err in r.dense_errors.items():
            print(f"  {a.dense_bits}-bit {name}: relative error {err:.2e} on a fixed activation batch")
    if a.verify:
        problems = verify_folder(r.dst) if is_complete(r.dst) else [f"{r.dst}: incomplete"]
        if problems:
            raise ConvertError(f"verify failed: {problems[0]}" + (f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""))
        print(f"{r.dst}: verified, every file matches manifest.json")
    return 0


def _export_mlx_lm(a: argparse.Namespace, src) -> int:
    from mlx_oss.convert.export_mlx_lm import export_mlx_lm

    if a.dense_bits or a.verify:
        raise ConvertError("--dense-bits/--verify apply to --to mlx-oss; to export a dense-quantized model, convert with --dense-bits first")
    r = export_mlx_lm(src, a.dst, force=a.force, max_shard_bytes=int(a.shard_size * 1e9), progress=not a.no_progress)
    print(f"exported {r.layout} checkpoint as an mlx-lm folder {r.dst} ({r.bytes_written / 1e9:.2f} GB in {r.files} shard(s))")
    return 0
