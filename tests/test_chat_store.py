"""The chat database (tui/storage.py) and the data folder (tui/datadir.py): what is stored, search,
rename / delete / duplicate, the engine's JSON round trip, migrations, damaged and future files,
and two processes (or a killed one) on one file."""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
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
    with pytest.raises(ChatStoreError, match="empty"):
        store.rename(a, "   ")
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
    assert "\n" not in msg and "newer mlx-oss" in msg and str(path) in msg and "untouched" in msg
    assert sha(path) == before and sorted(p.name for p in tmp_path.iterdir()) == ["chats.sqlite3"]


def test_someone_elses_sqlite_file_is_left_untouched(tmp_path):
    path = tmp_path / "chats.sqlite3"
    c = sqlite3.connect(path)
    c.execute("CREATE TABLE photos (id INTEGER)")
    c.commit()
    c.close()
    before = sha(path)
    with pytest.raises(ChatStoreError, match="not an mlx-oss chat database"):
        ChatStore(path)
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
