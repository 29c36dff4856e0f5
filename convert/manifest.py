"""`manifest.json` of an mlx-oss folder: what `convert` wrote (sha256 and size of every file), and the
checks that hold a folder to it.

`check_folder` is what every load runs: the manifest present and well-formed, every listed file at its
size, every shard's safetensors header parsing and covering the file exactly. It reads a few KB, so a
truncated, half-copied or hand-edited folder fails with one line naming the file instead of a raw MLX
message (or silently wrong weights). `verify_folder` also hashes every byte (`mlx-oss info --verify`,
`load(..., verify=True)`): flipped bits inside tensor data are only found that way.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from mlx_oss.errors import ConvertError
from mlx_oss.convert.safetensors_io import read_header

MANIFEST = "manifest.json"
_SHA256 = re.compile(r"[0-9a-f]{64}")


def repair_hint(folder: Path) -> str:
    """How to check and repair `folder` (the tail of every integrity error)."""
    return f"run `mlx-oss info --verify {folder}` for a full check, or convert the checkpoint again (--force)"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_manifest(folder: str | Path) -> dict[str, dict]:
    """{relative path: {"sha256", "bytes"}}; ConvertError naming manifest.json if it is missing or not
    the shape `convert` writes."""
    folder = Path(folder)
    path = folder / MANIFEST
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConvertError(f"{path}: missing (every mlx-oss folder lists its files there)") from None
    except OSError as e:
        raise ConvertError(f"{path}: cannot read ({e.strerror or e})") from None
    except (UnicodeDecodeError, ValueError) as e:
        raise ConvertError(f"{path}: not valid JSON ({e})") from None
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, dict) or not files:
        raise ConvertError(f"{path}: expected an object with a non-empty 'files' map")
    for rel, meta in files.items():
        ok = (isinstance(meta, dict) and isinstance(meta.get("bytes"), int) and not isinstance(meta["bytes"], bool)
              and meta["bytes"] >= 0 and isinstance(meta.get("sha256"), str) and _SHA256.fullmatch(meta["sha256"]))  # fmt: skip
        if not ok or Path(rel).is_absolute() or ".." in Path(rel).parts:
            raise ConvertError(f"{path}: entry {rel!r} is not {{\"sha256\": 64 hex digits, \"bytes\": size}}")
    return files


def problems(folder: str | Path, *, hashes: bool = False) -> list[str]:
    """What disagrees with the manifest, one line each (empty = intact). Without `hashes` only what
    is cheap: sizes and safetensors headers."""
    folder = Path(folder)
    try:
        files = read_manifest(folder)
    except ConvertError as e:
        return [str(e)]
    found = []
    for rel, meta in files.items():
        p = folder / rel
        if not p.is_file():
            found.append(f"{p}: missing (listed in {MANIFEST})")
        elif p.stat().st_size != meta["bytes"]:
            found.append(f"{p}: {p.stat().st_size} bytes, {MANIFEST} says {meta['bytes']} (truncated or replaced)")
        elif p.suffix == ".safetensors" and (bad := _header_problem(p)):
            found.append(bad)
        elif hashes and sha256_file(p) != meta["sha256"]:
            found.append(f"{p}: sha256 differs from {MANIFEST} (the file is damaged)")
    found += [f"{p}: not listed in {MANIFEST}" for p in sorted(folder.glob("*.safetensors")) if p.name not in files]
    return found


def _header_problem(p: Path) -> str | None:
    try:
        infos, _ = read_header(p)
    except ConvertError as e:
        return str(e)
    end = max((i.end for i in infos.values()), default=0)
    size = p.stat().st_size
    return None if not infos or end == size else f"{p}: tensors end at byte {end} but the file has {size}"


def check_folder(folder: str | Path) -> None:
    """The cheap checks every load runs: ConvertError naming the first file that disagrees, and how
    to check fully or repair."""
    found = problems(folder)
    if found:
        more = f" (+{len(found) - 1} more)" if len(found) > 1 else ""
        raise ConvertError(f"{found[0]}{more}; {repair_hint(Path(folder))}")


def verify_folder(folder: str | Path) -> list[str]:
    """Every check, the sha256 of every byte included; -> the problems found (empty = intact)."""
    return problems(folder, hashes=True)
