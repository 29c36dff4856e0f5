"""`mlx-oss info`: parameters, weight bytes, KV cache, memory needed, and which Macs it fits."""

from __future__ import annotations

import argparse
import json

from mlx_oss.cli.args import add_kv_cache, int_list
from mlx_oss.errors import ConvertError, UsageError


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `info` subcommand."""
    i = sub.add_parser("info", help="parameters, weight bytes, KV cache and memory needed for a model")
    i.add_argument("path", help="converted folder, checkpoint folder or config.json")
    i.add_argument("--context", type=int_list, default=None,
                   help="context lengths, e.g. 4096,131072 (default 4096,32768,131072); the largest is what "
                        "the advice makes fit (default: 4096)")  # fmt: skip
    add_kv_cache(i)  # --kv-bits / --kv-group-size: the flags generate, chat and serve take
    i.add_argument("--memory", type=int_list, default=None, metavar="GB",
                   help="Mac memory sizes in GB, e.g. 16,24 (default 16,24,32,48,64,96,128,192, and this Mac on one)")  # fmt: skip
    i.add_argument("--json", action="store_true", help="machine-readable output")
    i.add_argument("--verify", action="store_true", help="also hash every file of an mlx-oss folder against its manifest.json")
    i.set_defaults(func=_cmd_info)


def _cmd_info(a: argparse.Namespace) -> int:
    from mlx_oss.config import check_kv_quant
    from mlx_oss.info import MAC_MEMORY_GB, describe, format_info, info_json, mac_sizes

    for flag, values in (("--context", a.context), ("--memory", a.memory)):
        bad = [v for v in values or [] if v < 1]
        if bad:
            raise UsageError(f"{flag} values must be at least 1, got {bad[0]}")
    info = describe(a.path)
    try:
        check_kv_quant(a.kv_bits, a.kv_group_size, info.dims.head_dim)
    except ValueError as e:
        raise UsageError(str(e)) from None
    limit = info.dims.max_position_embeddings
    if a.context and max(a.context) > limit:
        raise UsageError(f"--context {max(a.context)} is longer than the model's {limit} tokens")
    if a.verify:
        info.integrity = _verify(a.path, info.layout)
    elif info.integrity:
        info.integrity += " (sha256 not checked: --verify)"
    contexts = a.context or [4096, 32768, 131072]
    macs = mac_sizes(a.memory or MAC_MEMORY_GB)
    here = None if a.memory else _this_mac()
    if here is not None:
        macs.append(here)
    kw = dict(kv_bits=a.kv_bits, group_size=a.kv_group_size, macs=macs,
              target=max(a.context) if a.context else None, source=a.path)  # fmt: skip
    print(json.dumps(info_json(info, contexts, **kw), indent=2) if a.json else format_info(info, contexts, **kw))
    return 0


def _this_mac():
    """The Mac `info` runs on (its RAM and its GPU limit as set now), or None off a Mac / without Metal."""
    import platform

    if platform.system() != "Darwin":
        return None  # the CPU backend: no MLX import for nothing
    from mlx_oss.backend import device
    from mlx_oss.info import Mac

    d = device.device_info()
    memory, limit = int(d.get("memory_size", 0)), int(d.get("max_recommended_working_set_size", 0))
    if not memory or not limit:
        return None
    return Mac(f"this Mac ({device.chip_name(d)}, {memory / 2**30:.0f} GB)", memory, limit)


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
