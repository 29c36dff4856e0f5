"""`manifest.json` of an mlx-oss folder: what `convert` wrote (sha256 and size of every file), and the
checks that hold a folder to it.

`check_folder` is what every load runs: the manifest present and well-formed, every listed file at its
size, every shard's safetensors header parsing and covering the file exactly. It reads a few KB, so a
truncated, half-copied or hand-edited folder fails with one line naming the file instead of a raw MLX
message (or silently wrong weights). `verify_folder` also hashes every byte (`mlx-oss info --verify`,
`load(..., verify=True)`): flipped bits inside tensor data are only found that way.

`output_problem` says whether a folder is a complete output mlx-oss wrote, the only kind of existing
folder `--force` replaces (convert/safe_paths.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

from mlx_oss.config import read_json_object
from mlx_oss.errors import ConvertError
from mlx_oss.convert.reader import FORMAT_VERSION
from mlx_oss.convert.safetensors_io import read_header

MANIFEST = "manifest.json"
EXPORT_MANIFEST = ".mlx-oss-manifest.json"  # the same record in an mlx-lm export (mlx-lm folders carry no manifest.json)
_SHA256 = re.compile(r"[0-9a-f]{64}")
_HARMLESS = {".DS_Store"}  # Finder's view settings: never a reason to refuse a folder


def repair_hint(folder: Path) -> str:
    """How to check and repair `folder` (the tail of every integrity error)."""
    return f"run `mlx-oss info --verify {folder}` for a full check, or {reconvert_hint(folder)}"


def reconvert_hint(folder: Path) -> str:
    """How to convert into `folder` again: with --force only where --force would replace it (a
    complete output), else the folder must go first."""
    if output_problem(folder) is None:
        return "convert the checkpoint again (--force)"
    return "remove it and convert the checkpoint again"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_manifest(folder: str | Path, name: str = MANIFEST) -> dict[str, dict]:
    """{relative path: {"sha256", "bytes"}}; ConvertError naming the manifest if it is missing or not
    the shape `convert` writes."""
    folder = Path(folder)
    path = folder / name
    if not path.exists():
        raise ConvertError(f"{path}: missing (every mlx-oss folder lists its files there)")
    files = read_json_object(path).get("files")
    if not isinstance(files, dict) or not files:
        raise ConvertError(f"{path}: expected an object with a non-empty 'files' map")
    for rel, meta in files.items():
        ok = (isinstance(meta, dict) and isinstance(meta.get("bytes"), int) and not isinstance(meta["bytes"], bool)
              and meta["bytes"] >= 0 and isinstance(meta.get("sha256"), str) and _SHA256.fullmatch(meta["sha256"]))  # fmt: skip
        if not ok or Path(rel).is_absolute() or ".." in Path(rel).parts:
            raise ConvertError(f"{path}: entry {rel!r} is not {{\"sha256\": 64 hex digits, \"bytes\": size}}")
    return files


def write_manifest(folder: Path, files: dict[str, dict], hash_here: list[str], name: str = MANIFEST) -> None:
    """Record every file a writer put in `folder`: `files` ({path: {"sha256", "bytes"}}, hashed while
    streamed) plus the small files `hash_here`. What `--force` may later replace is what this lists."""
    for rel in hash_here:
        p = folder / rel
        files[rel] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
    (folder / name).write_text(json.dumps({"format_version": FORMAT_VERSION, "files": files}, indent=2) + "\n")


def output_problem(folder: Path) -> str | None:
    """Why `folder` is not a complete output that mlx-oss wrote, or None if it is: its manifest
    (manifest.json, or .mlx-oss-manifest.json in an mlx-lm export) lists every file in it, each present
    at its size. A file it does not list was put there by someone else."""
    name = next((n for n in (MANIFEST, EXPORT_MANIFEST) if (folder / n).is_file()), None)
    if name is None:
        return f"is not a complete mlx-oss output (no {MANIFEST})"
    try:
        files = read_manifest(folder, name)
    except ConvertError:
        return f"is not a complete mlx-oss output (its {name} is not valid)"
    for rel, meta in files.items():
        p = folder / rel
        if not p.is_file() or p.stat().st_size != meta["bytes"]:
            return f"is not a complete mlx-oss output ({rel} is missing or not at its size)"
    for rel in _entries(folder):
        if rel not in files and rel != name and Path(rel).name not in _HARMLESS:
            return f"holds {rel}, which mlx-oss did not write (not in its {name})"
    return None


def _entries(folder: Path) -> list[str]:
    """Every file and link under `folder` (links not followed), as manifest paths."""
    out = []
    for parent, dirs, files in os.walk(folder):
        links = [d for d in dirs if os.path.islink(os.path.join(parent, d))]
        out += [Path(parent, n).relative_to(folder).as_posix() for n in sorted(files + links)]
    return out


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
