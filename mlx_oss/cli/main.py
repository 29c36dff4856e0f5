"""The `mlx-oss` command: one entry point, a subcommand per job.

Each subcommand lives in its own module with `register(subparsers)`; `SUBCOMMANDS` lists them in
help order (a new one, e.g. `serve`, is one more entry).

Exit codes (every subcommand): 0 success; 1 a model, file or runtime error (one line on stderr); 2 bad
arguments (argparse's usage errors, and `UsageError` for arguments found bad after parsing); 141 when the
reader of stdout went away (`| head`), silently, as for any tool killed by SIGPIPE.
Set MLX_OSS_DEBUG=1 to see the traceback behind an error.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from mlx_oss.errors import UsageError, UserError

SUBCOMMANDS = (
    "mlx_oss.cli.convert",
    "mlx_oss.cli.info",
    "mlx_oss.cli.generate",
    "mlx_oss.tui.cli",  # chat
    "mlx_oss.bench.command",
    "mlx_oss.server.cli",  # serve
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mlx-oss", description="gpt-oss on Apple Silicon with MLX")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in SUBCOMMANDS:
        importlib.import_module(module).register(sub)
    return p


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
