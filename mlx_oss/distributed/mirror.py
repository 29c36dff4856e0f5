"""Rank 0's record of what the followers hold for it, so every rank's caches stay identical.

Each engine rank 0 makes, and each engine state it detaches or forks (the server's prompt-cache
pool, the TUI's several chats), has an id in this group; the followers keep the same object under
the same id. What rank 0 lets go of is sent, with the next command, as ids to drop; the generation
whose steps the followers are still inside is finished before any other command is sent.
"""

from __future__ import annotations

import itertools
import threading
from typing import Iterator


class Mirror:
    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._dropped: list[int] = []
        self.active: Iterator[int] | None = None  # the running (or dropped, unfinished) generation

    def new_id(self) -> int:
        """An id for an object rank 0 makes and the followers mirror (unique in this group)."""
        with self._lock:
            return next(self._ids)

    def drop(self, oid: int) -> None:
        """Rank 0 let go of object `oid` (a finalizer: any thread, any time); sent with the next command."""
        with self._lock:
            self._dropped.append(oid)

    def take_dropped(self) -> list[int]:
        with self._lock:
            out, self._dropped = self._dropped, []
        return out

    def finish_active(self) -> None:
        """Step the running generation to its end on every rank (its consumer let it go)."""
        it, self.active = self.active, None
        if it is not None:
            it.close()
