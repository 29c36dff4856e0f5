"""The chat database (tui/storage.py) and the data folder (tui/datadir.py): what is stored, search,
rename / delete / duplicate, the engine's JSON round trip, migrations, damaged and future files,
and two processes (or a killed one) on one file."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from mlx_oss.harmony import UNPARSED, Message, Role
from mlx_oss.tui import datadir, storage
from mlx_oss.tui.storage import SCHEMA_VERSION, ChatStore, ChatStoreError, auto_title

def conversation(question: str, answer: str, reasoning: str = "Let me think.") -> list[dict]:
    return [Message.user(question).to_dict(), Message.assistant(reasoning, channel="analysis").to_dict(),
            Message.assistant(answer, channel="final").to_dict()]  # fmt: skip


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def store(tmp_path):
    with ChatStore(tmp_path / "chats.sqlite3") as s:
        yield s


# ----------------------------------------------------------------------------- data folder


def test_data_dir_flag_beats_env_beats_os_convention(tmp_path, monkeypatch):
    import platformdirs

    monkeypatch.delenv(datadir.DATA_DIR_ENV, raising=False)
    assert datadir.data_dir() == Path(platformdirs.user_data_dir("mlx-oss", appauthor=False))
    monkeypatch.setenv(datadir.DATA_DIR_ENV, str(tmp_path / "env"))
    assert datadir.data_dir() == tmp_path / "env"
    assert datadir.data_dir(tmp_path / "flag") == tmp_path / "flag"
    assert datadir.database_path("~/x") == Path.home() / "x" / "chats.sqlite3"
    assert not (tmp_path / "env").exists()  # resolving a folder never creates it


# ----------------------------------------------------------------------------- chats and messages


def test_chats_newest_first_with_auto_title_until_renamed(store):
    a = store.create(model="gpt-oss-20b", settings={"reasoning_effort": "high"}, tools_file="/t/tools.py")
    store.save_messages(a, 0, conversation("  \n  Explain   the KV cache\nin detail", "It stores keys."))
    b = store.create(model="gpt-oss-20b")
    store.save_messages(b, 0, conversation("x" * 100, "ok"))
    chats = store.list()
    assert [c.id for c in chats] == [b, a]
    assert chats[1].title == "Explain the KV cache" and chats[1].messages == 3 and chats[1].tools_file == "/t/tools.py"
    assert len(chats[0].title) == storage.TITLE_CHARS and chats[0].title.endswith("…")
    assert store.settings(a) == {"reasoning_effort": "high"}

    store.save_messages(a, 3, [Message.user("more").to_dict()])  # appending moves it to the top
    assert store.last().id == a and store.get(a).messages == 4
    store.rename(a, "  KV   notes ")
    store.save_messages(a, 0, conversation("A different first question", "x"))
    assert store.get(a).title == "KV notes"  # renamed: the first message no longer names it
    with pytest.raises(ChatStoreError) as e:
        store.rename(a, "   ")
    assert str(e.value) == "a chat title cannot be empty"
    with pytest.raises(ChatStoreError, match="no chat 999"):
        store.get(999)


def test_save_messages_replaces_from_a_position(store):
    c = store.create()
    store.save_messages(c, 0, conversation("q1", "a1") + conversation("q2", "a2"))
    store.set_stats(c, 5, {"generated_tokens": 7})
    store.save_messages(c, 3, conversation("q2 edited", "a2 edited"))  # an edit at the second question
    texts = [m["content"] for m in store.messages(c)]
    assert texts == ["q1", "Let me think.", "a1", "q2 edited", "Let me think.", "a2 edited"]
    assert store.stats(c) == {}  # the old reply's stats went with it
    store.set_stats(c, 2, {"generated_tokens": 3})
    assert store.stats(c) == {2: {"generated_tokens": 3}}


def test_engine_json_round_trip_and_import(store):
    """chat_json is Chat.to_json()'s format: what ctrl+s writes imports into the same chat."""
    saved = {"version": 1, "settings": {"reasoning_effort": "low", "instructions": "Be brief.", "tools": []},
             "messages": conversation("hello", "hi!") + [Message.tool_result("functions.f", "42").to_dict()]}  # fmt: skip
    c = store.import_json(saved, model="m")
    assert store.chat_json(c) == saved
    assert store.get(c).title == "hello"
    assert [Message.from_dict(m) for m in store.chat_json(c)["messages"]][2].text == "hi!"
    with pytest.raises(ChatStoreError, match="not a saved chat"):
        store.import_json({"settings": {}})
    with pytest.raises(ChatStoreError, match=r"messages\[0\]"):
        store.import_json({"messages": [{"content": "no role"}]})
    with pytest.raises(ChatStoreError, match="newer"):
        store.import_json({"version": 99, "messages": []})


def test_duplicate_and_delete(store):
    a = store.create(model="m", settings={"reasoning_effort": "high"})
    store.save_messages(a, 0, conversation("q1", "a1") + conversation("q2", "a2"))
    store.set_stats(a, 2, {"generated_tokens": 5})
    full = store.duplicate(a)
    part = store.duplicate(a, upto=3, title="Branch at q2")
    assert store.messages(full) == store.messages(a) and store.stats(full) == {2: {"generated_tokens": 5}}
    assert store.messages(part) == store.messages(a)[:3]
    assert store.get(part).title == "Branch at q2" and store.get(part).parent_id == a
    assert store.get(full).title == "q1 (copy)" and store.settings(full) == {"reasoning_effort": "high"}
    assert store.list()[0].id == part

    store.delete(a)
    assert a not in [c.id for c in store.list()]
    assert store.search("a2") and all(c.id != a for c in store.search("a2"))
    assert store.messages(full) == store.messages(part) + conversation("q2", "a2")  # copies keep their messages
    with pytest.raises(ChatStoreError):
        store.delete(a)
    assert store.integrity() == "ok"


# ----------------------------------------------------------------------------- search


def _search_cases(store) -> None:
    a = store.create()
    store.save_messages(a, 0, conversation("How do I write a Python decorator?", "Use functools.wraps.",
                                           reasoning="secret chain of thought"))  # fmt: skip
    b = store.create()
    store.save_messages(b, 0, conversation("Un café crème", "Voilà"))
    store.rename(b, "French breakfast")
    ids = lambda q: [c.id for c in store.search(q)]  # noqa: E731
    assert ids("functools") == [a] and ids("wraps python") == [a]
    assert ids("breakfast") == [b] and ids("crème") == [b]
    assert ids("secret") == []  # reasoning is not searched
    assert ids("python breakfast") == []  # every word must be in the chat (its title or messages)
    assert ids("")[:2] == [b, a]
    hit = store.search("functools")[0]
    assert "functools" in hit.snippet
    store.delete(a)
    assert ids("functools") == []


def test_search_full_text(store):
    assert store.fts  # this Python's SQLite has FTS5
    _search_cases(store)
    assert [c.title for c in store.search("pyth")] == []  # (deleted above)
    c = store.create()
    store.save_messages(c, 0, conversation("Cafe notes", "x"))
    assert [x.id for x in store.search("pyth caf")] == []
    assert [x.title for x in store.search("caf")] == ["Cafe notes", "French breakfast"]  # prefix, no accents
    assert store.search('"); DROP TABLE chats; --') == []  # any text is a query, never SQL


def test_search_skips_unparsed_output(store):
    c = store.create()
    msgs = conversation("hello", "fine") + [Message(Role.ASSISTANT, "zqxgarbage", channel=UNPARSED).to_dict()]
    store.save_messages(c, 0, msgs)
    assert store.search("zqxgarbage") == [] and [x.id for x in store.search("fine")] == [c]


def test_search_without_fts5_falls_back_to_like(tmp_path, monkeypatch):
    with ChatStore(tmp_path / "db") as s:  # made with FTS, then opened by an SQLite without it
        s.save_messages(s.create(), 0, conversation("old chat", "x"))
    monkeypatch.setattr(storage, "_fts5_available", lambda conn: False)
    with ChatStore(tmp_path / "db") as s:
        assert not s.fts
        _search_cases(s)
        assert [c.title for c in s.search("old")] == ["old chat"]
        s.save_messages(s.create(), 0, conversation("new while no index", "x"))
    monkeypatch.undo()
    with ChatStore(tmp_path / "db") as s:  # the index is rebuilt with what was written meanwhile
        assert s.fts and [c.title for c in s.search("index")] == ["new while no index"]
        assert s.integrity() == "ok"


# ----------------------------------------------------------------------------- schema and damaged files


def test_schema_file_markers_and_wal(store):
    c = sqlite3.connect(store.path)
    assert c.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert c.execute("PRAGMA application_id").fetchone()[0] == storage.APPLICATION_ID
    assert c.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    c.close()


def test_migrations_upgrade_an_older_file_in_place(tmp_path, monkeypatch):
    path = tmp_path / "chats.sqlite3"
    with ChatStore(path) as s:
        c = s.create()
        s.save_messages(c, 0, conversation("kept across the upgrade", "yes"))
    monkeypatch.setattr(storage, "MIGRATIONS", storage.MIGRATIONS + ("ALTER TABLE chats ADD COLUMN pinned INTEGER NOT NULL DEFAULT 0;",))
    monkeypatch.setattr(storage, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    with ChatStore(path) as s:
        assert [x.title for x in s.list()] == ["kept across the upgrade"]
        assert s._read("SELECT pinned FROM chats")[0][0] == 0
        assert s._read("PRAGMA user_version")[0][0] == SCHEMA_VERSION + 1


def test_future_schema_is_left_untouched(tmp_path):
    path = tmp_path / "chats.sqlite3"
    with ChatStore(path) as s:
        s.save_messages(s.create(), 0, conversation("from the future", "x"))
    c = sqlite3.connect(path)
    c.execute(f"PRAGMA user_version={SCHEMA_VERSION + 5}")
    c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    c.close()
    before = sha(path)
    with pytest.raises(ChatStoreError) as e:
        ChatStore(path)
    msg = str(e.value)
    assert msg == (f"{path}: written by a newer mlx-oss (chat database schema {SCHEMA_VERSION + 5}, this version "
                   f"reads up to {SCHEMA_VERSION}); left it untouched: upgrade mlx-oss, or use another folder with --data-dir")  # fmt: skip
    assert sha(path) == before and sorted(p.name for p in tmp_path.iterdir()) == ["chats.sqlite3"]


def test_someone_elses_sqlite_file_is_left_untouched(tmp_path):
    path = tmp_path / "chats.sqlite3"
    c = sqlite3.connect(path)
    c.execute("CREATE TABLE photos (id INTEGER)")
    c.commit()
    c.close()
    before = sha(path)
    with pytest.raises(ChatStoreError) as e:
        ChatStore(path)
    assert str(e.value) == (f"{path}: an SQLite file, but not an mlx-oss chat database; left it untouched "
                            "(choose another folder with --data-dir or MLX_OSS_DATA_DIR)")  # fmt: skip
    assert sha(path) == before


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_unreadable_file_is_moved_aside_with_a_one_line_notice(tmp_path, damage):
    path = tmp_path / "chats.sqlite3"
    if damage == "garbage":
        path.write_bytes(b"this is not a database at all\n" * 200)
    else:
        with ChatStore(path) as s:
            for i in range(40):
                s.save_messages(s.create(), 0, conversation(f"chat {i} " + "words " * 200, "x"))
        c = sqlite3.connect(path)
        c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        c.close()
        raw = bytearray(path.read_bytes())
        raw[4096 * 2 : 4096 * 6] = b"\xff" * (4096 * 4)  # wreck some pages (b-tree pages of the tables)
        path.write_bytes(bytes(raw))
    original = path.read_bytes()
    with ChatStore(path) as s:
        assert s.notice and "\n" not in s.notice and "moved it to" in s.notice and "new chat database" in s.notice
        backups = [p for p in tmp_path.iterdir() if ".unreadable-" in p.name]
        assert len(backups) == 1 and backups[0].read_bytes() == original and backups[0].name in s.notice
        assert s.list() == []
        s.save_messages(s.create(), 0, conversation("fresh", "x"))  # the new file works
        assert s.integrity() == "ok"


def test_locked_file_is_never_moved(tmp_path):
    """A busy database is not a damaged one: the store waits for it, it never moves it aside."""
    path = tmp_path / "chats.sqlite3"
    with ChatStore(path):
        pass
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    old = storage.BUSY_TIMEOUT_S
    storage.BUSY_TIMEOUT_S = 0.2
    try:
        with pytest.raises(ChatStoreError, match="locked"):
            ChatStore(path)
    finally:
        storage.BUSY_TIMEOUT_S = old
        holder.execute("ROLLBACK")
        holder.close()
    assert [p.name for p in tmp_path.iterdir() if ".unreadable-" in p.name] == []


# ----------------------------------------------------------------------------- processes

WRITER = textwrap.dedent(
    """
    import sys, time
    from mlx_oss.tui.storage import ChatStore
    path, name, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    s = ChatStore(path)
    shared = int(sys.argv[4]) if len(sys.argv) > 4 else None
    mine = s.create(model=name)
    for i in range(n):
        s.save_messages(mine, i, [{"role": "user", "content": f"{name} message {i}"}])
        if shared is not None:
            s.rename(shared, f"renamed by {name} {i}")
        print(i, flush=True)
    """
)


def _writer(tmp_path: Path, *args: str) -> subprocess.Popen:
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    return subprocess.Popen([sys.executable, str(script), *args], stdout=subprocess.PIPE, text=True, cwd=tmp_path)


def test_two_processes_on_one_database(tmp_path):
    path = tmp_path / "chats.sqlite3"
    with ChatStore(path) as s:
        shared = s.create(title="shared")
    procs = [_writer(tmp_path, str(path), name, "150", str(shared)) for name in ("one", "two")]
    for p in procs:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0 and out.split()[-1] == "149"
    with ChatStore(path) as s:
        assert s.integrity() == "ok"
        by_model = {c.model: c for c in s.list()}
        for name in ("one", "two"):
            msgs = s.messages(by_model[name].id)
            assert [m["content"] for m in msgs] == [f"{name} message {i}" for i in range(150)]
        assert s.get(shared).title in ("renamed by one 149", "renamed by two 149")


def test_killed_writer_loses_nothing_it_committed(tmp_path):
    path = tmp_path / "chats.sqlite3"
    p = _writer(tmp_path, str(path), "victim", "100000")
    done = -1
    while done < 200:  # each printed number is a committed message
        line = p.stdout.readline()
        assert line, "the writer died"
        done = int(line)
    os.kill(p.pid, signal.SIGKILL)
    p.wait(timeout=30)
    p.stdout.close()
    with ChatStore(path) as s:
        assert s.integrity() == "ok" and s.notice is None
        msgs = s.messages(s.list()[0].id)
        assert len(msgs) >= done + 1
        assert [m["content"] for m in msgs] == [f"victim message {i}" for i in range(len(msgs))]


def test_auto_title():
    assert auto_title("\n\n  Hello   there \nsecond line") == "Hello there"
    assert auto_title("") == ""
    assert len(auto_title("word " * 40)) == storage.TITLE_CHARS


def test_schema_statements_split_triggers_whole():
    stmts = list(storage._statements(storage._FTS))
    assert len(stmts) == 8 and all(s.rstrip().endswith(";") for s in stmts)
    with pytest.raises(ValueError, match="incomplete"):
        list(storage._statements("CREATE TABLE x (a"))


def test_store_does_not_import_mlx(tmp_path):
    """`mlx-oss chat --list` must be instant: the store and data folder never load MLX."""
    code = f"import sys; from mlx_oss.tui.storage import ChatStore; ChatStore({str(tmp_path / 'db')!r}).list(); print('mlx' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.strip() == "False", r.stderr[-300:]


# ----------------------------------------------------------------------------- failures are one line, writes all or nothing


def test_writing_to_a_chat_deleted_meanwhile_is_a_one_line_error(tmp_path):
    """Another process deleted the chat this one has open: each write names the chat and the file
    (before the fix, saving a message failed with SQLite's "FOREIGN KEY constraint failed")."""
    path = tmp_path / "chats.sqlite3"
    with ChatStore(path) as mine, ChatStore(path) as theirs:
        c = mine.create()
        mine.save_messages(c, 0, conversation("q", "a"))
        theirs.delete(c)
        gone = f"^no chat {c} in {path}"
        with pytest.raises(ChatStoreError, match=gone):
            mine.save_messages(c, 3, [Message.user("one more").to_dict()])
        with pytest.raises(ChatStoreError, match=gone):
            mine.save_messages(c, 0, [])
        for write in (lambda: mine.update_settings(c, {}), lambda: mine.rename(c, "x"), lambda: mine.duplicate(c),
                      lambda: mine.delete(c), lambda: mine.get(c), lambda: mine.settings(c)):  # fmt: skip
            with pytest.raises(ChatStoreError, match=gone):
                write()
        mine.set_stats(c, 2, {"generated_tokens": 1})  # stats for a gone reply: nothing to attach them to
        assert mine.list() == [] and mine.integrity() == "ok"
        assert mine._read("SELECT count(*) FROM messages")[0][0] == 0


def test_a_failed_write_changes_nothing_and_frees_the_store(store):
    c = store.create()
    store.save_messages(c, 0, conversation("kept question", "kept answer"))
    before = (store.messages(c), store.get(c))
    bad = [Message.user("new").to_dict(), {"role": "user", "content": object()}]  # not JSON: fails after the delete
    with pytest.raises(TypeError):
        store.save_messages(c, 0, bad)
    assert (store.messages(c), store.get(c)) == before
    assert [x.id for x in store.search("kept")] == [c] and store.search("new") == []
    t = threading.Thread(target=lambda: store.save_messages(c, 3, [Message.user("later").to_dict()]))
    t.start()
    t.join(30)  # the lock was released: another thread writes
    assert not t.is_alive() and store.messages(c)[-1]["content"] == "later"


def test_a_busy_or_read_only_database_is_one_line_naming_the_file(tmp_path, monkeypatch):
    path = tmp_path / "chats.sqlite3"
    monkeypatch.setattr(storage, "BUSY_TIMEOUT_S", 0.2)
    with ChatStore(path) as s:
        c = s.create()
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        try:
            with pytest.raises(ChatStoreError) as e:
                s.rename(c, "x")
            assert str(e.value) == f"{path}: database is locked (another process kept it busy for over 0.2 s)"
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        t = threading.Thread(target=s.rename, args=(c, "free again"))
        t.start()
        t.join(30)  # the failed write let go of the store
        assert not t.is_alive() and s.get(c).title == "free again"
        s._conn.execute("PRAGMA query_only=ON")  # as a read-only file would: the write fails inside
        with pytest.raises(ChatStoreError) as e:
            s.save_messages(c, 0, conversation("q", "a"))
        assert str(e.value) == f"{path}: attempt to write a readonly database"
        s._conn.execute("PRAGMA query_only=OFF")
        with pytest.raises(ChatStoreError) as e:
            s._read("SELECT * FROM nowhere")
        assert str(e.value) == f"{path}: no such table: nowhere"
        assert s.messages(c) == [] and s.get(c).title == "free again"


def test_a_data_folder_that_cannot_be_made_or_a_path_that_is_a_folder(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ChatStoreError) as e:
        ChatStore(tmp_path / "file" / "sub" / "chats.sqlite3")
    assert str(e.value) == (f"{tmp_path / 'file' / 'sub'}: cannot create the data folder (Not a directory); "
                            "choose another with --data-dir or MLX_OSS_DATA_DIR")  # fmt: skip
    with ChatStore(tmp_path / "new" / "nested" / "folder" / "chats.sqlite3") as s:  # made with its parents
        assert s.list() == [] and s.path.parent.is_dir()
    (tmp_path / "dir.sqlite3").mkdir()
    with pytest.raises(ChatStoreError) as e:
        ChatStore(tmp_path / "dir.sqlite3")
    assert str(e.value) == f"{tmp_path / 'dir.sqlite3'}: cannot open the chat database (unable to open database file)"
    assert (tmp_path / "dir.sqlite3").is_dir() and list((tmp_path / "dir.sqlite3").iterdir()) == []


def test_an_unreadable_file_and_its_journal_are_moved_beside_an_earlier_backup(tmp_path, monkeypatch):
    monkeypatch.setattr(storage.time, "strftime", lambda fmt: "20260102-030405")
    path = tmp_path / "chats.sqlite3"
    earlier = tmp_path / "chats.sqlite3.unreadable-20260102-030405"
    earlier.write_bytes(b"an earlier backup")
    path.write_bytes(b"not a database\n" * 300)
    (tmp_path / "chats.sqlite3-wal").write_bytes(b"its journal")
    (tmp_path / "chats.sqlite3-shm").write_bytes(b"its index")
    with ChatStore(path) as s:
        backup = tmp_path / "chats.sqlite3.unreadable-20260102-030405-2"
        assert s.notice.startswith(f"{path} could not be read (") and s.notice.endswith(
            f"); moved it to {backup.name} and started a new chat database")
        assert backup.read_bytes() == b"not a database\n" * 300 and earlier.read_bytes() == b"an earlier backup"
        assert (tmp_path / (backup.name + "-wal")).read_bytes() == b"its journal"
        assert (tmp_path / (backup.name + "-shm")).exists()  # (an index SQLite rebuilds from the journal)
        s.save_messages(s.create(), 0, conversation("fresh", "x"))
        assert s.integrity() == "ok"


def test_a_damaged_file_is_moved_with_the_journal_of_its_last_messages(tmp_path):
    """A writer killed with its last messages still in the -wal journal, then damaged pages: the journal
    goes with the file, byte for byte (before the fix, the store's own check deleted it: those
    messages were lost)."""
    path = tmp_path / "chats.sqlite3"
    code = textwrap.dedent(
        """
        import os, sys
        from mlx_oss.tui.storage import ChatStore
        s = ChatStore(sys.argv[1])
        for i in range(40):
            s.save_messages(s.create(), 0, [{"role": "user", "content": f"chat {i} " + "words " * 200}])
        s._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        for i in range(5):
            s.save_messages(s.create(), 0, [{"role": "user", "content": f"late {i}"}])
        os._exit(0)  # killed: no checkpoint, the journal stays
        """
    )
    subprocess.run([sys.executable, "-c", code, str(path)], check=True, timeout=120)
    wal = (tmp_path / "chats.sqlite3-wal").read_bytes()
    assert len(wal) > 0
    raw = bytearray(path.read_bytes())
    raw[4096 * 2 : 4096 * 6] = b"\xff" * (4096 * 4)
    path.write_bytes(bytes(raw))
    with ChatStore(path) as s:
        assert s.notice and "malformed" in s.notice
        backup = next(p for p in tmp_path.iterdir() if p.name.startswith("chats.sqlite3.unreadable-") and "-" not in p.name[-4:])
        assert re.fullmatch(r"chats\.sqlite3\.unreadable-20\d\d[01]\d[0-3]\d-[0-2]\d[0-5]\d[0-6]\d", backup.name)  # -DATE-TIME
        assert backup.read_bytes() == bytes(raw)
        assert (tmp_path / (backup.name + "-wal")).read_bytes() == wal
        assert s.list() == []


def test_only_damage_counts_as_unreadable():
    for msg in ("file is not a database", "file is encrypted or is not a database", "database disk image is malformed"):
        assert storage._is_unreadable(sqlite3.DatabaseError(msg)) and storage._is_unreadable(sqlite3.DatabaseError(msg.upper()))
    for msg in ("database is locked", "unable to open database file", "attempt to write a readonly database", "disk I/O error"):
        assert not storage._is_unreadable(sqlite3.OperationalError(msg))


def test_a_failing_migration_leaves_the_file_as_it_was(tmp_path, monkeypatch):
    path = tmp_path / "chats.sqlite3"
    with ChatStore(path) as s:
        s.save_messages(s.create(), 0, conversation("before the upgrade", "x"))
    monkeypatch.setattr(storage, "MIGRATIONS", storage.MIGRATIONS + ("ALTER TABLE chats ADD COLUMN pinned INTEGER;",
                                                                      "THIS IS NOT SQL;"))  # fmt: skip
    monkeypatch.setattr(storage, "SCHEMA_VERSION", SCHEMA_VERSION + 2)
    with pytest.raises(ChatStoreError) as e:
        ChatStore(path)
    assert str(e.value) == f'{path}: cannot open the chat database (near "THIS": syntax error)'  # the step that failed
    monkeypatch.undo()
    c = sqlite3.connect(path)
    assert c.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert "pinned" not in [r[1] for r in c.execute("PRAGMA table_info(chats)")]  # the first step was undone too
    c.close()
    with ChatStore(path) as s:
        assert [x.title for x in s.list()] == ["before the upgrade"] and s.notice is None


def test_an_sqlite_file_with_no_tables_becomes_a_chat_database(tmp_path):
    path = tmp_path / "chats.sqlite3"
    c = sqlite3.connect(path)
    c.execute("PRAGMA application_id=42")  # someone's, but empty: nothing to lose
    c.commit()
    c.close()
    assert path.stat().st_size > 0
    with ChatStore(path) as s:
        assert s.notice is None and s.list() == []
        assert s._read("PRAGMA application_id")[0][0] == storage.APPLICATION_ID
    path.unlink()
    path.write_bytes(b"")  # an empty file: a new database
    with ChatStore(path) as s:
        assert s.notice is None and s._read("PRAGMA user_version")[0][0] == SCHEMA_VERSION


# ----------------------------------------------------------------------------- what each call stores


def test_a_chat_created_with_a_title_keeps_it_and_copies_are_named(store):
    named = store.create(title="Named by me")
    store.save_messages(named, 0, conversation("first question", "x"))
    assert store.get(named).title == "Named by me"
    untitled = store.create(model="m", settings={"instructions": "Be brief."}, tools_file="/t.py")
    copy = store.duplicate(untitled)
    info = store.get(copy)
    assert info.title == "Chat (copy)" and info.model == "m" and info.tools_file == "/t.py" and info.parent_id == untitled
    assert store.settings(copy) == {"instructions": "Be brief."}
    store.save_messages(copy, 0, conversation("a question for the copy", "x"))
    assert store.get(copy).title == "Chat (copy)"  # a copy's title is set: its first message does not rename it
    store.delete(untitled)
    assert store.get(copy).parent_id is None  # the original is gone: the link is cleared, the copy stays


def test_settings_model_and_tools_file_updates_move_the_chat_up(store):
    a = store.create(model="old", settings={"reasoning_effort": "low"}, tools_file="/a.py")
    b = store.create()
    store.update_settings(a, {"reasoning_effort": "high"})
    info = store.get(a)
    assert store.settings(a) == {"reasoning_effort": "high"} and (info.model, info.tools_file) == ("old", "/a.py")
    assert store.last().id == a
    store.update_settings(b, {}, model="new", tools_file="/b.py")
    assert (store.get(b).model, store.get(b).tools_file) == ("new", "/b.py") and store.last().id == b


def test_order_follows_writes_even_when_the_clock_stands_still_or_goes_back(store, monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(storage.time, "time", lambda: now[0])
    a = store.create()
    b = store.create()
    store.save_messages(a, 0, [Message.user("a").to_dict()])  # the same second: a is newer than b all the same
    assert [c.id for c in store.list()] == [a, b]
    now[0] = 999.0  # the clock went back
    store.update_settings(b, {})
    assert [c.id for c in store.list()] == [b, a]
    now[0] = 500.0
    store.save_messages(a, 1, [Message.user("again").to_dict()])
    assert [c.id for c in store.list()] == [a, b] and store.get(a).updated_at > store.get(b).updated_at


def test_renaming_keeps_the_chats_place_in_the_list(store):
    a = store.create()
    b = store.create()
    store.save_messages(a, 0, [Message.user("a").to_dict()])
    before = [(c.id, c.updated_at) for c in store.list()]
    store.rename(b, "renamed")
    assert [(c.id, c.updated_at) for c in store.list()] == before and before[0][0] == a


def test_what_search_reads_of_each_kind_of_message(store):
    c = store.create()
    msgs = [Message(Role.SYSTEM, "sysword").to_dict(), Message(Role.DEVELOPER, "devword").to_dict(),
            Message.user("userword"), Message.assistant("preamble commword", channel="commentary"),
            Message.tool_call("functions.f", '{"q": "callword"}'), Message.tool_result("functions.f", "resultword"),
            Message.assistant("finalword", channel="final"), Message.assistant("thinkword", channel="analysis")]  # fmt: skip
    store.save_messages(c, 0, [m if isinstance(m, dict) else m.to_dict() for m in msgs])
    found = {w for w in ("sysword", "devword", "userword", "commword", "callword", "resultword", "finalword", "thinkword")
             if store.search(w)}  # fmt: skip
    assert found == {"userword", "commword", "finalword"}  # what the user wrote and what was said to them


def test_message_text_reads_text_parts():
    assert storage.message_text({"content": "plain"}) == "plain"
    parts = ["a", {"type": "text", "text": "b"}, {"type": "image"}, {"text": 3}, 7, "c"]
    assert storage.message_text({"content": parts}) == "abc"
    assert storage.message_text({"content": None}) == "" and storage.message_text({}) == ""
    assert storage.message_text({"content": {"text": "not a list"}}) == ""


def test_a_title_keeps_the_first_line_up_to_the_limit():
    n = storage.TITLE_CHARS
    exact = "x" * n
    assert auto_title(exact + "\nmore") == exact  # exactly the limit: whole
    assert auto_title("y" * (n + 1)) == "y" * (n - 1) + "…"
    assert auto_title("z" * (n - 2) + " tail") == "z" * (n - 2) + "…"  # no space before the ellipsis
    assert auto_title("  \n\t\n a\tb  ") == "a b"


def test_list_last_and_limits(store):
    assert store.last() is None and store.list() == [] and store.search("anything") == []
    ids = [store.create() for _ in range(3)]
    assert [c.id for c in store.list(limit=None)] == ids[::-1] and [c.id for c in store.list(0)] == ids[::-1]
    assert store.last().id == ids[-1]
    assert store.get(ids[0]) == storage.ChatInfo(ids[0], "", store.get(ids[0]).created_at, store.get(ids[0]).updated_at)


def test_import_json_checks_and_names(store):
    c = store.import_json({"version": "1", "messages": [Message.user("hello there").to_dict()]}, model="m", title="Mine")
    assert store.get(c).title == "Mine" and store.get(c).model == "m" and store.settings(c) == {}
    with pytest.raises(ChatStoreError) as e:
        store.import_json([])
    assert str(e.value) == "not a saved chat: expected a JSON object with 'settings' and 'messages'"
    with pytest.raises(ChatStoreError) as e:
        store.import_json({"version": 2, "messages": []})
    assert str(e.value) == f"saved chat version 2 is newer than this mlx-oss reads ({storage.JSON_VERSION})"
    with pytest.raises(ChatStoreError) as e:
        store.import_json({"messages": [{"role": "user"}, "text"]})
    assert str(e.value) == "not a saved chat: messages[1] has no 'role'"
    assert [x.id for x in store.list()] == [c]  # nothing half-imported
    plain = store.import_json({"messages": conversation("q1", "a1")})
    assert store.get(plain).model == "" and store.get(plain).title == "q1"
    store.save_messages(plain, 1, [Message.assistant("edited", channel="final").to_dict()])  # positions from 0
    assert [m["content"] for m in store.messages(plain)] == ["q1", "edited"]


def test_chat_json_of_a_missing_chat_leaves_the_store_usable(store):
    with pytest.raises(ChatStoreError, match=r"^no chat 42 in "):
        store.chat_json(42)
    c = store.create()  # no transaction was left open
    assert store.chat_json(c) == {"version": storage.JSON_VERSION, "settings": {}, "messages": []}


def test_stats_and_duplicates_up_to_a_position(store):
    a = store.create()
    store.save_messages(a, 0, conversation("q1", "a1") + conversation("q2", "a2"))
    store.set_stats(a, 2, {"generated_tokens": 1})
    store.set_stats(a, 5, {"generated_tokens": 2})
    assert store.stats(store.duplicate(a, upto=0)) == {} and store.messages(store.duplicate(a, upto=0)) == []
    part = store.duplicate(a, upto=4)
    assert store.stats(part) == {2: {"generated_tokens": 1}} and len(store.messages(part)) == 4
    assert store.get(part).title == "q1 (copy)"


def test_schema_statements_skip_leading_comments():
    script = "-- a comment\nCREATE TABLE a (x);\n  -- another\nCREATE TABLE b (y -- inline\n);\n"
    assert list(storage._statements(script)) == ["CREATE TABLE a (x);", "CREATE TABLE b (y -- inline\n);"]
    with pytest.raises(ValueError) as e:
        list(storage._statements("SELECT 1;\nCREATE TABLE " + "x" * 100))
    assert str(e.value) == "incomplete SQL statement: CREATE TABLE " + "x" * 47


def test_fts5_probe():
    c = sqlite3.connect(":memory:")
    assert storage._probe_fts5(c) is True and storage._fts5_available(c) is True
    assert c.execute("SELECT count(*) FROM temp.sqlite_master").fetchone()[0] == 0  # the probe table is gone

    class NoFts:
        def execute(self, sql, *args):
            raise sqlite3.OperationalError("no such module: fts5")

    assert storage._probe_fts5(NoFts()) is False and storage._fts5_available(NoFts()) is False


def test_a_file_that_quick_check_finds_wrong_is_moved_aside(tmp_path):
    """Damage SQLite reports as rows of PRAGMA quick_check (here a wrong freelist count), not as an error."""
    path = tmp_path / "chats.sqlite3"
    with ChatStore(path) as s:
        for i in range(30):
            s.save_messages(s.create(), 0, conversation(f"chat {i} " + "words " * 100, "x"))
        for c in s.list()[::2]:
            s.delete(c.id)  # free pages
    raw = bytearray(path.read_bytes())
    raw[36:40] = (999).to_bytes(4, "big")  # the header's count of free pages
    path.write_bytes(bytes(raw))
    with ChatStore(path) as s:
        assert s.notice and "\n" not in s.notice  # one line, though SQLite's report has several
        assert "could not be read (database disk image is malformed: *** in database main *** Main freelist: " in s.notice
        assert s.list() == []


def test_the_store_waits_for_a_busy_file_as_documented(store):
    assert store._read("PRAGMA busy_timeout")[0][0] == storage.BUSY_TIMEOUT_S * 1000 == 10000


def test_busy_and_locked_errors_say_how_long_they_waited(store):
    for why in ("database is locked", "database is busy"):
        assert str(store._error(sqlite3.OperationalError(why))) == (
            f"{store.path}: {why} (another process kept it busy for over 10 s)")
    assert str(store._error(sqlite3.OperationalError("disk I/O error"))) == f"{store.path}: disk I/O error"


def test_an_index_created_for_an_existing_file_holds_its_chats(tmp_path, monkeypatch):
    """A file made by an SQLite without FTS5 has no index at all; the first open with FTS5 makes one
    and fills it with every chat so far."""
    path = tmp_path / "chats.sqlite3"
    monkeypatch.setattr(storage, "_fts5_available", lambda conn: False)
    with ChatStore(path) as s:
        c = s.create()
        s.save_messages(c, 0, conversation("written before any index", "x"))
        s.rename(c, "Titled long ago")
    monkeypatch.undo()
    with ChatStore(path) as s:
        assert s.fts
        assert [x.id for x in s.search("written")] == [c] and [x.id for x in s.search("titled")] == [c]


def test_times_are_the_clocks(store, monkeypatch):
    monkeypatch.setattr(storage.time, "time", lambda: 1234.5)
    c = store.create()
    info = store.get(c)
    assert (info.created_at, info.updated_at) == (1234.5, 1234.5)
    monkeypatch.setattr(storage.time, "time", lambda: 2000.0)
    store.save_messages(c, 0, [Message.user("later").to_dict()])
    assert (store.get(c).created_at, store.get(c).updated_at) == (1234.5, 2000.0)


def test_rows_keep_role_and_channel(store):
    c = store.create()
    store.save_messages(c, 0, conversation("q", "a") + [Message.tool_call("functions.f", "{}").to_dict()])
    rows = store._read("SELECT position, role, channel FROM messages WHERE chat_id = ? ORDER BY position", (c,))
    assert [tuple(r) for r in rows] == [(0, "user", None), (1, "assistant", "analysis"), (2, "assistant", "final"),
                                        (3, "assistant", "commentary")]  # fmt: skip


def test_a_chat_without_a_user_message_has_no_title(store):
    c = store.create()
    store.save_messages(c, 0, [Message.assistant("Hello, how can I help?", channel="final").to_dict()])
    assert store.get(c).title == ""
    store.save_messages(c, 0, conversation("now a question", "x"))
    assert store.get(c).title == "now a question"
    store.save_messages(c, 0, [])  # every message deleted: the title goes with them
    assert store.get(c).title == "" and store.get(c).messages == 0


def test_integrity_lists_every_problem(store, monkeypatch):
    monkeypatch.setattr(store, "_read", lambda sql: [("row 3 missing from index x",), ("wrong # of entries in index x",)])
    assert store.integrity() == "row 3 missing from index x; wrong # of entries in index x"


def test_fts5_loaded_without_the_compile_option_is_used():
    class NoCompileOption:  # an SQLite whose FTS5 came as a loadable extension
        def __init__(self) -> None:
            self.conn = sqlite3.connect(":memory:")

        def execute(self, sql, *args):
            return self.conn.execute("SELECT 0" if "compileoption" in sql else sql, *args)

    assert storage._fts5_available(NoCompileOption()) is True
