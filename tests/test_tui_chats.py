"""Chats kept in the database, driven through the TUI with keys (Pilot, scripted fake session):
every message stored as it completes, the chat list (search, switch, rename, delete, duplicate),
regenerate, edit and continue, delete a message, copy a code block, resume with the cache warmed,
import a saved JSON; plus `mlx-oss chat --list` / `--resume` and damaged databases at the CLI."""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path

from textual.widgets import Input, OptionList

from mlx_oss.cli.main import main
from mlx_oss.harmony import Message
from mlx_oss.tui.app import ChatApp
from mlx_oss.tui.session import Backend
from mlx_oss.tui.chatlist import ChatList, ConfirmScreen, EditMessageScreen, MessageActionsScreen, RenameScreen, code_blocks
from mlx_oss.tui.storage import SCHEMA_VERSION, ChatStore
from mlx_oss.tui.widgets import AssistantMessage, PromptInput, UserMessage

sys.path.insert(0, str(Path(__file__).parent))
from test_tui_app import SIZE, aio, idle, ready, send, status, until  # noqa: E402
from test_tui_fake import ANSWER, FakeChat, Script  # noqa: E402

OLD = 1767600000.0  # 2026-01-05: old enough that the list shows a date, so pictures do not change


def store_app(tmp_path: Path, chat: FakeChat | None = None, **kw) -> ChatApp:
    chat = chat if chat is not None else FakeChat()
    backend = Backend("fake-oss", new_chat=lambda: chat, open_chat=FakeChat.from_json, context_limit=4096)
    store = kw.pop("store", None) or ChatStore(tmp_path / "chats.sqlite3")
    return ChatApp(lambda say: backend, model="fake-oss", chats_dir=tmp_path, store=store, **kw)


def seed(store: ChatStore, title: str, pairs: list[tuple[str, str]], when: float = OLD) -> int:
    cid = store.create(model="fake-oss", settings={"reasoning_effort": "high", "instructions": None})
    msgs = []
    for q, a in pairs:
        msgs += [Message.user(q).to_dict(), Message.assistant(f"Thinking about {q}.", channel="analysis").to_dict(),
                 Message.assistant(a).to_dict()]  # fmt: skip
    store.save_messages(cid, 0, msgs)
    store.rename(cid, title)
    with store._write() as c:
        c.execute("UPDATE chats SET updated_at = ?, created_at = ? WHERE id = ?", (when, when, cid))
    return cid


def list_titles(app: ChatApp) -> list[str]:
    return [c.title for c in app.query_one(ChatList).chats]


def user_texts(app: ChatApp) -> list[str]:
    return [u.text for u in app.query(UserMessage)]


async def open_list(pilot) -> ChatList:
    await pilot.press("ctrl+b")
    chats = pilot.app.query_one(ChatList)
    await until(pilot, lambda: chats.display and isinstance(pilot.app.focused, OptionList))
    return chats


# ----------------------------------------------------------------------------- stored as it goes


@aio
async def test_messages_are_stored_as_they_complete_with_title_settings_and_stats(tmp_path):
    chat = FakeChat(hold_at=5)
    app = store_app(tmp_path, chat)
    store = app.store
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        assert store.list() == []  # an untouched new chat leaves nothing behind
        await send(pilot, "Explain decorators\nplease", wait=False)
        await until(pilot, chat.held.is_set)
        chat.release.set()
        await idle(pilot)
        (info,) = store.list()
        assert info.title == "Explain decorators" and info.model == "fake-oss"
        msgs = store.messages(info.id)
        assert [m["role"] for m in msgs] == ["user", "assistant", "assistant"] and msgs[2]["content"] == ANSWER
        assert store.stats(info.id)[2]["generated_tokens"] == 40
        await pilot.press("ctrl+t")  # medium -> high, saved with the chat
        assert store.settings(info.id)["reasoning_effort"] == "high"
        await pilot.press("ctrl+n")
        await until(pilot, lambda: not app.query(UserMessage))
        await send(pilot, "Second chat")
        assert [c.title for c in store.list()] == ["Second chat", "Explain decorators"]


@aio
async def test_reply_messages_are_in_the_database_before_the_reply_ends(tmp_path):
    """The user message is written when the reply starts, not when it ends."""
    chat = FakeChat(hold_at=3)
    app = store_app(tmp_path, chat)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await send(pilot, "slow one", wait=False)
        await until(pilot, chat.held.is_set)
        await until(pilot, lambda: bool(app.store.list()))
        assert app.store.messages(app.store.list()[0].id)[0]["content"] == "slow one"
        chat.release.set()
        await idle(pilot)


# ----------------------------------------------------------------------------- the list


@aio
async def test_list_newest_first_search_switch_and_resume_warms_the_cache(tmp_path):
    app = store_app(tmp_path)
    seed(app.store, "Python decorators", [("How do decorators work?", "They wrap functions.")], OLD)
    seed(app.store, "Soup recipes", [("A tomato soup?", "Use ripe tomatoes.")], OLD + 3600)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        chats = await open_list(pilot)
        assert list_titles(app) == ["Soup recipes", "Python decorators"]
        await pilot.press("slash")
        await pilot.press(*"wrap")
        await until(pilot, lambda: list_titles(app) == ["Python decorators"])
        assert "[wrap]" in chats.chats[0].snippet
        await pilot.press("enter", "enter")  # search box -> list -> open
        await until(pilot, lambda: user_texts(app) == ["How do decorators work?"])
        assert app.query_one(AssistantMessage).answer_text == "They wrap functions."
        assert app.session.reasoning_effort == "high"  # the chat's own settings
        await until(pilot, lambda: "cache warm · 300 tokens" in status(app))
        assert app.session.warmed == [300] and isinstance(app.focused, PromptInput)
        await send(pilot, "And class decorators?")  # continues that chat
        assert "cache warm" not in status(app)
        cid = chats.chats[0].id
        assert [m["content"] for m in app.store.messages(cid)][3] == "And class decorators?"
        await until(pilot, lambda: list_titles(app)[0] == "Python decorators")


@aio
async def test_rename_delete_with_confirmation_and_duplicate(tmp_path):
    app = store_app(tmp_path)
    a = seed(app.store, "First", [("q1", "a1")], OLD)
    seed(app.store, "Second", [("q2", "a2")], OLD + 60)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await open_list(pilot)
        await pilot.press("down", "r")  # highlight "First", rename it
        await until(pilot, lambda: isinstance(app.screen, RenameScreen))
        app.screen.query_one(Input).value = "Renamed first"
        await pilot.press("enter")
        await until(pilot, lambda: "Renamed first" in list_titles(app))
        assert app.store.get(a).title == "Renamed first"

        await pilot.press("b")  # duplicate the highlighted one
        await until(pilot, lambda: len(app.store.list()) == 3)
        assert list_titles(app)[0] == "Renamed first (copy)"

        await pilot.press("home", "d")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("n")  # cancelled: nothing deleted
        await until(pilot, lambda: not isinstance(app.screen, ConfirmScreen))
        assert len(app.store.list()) == 3
        await pilot.press("d")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await until(pilot, lambda: list_titles(app) == ["Second", "Renamed first"])
        assert app.store.get(a).messages == 3


@aio
async def test_deleting_the_open_chat_starts_a_new_one(tmp_path):
    app = store_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await send(pilot, "to be deleted")
        await open_list(pilot)
        await pilot.press("d")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await until(pilot, lambda: not app.query(UserMessage) and app.store.list() == [])
        assert app.keeper.chat_id is None and app.session.history == []


# ----------------------------------------------------------------------------- editing


async def select_last(pilot, steps: int = 1) -> None:
    pilot.app.query_one(PromptInput).focus()
    for _ in range(steps):
        await pilot.press("up")
    await until(pilot, lambda: pilot.app.selected is not None)


@aio
async def test_regenerate_replaces_the_last_answer(tmp_path):
    chat = FakeChat(scripts=[Script(answer="First try."), Script(answer="Second try.")])
    app = store_app(tmp_path, chat)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await send(pilot, "question")
        await select_last(pilot)
        assert app.selected == 1 and app.query_one(AssistantMessage).has_class("-selected")
        await pilot.press("r")
        await idle(pilot)
        assert [w.answer_text for w in app.query(AssistantMessage)] == ["Second try."]
        assert user_texts(app) == ["question"] and chat.prompts[-1]["text"] == "question"
        stored = app.store.messages(app.store.list()[0].id)
        assert [m["content"] for m in stored if m.get("channel") == "final"] == ["Second try."]
        assert isinstance(app.focused, PromptInput)


@aio
async def test_edit_an_earlier_message_continues_from_there_and_keeps_the_old_branch(tmp_path):
    chat = FakeChat(scripts=[Script(answer="A1"), Script(answer="A2"), Script(answer="A1 edited")])
    app = store_app(tmp_path, chat)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await send(pilot, "first")
        await send(pilot, "second")
        await select_last(pilot, steps=4)  # answer 2, second, answer 1, first
        assert isinstance(app.query(UserMessage).first(), UserMessage) and app.selected == 0
        await pilot.press("e")
        await until(pilot, lambda: isinstance(app.screen, EditMessageScreen))
        area = app.screen.query_one("#edit-text")
        area.text = "first, edited"
        await pilot.press("ctrl+s")
        await idle(pilot)
        assert user_texts(app) == ["first, edited"]
        assert [w.answer_text for w in app.query(AssistantMessage)] == ["A1 edited"]
        chats = {c.title: c for c in app.store.list()}
        assert set(chats) == {"first, edited", "first (before edit)"}
        old = [m["content"] for m in app.store.messages(chats["first (before edit)"].id) if m["role"] == "user"]
        assert old == ["first", "second"]  # the old branch, whole
        new = [m["content"] for m in app.store.messages(chats["first, edited"].id) if m["role"] == "user"]
        assert new == ["first, edited"]


@aio
async def test_delete_a_message_and_copy_a_code_block_from_the_actions_menu(tmp_path):
    chat = FakeChat(scripts=[Script(answer="A1"), Script()])
    app = store_app(tmp_path, chat)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await send(pilot, "first")
        await send(pilot, "second")  # answered with the default ANSWER, which has a code block
        await select_last(pilot)
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, MessageActionsScreen))
        ids = [o.id for o in app.screen.query_one(OptionList).options]
        assert ids == ["copy", "code:0", "regenerate", "delete"]
        await pilot.press("down", "enter")  # copy code block 1
        await until(pilot, lambda: app.clipboard == code_blocks(ANSWER)[0])
        assert app.clipboard.startswith("def greet(name):")

        await select_last(pilot, steps=2)  # "second"
        await pilot.press("d")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await until(pilot, lambda: user_texts(app) == ["first"])
        assert [w.answer_text for w in app.query(AssistantMessage)] == ["A1"]
        stored = app.store.messages(app.store.list()[0].id)
        assert [m["content"] for m in stored if m["role"] == "user"] == ["first"] and len(stored) == 3


def test_code_blocks():
    assert code_blocks("a\n\n```py\nx = 1\n```\n\n    indented\n\ntext `inline`") == ["x = 1", "indented"]
    assert code_blocks("no code") == []


# ----------------------------------------------------------------------------- resume, import


@aio
async def test_resume_opens_the_chat_at_start(tmp_path):
    store = ChatStore(tmp_path / "chats.sqlite3")
    cid = seed(store, "Resumed", [("old question", "old answer")])
    app = store_app(tmp_path, store=store, resume=cid)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await until(pilot, lambda: user_texts(app) == ["old question"] and "cache warm" in status(app))
        assert app.keeper.chat_id == cid


@aio
async def test_import_a_saved_json_creates_a_chat(tmp_path):
    saved = {"version": 1, "settings": {"reasoning_effort": "low"},
             "messages": [Message.user("imported q").to_dict(), Message.assistant("imported a").to_dict()]}  # fmt: skip
    (tmp_path / "talk.json").write_text(json.dumps(saved))
    app = store_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        assert await app.open_conversation(tmp_path / "talk.json")
        (info,) = app.store.list()
        assert info.title == "imported q" and app.store.chat_json(info.id) == saved
        assert user_texts(app) == ["imported q"] and app.keeper.chat_id == info.id
        (tmp_path / "bad.json").write_text('{"messages": 3}')
        assert not await app.open_conversation(tmp_path / "bad.json")
        assert len(app.store.list()) == 1


# ----------------------------------------------------------------------------- the command line


def test_list_and_resume_errors_at_the_command_line(tmp_path, capsys):
    data = tmp_path / "data"
    assert main(["chat", "--list", "--data-dir", str(data)]) == 0
    assert "No chats yet" in capsys.readouterr().out
    with ChatStore(data / "chats.sqlite3") as s:
        seed(s, "Kept chat", [("q", "a")])
    assert main(["chat", "--list", "--data-dir", str(data)]) == 0
    out = capsys.readouterr().out
    assert "Kept chat" in out and "2026-01-05" in out and "1 chat in" in out
    assert main(["chat", "--resume", "99", "--data-dir", str(data), "--model", "/nowhere"]) == 1
    err = capsys.readouterr().err
    assert "no chat 99" in err and err.count("\n") == 1
    assert main(["chat", "--resume", "x", "--data-dir", str(data)]) == 1
    assert "--resume expects a chat id" in capsys.readouterr().err


def test_future_and_damaged_databases_at_the_command_line(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    db = data / "chats.sqlite3"
    with ChatStore(db) as s:
        seed(s, "From the future", [("q", "a")])
    c = sqlite3.connect(db)
    c.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    c.close()
    before = db.read_bytes()
    assert main(["chat", "--list", "--data-dir", str(data)]) == 1
    err = capsys.readouterr().err
    assert "newer mlx-oss" in err and err.count("\n") == 1 and "Traceback" not in err
    assert db.read_bytes() == before

    db.write_bytes(b"\x00garbage" * 1000)
    assert main(["chat", "--list", "--data-dir", str(data)]) == 0
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and "moved it to chats.sqlite3.unreadable-" in captured.err
    assert "No chats yet" in captured.out
    backup = next(data.glob("chats.sqlite3.unreadable-*"))
    assert backup.read_bytes() == b"\x00garbage" * 1000


@aio
async def test_warm_up_reports_after_the_widgets_are_gone_do_not_crash(tmp_path):
    """A reopened chat's background prefill may still report while the app closes (its widgets
    removed): the reports are dropped instead of raising NoMatches out of the app."""
    from textual.widgets import ProgressBar

    from mlx_oss.tui.widgets import StatusLine

    app = store_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        app.warm_state = "prefilling…"
        await app.query_one(StatusLine).remove()
        await app.query_one("#warm-progress", ProgressBar).remove()
        app.on_chat_app_warming(ChatApp.Warming(1, 2))
        app._refresh_status()
        await pilot.pause()
        assert app.warm_state == "prefilling…" and app.is_running
