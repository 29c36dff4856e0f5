"""Pilot tests of the chat TUI on the scripted fake session (tests/test_tui_fake.py).

They drive the app with keys, as a user would, and check what is on screen and what the session
was asked to do. The same mechanics on the real engine are in tests/test_tui_engine.py.
"""

from __future__ import annotations

import asyncio
import functools
import json
import sys
import time
from pathlib import Path
from typing import Callable

import pytest
from textual.command import CommandList, CommandPalette
from textual.widgets import Input, ProgressBar, Static
from textual.widgets.markdown import MarkdownFence

from mlx_oss.errors import ConvertError, VocabularyError
from mlx_oss.events import Stats
from mlx_oss.tui.app import ChatApp
from mlx_oss.tui.session import Backend
from mlx_oss.tui.screens import InstructionsScreen, LoadingScreen, OpenScreen, SaveScreen
from mlx_oss.tui.widgets import AnswerBlock, AssistantMessage, ChatView, ErrorNote, PromptInput, ReasoningBlock, StatusLine, ToolBlock, UserMessage, Welcome

sys.path.insert(0, str(Path(__file__).parent))
from test_tui_fake import ANSWER, REASONING, FakeChat, Script  # noqa: E402

SIZE = (100, 34)


def aio(fn):
    """Run an async test with asyncio.run (no pytest-asyncio dependency)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return asyncio.run(fn(*args, **kwargs))

    return wrapper


def fake_app(tmp_path: Path, chat: FakeChat | None = None, **kw) -> ChatApp:
    chat = chat if chat is not None else FakeChat()
    backend = Backend("fake-oss", new_chat=lambda: chat, open_chat=FakeChat.from_json, context_limit=4096)
    return ChatApp(lambda say: backend, model="fake-oss", chats_dir=tmp_path, **kw)


async def until(pilot, cond: Callable[[], bool], timeout: float = 120.0) -> None:
    """Wait for `cond` (generous: a loaded CI machine is slow; a broken app still fails, late)."""
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise AssertionError("timed out waiting for the app")
        await pilot.pause(0.01)


async def ready(pilot) -> None:
    app = pilot.app
    await until(pilot, lambda: app.session is not None and not isinstance(app.screen, LoadingScreen))


async def send(pilot, text: str, *, wait: bool = True) -> None:
    prompt = pilot.app.query_one(PromptInput)
    prompt.focus()
    prompt.insert(text)
    await pilot.press("enter")
    if wait:
        await idle(pilot)


async def idle(pilot) -> None:
    await until(pilot, lambda: not pilot.app.busy and pilot.app.turn is None and not pilot.app.queue)
    await pilot.pause()


def status(app: ChatApp) -> str:
    return app.query_one(StatusLine).text


# ----------------------------------------------------------------------------- conversation


@aio
async def test_send_streams_reasoning_live_then_answer_as_markdown(tmp_path):
    chat = FakeChat(hold_at=4)  # the model pauses after 3 reasoning deltas
    app = fake_app(tmp_path, chat)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        assert app.focused is app.query_one(PromptInput)
        assert "Chat with fake-oss" in str(app.query_one(Welcome).render())
        await send(pilot, "hi there", wait=False)
        assert [u.text for u in app.query(UserMessage)] == ["hi there"] and not app.query(Welcome)
        # While the analysis channel streams, its block is expanded and grows.
        await until(pilot, lambda: chat.held.is_set() and bool(app.query(ReasoningBlock)) and len(app.query_one(ReasoningBlock).text) == 18)
        block = app.query_one(ReasoningBlock)
        assert block.live and not block.collapsed
        partial = block.text
        assert REASONING.startswith(partial) and partial != REASONING
        assert app.busy and "generating" in status(app)
        assert "Esc stops" in str(app.query_one(PromptInput).border_title)
        chat.release.set()
        # Once the answer starts the reasoning collapses; the answer streams as Markdown.
        await until(pilot, lambda: bool(app.query(AnswerBlock)))
        assert block.collapsed and not block.live
        await idle(pilot)
        turn = app.query_one(AssistantMessage)
        assert block.text == REASONING
        assert turn.answer_text == ANSWER
        assert app.query_one(AnswerBlock).query(MarkdownFence), "code block rendered as a fenced (highlighted) block"
        s = status(app)
        for part in ("fake-oss", "effort medium", "ctx 100/4,096", "TTFT 0.25 s", "42.0 tok/s", "mem 123.0 MB"):
            assert part in s, (part, s)
        assert "40 tokens" in str(turn.query_one(".turn-stats", Static).render())
        assert chat.prompts[-1]["text"] == "hi there"


@aio
async def test_effort_key_and_palette_apply_to_next_prompt(tmp_path):
    chat = FakeChat()
    app = fake_app(tmp_path, chat)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        assert "effort medium" in status(app) and "reasoning effort medium" in app.sub_title
        await pilot.press("ctrl+t")
        assert chat.reasoning_effort == "high" and "effort high" in status(app)
        await send(pilot, "one")
        assert chat.prompts[-1]["effort"] == "high"
        # From the command palette.
        await pilot.press("ctrl+p")
        await until(pilot, lambda: isinstance(app.screen, CommandPalette))
        app.screen.query_one(Input).value = "effort: low"
        await until(pilot, lambda: "low" in str(app.screen.query_one(CommandList).get_option_at_index(0).prompt)
                    if app.screen.query_one(CommandList).option_count else False)  # fmt: skip
        await pilot.press("down", "enter")
        await until(pilot, lambda: chat.reasoning_effort == "low")
        assert "effort low" in status(app)
        await send(pilot, "two")
        assert [p["effort"] for p in chat.prompts] == ["high", "low"]
        # Switching during an answer applies from the next turn, not the running one.
        chat.hold_at = 2
        await send(pilot, "three", wait=False)
        await until(pilot, lambda: chat.held.is_set() and len(chat.prompts) == 3)
        await pilot.press("ctrl+t")
        chat.release.set()
        await idle(pilot)
        chat.hold_at = None
        await send(pilot, "four")
        assert [p["effort"] for p in chat.prompts] == ["high", "low", "low", "medium"]


@aio
async def test_escape_stops_generation_at_once(tmp_path):
    chat = FakeChat(hold_at=3)  # the model is mid-reasoning and would stay there
    app = fake_app(tmp_path, chat)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await send(pilot, "tell me a story", wait=False)
        await until(pilot, lambda: chat.held.is_set() and bool(app.query(ReasoningBlock)))
        await pilot.press("escape")  # the fake holds until cancelled: reaching idle proves Esc stopped it
        await idle(pilot)
        turn = app.query_one(AssistantMessage)
        assert app.last_stats.stop_reason == "cancelled"
        assert "Stopped." in [n.text for n in turn.query(ErrorNote)]
        assert len(turn.reasoning_text) < len(REASONING) and turn.answer_text == ""
        assert "generating" not in status(app)
        # The app is usable right after.
        chat.hold_at = None
        await send(pilot, "again")
        assert app.query(AssistantMessage).last().answer_text == ANSWER


@aio
async def test_messages_sent_while_answering_are_queued_and_say_so(tmp_path):
    chat = FakeChat(hold_at=2)
    app = fake_app(tmp_path, chat)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await send(pilot, "first", wait=False)
        await until(pilot, lambda: chat.held.is_set())
        await send(pilot, "second", wait=False)
        queued = app.query(UserMessage).last()
        assert queued.text == "second" and queued.has_class("-queued") and "queued" in str(queued.border_title)
        assert "queued 1" in status(app)
        assert [p["text"] for p in chat.prompts] == ["first"]
        chat.release.set()
        await idle(pilot)
        assert [p["text"] for p in chat.prompts] == ["first", "second"]
        assert not queued.has_class("-queued")
        assert len(app.query(AssistantMessage)) == 2


@aio
async def test_new_chat_clears_view_and_resets_session(tmp_path):
    chat = FakeChat()
    app = fake_app(tmp_path, chat)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await send(pilot, "hello")
        assert "ctx 100/" in status(app)
        await pilot.press("ctrl+n")
        await until(pilot, lambda: chat.resets == 1)
        await pilot.pause()
        assert not app.query(UserMessage) and not app.query(AssistantMessage) and app.query(Welcome)
        assert "ctx 0/4,096" in status(app) and chat.turns == []
        # New chat while answering: stops first, then resets.
        chat.hold_at = 2
        await send(pilot, "long one", wait=False)
        await until(pilot, lambda: chat.held.is_set() and app.query(ReasoningBlock))
        await pilot.press("ctrl+n")
        chat.hold_at = None
        await send(pilot, "typed after ctrl+n", wait=False)  # belongs to the new chat
        await until(pilot, lambda: chat.resets == 2)
        await idle(pilot)
        assert [u.text for u in app.query(UserMessage)] == ["typed after ctrl+n"]
        assert len(app.query(AssistantMessage)) == 1 and chat.prompts[-1]["text"] == "typed after ctrl+n"
        assert [m.text for m in chat.messages if m.role.value == "user"] == ["typed after ctrl+n"]


@aio
async def test_save_as_markdown_and_json_then_reopen(tmp_path):
    chat = FakeChat(scripts=[Script(), Script(tool=("get_weather", {"city": "Paris"}, "sunny"))])
    app = fake_app(tmp_path, chat)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await send(pilot, "hello")
        await send(pilot, "weather?")
        await pilot.press("ctrl+s")
        await until(pilot, lambda: isinstance(app.screen, SaveScreen))
        box = app.screen.query_one("#save-path")
        assert box.value.startswith(str(tmp_path))
        box.value = str(tmp_path / "talk")
        await pilot.press("enter")
        await until(pilot, lambda: (tmp_path / "talk.json").exists())
        md = (tmp_path / "talk.md").read_text()
        assert "## You\n\nhello" in md and "<details><summary>Reasoning</summary>" in md
        assert "```python" in md and "**Tool call** `get_weather`" in md and "sunny" in md
        saved = json.loads((tmp_path / "talk.json").read_text())
        assert saved == chat.to_json()

        await pilot.press("ctrl+n")
        await until(pilot, lambda: not app.query(UserMessage))
        await pilot.press("ctrl+o")
        await until(pilot, lambda: isinstance(app.screen, OpenScreen))
        assert "talk.json" in [str(o.prompt) for o in app.screen.query_one("#open-recent").options]
        app.screen.query_one("#open-path").value = str(tmp_path / "talk.json")
        await pilot.press("enter")
        await until(pilot, lambda: app.session is not chat and len(app.query(UserMessage)) == 2)
        await pilot.pause()
        assert [u.text for u in app.query(UserMessage)] == ["hello", "weather?"]
        turns = list(app.query(AssistantMessage))
        assert turns[0].answer_text == ANSWER and turns[0].reasoning_blocks[0].collapsed
        tool = turns[1].query_one(ToolBlock)
        assert tool.tool_name == "get_weather" and tool.result == "sunny"
        assert app.session.to_json() == saved
        await until(pilot, lambda: chat.closed == 1)  # the conversation left stops its python session
        # The reopened conversation continues.
        await send(pilot, "and tomorrow?")
        assert app.session.prompts[-1]["text"] == "and tomorrow?"
        reopened = app.session
        assert reopened.closed == 0
    assert app.model_thread.join(timeout=60)  # as `mlx-oss chat` waits for it
    assert reopened.closed == 1 and chat.closed == 1  # and the open one when the app ends


@aio
async def test_open_errors_are_notices_not_crashes(tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    app = fake_app(tmp_path)
    async with app.run_test(size=SIZE, notifications=True) as pilot:
        await ready(pilot)
        ok = await app.open_conversation(tmp_path / "bad.json")
        await pilot.pause()
        assert not ok and any("invalid JSON" in n.message for n in app._notifications)
        assert not await app.open_conversation(tmp_path / "missing.json")
        app.save_to(Path("/proc/definitely/not/writable/x"))
        await pilot.pause()
        assert any("Could not save" in n.message for n in app._notifications)


@aio
async def test_copy_last_answer(tmp_path):
    app = fake_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await send(pilot, "hello")
        await pilot.press("ctrl+l")
        assert app.clipboard == ANSWER


@aio
async def test_tool_calls_are_collapsible_call_and_result_blocks(tmp_path):
    chat = FakeChat(scripts=[Script(tool=("get_weather", {"city": "Paris"}, "sunny, 21 C"))])
    app = fake_app(tmp_path, chat)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await send(pilot, "weather in Paris?")
        block = app.query_one(ToolBlock)
        assert block.collapsed and block.result == "sunny, 21 C"
        assert "get_weather" in block.title and "Paris" in block.title and "sunny" in block.title
        await pilot.click(block._title)  # the title line toggles it
        assert not block.collapsed
        assert '"city": "Paris"' in str(block._call.render())
        # Order within the turn: reasoning, tool block, answer.
        kinds = [type(c).__name__ for c in app.query_one(AssistantMessage).children if not isinstance(c, Static) or isinstance(c, AnswerBlock)]
        assert kinds.index("ReasoningBlock") < kinds.index("ToolBlock") < kinds.index("AnswerBlock")


@aio
async def test_generation_errors_show_in_chat_and_app_survives(tmp_path):
    from mlx_oss.engine import ContextLengthError

    chat = FakeChat(scripts=[Script(error="Metal ran out of memory"),
                             Script(raise_error=ContextLengthError("prompt of 5000 tokens exceeds the context limit 4096")),
                             Script(raise_error=RuntimeError("kaboom\nsecond line"))])  # fmt: skip
    app = fake_app(tmp_path, chat)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await send(pilot, "a")
        await send(pilot, "b")
        await send(pilot, "c")
        notes = [n.text for n in app.query(ErrorNote)]
        assert "Generation failed: Metal ran out of memory" in notes
        assert any("exceeds the context limit" in n and "new chat (ctrl+n)" in n for n in notes)
        assert "Generation failed: RuntimeError: kaboom" in notes
        assert not any("Traceback" in n for n in notes)
        await send(pilot, "d")
        assert app.query(AssistantMessage).last().answer_text == ANSWER


@aio
async def test_reasoning_toggle_key_and_hide_setting(tmp_path):
    app = fake_app(tmp_path, hide_reasoning=False)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await send(pilot, "hello")
        block = app.query_one(ReasoningBlock)
        assert block.collapsed
        await pilot.press("ctrl+r")
        assert not block.collapsed
        await pilot.press("ctrl+r")
        assert block.collapsed
        app.action_set_hide_reasoning(True)
        await pilot.pause()
        assert not block.display and app.query_one(ChatView).has_class("-hide-reasoning")


@aio
async def test_hide_reasoning_option_hides_streaming_reasoning(tmp_path):
    chat = FakeChat(hold_at=3)
    app = fake_app(tmp_path, chat, hide_reasoning=True)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await send(pilot, "hello", wait=False)
        await until(pilot, lambda: chat.held.is_set() and bool(app.query(ReasoningBlock)))
        assert not app.query_one(ReasoningBlock).display
        assert "thinking" in app.query_one(AssistantMessage).state  # what shows instead of the reasoning
        chat.release.set()
        await idle(pilot)
        assert app.query_one(AssistantMessage).answer_text == ANSWER


@aio
async def test_edit_instructions_applies_to_next_prompt(tmp_path):
    chat = FakeChat()
    app = fake_app(tmp_path, chat)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await pilot.press("ctrl+g")
        await until(pilot, lambda: isinstance(app.screen, InstructionsScreen))
        app.screen.query_one("#instructions-text").text = "Answer in French."
        await pilot.press("ctrl+s")
        await until(pilot, lambda: chat.instructions == "Answer in French.")
        await send(pilot, "hello")
        assert chat.prompts[-1]["instructions"] == "Answer in French."
        # Esc cancels without changing them.
        await pilot.press("ctrl+g")
        await until(pilot, lambda: isinstance(app.screen, InstructionsScreen))
        assert app.screen.query_one("#instructions-text").text == "Answer in French."
        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(app.screen, InstructionsScreen))
        assert chat.instructions == "Answer in French." and not app.busy


@aio
async def test_scroll_back_through_a_long_chat(tmp_path):
    app = fake_app(tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await ready(pilot)
        for i in range(4):
            await send(pilot, f"message {i}")
        view = app.query_one(ChatView)
        await pilot.pause(0.1)
        assert view.max_scroll_y > 0 and view.scroll_y == view.max_scroll_y  # following the end
        await pilot.press("pageup")
        await pilot.pause(0.05)
        assert view.scroll_y < view.max_scroll_y
        await pilot.press("ctrl+home")
        await pilot.pause(0.05)
        assert view.scroll_y == 0
        await pilot.press("ctrl+end")
        await pilot.pause(0.05)
        assert view.scroll_y == view.max_scroll_y


@aio
async def test_multiline_prompt_ctrl_j(tmp_path):
    chat = FakeChat()
    app = fake_app(tmp_path, chat)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await pilot.press("a", "ctrl+j", "b", "enter")
        await idle(pilot)
        assert chat.prompts[-1]["text"] == "a\nb"
        await pilot.press("space", "enter")  # blank messages are not sent
        await pilot.pause()
        assert len(chat.prompts) == 1


# ----------------------------------------------------------------------------- loading screen


@aio
async def test_loading_screen_shows_stages_and_progress(tmp_path):
    import threading

    gate = threading.Event()
    chat = FakeChat()

    def loader(say):
        say("downloading openai/gpt-oss-20b from the Hugging Face Hub")
        sys.stderr.write("\rmodel-00001.safetensors:  45%|####5     | 5.8G/12.8G [01:02<01:10, 99MB/s]")
        sys.stderr.flush()
        gate.wait(5)
        return Backend("fake-oss", lambda: chat, FakeChat.from_json)

    app = ChatApp(loader, model="gpt-oss-20b", chats_dir=tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: isinstance(app.screen, LoadingScreen) and len(app.screen.stages) == 2)
        screen = app.screen
        await until(pilot, lambda: screen.query_one(ProgressBar).progress == 45)
        assert screen.stages[-1].startswith("Downloading openai/gpt-oss-20b")
        assert "45%" in str(screen.query_one("#loading-line", Static).render())
        gate.set()
        await ready(pilot)
        assert app.focused is app.query_one(PromptInput)


@aio
async def test_loading_failure_shows_what_to_do_and_q_quits(tmp_path):
    attempts = []

    def loader(say):
        attempts.append(1)
        raise ConvertError("/nope: no such file or folder")

    app = ChatApp(loader, model="/nope", chats_dir=tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: isinstance(app.screen, LoadingScreen) and app.screen.failed is not None)
        text = app.screen.error_text
        assert "/nope: no such file or folder" in text and "Check the path" in text and "Traceback" not in text
        await pilot.press("r")
        await until(pilot, lambda: len(attempts) == 2 and app.screen.failed is not None)
        await pilot.press("q")
    assert app.return_code == 1


@pytest.mark.parametrize(
    ("error", "hint"),
    [
        (ConvertError("openai/gpt-oss-20b: downloading from the Hub needs huggingface_hub; run: pip install 'mlx-oss[hub]'"), "pip install 'mlx-oss[hub]'"),
        (ConvertError("openai/gpt-oss-20b: download from the Hugging Face Hub failed (404)"), "huggingface-cli login"),
        (OSError(28, "No space left on device"), "Free disk space"),
        (ConvertError("/x: not a gpt-oss checkpoint (expected config.json ...)"), "--model takes a Hub id"),
        (MemoryError(), "Not enough memory"),
    ],
)
def test_error_hints(error, hint):
    from mlx_oss.tui.screens import error_hints

    assert any(hint in h for h in error_hints(error, "openai/gpt-oss-20b"))


@pytest.mark.parametrize(
    ("error", "fits", "never"),
    [
        (ConvertError("/m/x.safetensors: 10 bytes, manifest.json says 20 (truncated or replaced); run `mlx-oss info "
                      "--verify /m` for a full check, or convert the checkpoint again (--force)"), "mlx-oss info --verify /m", "internet"),
        (ConvertError("/m/manifest.json: missing (every mlx-oss folder lists its files there)"),
         "To repair it, remove it and convert the checkpoint again", "--force"),  # --force would be refused there
        (VocabularyError("/m: vocabulary of 512 tokens, but the o200k_harmony tokenizer needs 201088 (ids up to 201087); "
                         "this model cannot chat"), "tiny-chat", "DEBUG"),
        (ConvertError("models/x: no such local folder, and the download from the Hugging Face Hub failed (404)"), "Check the path", "DEBUG"),
    ],
)
def test_error_hints_fit_the_cause_of_a_local_folder(error, fits, never):
    from mlx_oss.tui.screens import error_hints, one_line

    model = "models/x" if "models/x" in str(error) else "/m"
    hints = error_hints(error, model)
    assert any(fits in h for h in hints) and not any(never in h for h in hints), hints
    assert one_line(error) == str(error)  # a user error is its message, no exception type in front


@aio
async def test_a_tool_call_stop_note_says_what_happened(tmp_path):
    """Never "tool round limit reached" for a stop that was something else: the note is Stats.stop_detail."""
    app = fake_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        w = AssistantMessage("fake-oss")
        await app.query_one(ChatView).mount(w)
        await app._report_stop(w, Stats(stop_reason="tool_call", stop_detail="waiting for the result of the call to functions.lookup"))
        await pilot.pause()
        notes = [n.text for n in w.query(ErrorNote)]
        assert notes == ["Stopped: waiting for the result of the call to functions.lookup."]


def test_progress_from_output():
    from mlx_oss.tui.screens import progress_from_output

    line, pct = progress_from_output("a\n\rconvert [####----]  12.5%  1.0 GB/8.0 GB\x1b[K\rconvert [#####---]  37.5%  3.0 GB\x1b[K")
    assert pct == 37.5 and line.startswith("convert [#####---]") and "\x1b" not in line
    assert progress_from_output("")[1] is None


@aio
async def test_answer_keeps_streaming_behind_a_dialog(tmp_path):
    """Dialogs opened while answering (here: instructions) do not stop or break the stream."""
    chat = FakeChat(hold_at=3)
    app = fake_app(tmp_path, chat)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        await send(pilot, "hello", wait=False)
        await until(pilot, lambda: chat.held.is_set())
        await pilot.press("ctrl+g")
        await until(pilot, lambda: isinstance(app.screen, InstructionsScreen))
        chat.release.set()
        await idle(pilot)
        assert isinstance(app.screen, InstructionsScreen)
        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(app.screen, InstructionsScreen))
        assert app.query_one(AssistantMessage).answer_text == ANSWER
        assert "ctx 100/4,096" in status(app) and "generating" not in status(app)
