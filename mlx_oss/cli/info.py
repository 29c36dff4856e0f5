"""`mlx-oss info`: parameters, weight bytes, KV cache and memory needed for a model."""

from __future__ import annotations

import argparse
import json

from mlx_oss.cli.args import int_list
from mlx_oss.errors import ConvertError


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `info` subcommand."""
    i = sub.add_parser("info", help="parameters, weight bytes, KV cache and memory needed for a model")
    i.add_argument("path", help="converted folder, checkpoint folder or config.json")
    i.add_argument("--context", type=int_list, default=None, help="context lengths, e.g. 4096,131072")
    i.add_argument("--json", action="store_true", help="machine-readable output")
    i.add_argument("--verify", action="store_true", help="also hash every file of an mlx-oss folder against its manifest.json")
    i.set_defaults(func=_cmd_info)


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

    from mlx_oss.convert.manifest import reconvert_hint, verify_folder

    if layout != "mlx-oss":
        return f"nothing to verify: a {layout} folder has no manifest.json (headers checked)"
    folder = Path(path).expanduser()
    found = verify_folder(folder if folder.is_dir() else folder.parent)
    if found:
        more = f" (+{len(found) - 1} more)" if len(found) > 1 else ""
        raise ConvertError(f"verify failed: {found[0]}{more}; {reconvert_hint(folder if folder.is_dir() else folder.parent)}")
    return "verified: the sha256 of every file matches manifest.json"
