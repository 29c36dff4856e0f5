"""The chat database: every chat of `mlx-oss chat` in one SQLite file, written message by message.

One row per chat (title, times, model, settings as `Chat.settings()` gives them, the `--tools`
file) and one row per harmony message (`Message.to_dict()` JSON, chain of thought included) with
the stats of the reply it ends. `chat_json(id)` returns exactly `Chat.to_json()`'s format, so
`Chat.from_json` reopens a stored chat and a JSON saved with ctrl+s imports into one: there is one
serialization of a conversation, the engine's.

Why it is safe to lose the process at any moment: WAL journal, every write is one short
`BEGIN IMMEDIATE` transaction, so a killed app loses at most the message it was writing; two app
processes on one file wait for each other (busy timeout) instead of failing or corrupting it.
Schema changes are numbered migrations (`PRAGMA user_version`). A file from a newer mlx-oss, or an
SQLite file that is not ours, is left untouched (an error says so); an unreadable file is moved
aside next to itself with a one-line notice, never reset or overwritten.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from mlx_oss.errors import UserError
from mlx_oss.harmony import UNPARSED

__all__ = ["APPLICATION_ID", "SCHEMA_VERSION", "ChatInfo", "ChatStore", "ChatStoreError", "auto_title", "message_text"]

APPLICATION_ID = 0x6D6C786F  # "mlxo": marks the file as ours (PRAGMA application_id)
BUSY_TIMEOUT_S = 10.0
TITLE_CHARS = 60
JSON_VERSION = 1  # the `version` of Chat.to_json() this module writes back


class ChatStoreError(UserError):
    """The chat database cannot be used as it is; str() is one line naming the file and what to do."""


# Each entry upgrades the schema by one version; never edit a released one, append a new one.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE chats (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        title       TEXT    NOT NULL DEFAULT '',
        title_set   INTEGER NOT NULL DEFAULT 0,   -- 1 once the user renamed it (no more auto title)
        created_at  REAL    NOT NULL,
        updated_at  REAL    NOT NULL,
        model       TEXT    NOT NULL DEFAULT '',
        settings    TEXT    NOT NULL DEFAULT '{}', -- Chat.settings() as JSON
        tools_file  TEXT,                          -- the --tools file the chat was made with
        parent_id   INTEGER REFERENCES chats(id) ON DELETE SET NULL  -- duplicated from
    );
    CREATE INDEX chats_by_updated ON chats(updated_at DESC, id DESC);
    CREATE TABLE messages (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        chat_id     INTEGER NOT NULL REFERENCES chats(id) ON DELETE CASCADE,
        position    INTEGER NOT NULL,              -- index in Chat.history
        role        TEXT    NOT NULL,
        channel     TEXT,
        body        TEXT    NOT NULL,              -- Message.to_dict() as JSON
        text        TEXT    NOT NULL DEFAULT '',   -- what search looks at (user text and answers)
        stats       TEXT,                          -- Stats of the reply this message ends (JSON)
        created_at  REAL    NOT NULL,
        UNIQUE (chat_id, position)
    );
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)

_FTS = """
CREATE VIRTUAL TABLE chats_fts USING fts5(title, content='chats', content_rowid='id', tokenize='unicode61 remove_diacritics 2');
CREATE VIRTUAL TABLE messages_fts USING fts5(text, content='messages', content_rowid='id', tokenize='unicode61 remove_diacritics 2');
CREATE TRIGGER chats_fts_ai AFTER INSERT ON chats BEGIN
    INSERT INTO chats_fts(rowid, title) VALUES (new.id, new.title); END;
CREATE TRIGGER chats_fts_ad AFTER DELETE ON chats BEGIN
    INSERT INTO chats_fts(chats_fts, rowid, title) VALUES ('delete', old.id, old.title); END;
CREATE TRIGGER chats_fts_au AFTER UPDATE OF title ON chats BEGIN
    INSERT INTO chats_fts(chats_fts, rowid, title) VALUES ('delete', old.id, old.title);
    INSERT INTO chats_fts(rowid, title) VALUES (new.id, new.title); END;
CREATE TRIGGER messages_fts_ai AFTER INSERT ON messages BEGIN
    INSERT INTO messages_fts(rowid, text) VALUES (new.id, new.text); END;
CREATE TRIGGER messages_fts_ad AFTER DELETE ON messages BEGIN
    INSERT INTO messages_fts(messages_fts, rowid, text) VALUES ('delete', old.id, old.text); END;
CREATE TRIGGER messages_fts_au AFTER UPDATE OF text ON messages BEGIN
    INSERT INTO messages_fts(messages_fts, rowid, text) VALUES ('delete', old.id, old.text);
    INSERT INTO messages_fts(rowid, text) VALUES (new.id, new.text); END;
"""
_FTS_TRIGGERS = ("chats_fts_ai", "chats_fts_ad", "chats_fts_au", "messages_fts_ai", "messages_fts_ad", "messages_fts_au")


@dataclass(frozen=True)
class ChatInfo:
    """One chat in the list (no messages)."""

    id: int
    title: str
    created_at: float
    updated_at: float
    model: str = ""
    messages: int = 0
    tools_file: str | None = None
    parent_id: int | None = None
    snippet: str | None = None  # search: where it matched


def message_text(message: dict[str, Any]) -> str:
    """The text of a stored message (`Message.to_dict()` form): plain content or its text parts."""
    content = message.get("content", "")
    if isinstance(content, str):
        return content
    parts = []
    for part in content if isinstance(content, list) else ():
        if isinstance(part, str):
            parts.append(part)
        elif isinstance(part, dict) and isinstance(part.get("text"), str):
            parts.append(part["text"])
    return "".join(parts)


def _search_text(message: dict[str, Any]) -> str:
    """What search finds: what the user wrote and what the model said to them (not its reasoning,
    not tool traffic, not output that was not harmony)."""
    role = message.get("role")
    said = message.get("channel") not in ("analysis", UNPARSED) and not message.get("recipient")
    if role == "user" or (role == "assistant" and said):
        return message_text(message)
    return ""


def auto_title(text: str) -> str:
    """A chat's title from its first message: the first non-empty line, shortened."""
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    line = " ".join(line.split())
    return line if len(line) <= TITLE_CHARS else line[: TITLE_CHARS - 1].rstrip() + "…"


def _fts_query(query: str) -> str:
    """User words -> an FTS5 query: every word must appear, as a prefix (`cod` finds `code`)."""
    return " ".join('"' + w.replace('"', '""') + '"*' for w in _words(query))


def _words(query: str) -> list[str]:
    return re.findall(r"\w+", query, flags=re.UNICODE)


def _like(word: str) -> str:
    return "%" + word.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _is_unreadable(e: sqlite3.DatabaseError) -> bool:
    """Errors that mean the bytes are not a (sound) SQLite database, as opposed to locked, busy,
    read-only or missing, which must never make us move the file."""
    msg = str(e).lower()
    return "file is not a database" in msg or "malformed" in msg or "encrypted" in msg


class ChatStore:
    """The chats in one SQLite file. Thread-safe (one connection, one lock): the UI thread lists
    and renames while the engine thread appends messages."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        self.notice: str | None = None  # set when an unreadable file was moved aside
        self._lock = threading.RLock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ChatStoreError(f"{self.path.parent}: cannot create the data folder ({e.strerror or e}); "
                                 "choose another with --data-dir or MLX_OSS_DATA_DIR") from None  # fmt: skip
        try:
            self._conn = self._open()
        except sqlite3.DatabaseError as e:
            if not _is_unreadable(e):
                raise ChatStoreError(f"{self.path}: cannot open the chat database ({e})") from None
            backup = self._move_aside()
            self.notice = (f"{self.path} could not be read ({e}); moved it to {backup.name} "
                           "and started a new chat database")  # fmt: skip
            self._conn = self._open()
        try:
            self.fts = self._setup_search()
        except BaseException:
            self._conn.close()
            raise

    # ------------------------------------------------------------------ opening

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        return conn

    def _open(self) -> sqlite3.Connection:
        existed = self.path.exists() and self.path.stat().st_size > 0
        if existed and self.path.with_name(self.path.name + "-wal").exists():
            # Messages may be in the journal only (an app killed mid-chat): check read-only first, since
            # closing a read-write connection to a damaged file deletes the journal it must be moved with.
            probe = sqlite3.connect(self.path.resolve().as_uri() + "?mode=ro", uri=True, timeout=BUSY_TIMEOUT_S)
            try:
                self._check(probe, existed)
            finally:
                probe.close()
        conn = self._connect()
        try:
            version = self._check(conn, existed)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")  # with WAL: durable across a killed process
            conn.execute("PRAGMA foreign_keys=ON")
            self._migrate(conn, version)
        except BaseException:
            conn.close()
            raise
        return conn

    def _check(self, conn: sqlite3.Connection, existed: bool) -> int:
        """Refuse a file that is not ours or is newer, raise sqlite3.DatabaseError for a damaged one; -> its version."""
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        if existed and tables and app_id != APPLICATION_ID:
            raise ChatStoreError(f"{self.path}: an SQLite file, but not an mlx-oss chat database; left it untouched "
                                 "(choose another folder with --data-dir or MLX_OSS_DATA_DIR)")  # fmt: skip
        if version > SCHEMA_VERSION:
            raise ChatStoreError(f"{self.path}: written by a newer mlx-oss (chat database schema {version}, this "
                                 f"version reads up to {SCHEMA_VERSION}); left it untouched: upgrade mlx-oss, "
                                 "or use another folder with --data-dir")  # fmt: skip
        if existed:
            check = conn.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise sqlite3.DatabaseError(f"database disk image is malformed: {' '.join(check.split())}")  # one line
        return version

    def _migrate(self, conn: sqlite3.Connection, version: int) -> None:
        if version == SCHEMA_VERSION:
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Another process may have migrated while we waited for the lock.
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            for v in range(version, SCHEMA_VERSION):
                for statement in _statements(MIGRATIONS[v]):
                    conn.execute(statement)
            conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _move_aside(self) -> Path:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        backup = self.path.with_name(f"{self.path.name}.unreadable-{stamp}")
        n = 1
        while backup.exists():
            n += 1
            backup = self.path.with_name(f"{self.path.name}.unreadable-{stamp}-{n}")
        for suffix in ("-wal", "-shm"):  # keep the journal with the file it belongs to
            side = self.path.with_name(self.path.name + suffix)
            if side.exists():
                side.rename(backup.with_name(backup.name + suffix))
        self.path.rename(backup)
        return backup

    def _setup_search(self) -> bool:
        """Full-text search with FTS5 when this SQLite has it (kept in sync by triggers), else LIKE.
        The index is not part of the versioned schema: it is (re)built whenever it is missing."""
        with self._write() as c:
            have = {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'trigger')")}
            if not _fts5_available(c):
                for trig in _FTS_TRIGGERS:  # an index this SQLite cannot update: stop feeding it
                    if trig in have:
                        c.execute(f"DROP TRIGGER {trig}")
                        c.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('fts_stale', '1')")
                return False
            stale = c.execute("SELECT value FROM meta WHERE key = 'fts_stale'").fetchone()
            if "messages_fts" not in have:
                for statement in _statements(_FTS):
                    c.execute(statement)
                stale = True
            if stale:
                c.execute("INSERT INTO chats_fts(chats_fts) VALUES ('rebuild')")
                c.execute("INSERT INTO messages_fts(messages_fts) VALUES ('rebuild')")
                c.execute("DELETE FROM meta WHERE key = 'fts_stale'")
        return True

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> ChatStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ transactions

    class _Tx:
        def __init__(self, store: ChatStore) -> None:
            self.store = store

        def __enter__(self) -> sqlite3.Connection:
            self.store._lock.acquire()
            try:
                self.store._conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as e:
                self.store._lock.release()
                raise self.store._error(e) from None
            except BaseException:
                self.store._lock.release()
                raise
            return self.store._conn

        def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
            try:
                if exc_type is None:
                    try:
                        self.store._conn.execute("COMMIT")
                    except sqlite3.OperationalError as e:
                        self.store._conn.execute("ROLLBACK")
                        raise self.store._error(e) from None
                else:
                    self.store._conn.execute("ROLLBACK")
                    if isinstance(exc, sqlite3.OperationalError):
                        raise self.store._error(exc) from None
            finally:
                self.store._lock.release()

    def _error(self, e: sqlite3.Error) -> ChatStoreError:
        """A database failure (locked past the busy timeout, disk full, read-only) as one line."""
        why = str(e)
        if "locked" in why or "busy" in why:
            why += f" (another process kept it busy for over {BUSY_TIMEOUT_S:g} s)"
        return ChatStoreError(f"{self.path}: {why}")

    def _write(self) -> ChatStore._Tx:
        """One write transaction; IMMEDIATE takes the write lock up front, so two processes queue
        (busy timeout) instead of failing halfway."""
        return ChatStore._Tx(self)

    def _read(self, sql: str, args: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            try:
                return self._conn.execute(sql, args).fetchall()
            except sqlite3.OperationalError as e:
                raise self._error(e) from None

    # ------------------------------------------------------------------ chats

    def create(self, *, model: str = "", settings: dict[str, Any] | None = None, title: str = "",
               tools_file: str | None = None) -> int:  # fmt: skip
        """A new empty chat; -> its id."""
        now = time.time()
        with self._write() as c:
            cur = c.execute(
                "INSERT INTO chats(title, title_set, created_at, updated_at, model, settings, tools_file) VALUES (?,?,?,?,?,?,?)",
                (title, 1 if title else 0, now, now, model, json.dumps(settings or {}), tools_file),
            )
            return int(cur.lastrowid)

    _INFO = """SELECT c.id, c.title, c.created_at, c.updated_at, c.model, c.tools_file, c.parent_id,
                      (SELECT count(*) FROM messages m WHERE m.chat_id = c.id) AS n FROM chats c"""

    @staticmethod
    def _info(row: sqlite3.Row, snippet: str | None = None) -> ChatInfo:
        return ChatInfo(row["id"], row["title"], row["created_at"], row["updated_at"], row["model"], row["n"],
                        row["tools_file"], row["parent_id"], snippet)  # fmt: skip

    def list(self, limit: int | None = None) -> list[ChatInfo]:
        """Every chat, the most recently updated first."""
        sql = self._INFO + " ORDER BY c.updated_at DESC, c.id DESC" + (" LIMIT ?" if limit else "")
        return [self._info(r) for r in self._read(sql, (limit,) if limit else ())]

    def get(self, chat_id: int) -> ChatInfo:
        rows = self._read(self._INFO + " WHERE c.id = ?", (chat_id,))
        if not rows:
            raise ChatStoreError(f"no chat {chat_id} in {self.path} (`mlx-oss chat --list` shows them)")
        return self._info(rows[0])

    def last(self) -> ChatInfo | None:
        """The most recently updated chat (what `--resume` without an id opens)."""
        chats = self.list(limit=1)
        return chats[0] if chats else None

    def search(self, query: str, limit: int = 200) -> list[ChatInfo]:
        """Chats that contain every word of `query` somewhere (title or messages; with FTS5 as word
        prefixes, accents ignored), newest first; `snippet` shows the best matching message."""
        words = _words(query)
        if not words:
            return self.list(limit)
        if self.fts:
            sets = [{r[0] for r in self._read(
                "SELECT m.chat_id FROM messages_fts JOIN messages m ON m.id = messages_fts.rowid WHERE messages_fts MATCH ? "
                "UNION SELECT rowid FROM chats_fts WHERE chats_fts MATCH ?", (_fts_query(w), _fts_query(w)))} for w in words]  # fmt: skip
            hits = self._read(
                "SELECT m.chat_id, snippet(messages_fts, 0, '[', ']', '…', 10) FROM messages_fts "
                "JOIN messages m ON m.id = messages_fts.rowid WHERE messages_fts MATCH ? ORDER BY rank",
                (" OR ".join(_fts_query(w) for w in words),),
            )
        else:
            sets = [{r[0] for r in self._read(
                "SELECT chat_id FROM messages WHERE text LIKE ? ESCAPE '\\' UNION SELECT id FROM chats WHERE title LIKE ? ESCAPE '\\'",
                (_like(w), _like(w)))} for w in words]  # fmt: skip
            cond = " OR ".join("text LIKE ? ESCAPE '\\'" for _ in words)
            hits = self._read(f"SELECT chat_id, text FROM messages WHERE {cond}", [_like(w) for w in words])
        ids = set.intersection(*sets)
        snippets: dict[int, str] = {}
        for r in hits:
            if r[0] in ids:
                snippets.setdefault(r[0], " ".join(str(r[1]).split())[:120])
        rows = self._read(self._INFO + " ORDER BY c.updated_at DESC, c.id DESC")
        return [self._info(r, snippets.get(r["id"])) for r in rows if r["id"] in ids][:limit]

    def rename(self, chat_id: int, title: str) -> None:
        """Set the title (it stops following the first message; the chat keeps its place in the list)."""
        title = " ".join(title.split())
        if not title:
            raise ChatStoreError("a chat title cannot be empty")
        with self._write() as c:  # not an update of the conversation: its place in the list stays
            if c.execute("UPDATE chats SET title = ?, title_set = 1 WHERE id = ?", (title, chat_id)).rowcount == 0:
                raise ChatStoreError(f"no chat {chat_id} in {self.path}")

    def delete(self, chat_id: int) -> None:
        with self._write() as c:
            c.execute("DELETE FROM messages WHERE chat_id = ?", (chat_id,))
            if c.execute("DELETE FROM chats WHERE id = ?", (chat_id,)).rowcount == 0:
                raise ChatStoreError(f"no chat {chat_id} in {self.path}")

    def duplicate(self, chat_id: int, *, title: str | None = None, upto: int | None = None) -> int:
        """A copy of a chat (a branch): its settings and its first `upto` messages (all by default);
        -> the new chat's id. The copy is the newest chat."""
        with self._write() as c:
            row = c.execute("SELECT * FROM chats WHERE id = ?", (chat_id,)).fetchone()
            if row is None:
                raise ChatStoreError(f"no chat {chat_id} in {self.path}")
            now = time.time()
            cur = c.execute(
                "INSERT INTO chats(title, title_set, created_at, updated_at, model, settings, tools_file, parent_id) "
                "VALUES (?,1,?,?,?,?,?,?)",
                (title or f"{row['title'] or 'Chat'} (copy)", now, now, row["model"], row["settings"], row["tools_file"], chat_id),
            )
            new = int(cur.lastrowid)
            c.execute(
                "INSERT INTO messages(chat_id, position, role, channel, body, text, stats, created_at) "
                "SELECT ?, position, role, channel, body, text, stats, created_at FROM messages "
                "WHERE chat_id = ? AND position < ? ORDER BY position",
                (new, chat_id, upto if upto is not None else 1 << 62),
            )
            return new

    def update_settings(self, chat_id: int, settings: dict[str, Any], *, model: str | None = None,
                        tools_file: str | None = None) -> None:  # fmt: skip
        """The chat's settings changed (effort, instructions, sampling...)."""
        with self._write() as c:
            sets, args = "settings = ?", [json.dumps(settings)]
            if model is not None:
                sets, args = sets + ", model = ?", args + [model]
            if tools_file is not None:
                sets, args = sets + ", tools_file = ?", args + [tools_file]
            self._touch(c, chat_id, sets, args)

    def _touch(self, c: sqlite3.Connection, chat_id: int, sets: str = "", args: Sequence[Any] = ()) -> None:
        sql = "UPDATE chats SET " + (sets + ", " if sets else "") + "updated_at = max(?, updated_at + 1e-6) WHERE id = ?"
        if c.execute(sql, (*args, time.time(), chat_id)).rowcount == 0:
            raise ChatStoreError(f"no chat {chat_id} in {self.path}")

    # ------------------------------------------------------------------ messages

    def save_messages(self, chat_id: int, start: int, messages: Iterable[dict[str, Any]]) -> None:
        """Make the chat's messages from position `start` on be `messages` (`Message.to_dict()`
        dicts): appending passes the new ones at the old length; an edit or a regenerate passes
        where the history changed. One transaction: all or nothing. The first user message gives
        the chat its title unless the user named it."""
        msgs = list(messages)
        now = time.time()
        with self._write() as c:
            # first: a chat deleted meanwhile (by another process) is this error, not a foreign key failure
            row = c.execute("SELECT title_set FROM chats WHERE id = ?", (chat_id,)).fetchone()
            if row is None:
                raise ChatStoreError(f"no chat {chat_id} in {self.path}")
            c.execute("DELETE FROM messages WHERE chat_id = ? AND position >= ?", (chat_id, start))
            c.executemany(
                "INSERT INTO messages(chat_id, position, role, channel, body, text, created_at) VALUES (?,?,?,?,?,?,?)",
                [(chat_id, start + i, m.get("role", ""), m.get("channel"), json.dumps(m, ensure_ascii=False),
                  _search_text(m), now) for i, m in enumerate(msgs)],  # fmt: skip
            )
            if not row[0]:
                first = c.execute("SELECT body FROM messages WHERE chat_id = ? AND role = 'user' ORDER BY position LIMIT 1",
                                  (chat_id,)).fetchone()  # fmt: skip
                title = auto_title(message_text(json.loads(first[0]))) if first else ""
                c.execute("UPDATE chats SET title = ? WHERE id = ? AND title != ?", (title, chat_id, title))
            self._touch(c, chat_id)

    def set_stats(self, chat_id: int, position: int, stats: dict[str, Any]) -> None:
        """Attach a reply's stats to its last message (position)."""
        with self._write() as c:
            c.execute("UPDATE messages SET stats = ? WHERE chat_id = ? AND position = ?",
                      (json.dumps(stats), chat_id, position))  # fmt: skip

    def messages(self, chat_id: int) -> list[dict[str, Any]]:
        """The chat's messages, in order, as `Message.to_dict()` dicts."""
        return [json.loads(r[0]) for r in self._read("SELECT body FROM messages WHERE chat_id = ? ORDER BY position", (chat_id,))]

    def stats(self, chat_id: int) -> dict[int, dict[str, Any]]:
        """{position of a reply's last message: its stats}."""
        rows = self._read("SELECT position, stats FROM messages WHERE chat_id = ? AND stats IS NOT NULL", (chat_id,))
        return {r[0]: json.loads(r[1]) for r in rows}

    def settings(self, chat_id: int) -> dict[str, Any]:
        rows = self._read("SELECT settings FROM chats WHERE id = ?", (chat_id,))
        if not rows:
            raise ChatStoreError(f"no chat {chat_id} in {self.path}")
        return json.loads(rows[0][0])

    def chat_json(self, chat_id: int) -> dict[str, Any]:
        """The chat in `Chat.to_json()` format (what `Chat.from_json` and ctrl+s files use)."""
        with self._lock:  # settings and messages from one moment
            self._conn.execute("BEGIN")
            try:
                return {"version": JSON_VERSION, "settings": self.settings(chat_id), "messages": self.messages(chat_id)}
            finally:
                self._conn.execute("COMMIT")

    def import_json(self, data: dict[str, Any], *, model: str = "", title: str | None = None) -> int:
        """A new chat from `Chat.to_json()` data (e.g. a file saved with ctrl+s); -> its id."""
        if not isinstance(data, dict) or not isinstance(data.get("messages"), list):
            raise ChatStoreError("not a saved chat: expected a JSON object with 'settings' and 'messages'")
        if int(data.get("version", 1)) > JSON_VERSION:
            raise ChatStoreError(f"saved chat version {data.get('version')} is newer than this mlx-oss reads ({JSON_VERSION})")
        bad = next((i for i, m in enumerate(data["messages"]) if not isinstance(m, dict) or "role" not in m), None)
        if bad is not None:
            raise ChatStoreError(f"not a saved chat: messages[{bad}] has no 'role'")
        chat_id = self.create(model=model, settings=data.get("settings") or {}, title=title or "")
        self.save_messages(chat_id, 0, data["messages"])
        return chat_id

    def integrity(self) -> str:
        """`PRAGMA integrity_check` ("ok" when sound)."""
        return "; ".join(str(r[0]) for r in self._read("PRAGMA integrity_check"))


def _fts5_available(conn: sqlite3.Connection) -> bool:
    try:
        return bool(conn.execute("SELECT sqlite_compileoption_used('ENABLE_FTS5')").fetchone()[0]) or _probe_fts5(conn)
    except sqlite3.Error:
        return _probe_fts5(conn)


def _probe_fts5(conn: sqlite3.Connection) -> bool:
    try:
        conn.execute("CREATE VIRTUAL TABLE temp.fts5_probe USING fts5(x)")
        conn.execute("DROP TABLE temp.fts5_probe")
        return True
    except sqlite3.Error:
        return False


def _statements(script: str) -> Iterator[str]:
    """Split a schema script into statements (sqlite3.complete_statement knows about triggers)."""
    buf = ""
    for line in script.splitlines(keepends=True):
        if line.strip().startswith("--") and not buf.strip():
            continue
        buf += line
        if sqlite3.complete_statement(buf):
            if buf.strip():
                yield buf.strip()
            buf = ""
    if buf.strip():
        raise ValueError(f"incomplete SQL statement: {buf.strip()[:60]}")
