"""Where the chat TUI keeps its data (the chat database): the OS convention, unless told otherwise.

Order: `--data-dir DIR`, then `$MLX_OSS_DATA_DIR`, then platformdirs' user data folder
(macOS `~/Library/Application Support/mlx-oss`, Linux `$XDG_DATA_HOME/mlx-oss` or
`~/.local/share/mlx-oss`, Windows `%LOCALAPPDATA%\\mlx-oss`).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["DATA_DIR_ENV", "DATABASE_NAME", "data_dir", "database_path"]

DATA_DIR_ENV = "MLX_OSS_DATA_DIR"
DATABASE_NAME = "chats.sqlite3"


def data_dir(override: str | os.PathLike[str] | None = None) -> Path:
    """The data folder (not created here: the store creates it when it first writes)."""
    if override:
        return Path(override).expanduser()
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("mlx-oss", appauthor=False))


def database_path(override: str | os.PathLike[str] | None = None) -> Path:
    """The chat database inside the data folder."""
    return data_dir(override) / DATABASE_NAME
