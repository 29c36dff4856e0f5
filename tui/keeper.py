"""What ties the app's current conversation to its row in the chat database.

`ChatKeeper` knows which stored chat the session is (none until its first message, so an
untouched new chat leaves nothing behind) and how many of the session's messages are already
written. `sync()` runs on the model thread after every event of a reply, so each harmony message is
in the database as soon as it is complete (a killed app keeps them); everything else (rename,
settings, branch, truncate) runs on the UI thread. The store is thread-safe.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, is_dataclass
from typing import Any

from mlx_oss.tui.storage import ChatInfo, ChatStore

__all__ = ["ChatKeeper", "segments"]


def _settings(session: Any) -> dict[str, Any]:
    get = getattr(session, "settings", None)
    if callable(get):
        return get()
    effort = getattr(session, "reasoning_effort", "medium")
    return {"reasoning_effort": str(getattr(effort, "value", effort)), "instructions": getattr(session, "instructions", None)}


def _history(session: Any) -> list[Any]:
    return list(getattr(session, "history", ()))


def segments(history: list[Any]) -> list[tuple[str, int, int]]:
    """The conversation as the screen shows it: ("user", i, i+1) for each user message and
    ("assistant", start, end) for the messages of each reply between them."""
    out: list[tuple[str, int, int]] = []
    for i, m in enumerate(history):
        role = str(getattr(getattr(m, "role", ""), "value", getattr(m, "role", "")))
        if role == "user":
            out.append(("user", i, i + 1))
        elif out and out[-1][0] == "assistant":
            out[-1] = ("assistant", out[-1][1], i + 1)
        else:
            out.append(("assistant", i, i + 1))
    return out


class ChatKeeper:
    """The current chat's id in `store` and how much of its history is written."""

    def __init__(self, store: ChatStore, *, model: str = "", tools_file: str | None = None) -> None:
        self.store = store
        self.model = model
        self.tools_file = tools_file
        self.chat_id: int | None = None
        self.saved = 0  # messages of the session already in the database
        self._lock = threading.Lock()  # sync() (model thread) vs the UI thread's changes

    # ------------------------------------------------------------------ which chat

    def start_new(self) -> None:
        """The session is a new, empty conversation (stored once it has a message)."""
        with self._lock:
            self.chat_id, self.saved = None, 0

    def attach(self, chat_id: int, saved: int) -> None:
        """The session is stored chat `chat_id`, whose first `saved` messages are in the database."""
        with self._lock:
            self.chat_id, self.saved = chat_id, saved

    def info(self) -> ChatInfo | None:
        return self.store.get(self.chat_id) if self.chat_id is not None else None

    # ------------------------------------------------------------------ writing

    def sync(self, session: Any) -> bool:
        """Write the messages the session completed since the last call; -> True if a chat was
        created by this call (the list should show it). Model thread, or UI thread when idle."""
        history = _history(session)
        with self._lock:
            created = False
            if len(history) == self.saved:
                return False
            if self.chat_id is None:
                self.chat_id = self.store.create(model=self.model, settings=_settings(session), tools_file=self.tools_file)
                created = True
            start = min(self.saved, len(history))
            self.store.save_messages(self.chat_id, start, [m.to_dict() for m in history[start:]])
            self.saved = len(history)
            return created

    def reply_done(self, session: Any, stats: Any) -> None:
        """A reply ended: the messages it left (a cut-off answer too), and its stats on its last one."""
        self.sync(session)
        with self._lock:
            if self.chat_id is None or not self.saved or stats is None:
                return
            data = asdict(stats) if is_dataclass(stats) else dict(stats)
            self.store.set_stats(self.chat_id, self.saved - 1, data)

    def settings_changed(self, session: Any) -> None:
        with self._lock:
            if self.chat_id is not None:
                self.store.update_settings(self.chat_id, _settings(session))

    def truncated(self, session: Any, start: int) -> None:
        """The session's history was changed from position `start` on (edit, regenerate, delete)."""
        history = _history(session)
        with self._lock:
            if self.chat_id is None:
                return
            self.store.save_messages(self.chat_id, start, [m.to_dict() for m in history[start:]])
            self.saved = len(history)

    def branch(self, title: str | None = None, upto: int | None = None) -> int | None:
        """Copy the current chat (all of it, or its first `upto` messages) as a new chat; -> its id."""
        with self._lock:
            if self.chat_id is None:
                return None
            return self.store.duplicate(self.chat_id, title=title, upto=upto)
