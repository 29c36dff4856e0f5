"""What every folder writer shares: output tensors, sharding, streaming shards, and the staged folder.

Both `mlx-oss convert` and `convert --to mlx-lm` write through here, so both get the same guarantees:
bounded memory (chunks stream through a background writer), a sha256 per shard, and a DST that appears
only when complete (a new hidden sibling renamed into place; on any failure it is removed and the error
becomes one line). Nothing here removes a folder it did not make, or one that safe_paths' rule keeps.
"""

from __future__ import annotations

import errno
import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from mlx_oss.errors import ConvertError
from mlx_oss.convert.progress import Progress
from mlx_oss.convert.safe_paths import MadeFolder, make_folder, new_folder, refusal, remove_folder
from mlx_oss.convert.safetensors_io import StreamingWriter, nbytes_of


@dataclass
class OutTensor:
    """One output tensor and the function producing its bytes in order."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    chunks: Callable[[], Iterator[np.ndarray]]
    source_bytes: int = 0  # input bytes it consumes (progress); 0 = its own size

    @property
    def nbytes(self) -> int:
        return nbytes_of(self.dtype, self.shape)


def plan_shards(outs: list[OutTensor], max_bytes: int) -> list[list[OutTensor]]:
    """Group tensors, in order, into shards of at most `max_bytes` (a bigger tensor gets its own)."""
    shards: list[list[OutTensor]] = [[]]
    size = 0
    for o in outs:
        if shards[-1] and size + o.nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(o)
        size += o.nbytes
    return shards


def shard_name(k: int, n: int, single: str | None = None) -> str:
    return single if single and n == 1 else f"model-{k + 1:05d}-of-{n:05d}.safetensors"


def write_shards(
    folder: Path, shards: list[list[OutTensor]], label: str, progress: bool, single_name: str | None = None
) -> tuple[dict[str, dict], dict[str, str]]:
    """Stream every shard into `folder`. -> ({file: {"sha256", "bytes"}}, {tensor: file})."""
    bar = Progress(sum(o.source_bytes or o.nbytes for s in shards for o in s), label, enabled=progress)
    files: dict[str, dict] = {}
    weight_map: dict[str, str] = {}
    for k, shard in enumerate(shards):
        fname = shard_name(k, len(shards), single_name)
        w = StreamingWriter(folder / fname, [(o.name, o.dtype, o.shape) for o in shard], {"format": "mlx"})
        try:
            for o in shard:
                for chunk in o.chunks():
                    w.write(o.name, chunk)
                bar.update(o.source_bytes or o.nbytes)
                weight_map[o.name] = fname
            sha = w.close()
        except BaseException:
            w.abort()
            raise
        files[fname] = {"sha256": sha, "bytes": w.total_bytes}
    bar.close()
    return files, weight_map


def _os_error(e: OSError, dst: Path, need: int) -> ConvertError:
    if e.errno == errno.ENOSPC:
        return ConvertError(f"{dst}: no space left on device (the output needs about {need / 1e9:.2f} GB)")
    if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return ConvertError(f"{dst.parent}: not writable ({e.strerror or e}); choose another DST")
    return ConvertError(f"{dst}: write failed ({e.strerror or e})")


@contextmanager
def staged_folder(dst: Path, need: int, sources: Sequence[Path] = ()) -> Iterator[Path]:
    """Yield a new hidden sibling of `dst` to write into; it becomes `dst` only if the block completes.

    Checks free space for `need` bytes first. A `dst` that is a link is the folder it points to (the
    link stays). An existing non-empty `dst` is replaced only after the new one is complete, and only if
    the rule of safe_paths still lets it go (`sources` are the folders being read). Only folders made
    here are removed. OSErrors (full or read-only disk) become one-line ConvertErrors.
    """
    real = dst.resolve()
    tmp: MadeFolder | None = None
    try:
        real.parent.mkdir(parents=True, exist_ok=True)
        if shutil.disk_usage(real.parent).free < need * 1.02 + (1 << 20):
            raise OSError(errno.ENOSPC, "No space left on device")
        tmp = make_folder(real.parent, f".{real.name}.partial-{os.getpid()}-")
        yield tmp.path
        _put_in_place(tmp.path, real, sources)
    except OSError as e:
        _discard(tmp)
        raise _os_error(e, dst, need) from None
    except BaseException:
        _discard(tmp)
        raise


def _put_in_place(tmp: Path, real: Path, sources: Sequence[Path]) -> None:
    """Rename the finished `tmp` to `real`. New or an empty folder: one rename (onto an empty folder it
    loses nothing). Otherwise the old folder is moved aside, the new one renamed in, the old removed."""
    if not (real.is_dir() and any(real.iterdir())):
        os.replace(tmp, real)
        return
    why = refusal(real, sources)
    if why:
        raise ConvertError(f"{real}: {why}; nothing was replaced")
    old = new_folder(real.parent, f".{real.name}.old-{os.getpid()}-")
    os.replace(real, old)  # onto the empty folder just made for it
    os.replace(tmp, real)
    try:
        remove_folder(old, sources)
    except (ConvertError, OSError):
        pass  # the new folder is in place; an old one that will not go is left as it is, never forced


def _discard(tmp: MadeFolder | None) -> None:
    """After a failure: remove the temporary folder if it is still there (the rule checks it is ours)."""
    if tmp is not None and tmp.path.exists():
        try:
            remove_folder(tmp)
        except (ConvertError, OSError):
            pass  # left in place: the error being raised is the one to report
