"""Built-in tools in the chat TUI on the real engine (tiny model, forced replies): the browser's
calls and results collapsed, citations rendered as links with a Sources list, the python
Run / Skip / Always dialog, and the palette toggles."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from textual.command import CommandList, CommandPalette
from textual.widgets import Input, Markdown

import mlx_oss
from mlx_oss.builtin.browser import Browser, FetchLimits, Fetcher, SearxngSearch
from mlx_oss.sampling import SamplingConfig, ScriptedTokens
from mlx_oss.tui.app import ChatApp
from mlx_oss.tui.session import Backend
from mlx_oss.tui.approval import ApprovalScreen
from mlx_oss.tui.widgets import AnswerBlock, AssistantMessage, ToolBlock

sys.path.insert(0, str(Path(__file__).parent))
from test_builtin_chat import builtin_reply, model_tok, web  # noqa: E402,F401 - fixtures shared
from test_tui_app import SIZE, aio, idle, ready, send, until  # noqa: E402

pytest.importorskip("ipykernel")


def app_with(model_tok, tmp_path, chats: list, **chat_kw) -> ChatApp:
    model, tok = model_tok

    def new_chat():
        chats.append(mlx_oss.Chat(model, tok, **chat_kw))
        return chats[-1]

    backend = Backend("tiny-chat", new_chat=new_chat, open_chat=lambda d: mlx_oss.Chat.from_json(d, model, tok))
    return ChatApp(lambda say: backend, model="tiny-chat", chats_dir=tmp_path)


def force(app, tok, steps) -> None:
    tokens: list[int] = []
    for kind, payload in steps:
        tokens += builtin_reply(tok, calls=[payload]) if kind == "call" else builtin_reply(tok, final=payload)
    app.session.sampling = SamplingConfig(seed=0, logits_processors=(ScriptedTokens(tokens),))


@aio
async def test_tui_chat_searches_opens_finds_runs_code_and_links_citations(model_tok, web, tmp_path):
    _, tok = model_tok
    browser = Browser(SearxngSearch(web.url("/searx")), fetcher=Fetcher(FetchLimits(timeout_s=5), allow_private=True),
                      view_tokens=150)  # fmt: skip
    chats: list = []
    app = app_with(model_tok, tmp_path, chats, builtin_tools=("browser", "python"), browser_backend=browser,
                   python_workdir=str(tmp_path / "work"))  # fmt: skip
    try:
        async with app.run_test(size=SIZE) as pilot:
            await ready(pilot)
            force(app, tok, [
                ("call", ("browser.search", '{"query": "mlx"}')),
                ("call", ("browser.open", '{"id": 0}')),
                ("call", ("browser.find", '{"pattern": "quantization"}')),
                ("call", ("python", "print(6 * 7)")),
                ("call", ("python", "print('again')")),
                ("call", ("python", "print('third')")),
                ("final", "Faster on M4【1†L2-L3】, and 42."),
            ])  # fmt: skip
            await send(pilot, "what changed?", wait=False)
            # First python call: the dialog shows the code; Run.
            await until(pilot, lambda: isinstance(app.screen, ApprovalScreen), timeout=60)
            assert app.screen.code == "print(6 * 7)"
            await pilot.press("r")
            # Second: Skip (the model is told; nothing runs).
            await until(pilot, lambda: isinstance(app.screen, ApprovalScreen) and app.screen.code == "print('again')", timeout=60)
            await pilot.press("s")
            # Third: Always for this chat; later calls would not ask.
            await until(pilot, lambda: isinstance(app.screen, ApprovalScreen) and app.screen.code == "print('third')", timeout=60)
            await pilot.press("a")
            await idle(pilot)
            turn = app.query_one(AssistantMessage)
            blocks = list(turn.query(ToolBlock))
            assert [b.tool_name for b in blocks] == ["browser.search", "browser.open", "browser.find", "python", "python", "python"]
            assert all(b.collapsed for b in blocks)
            assert blocks[0].result.startswith("[0] mlx") and f"page: {web.url('/page')}" in blocks[1].result
            assert [b.result.splitlines()[0] for b in blocks[3:]] == ["42", "The user did not approve running this code, so it was not run.", "third"]
            assert blocks[4].result_error and not blocks[5].result_error
            assert blocks[3].raw == "print(6 * 7)"
            answer = [b for b in turn.query(AnswerBlock) if b.channel == "final"][-1]
            assert answer.text == "Faster on M4【1†L2-L3】, and 42."  # copy keeps what the model wrote
            sources = [m for m in turn.query(Markdown) if m.has_class("sources")]
            assert len(sources) == 1
            assert chats[0].approve.mode == "always"
    finally:
        for c in chats:
            c.close()
    assert not chats[0].builtins.python.session.running


@aio
async def test_palette_turns_tools_on_and_off(model_tok, tmp_path):
    chats: list = []
    app = app_with(model_tok, tmp_path, chats)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        assert app.builtin_tools() == ()

        async def run_command(text: str) -> None:
            await pilot.press("ctrl+p")
            await until(pilot, lambda: isinstance(app.screen, CommandPalette))
            app.screen.query_one(Input).value = text
            await until(pilot, lambda: app.screen.query_one(CommandList).option_count > 0
                        and text.lower() in str(app.screen.query_one(CommandList).get_option_at_index(0).prompt).lower())  # fmt: skip
            await pilot.press("down", "enter")

        await run_command("Python tool: turn on")
        await until(pilot, lambda: app.builtin_tools() == ("python",))
        await run_command("Browser tool: turn on")
        await until(pilot, lambda: app.builtin_tools() == ("browser", "python"))
        system = chats[0].messages[0].contents[0]
        assert [ns.name for ns in system.tools] == ["browser", "python"]
        assert chats[0].approve is not None  # the dialog approver, attached to the chat
        await run_command("Python tool: turn off")
        await until(pilot, lambda: app.builtin_tools() == ("browser",))
        await idle(pilot)
    for c in chats:
        c.close()
