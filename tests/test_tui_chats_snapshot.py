"""SVG snapshots of the stored-chats UI (pytest-textual-snapshot), on the scripted fake session and
chats seeded with fixed old dates, so the pictures are deterministic: the chat list, a search,
the rename and delete dialogs, a regenerated answer, the edit dialog.

After an intended visual change: python -m pytest tests/test_tui_chats_snapshot.py --snapshot-update
and review the SVGs under tests/__snapshots__/test_tui_chats_snapshot/.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from test_tui_app import idle, ready, send, until  # noqa: E402
from test_tui_chats import OLD, open_list, seed, select_last, store_app  # noqa: E402
from test_tui_fake import FakeChat, Script  # noqa: E402

from mlx_oss.tui.chatlist import ConfirmScreen, EditMessageScreen, RenameScreen  # noqa: E402
from mlx_oss.tui.widgets import PromptInput  # noqa: E402

SIZE = (110, 34)


def quiet(run_before):
    """No toasts in the pictures: they expire on a timer, which would make the snapshot racy."""

    async def run(pilot):
        await run_before(pilot)
        pilot.app.clear_notifications()
        await pilot.pause()

    return run


def seeded(tmp_path, chat=None):
    app = store_app(tmp_path, chat)
    seed(app.store, "Python decorators", [("How do decorators work?", "They wrap functions.")], OLD)
    seed(app.store, "Tomato soup", [("A tomato soup recipe?", "Roast ripe tomatoes, then blend.")], OLD + 86400)
    seed(app.store, "KV cache notes", [("What does the KV cache hold?", "Keys and values of past tokens.")], OLD + 2 * 86400)
    return app


async def _ready(pilot):
    await ready(pilot)
    pilot.app.query_one(PromptInput).cursor_blink = False


def test_chat_list(snap_compare, tmp_path):
    app = seeded(tmp_path)

    async def run_before(pilot):
        await _ready(pilot)
        await open_list(pilot)
        await pilot.press("down")

    assert snap_compare(app, terminal_size=SIZE, run_before=quiet(run_before))


def test_chat_search(snap_compare, tmp_path):
    app = seeded(tmp_path)

    async def run_before(pilot):
        await _ready(pilot)
        await open_list(pilot)
        await pilot.press("slash", *"tomat")
        await until(pilot, lambda: [c.title for c in app.query_one("ChatList").chats] == ["Tomato soup"])

    assert snap_compare(app, terminal_size=SIZE, run_before=quiet(run_before))


def test_rename_dialog(snap_compare, tmp_path):
    app = seeded(tmp_path)

    async def run_before(pilot):
        await _ready(pilot)
        await open_list(pilot)
        await pilot.press("r")
        await until(pilot, lambda: isinstance(app.screen, RenameScreen))
        app.screen.query_one("#rename-input").cursor_blink = False

    assert snap_compare(app, terminal_size=SIZE, run_before=quiet(run_before))


def test_delete_confirmation(snap_compare, tmp_path):
    app = seeded(tmp_path)

    async def run_before(pilot):
        await _ready(pilot)
        await open_list(pilot)
        await pilot.press("d")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))

    assert snap_compare(app, terminal_size=SIZE, run_before=quiet(run_before))


def test_regenerated_answer(snap_compare, tmp_path):
    chat = FakeChat(scripts=[Script(answer="A first answer."), Script(reasoning="Try again, better.", answer="A **better** answer.")])
    app = store_app(tmp_path, chat)

    async def run_before(pilot):
        await _ready(pilot)
        await send(pilot, "Say something")
        await select_last(pilot)
        await pilot.press("r")
        await idle(pilot)

    assert snap_compare(app, terminal_size=SIZE, run_before=quiet(run_before))


def test_edit_dialog(snap_compare, tmp_path):
    chat = FakeChat(scripts=[Script(answer="One."), Script(answer="Two.")])
    app = store_app(tmp_path, chat)

    async def run_before(pilot):
        await _ready(pilot)
        await send(pilot, "first question")
        await send(pilot, "second question")
        await select_last(pilot, steps=2)
        await pilot.press("e")
        await until(pilot, lambda: isinstance(app.screen, EditMessageScreen))
        app.screen.query_one("#edit-text").cursor_blink = False

    assert snap_compare(app, terminal_size=SIZE, run_before=quiet(run_before))
