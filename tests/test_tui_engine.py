"""The chat TUI on the real engine: `mlx_oss.Chat` on the tiny synthetic model (tiny layers, full
harmony vocabulary). Random weights never write harmony, so replies are forced token by token with
a logits processor (the model still runs every forward pass); the checks are on mechanics: streamed
text reaches the screen, stats reach the status line, the effort reaches the next prompt, Esc stops,
new chat / save / reopen work on the engine's own JSON.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

import mlx_oss
from mlx_oss.sampling import SamplingConfig, ScriptedTokens
from mlx_oss.tui.app import ChatApp
from mlx_oss.tui.session import Backend, ChatOptions, model_loader, session_loader
from mlx_oss.tui.widgets import AnswerBlock, AssistantMessage, ErrorNote, PromptInput, ToolBlock, UserMessage

sys.path.insert(0, str(Path(__file__).parent))
from test_chat import reply as harmony_reply  # noqa: E402
from test_tui_app import SIZE, aio, idle, ready, send, status, until  # noqa: E402


@pytest.fixture(scope="module")
def model_tok(tiny_chat_converted):
    return mlx_oss.load(tiny_chat_converted, dtype="float32")


class Forced(ScriptedTokens):
    """Forces the reply, records the prompt the model saw, optionally sleeps per token."""

    def __init__(self, tokens, sleep: float = 0.0):
        super().__init__(tokens)
        self.sleep = sleep
        self.prompt: list[int] | None = None

    def __call__(self, context, logits):
        if self.prompt is None:
            self.prompt = [int(t) for t in context.tolist()]
        if self.sleep:
            time.sleep(self.sleep)
        return super().__call__(context, logits)


def force(app: ChatApp, tokens, sleep: float = 0.0) -> Forced:
    f = Forced(tokens, sleep)
    app.session.sampling = SamplingConfig(seed=0, logits_processors=(f,))
    return f


def engine_app(model_tok, tmp_path, **chat_kw) -> ChatApp:
    model, tok = model_tok
    backend = Backend(
        "tiny-chat",
        new_chat=lambda: mlx_oss.Chat(model, tok, **chat_kw),
        open_chat=lambda data: mlx_oss.Chat.from_json(data, model, tok),
    )
    return ChatApp(lambda say: backend, model="tiny-chat", chats_dir=tmp_path)


@aio
async def test_engine_streams_reasoning_and_answer_and_effort_reaches_next_prompt(model_tok, tmp_path):
    _, tok = model_tok
    app = engine_app(model_tok, tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        first = force(app, harmony_reply(tok, analysis="User says hi. Reply.", final="Hello **there**!"))
        await send(pilot, "hi")
        turn = app.query_one(AssistantMessage)
        assert turn.reasoning_text == "User says hi. Reply." and turn.reasoning_blocks[0].collapsed
        assert turn.answer_text == "Hello **there**!"
        s = app.last_stats
        assert s.stop_reason == "stop" and s.context_used > 0 and s.generated_tokens > 0
        st = status(app)
        assert f"ctx {s.context_used:,}/{s.context_limit:,}" in st and "tok/s" in st and "– tok/s" not in st
        assert "Reasoning: medium" in tok.decode(first.prompt)

        await pilot.press("ctrl+t")  # medium -> high, from the next turn
        assert app.session.reasoning_effort == "high" and "effort high" in status(app)
        second = force(app, harmony_reply(tok, analysis="Again.", final="Hi again."))
        await send(pilot, "hi again")
        prompt = tok.decode(second.prompt)
        assert "Reasoning: high" in prompt and "Reasoning: medium" not in prompt
        assert app.query(AssistantMessage).last().answer_text == "Hi again."


@aio
async def test_engine_escape_stops_then_new_chat(model_tok, tmp_path):
    _, tok = model_tok
    app = engine_app(model_tok, tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        force(app, harmony_reply(tok, final="word " * 300), sleep=0.01)
        await send(pilot, "go", wait=False)
        await until(pilot, lambda: bool(app.query(AnswerBlock)) and len(app.query_one(AnswerBlock).text) > 10)
        await pilot.press("escape")
        await idle(pilot)
        assert app.last_stats.stop_reason == "cancelled"
        turn = app.query_one(AssistantMessage)
        assert "Stopped." in [n.text for n in turn.query(ErrorNote)]
        assert 0 < len(turn.answer_text) < len("word " * 300)
        await pilot.press("ctrl+n")
        await until(pilot, lambda: not app.session.history and not app.query(UserMessage))
        force(app, harmony_reply(tok, final="fresh"))
        await send(pilot, "new")
        assert app.query_one(AssistantMessage).answer_text == "fresh"
        assert [m.text for m in app.session.history if m.role.value == "user"] == ["new"]


def get_weather(city: str) -> str:
    """Current weather in a city.

    Args:
        city: City name.
    """
    return f"sunny in {city}"


@aio
async def test_python_api_chat_with_tools_save_and_reopen(model_tok, tmp_path):
    """A Chat built in Python with a callable tool (`mlx_oss.tui.run(chat)`'s path): call + result blocks;
    the reopened conversation still runs the callable."""
    model, tok = model_tok
    app = ChatApp(session_loader(mlx_oss.Chat(model, tok, tools=[get_weather])), chats_dir=tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        force(app, harmony_reply(tok, analysis="Need weather.", call=("get_weather", '{"city": "Paris"}'))
              + harmony_reply(tok, final="It is sunny in Paris."))  # fmt: skip
        await send(pilot, "Weather in Paris?")
        block = app.query_one(ToolBlock)
        assert block.tool_name == "get_weather" and block.result == "sunny in Paris" and block.collapsed
        assert app.query_one(AssistantMessage).answer_text == "It is sunny in Paris."

        app.save_to(tmp_path / "paris")
        saved = json.loads((tmp_path / "paris.json").read_text())
        assert saved == app.session.to_json()
        assert "**Tool call** `get_weather`" in (tmp_path / "paris.md").read_text()
        history = app.session.history
        await pilot.press("ctrl+n")
        await until(pilot, lambda: not app.query(UserMessage))
        assert await app.open_conversation(tmp_path / "paris.json")
        assert app.session.history == history
        assert [u.text for u in app.query(UserMessage)] == ["Weather in Paris?"]
        assert app.query_one(ToolBlock).result == "sunny in Paris"
        assert app.query_one(AssistantMessage).answer_text == "It is sunny in Paris."
        force(app, harmony_reply(tok, call=("get_weather", '{"city": "Rome"}')) + harmony_reply(tok, final="ok"))
        await send(pilot, "And Rome?")
        assert app.query(ToolBlock).last().result == "sunny in Rome"


@aio
async def test_model_loader_end_to_end_unscripted(tiny_chat_converted, tmp_path):
    """The real loader (resolve + load + Chat); the random model's output is not harmony, which the
    chat must survive and say."""
    options = ChatOptions(reasoning_effort="low", max_tokens=6, sampling=SamplingConfig(seed=0), dtype="float32")
    app = ChatApp(model_loader(str(tiny_chat_converted), options), model="converted", chats_dir=tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        assert app.session.reasoning_effort == "low" and "effort low" in status(app)
        assert "ctx 0/131,072" in status(app)
        await send(pilot, "hello")
        assert app.last_stats.generated_tokens > 0 and "ctx 0/" not in status(app)
        notes = [n.text for n in app.query(ErrorNote)]
        assert notes and not any("Traceback" in n for n in notes)
        assert app.focused is app.query_one(PromptInput)


def test_process_exits_cleanly_after_generating_on_the_model_thread(tiny_chat_converted):
    """MLX aborts the process at exit ("terminate called without an active exception") unless each
    thread that ran it clears its streams; the app's model thread does so when it shuts down."""
    import subprocess

    code = f"""
from mlx_oss.tui.session import ModelThread
import mlx.core as mx, mlx_oss
thread = ModelThread()
def work():
    m, tok = mlx_oss.load({str(tiny_chat_converted)!r}, dtype="float32")
    for _ in range(20):
        mx.eval(m(mx.array([[1, 2, 3]]), None))
thread.submit(work).result()
thread.shutdown()
assert thread.join(10)
print("ok")
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-500:]


def _notes(app: ChatApp) -> list[str]:
    return [n.text for n in app.query(AssistantMessage).last().query(ErrorNote)]


@aio
async def test_stop_notes_on_the_real_chat(model_tok, tmp_path):
    """Each way a turn stops short gets its note under the answer: --max-tokens, a full context, the
    tool-round limit (the real Chat's stop reasons, forced replies)."""
    model, tok = model_tok
    app = engine_app(model_tok, tmp_path, max_tokens=5)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        force(app, harmony_reply(tok, final="word " * 40))
        await send(pilot, "go")
        assert app.last_stats.stop_reason == "length"
        assert "Stopped at the --max-tokens limit." in _notes(app)
    room = len(mlx_oss.Chat(model, tok).prompt_tokens([mlx_oss.chat.Message.user("go")])) + 6
    app = engine_app(model_tok, tmp_path, max_context=room)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        force(app, harmony_reply(tok, final="word " * 40))
        await send(pilot, "go")
        assert app.last_stats.stop_reason == "context"
        assert "Stopped: the context is full. Start a new chat (ctrl+n) or raise --max-context." in _notes(app)

    def ping(host: str) -> str:
        """Ping a host."""
        return "pong"

    app = engine_app(model_tok, tmp_path, tools=[ping], max_tool_rounds=1)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        force(app, harmony_reply(tok, call=("ping", '{"host": "a"}')) * 2)
        await send(pilot, "ping a")
        s = app.last_stats
        assert s.stop_reason == "tool_call"
        assert f"Stopped: {s.stop_detail or 'a tool call was not run'}." in _notes(app)


@aio
async def test_save_and_open_wait_for_the_running_answer(model_tok, tmp_path):
    _, tok = model_tok
    app = engine_app(model_tok, tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await ready(pilot)
        force(app, harmony_reply(tok, final="word " * 300), sleep=0.02)
        await send(pilot, "go", wait=False)
        await until(pilot, lambda: app.busy and bool(app.query(AnswerBlock)))
        screen = app.screen
        for key, what in (("ctrl+s", "saving"), ("ctrl+o", "opening a conversation")):
            await pilot.press(key)
            await pilot.pause()
            assert app.screen is screen  # no save/open dialog over a running answer
            assert f"Wait for the answer to end (or press Esc) before {what}." in [n.message for n in app._notifications]
        assert app.busy
        await pilot.press("escape")
        await idle(pilot)
        assert not list(tmp_path.iterdir())
