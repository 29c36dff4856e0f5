"""Turn what the user typed (`--model`) into a converted mlx-oss folder, converting once into a cache.

`openai/gpt-oss-20b` -> download (resumable) -> convert into ~/.cache/mlx-oss/openai--gpt-oss-20b ->
reuse it next time. A local checkpoint folder is converted into the cache too; a converted folder is
used as it is.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable

from mlx_oss.convert.convert import convert_checkpoint, is_complete
from mlx_oss.errors import ConvertError
from mlx_oss.convert.hub import download, is_repo_id
from mlx_oss.convert.reader import detect_layout

DEFAULT_MODEL = "openai/gpt-oss-20b"


def cache_home() -> Path:
    """Where converted models live: $MLX_OSS_HOME, else ~/.cache/mlx-oss."""
    return Path(os.environ.get("MLX_OSS_HOME") or Path.home() / ".cache" / "mlx-oss")


def resolve_model(
    name: str, *, progress: bool = True, status: Callable[[str], None] | None = None, download_bars: bool | None = None
) -> Path:
    """A converted folder for `name` (Hub id, checkpoint folder or converted folder). `download_bars`:
    see `convert.hub.download` (the TUI captures them for its loading screen)."""
    say = status or (lambda _msg: None)
    if is_repo_id(name):
        dst = cache_home() / name.replace("/", "--")
        if is_complete(dst):
            return dst
        say(f"{name} is not a local folder: downloading it from the Hugging Face Hub")
        src = download(name, bars=download_bars)
    else:
        src = Path(name).expanduser()
        layout, folder = detect_layout(src)
        if layout in ("mlx-oss", "mlx-lm"):  # mlx-lm folders load in place (no second copy on disk)
            return folder
        key = hashlib.sha1(str(folder.resolve()).encode()).hexdigest()[:12]
        dst = cache_home() / f"local-{folder.resolve().name}-{key}"
        if is_complete(dst):
            return dst
    say(f"converting {src} into {dst} (once)")
    result = convert_checkpoint(src, dst, progress=progress)
    if not is_complete(result.dst):
        raise ConvertError(f"{dst}: conversion did not complete")
    return result.dst
