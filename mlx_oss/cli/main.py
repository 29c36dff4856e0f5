"""The `mlx-oss` command: one entry point, a subcommand per job.

Exit codes (every subcommand): 0 success; 1 a model, file or runtime error (one line on stderr); 2 bad
arguments (argparse's usage errors, and `UsageError` for arguments found bad after parsing); 141 when the
reader of stdout went away (`| head`), silently, as for any tool killed by SIGPIPE.
Set MLX_OSS_DEBUG=1 to see the traceback behind an error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Callable

from mlx_oss.errors import ConvertError, UsageError, UserError


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
        print(f"{r.dst}: already converted (pass --force to convert again)")
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


def _cmd_info(a: argparse.Namespace) -> int:
    from mlx_oss.info import describe, format_info, info_json

    info = describe(a.path)
    if a.verify:
        info.integrity = _verify(a.path, info.layout)
    elif info.integrity:
        info.integrity += " (sha256 not checked: --verify)"
    contexts = a.context or [4096, 32768, 131072]
    print(json.dumps(info_json(info, contexts), indent=2) if a.json else format_info(info, contexts))
    return 0


def _verify(path: str, layout: str) -> str:
    """`info --verify`: the sha256 of every file against manifest.json; raises on the first problem."""
    from pathlib import Path

    from mlx_oss.convert.manifest import verify_folder

    if layout != "mlx-oss":
        return f"nothing to verify: a {layout} folder has no manifest.json (headers checked)"
    folder = Path(path).expanduser()
    found = verify_folder(folder if folder.is_dir() else folder.parent)
    if found:
        more = f" (+{len(found) - 1} more)" if len(found) > 1 else ""
        raise ConvertError(f"verify failed: {found[0]}{more}; convert the checkpoint again (--force)")
    return "verified: the sha256 of every file matches manifest.json"


def _int_list(s: str) -> list[int]:
    try:
        return [int(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {s!r}") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mlx-oss", description="gpt-oss on Apple Silicon with MLX")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    c = sub.add_parser("convert", help="convert a checkpoint (HF or original layout, local or Hub id) to an mlx-oss folder")
    c.add_argument("src", help="checkpoint folder (Hugging Face layout, OpenAI original/ layout) or Hub id like openai/gpt-oss-20b")
    c.add_argument("dst", help="output folder (created; written to a temporary sibling and renamed at the end)")
    c.add_argument("--to", choices=["mlx-oss", "mlx-lm"], default="mlx-oss", help="output format: mlx-oss (default) or an mlx-lm folder for mlx_lm / LM Studio")
    c.add_argument("--dense-bits", type=int, choices=[4, 8], default=None, help="quantize attention, embedding and lm_head (affine, group 64)")
    c.add_argument("--force", action="store_true", help="convert even if DST is already a complete mlx-oss folder")
    c.add_argument("--verify", action="store_true", help="re-read DST and check every file against manifest.json")
    c.add_argument("--shard-size", type=float, default=2.0, metavar="GB", help="maximum shard size (default 2)")
    c.add_argument("--no-progress", action="store_true", help="no progress bar")
    c.set_defaults(func=_cmd_convert)

    i = sub.add_parser("info", help="parameters, weight bytes, KV cache and memory needed for a model")
    i.add_argument("path", help="converted folder, checkpoint folder or config.json")
    i.add_argument("--context", type=_int_list, default=None, help="context lengths, e.g. 4096,131072")
    i.add_argument("--json", action="store_true", help="machine-readable output")
    i.add_argument("--verify", action="store_true", help="also hash every file of an mlx-oss folder against its manifest.json")
    i.set_defaults(func=_cmd_info)

    for name, register in _optional_commands():
        register(sub)
    return p


def _optional_commands() -> list[tuple[str, Callable]]:
    """Subcommands that live in their own modules (generate, chat, bench), registered if present."""
    import importlib
    import importlib.util

    found = []
    for name, mod in (("generate", "mlx_oss.cli.generate"), ("chat", "mlx_oss.tui.cli"), ("bench", "mlx_oss.bench.command")):
        if importlib.util.find_spec(mod) is not None:
            found.append((name, importlib.import_module(mod).register))
    return found


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    a = parser.parse_args(argv)
    try:
        return a.func(a)
    except BrokenPipeError:  # `mlx-oss info X | head -2`: the reader left; exit quietly like other tools
        _silence_stdout()
        return 128 + 13  # what a shell reports for a process ended by SIGPIPE
    except UsageError as e:  # an argument found bad after parsing: argparse's convention
        print(f"mlx-oss {a.command}: error: {e}", file=sys.stderr)
        return 2
    except UserError as e:  # ConvertError and every other kind: one line
        print(f"mlx-oss: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("mlx-oss: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # never a traceback for the user; MLX_OSS_DEBUG=1 shows it
        if os.environ.get("MLX_OSS_DEBUG"):
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        print(f"mlx-oss: error: {type(e).__name__}: {first}", file=sys.stderr)
        return 1


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush does not raise again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


if __name__ == "__main__":
    raise SystemExit(main())
