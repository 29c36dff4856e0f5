"""Search in the chat database (tui/storage.py) over time and against hostile queries, with FTS5 and
with the LIKE fallback (an SQLite without FTS5): text added, edited or renamed after a chat's first
write is found and the old text no longer is; user text is never SQL, LIKE wildcards or FTS syntax;
the bounded lists (search results, titles, snippets) keep the right end."""

from __future__ import annotations

import pytest

from mlx_oss.harmony import Message
from mlx_oss.tui import storage
from mlx_oss.tui.storage import ChatStore


def conversation(question: str, answer: str, reasoning: str = "Let me think.") -> list[dict]:
    return [Message.user(question).to_dict(), Message.assistant(reasoning, channel="analysis").to_dict(),
            Message.assistant(answer, channel="final").to_dict()]  # fmt: skip


@pytest.fixture(params=["fts5", "like"])
def store(request, tmp_path, monkeypatch):
    if request.param == "like":
        monkeypatch.setattr(storage, "_fts5_available", lambda conn: False)
    with ChatStore(tmp_path / "chats.sqlite3") as s:
        assert s.fts == (request.param == "fts5")
        yield s


def ids(store: ChatStore, query: str) -> list[int]:
    return [c.id for c in store.search(query)]


# ----------------------------------------------------------------------------- text changed after the first write


def test_a_message_appended_later_is_found(store):
    c = store.create()
    store.save_messages(c, 0, conversation("Tell me about horses", "They gallop."))
    other = store.create()
    store.save_messages(other, 0, conversation("Something else", "ok"))
    assert ids(store, "zebra") == [] and ids(store, "stripes") == []
    store.save_messages(c, 3, conversation("And zebras?", "Stripes, mostly."))
    assert ids(store, "zebra") == [c] and ids(store, "stripes") == [c]
    assert ids(store, "horses zebras") == [c]  # words from the first write and from the later one
    assert "Stripes" in store.search("stripes")[0].snippet


def test_an_edited_message_is_found_by_its_new_text_only(store):
    c = store.create()
    store.save_messages(c, 0, conversation("Capital of Peru?", "Lima.") + conversation("And of Chile?", "Santiago."))
    assert ids(store, "chile") == [c] and ids(store, "santiago") == [c]
    store.save_messages(c, 3, conversation("And of Bolivia?", "Sucre."))  # the second question edited
    assert ids(store, "chile") == [] and ids(store, "santiago") == []
    assert ids(store, "bolivia") == [c] and ids(store, "sucre") == [c] and ids(store, "lima") == [c]
    assert "Sucre" in store.search("sucre")[0].snippet
    store.save_messages(c, 3, [])  # the second exchange deleted
    assert ids(store, "bolivia") == [] and ids(store, "sucre") == [] and ids(store, "peru") == [c]


def test_editing_the_first_message_renames_an_unnamed_chat_and_search_follows(store):
    c = store.create()
    store.save_messages(c, 0, conversation("Pelican facts", "Big beaks."))
    assert store.get(c).title == "Pelican facts" and ids(store, "pelican") == [c]
    store.save_messages(c, 0, conversation("Walrus facts", "Big tusks."))
    assert store.get(c).title == "Walrus facts"
    assert ids(store, "pelican") == [] and ids(store, "beaks") == []
    assert ids(store, "walrus") == [c] and ids(store, "tusks") == [c]


def test_a_renamed_chat_is_found_by_its_new_title_only(store):
    c = store.create()
    store.save_messages(c, 0, conversation("Where to eat?", "Try the market."))
    store.rename(c, "Holiday in Lisbon")
    assert ids(store, "lisbon") == [c] and ids(store, "holiday market") == [c]
    store.rename(c, "Porto trip")
    assert ids(store, "lisbon") == [] and ids(store, "holiday") == []
    assert ids(store, "porto") == [c] and ids(store, "porto market") == [c]
    assert store.search("porto")[0].snippet is None  # matched by its title: no message to show


def test_a_copy_edited_after_duplication_is_found_apart_from_its_original(store):
    a = store.create()
    store.save_messages(a, 0, conversation("Knots for sailing", "The bowline."))
    b = store.duplicate(a, title="Knots, copy")
    store.save_messages(b, 3, conversation("And for climbing?", "The figure eight."))
    store.rename(a, "Sailing knots")
    assert ids(store, "bowline") == [b, a]  # both hold it (the copy is newer)
    assert ids(store, "climbing") == [b] and ids(store, "sailing knots") == [b, a]  # b's first message says sailing
    assert ids(store, "copy") == [b] and ids(store, "copy climbing") == [b]
    store.delete(b)
    assert ids(store, "climbing") == [] and ids(store, "bowline") == [a]


def test_edits_made_without_the_index_are_searchable_once_it_is_back(tmp_path, monkeypatch):
    """An SQLite without FTS5 edits and renames chats the index does not follow; the next FTS5 open
    rebuilds it, so the old words are gone from it and the new ones are in."""
    path = tmp_path / "chats.sqlite3"
    with ChatStore(path) as s:
        c = s.create()
        s.save_messages(c, 0, conversation("Old question about owls", "Owls hoot."))
        s.rename(c, "Owl chat")
    monkeypatch.setattr(storage, "_fts5_available", lambda conn: False)
    with ChatStore(path) as s:
        assert not s.fts
        s.save_messages(c, 0, conversation("New question about bats", "Bats click."))
        s.rename(c, "Bat chat")
    monkeypatch.undo()
    with ChatStore(path) as s:
        assert s.fts
        assert ids(s, "owls") == [] and ids(s, "hoot") == [] and ids(s, "owl") == []
        assert ids(s, "bats") == [c] and ids(s, "click") == [c] and ids(s, "bat chat") == [c]
        assert s.integrity() == "ok"
    with ChatStore(path) as s:  # rebuilt once: the flag that asked for it is gone
        assert s._read("SELECT count(*) FROM meta WHERE key = 'fts_stale'")[0][0] == 0



def indexed_words(store: ChatStore) -> set[str]:
    """Every word the FTS5 indexes hold (titles and messages)."""
    words = set()
    for table in ("messages_fts", "chats_fts"):
        store._conn.execute(f"CREATE VIRTUAL TABLE IF NOT EXISTS temp.{table}_v USING fts5vocab(main, {table}, 'row')")
        words |= {r[0] for r in store._read(f"SELECT term FROM temp.{table}_v")}
        store._conn.execute(f"INSERT INTO {table}({table}, rank) VALUES ('integrity-check', 1)")  # matches the rows
    return words


def test_replaced_renamed_and_deleted_text_leaves_the_index(tmp_path):
    """Search must not find old text, and the file must not keep it either: a deleted chat's words
    are gone from the index, not only hidden by the join with the messages still there."""
    with ChatStore(tmp_path / "chats.sqlite3") as s:
        c = s.create()
        s.save_messages(c, 0, [Message.user("santiago chile").to_dict()])
        s.rename(c, "lisbon")
        s.save_messages(c, 0, [Message.user("lima peru").to_dict()])
        s.rename(c, "porto")
        assert indexed_words(s) == {"lima", "peru", "porto"}
        gone = s.create()
        s.save_messages(gone, 0, [Message.user("confidential merger").to_dict()])
        assert {"confidential", "merger"} <= indexed_words(s)
        s.delete(gone)
        assert indexed_words(s) == {"lima", "peru", "porto"}
        kept = s.create()  # reasoning, tool calls and results are stored, but not in the index
        s.save_messages(kept, 0, conversation("userword", "answerword", reasoning="thinkword")
                        + [Message.tool_call("functions.f", '{"q": "callword"}').to_dict(),
                           Message.tool_result("functions.f", "resultword").to_dict()])  # fmt: skip
        assert indexed_words(s) == {"lima", "peru", "porto", "userword", "answerword"}

# ----------------------------------------------------------------------------- queries are text, never syntax


@pytest.mark.parametrize(
    "query",
    ['"', '""', "'", "*", "a*", "^", "(", ")", "-", "+", ":", ";", "\\", "%", "_", "NEAR(a b)", "AND", "OR", "NOT",
     "title:x", "'); DROP TABLE chats; --", '" OR 1=1 --', "% OR 1", "\x00", "{text}: a"],
)  # fmt: skip
def test_any_query_is_text_and_never_fails(store, query):
    a = store.create()
    store.save_messages(a, 0, conversation("plain words", "nothing special"))
    found = store.search(query)  # no exception, whatever the query
    assert all(isinstance(x, storage.ChatInfo) for x in found)
    assert ids(store, "plain") == [a] and store.integrity() == "ok"


def test_like_wildcards_in_a_query_match_only_themselves(store):
    """`_` and `%` are LIKE wildcards, `"`, `*`, `^`, `:` and the words AND/OR/NOT/NEAR are FTS5 syntax:
    in a query each is plain text (near misses must not match)."""
    snake = store.create()
    store.save_messages(snake, 0, conversation("rename to snake_case", "done"))
    near = store.create()
    store.save_messages(near, 0, conversation("rename to snakeXcase", "done"))
    assert ids(store, "snake_case") == [snake]  # `_` is not "any one character"
    assert ids(store, "snake%case") == ids(store, "snake case")  # `%` separates words, like a space
    assert ids(store, "snake%") == ids(store, "snake")
    pct = store.create()
    store.save_messages(pct, 0, conversation("grew 50 percent", "yes"))
    assert ids(store, "50%") == [pct]  # `%` is a separator, not a wildcard that would match every chat
    assert ids(store, "%") == [pct, near, snake]  # no word at all: every chat, as an empty query


def test_fts_operators_in_a_query_are_words_every_one_of_which_must_appear(store):
    both = store.create()
    store.save_messages(both, 0, conversation("cats and dogs", "pets"))
    either = store.create()
    store.save_messages(either, 0, conversation("cats or dogs", "pets"))
    store.rename(both, "Secret plans")
    assert ids(store, "cats OR dogs") == [either]  # "or" is a word, not an operator
    assert ids(store, "cats AND dogs") == [both]
    assert ids(store, "cats NOT dogs") == []  # nobody wrote "not"
    assert ids(store, "NEAR cats") == []
    assert ids(store, "title:secret") == []  # not a column filter: "title" is a word too
    assert ids(store, '"cats" "and"') == [both]  # quotes are not phrases
    assert ids(store, "dogs*") == [either, both] and ids(store, "*") == ids(store, "")


# ----------------------------------------------------------------------------- bounded lists


def test_search_results_past_the_limit_keep_the_newest(store):
    chats = []
    for i in range(205):
        c = store.create()
        store.save_messages(c, 0, [Message.user(f"common chat{i:03d}").to_dict()])
        chats.append(c)
    found = ids(store, "common")
    assert len(found) == 200 and found == chats[::-1][:200]  # the five oldest dropped
    assert ids(store, "common chat002") == [chats[2]] and chats[2] not in found  # still there, by a narrower search
    assert [c.id for c in store.search("common", limit=3)] == chats[:-4:-1]
    assert [c.id for c in store.search("", limit=3)] == chats[:-4:-1]  # an empty query: the list, bounded the same
    assert [c.id for c in store.list(limit=2)] == chats[:-3:-1] and len(store.list()) == 205
    store.save_messages(chats[0], 1, [Message.assistant("common again", channel="final").to_dict()])
    assert ids(store, "common")[0] == chats[0]  # the oldest, written to now, is the newest


def test_long_titles_keep_their_beginning_and_snippets_their_start(store):
    c = store.create()
    first_line = "Start " + " ".join(f"w{i}" for i in range(40)) + " END"
    store.save_messages(c, 0, conversation(first_line + "\nsecond line", "fin " + "x" * 300 + " tailword"))
    title = store.get(c).title
    assert len(title) == storage.TITLE_CHARS and title.startswith("Start w0 w1") and title.endswith("…")
    assert "END" not in title
    hit = store.search("fin")[0]
    assert len(hit.snippet) <= 120 and "fin" in hit.snippet
    assert store.search("tailword")[0].id == c  # the end of a long message is searched, only not shown


def test_snippets_show_the_matching_message_on_one_line(store):
    c = store.create()
    store.save_messages(c, 0, conversation("How do I  write\na Python decorator?", "Use functools.wraps."))
    fts = store.fts
    assert store.search("functools")[0].snippet == ("Use [functools].wraps." if fts else "Use functools.wraps.")
    assert store.search("decorator")[0].snippet == (
        "How do I write a Python [decorator]?" if fts else "How do I write a Python decorator?")
    two = store.search("python wraps")[0].snippet  # several words: the best matching message
    assert two in (("How do I write a [Python] decorator?", "Use functools.[wraps].") if fts else
                   ("How do I write a Python decorator?", "Use functools.wraps."))  # fmt: skip
