"""ChatKeeper (tui/keeper.py) on a real chat database and a stand-in session (a history of harmony
messages and its settings): which stored chat the session is, what is written when, and that the
database follows edits, regenerations and branches of the conversation, search included."""

from __future__ import annotations

import threading
import types

import pytest

from mlx_oss.events import Stats
from mlx_oss.harmony import Message, ReasoningEffort
from mlx_oss.tui.keeper import ChatKeeper, segments
from mlx_oss.tui.storage import ChatStore


class Session:
    """What the keeper reads of a ChatSession: `history` and `settings()`."""

    def __init__(self, effort: str = "medium") -> None:
        self.history: list[Message] = []
        self.effort = effort

    def settings(self) -> dict:
        return {"reasoning_effort": self.effort, "instructions": None}

    def ask(self, question: str, answer: str, reasoning: str = "Thinking.") -> None:
        self.history += [Message.user(question), Message.assistant(reasoning, channel="analysis"),
                         Message.assistant(answer, channel="final")]  # fmt: skip


@pytest.fixture
def store(tmp_path):
    with ChatStore(tmp_path / "chats.sqlite3") as s:
        yield s


@pytest.fixture
def keeper(store):
    return ChatKeeper(store, model="gpt-oss-20b", tools_file="/t/tools.py")


def stored(store: ChatStore, chat_id: int) -> list[str]:
    return [m["content"] for m in store.messages(chat_id)]


def texts(session: Session) -> list[str]:
    return [m.text for m in session.history]


def test_an_untouched_new_chat_leaves_nothing_behind(store, keeper):
    s = Session()
    assert keeper.sync(s) is False and keeper.chat_id is None and keeper.info() is None
    keeper.settings_changed(s)
    keeper.reply_done(s, Stats(generated_tokens=3))
    assert keeper.branch() is None
    keeper.truncated(s, 0)
    assert store.list() == [] and keeper.chat_id is None and keeper.saved == 0


def test_the_first_message_creates_the_chat_and_later_ones_are_appended(store, keeper):
    s = Session(effort="high")
    s.history.append(Message.user("Why is the sky blue?"))
    assert keeper.sync(s) is True  # created: the list should show it
    cid = keeper.chat_id
    info = keeper.info()
    assert info.id == cid and info.model == "gpt-oss-20b" and info.tools_file == "/t/tools.py"
    assert info.title == "Why is the sky blue?" and store.settings(cid) == s.settings()
    assert keeper.saved == 1 and stored(store, cid) == ["Why is the sky blue?"]

    s.history.append(Message.assistant("Rayleigh?", channel="analysis"))
    assert keeper.sync(s) is False and keeper.chat_id == cid  # the same chat, not created again
    s.history.append(Message.assistant("Scattering.", channel="final"))
    assert keeper.sync(s) is False
    assert stored(store, cid) == texts(s) and keeper.saved == 3 and len(store.list()) == 1

    before = store.get(cid).updated_at
    assert keeper.sync(s) is False  # nothing new: nothing written
    assert store.get(cid).updated_at == before


def test_a_reply_done_writes_what_is_left_and_its_stats_on_its_last_message(store, keeper):
    s = Session()
    s.history.append(Message.user("q1"))
    keeper.sync(s)
    cid = keeper.chat_id
    s.history += [Message.assistant("r", channel="analysis"), Message.assistant("cut off", channel="final")]
    keeper.reply_done(s, Stats(generated_tokens=7, stop_reason="length"))
    assert stored(store, cid) == ["q1", "r", "cut off"]
    assert store.stats(cid) == {2: Stats(generated_tokens=7, stop_reason="length").to_dict()}
    s.ask("q2", "a2")
    keeper.reply_done(s, {"generated_tokens": 2})  # stats as a plain mapping
    keeper.reply_done(s, None)  # no stats: nothing attached, nothing lost
    assert store.stats(cid) == {2: Stats(generated_tokens=7, stop_reason="length").to_dict(), 5: {"generated_tokens": 2}}


def test_a_reply_with_no_message_attaches_no_stats(store, keeper):
    s = Session()
    keeper.reply_done(s, Stats(generated_tokens=1))  # e.g. an error before anything was said
    assert store.list() == [] and keeper.chat_id is None


def test_later_writes_keep_the_earlier_messages_and_their_stats(store, keeper):
    """Each sync writes only the messages after the ones already stored: an earlier reply's stats
    (attached to its last message) survive every later message."""
    s = Session()
    s.ask("q1", "a1")
    keeper.reply_done(s, {"generated_tokens": 1})
    s.ask("q2", "a2")
    keeper.sync(s)
    keeper.reply_done(s, {"generated_tokens": 2})
    assert store.stats(keeper.chat_id) == {2: {"generated_tokens": 1}, 5: {"generated_tokens": 2}}


def test_attach_continues_a_stored_chat_where_its_messages_end(store, keeper):
    cid = store.create(model="m")
    s = Session()
    s.ask("old q", "old a")
    store.save_messages(cid, 0, [m.to_dict() for m in s.history])
    store.set_stats(cid, 2, {"generated_tokens": 9})
    keeper.attach(cid, 3)
    assert keeper.info().id == cid and keeper.saved == 3
    assert keeper.sync(s) is False  # all of it is stored already
    s.ask("new q", "new a")
    assert keeper.sync(s) is False and keeper.chat_id == cid  # not a new chat
    assert stored(store, cid) == texts(s) and store.stats(cid) == {2: {"generated_tokens": 9}}
    assert len(store.list()) == 1


def test_start_new_makes_the_next_message_a_new_chat(store, keeper):
    s = Session()
    s.ask("first chat", "a")
    keeper.sync(s)
    first = keeper.chat_id
    keeper.start_new()
    assert keeper.chat_id is None and keeper.saved == 0
    t = Session()
    t.history.append(Message.user("second chat"))
    assert keeper.sync(t) is True and keeper.chat_id != first
    assert stored(store, first) == texts(s) and stored(store, keeper.chat_id) == ["second chat"]


def test_an_edit_rewrites_from_its_position_and_search_follows(store, keeper):
    s = Session()
    s.ask("Capital of Chile?", "Santiago.")
    s.ask("And of Peru?", "Lima.")
    keeper.reply_done(s, {"generated_tokens": 1})
    cid = keeper.chat_id
    assert [c.id for c in store.search("lima")] == [cid]
    s.history = s.history[:3]  # edit the second question: what came after it goes
    keeper.truncated(s, 3)
    assert keeper.saved == 3 and stored(store, cid) == texts(s) and store.stats(cid) == {}
    assert store.search("peru") == [] and store.search("lima") == []
    s.ask("And of Bolivia?", "Sucre.")
    keeper.sync(s)
    assert stored(store, cid) == texts(s)
    assert [c.id for c in store.search("bolivia sucre")] == [cid] and store.search("peru") == []
    assert [c.id for c in store.search("santiago")] == [cid]  # what was before the edit stays


def test_regenerate_replaces_the_answer_without_a_new_chat(store, keeper):
    s = Session()
    s.ask("Name a colour", "Red.")
    keeper.reply_done(s, {"generated_tokens": 1})
    cid = keeper.chat_id
    s.history = s.history[:1]
    keeper.truncated(s, 1)
    s.history += [Message.assistant("Blue.", channel="final")]
    keeper.reply_done(s, {"generated_tokens": 2})
    assert stored(store, cid) == ["Name a colour", "Blue."] and store.stats(cid) == {1: {"generated_tokens": 2}}
    assert store.search("red") == [] and [c.id for c in store.search("blue")] == [cid] and len(store.list()) == 1


def test_a_shorter_history_is_written_as_it_is(store, keeper):
    s = Session()
    s.ask("q1", "a1")
    s.ask("q2", "a2")
    keeper.sync(s)
    s.history = s.history[:3]  # the session dropped the last exchange
    keeper.sync(s)
    assert stored(store, keeper.chat_id) == ["q1", "Thinking.", "a1"] and keeper.saved == 3


def test_settings_changes_reach_the_stored_chat(store, keeper):
    s = Session(effort="low")
    s.ask("q", "a")
    keeper.sync(s)
    s.effort = "high"
    keeper.settings_changed(s)
    assert store.settings(keeper.chat_id)["reasoning_effort"] == "high"


def test_settings_of_a_session_without_settings_method(store):
    keeper = ChatKeeper(store)
    s = types.SimpleNamespace(history=[Message.user("hi")], reasoning_effort=ReasoningEffort.HIGH, instructions="Be brief.")
    keeper.sync(s)
    assert store.settings(keeper.chat_id) == {"reasoning_effort": "high", "instructions": "Be brief."}
    info = keeper.info()
    assert info.model == "" and info.tools_file is None
    bare = types.SimpleNamespace(history=[Message.user("x")])  # nothing at all: the defaults
    keeper.start_new()
    keeper.sync(bare)
    assert store.settings(keeper.chat_id) == {"reasoning_effort": "medium", "instructions": None}


def test_branch_copies_the_current_chat(store, keeper):
    s = Session()
    s.ask("q1", "a1")
    s.ask("q2", "a2")
    keeper.sync(s)
    cid = keeper.chat_id
    whole = keeper.branch(title="Before edit")
    part = keeper.branch(upto=3)
    assert store.get(whole).title == "Before edit" and stored(store, whole) == texts(s)
    assert stored(store, part) == texts(s)[:3] and store.get(part).parent_id == cid
    assert keeper.chat_id == cid  # the session stays the original


def test_sync_from_two_threads_writes_each_message_once(store, keeper):
    s = Session()
    s.history = [Message.user(f"m{i}") for i in range(40)]
    threads = [threading.Thread(target=keeper.sync, args=(s,)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(store.list()) == 1 and stored(store, keeper.chat_id) == texts(s)


def test_segments_group_each_reply_between_user_messages():
    h = [Message.user("q1"), Message.assistant("r", channel="analysis"), Message.assistant("a", channel="final"),
         Message.user("q2"), Message.user("q3"), Message.assistant("a3", channel="final")]  # fmt: skip
    assert segments(h) == [("user", 0, 1), ("assistant", 1, 3), ("user", 3, 4), ("user", 4, 5), ("assistant", 5, 6)]
    assert segments([]) == []
    assert segments([Message.assistant("hello", channel="final")]) == [("assistant", 0, 1)]
    tool = Message.tool_result("functions.f", "1")
    assert segments([Message.user("q"), Message.tool_call("functions.f", "{}"), tool]) == [("user", 0, 1), ("assistant", 1, 3)]
    plain = [types.SimpleNamespace(role="user"), types.SimpleNamespace(role="assistant")]  # roles as plain strings
    assert segments(plain) == [("user", 0, 1), ("assistant", 1, 2)]
    roleless = [types.SimpleNamespace(role="user"), types.SimpleNamespace()]  # no role: part of a reply
    assert segments(roleless) == [("user", 0, 1), ("assistant", 1, 2)]
    long = [Message.user("q1"), Message.assistant("a1", channel="final"), Message.user("q2"),
            Message.assistant("r", channel="analysis"), Message.tool_call("functions.f", "{}"),
            Message.tool_result("functions.f", "1"), Message.assistant("a2", channel="final")]  # fmt: skip
    assert segments(long) == [("user", 0, 1), ("assistant", 1, 2), ("user", 2, 3), ("assistant", 3, 7)]


def test_a_session_without_history_writes_nothing(store, keeper):
    assert keeper.sync(object()) is False and store.list() == []
    keeper.truncated(object(), 0)
    assert store.list() == []
