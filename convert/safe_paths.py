"""Nothing ever deletes what it did not create: the one rule for removing or replacing a folder.

`refusal` is the rule. A folder may go only if it neither is, contains nor lies inside a source (a
folder being read), and either this process made it (`make_folder`: a writer's temporary folder, the
python tool's own working folder) or it is a complete output mlx-oss wrote (`manifest.output_problem`: a
manifest listing every file in it, each at its size). Links are resolved first, so a link to the source,
or to its parent, counts as the source, or its parent.

Every writer checks its DST with `check_destination` before it starts, and every removal goes through
`remove_folder`, which applies the rule again. Anything else is refused in one line naming the folder
and why, and that line suggests --force only where --force would be accepted.
"""

from __future__ import annotations

import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from mlx_oss.convert.manifest import output_problem
from mlx_oss.errors import ConvertError


def _identity(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_dev, st.st_ino


@dataclass(frozen=True)
class MadeFolder:
    """A folder `make_folder` made, held by whoever made it: the proof the rule accepts for removing it
    (the same folder still, by device and inode, not whatever was put at its path since)."""

    path: Path
    identity: tuple[int, int]

    def still_ours(self) -> bool:
        try:
            return _identity(self.path.resolve()) == self.identity
        except OSError:
            return False


def new_folder(parent: Path, prefix: str, mode: int = 0o777) -> Path:
    """A folder `parent/prefix<random>` created now, never an existing one (a leftover or planted folder
    of that name is left alone)."""
    while True:
        path = parent / f"{prefix}{secrets.token_hex(4)}"
        try:
            path.mkdir(mode=mode)
        except FileExistsError:
            continue
        return path


def make_folder(parent: Path, prefix: str, mode: int = 0o777) -> MadeFolder:
    """`new_folder`, with the proof that lets its maker remove it (`remove_folder(made)`)."""
    path = new_folder(parent, prefix, mode)
    return MadeFolder(path, _identity(path.resolve()))


def source_folders(given: str | Path, files: Iterable[Path]) -> list[Path]:
    """What a conversion reads, hence must keep: the folder it was given and the folders its files
    really live in (a Hub snapshot's files are links into the cache's blobs/)."""
    out = [Path(given).expanduser().absolute()]
    for f in files:
        parent = Path(f).resolve().parent
        if parent not in out:
            out.append(parent)
    return out


def overlap(path: Path, sources: Sequence[Path]) -> str | None:
    """How `path` (links resolved) overlaps the first source it does: is, contains or lies inside it."""
    real = Path(path).resolve()
    for source in sources:
        s = Path(source).resolve()
        if real == s:
            return f"is the source checkpoint {source}"
        if s.is_relative_to(real):
            return f"contains the source checkpoint {source}"
        if real.is_relative_to(s):
            return f"lies inside the source checkpoint {source}"
    return None


def refusal(folder: Path | MadeFolder, sources: Sequence[Path] = ()) -> str | None:
    """The rule (module docstring): None if `folder` may be removed or replaced, else why not. A
    `MadeFolder` (its maker asking) may go while it is still the folder that was made."""
    path = folder.path if isinstance(folder, MadeFolder) else folder
    why = overlap(path, sources)
    if why:
        return why
    real = Path(path).resolve()
    if not real.is_dir():
        return "is not a folder"
    if isinstance(folder, MadeFolder) and folder.still_ours():
        return None
    return output_problem(real)


def remove_folder(folder: Path | MadeFolder, sources: Sequence[Path] = ()) -> None:
    """Remove `folder` (the folder a link points to) if the rule lets it go; ConvertError naming it and
    why not otherwise."""
    why = refusal(folder, sources)
    path = folder.path if isinstance(folder, MadeFolder) else folder
    if why:
        raise ConvertError(f"{path}: not removed: it {why}")
    shutil.rmtree(Path(path).resolve())


def check_destination(dst: Path, sources: Sequence[Path], *, force: bool) -> None:
    """Before anything is written: refuse a DST whose writing could lose what mlx-oss did not write.
    DST may be new, an empty folder, or (with `force`) a folder the rule lets go; never a source, a
    folder holding one or a folder inside one, whatever the flags."""
    why = overlap(dst, sources)
    if why:
        raise ConvertError(f"{dst}: {why}; choose another DST")
    if not dst.exists():
        return
    if not dst.is_dir():
        raise ConvertError(f"{dst}: exists and is not a folder; choose another DST")
    if not any(dst.iterdir()):
        return
    why = refusal(dst, sources)
    if why:
        raise ConvertError(f"{dst}: exists, is not empty and {why}; remove it yourself or choose another DST")
    if not force:
        raise ConvertError(f"{dst}: exists (a complete mlx-oss output); pass --force to replace it")
