"""SVG snapshots of the chat TUI (pytest-textual-snapshot), on the scripted fake session so the
picture is deterministic: fixed terminal size, fixed text and stats, no clock.

After an intended visual change: python -m pytest tests/test_tui_snapshot.py --snapshot-update
and review the SVGs under tests/__snapshots__/test_tui_snapshot/.
"""

from __future__ import annotations

import sys
from pathlib import Path

from mlx_oss.errors import ConvertError
from mlx_oss.tui.app import ChatApp
from mlx_oss.tui.screens import LoadingScreen
from mlx_oss.tui.widgets import PromptInput

sys.path.insert(0, str(Path(__file__).parent))
from test_tui_app import fake_app, ready, send, until  # noqa: E402
from test_tui_fake import FakeChat, Script  # noqa: E402


def test_main_screen(snap_compare, tmp_path):
    """A finished turn (collapsed reasoning, Markdown answer with a code block, stats line), then a
    turn with a tool call; prompt focused; status line with model, effort, context, speed, memory."""
    chat = FakeChat(scripts=[Script(), Script(reasoning="Need the weather.", tool=("get_weather", {"city": "Paris"}, "sunny, 21 C"),
                                              answer="It is **sunny** in Paris (21 °C).")])  # fmt: skip
    app = fake_app(tmp_path, chat)

    async def run_before(pilot) -> None:
        await ready(pilot)
        prompt = app.query_one(PromptInput)
        prompt.cursor_blink = False
        await send(pilot, "Hi! Show me a Python greeting.")
        await send(pilot, "What's the weather in Paris?")
        await pilot.pause()

    assert snap_compare(app, terminal_size=(100, 44), run_before=run_before)


def test_loading_error_screen(snap_compare, tmp_path):
    """What a user sees when --model points nowhere: the error, what to do, r / q."""

    def loader(say):
        raise ConvertError("/models/gpt-oss-20b: no such file or folder")

    app = ChatApp(loader, model="/models/gpt-oss-20b", chats_dir=tmp_path)

    async def run_before(pilot) -> None:
        await until(pilot, lambda: isinstance(app.screen, LoadingScreen) and app.screen.failed is not None)

    assert snap_compare(app, terminal_size=(100, 30), run_before=run_before)
