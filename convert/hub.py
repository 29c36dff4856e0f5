"""Download a gpt-oss checkpoint from the Hugging Face Hub (optional extra `mlx-oss[hub]`).

huggingface_hub resumes interrupted downloads and draws its own progress bars; we fetch only the
Hugging Face layout at the repo root (not `original/` nor `metal/`, which would double or triple the
13 GB / 65 GB download).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from mlx_oss.errors import ConvertError

HF_PATTERNS = ["config.json", "generation_config.json", "model*.safetensors", "model.safetensors.index.json"]
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def is_repo_id(name: str) -> bool:
    """`org/name` that is not a local path: it does not exist, and neither does its `org` part as a
    local folder (`models/gpt-oss-20b` next to a `models/` folder is a mistyped path, not a Hub id)."""
    if not _REPO_ID.fullmatch(name):
        return False
    p = Path(name).expanduser()
    return not p.exists() and not p.parent.is_dir()


def download(repo_id: str, revision: str | None = None, bars: bool | None = None) -> Path:
    """Download (or resume) `repo_id` into the Hugging Face cache and return the snapshot folder.
    `bars`: huggingface_hub's progress bars; None = only when stderr is a terminal (its tqdm bars
    redraw with `\r`, which a log file or pipe should not get)."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ConvertError(
            f"{repo_id}: downloading from the Hub needs huggingface_hub; run: pip install 'mlx-oss[hub]'"
        ) from None
    if bars is None:
        bars = bool(getattr(sys.stderr, "isatty", lambda: False)())
    quiet = not bars and _set_bars(False)
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=HF_PATTERNS))
    except Exception as e:  # network, auth, not-found: all become one line for the user
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConvertError(f"{repo_id}: no such local folder, and the download from the Hugging Face Hub failed ({msg})") from None
    finally:
        if quiet:
            _set_bars(True)


def _set_bars(on: bool) -> bool:
    """Turn huggingface_hub's progress bars on/off; -> True if it changed them."""
    try:
        from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars
    except ImportError:
        return False
    if are_progress_bars_disabled() == (not on):
        return False
    (enable_progress_bars if on else disable_progress_bars)()
    return True
