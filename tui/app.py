"""`ChatApp`: the Textual chat over an `mlx_oss.Chat` (or anything with the same contract).

UI only: loading, chats and the model thread are `session.py`'s. Every model call runs on the app's
`ModelThread`, which hands events to the UI through an inbox plus a wake-up message; the UI drains and
coalesces them, so a fast decoder costs a bounded number of redraws. `Chat.cancel()` is thread-safe and
is called straight from the UI thread when Esc is pressed.
"""

from __future__ import annotations

import asyncio
import collections
import platform
import shutil
import subprocess
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterable

from textual import on, work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.message import Message
from textual.reactive import reactive
from textual.screen import Screen
from textual.widgets import Footer, Header

from mlx_oss.events import AnswerDelta, Done, Progress, ReasoningDelta, Stats, ToolCall, ToolResult, UnparsedDelta
from mlx_oss.tui.export import default_chats_dir, read_conversation, save_conversation, turns
from mlx_oss.tui.session import EFFORTS, Backend, ChatSession, Failure, Finished, Loader, ModelThread, effort_name, prompt_size, run_send
from mlx_oss.tui.screens import InstructionsScreen, LoadingScreen, OpenScreen, SaveScreen, one_line
from mlx_oss.tui.widgets import AssistantMessage, ChatView, PromptInput, ReasoningBlock, StatusInfo, StatusLine, UserMessage, Welcome

__all__ = ["ChatApp"]


@dataclass
class _LiveReply:
    """The assistant message being streamed into, and what the UI learns about it."""

    widget: AssistantMessage
    text: str
    cancel_requested: bool = False
    stats: Stats | None = None
    answer: str = ""


@dataclass
class _Queued:
    text: str
    widget: UserMessage


@dataclass
class _InboxState:
    items: collections.deque = field(default_factory=collections.deque)
    wake_pending: bool = False


class ChatApp(App[int]):
    """`mlx-oss chat`."""

    CSS_PATH = "app.tcss"
    TITLE = "mlx-oss chat"
    AUTO_FOCUS = "#prompt"
    ENABLE_COMMAND_PALETTE = True

    BINDINGS = [
        Binding("escape", "stop", "Stop", priority=True),
        Binding("ctrl+t", "cycle_effort", "Effort", priority=True),
        Binding("ctrl+r", "toggle_reasoning", "Reasoning", priority=True),
        Binding("ctrl+n", "new_chat", "New", priority=True),
        Binding("ctrl+g", "edit_instructions", "Instructions", priority=True),
        Binding("ctrl+s", "save", "Save", priority=True),
        Binding("ctrl+o", "open", "Open", priority=True),
        Binding("ctrl+l", "copy_answer", "Copy", priority=True),
        Binding("pageup", "scroll_chat(-1)", "Scroll up", show=False, priority=True),
        Binding("pagedown", "scroll_chat(1)", "Scroll down", show=False, priority=True),
        Binding("ctrl+home", "scroll_chat_edge(-1)", "Top", show=False, priority=True),
        Binding("ctrl+end", "scroll_chat_edge(1)", "Bottom", show=False, priority=True),
        Binding("f1", "show_keys", "Keys", show=False),
    ]

    busy: reactive[bool] = reactive(False)
    hide_reasoning: reactive[bool] = reactive(False)

    class Wake(Message):
        """Model-thread items are waiting in the inbox."""

    def __init__(self, loader: Loader, *, model: str = "gpt-oss", source: str | None = None,
                 hide_reasoning: bool = False, chats_dir: Path | None = None) -> None:  # fmt: skip
        super().__init__()
        self.loader = loader
        self.model = model
        self.source = source or model  # what the user typed (--model), for error hints
        self.chats_dir = Path(chats_dir) if chats_dir else default_chats_dir()
        self.backend: Backend | None = None
        self.session: ChatSession | None = None
        self.model_thread = ModelThread()
        self.turn: _LiveReply | None = None
        self.queue: list[_Queued] = []
        self.last_stats: Stats | None = None
        self.live: Progress | None = None  # the running turn's figures, until its Done
        self.context_used: int | None = None  # a reopened chat's prompt size, until its first turn
        self.last_answer = ""
        self.last_error: str | None = None
        self._inbox = _InboxState()
        self._after_turn: list[Callable[[], Any]] = []
        self._loading: LoadingScreen | None = None
        self.set_reactive(ChatApp.hide_reasoning, hide_reasoning)

    # ------------------------------------------------------------------ layout and loading

    def compose(self) -> ComposeResult:
        yield Header(icon="◆")
        yield ChatView(id="chat")
        yield PromptInput(id="prompt", soft_wrap=True, show_line_numbers=False, compact=True)
        yield StatusLine(id="status")
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = self.model
        self.query_one(ChatView).set_class(self.hide_reasoning, "-hide-reasoning")
        self._prompt_hint()
        self._refresh_status()
        self._loading = LoadingScreen(self.model, source=self.source)
        self.begin_capture_print(self._loading, stdout=True, stderr=True)
        self.push_screen(self._loading)
        self._start_loading()

    def on_unmount(self) -> None:
        if self.session is not None and self.turn is not None:
            try:
                self.session.cancel()
            except Exception:
                pass
        # Free the model and caches on the thread that made them, before the interpreter exits.
        held, self.session, self.backend = [self.session, self.backend], None, None
        self.model_thread.submit(held.clear)
        self.model_thread.shutdown()

    @work(exclusive=True, group="load")
    async def _start_loading(self) -> None:
        screen = self._loading
        assert screen is not None

        def say(text: str) -> None:
            screen.post_message(LoadingScreen.Status(text))

        def job() -> tuple[Backend, ChatSession]:
            backend = self.loader(say)
            return backend, backend.new_chat()

        try:
            backend, session = await asyncio.wrap_future(self.model_thread.submit(job))
        except Exception as e:  # noqa: BLE001 - every failure becomes a message with hints
            self.last_error = one_line(e)
            screen.show_error(e)
            return
        self.backend, self.session = backend, session
        self.model = backend.name
        self.sub_title = backend.name
        await self.query_one(ChatView).mount(Welcome(self.model))
        self._refresh_status()
        self._loading = None
        self.pop_screen()
        self.query_one(PromptInput).focus()  # AUTO_FOCUS too, when the chat screen resumes

    def on_loading_screen_retry(self, _message: LoadingScreen.Retry) -> None:
        self._start_loading()

    # ------------------------------------------------------------------ status

    @property
    def effort(self) -> str:
        return effort_name(getattr(self.session, "reasoning_effort", "medium")) if self.session else "medium"

    def _refresh_status(self) -> None:
        s = self.last_stats
        limit = (s.context_limit if s and s.context_limit else None) or getattr(self.session, "max_context", None)
        limit = limit or (self.backend.context_limit if self.backend else None)
        mem = s.peak_memory_bytes if s and s.peak_memory_bytes else None
        if mem is None and self.backend and self.backend.memory_bytes:
            mem = self.backend.memory_bytes() or None
        state = ""
        if self.turn is not None:
            state = "stopping…" if self.turn.cancel_requested else "generating…"
        if self.queue:
            state = (state + " " if state else "") + f"queued {len(self.queue)}"
        p = self.live if self.turn is not None else None
        if p is not None:  # tokens are flowing: live figures, whether or not they make visible text
            used, ttft, tps = p.context_used, p.ttft_s, p.decode_tps or None
            state += f" {p.generated_tokens} tokens"
        else:
            used = s.context_used if s else (self.context_used or 0)
            ttft = s.ttft_s if s and s.generated_tokens else None
            tps = s.decode_tps if s and s.generated_tokens else None
        info = StatusInfo(
            model=self.model, effort=self.effort, context_used=used, context_limit=limit,
            ttft_s=ttft, decode_tps=tps, memory_bytes=mem, state=state,
        )  # fmt: skip
        self.query_one(StatusLine).show(info)
        self.sub_title = f"{self.model} · reasoning effort {self.effort}"

    def _prompt_hint(self) -> None:
        prompt = self.query_one(PromptInput)
        if self.busy:
            prompt.border_title = "Answering… Esc stops · Enter queues your message until the answer ends"
            prompt.add_class("-busy")
        else:
            prompt.border_title = "Message · Enter sends · ctrl+j new line"
            prompt.remove_class("-busy")

    def watch_busy(self, _busy: bool) -> None:
        if self.is_mounted:
            self._prompt_hint()
            self.refresh_bindings()  # Esc Stop appears in the footer only while answering

    def watch_hide_reasoning(self, hide: bool) -> None:
        if self.is_mounted:
            self.query_one(ChatView).set_class(hide, "-hide-reasoning")

    # ------------------------------------------------------------------ sending

    @on(PromptInput.Submitted)
    async def _submitted(self, event: PromptInput.Submitted) -> None:
        await self.send_message(event.text)

    async def send_message(self, text: str) -> None:
        """Send now, or queue behind the running answer (shown as queued)."""
        if self.session is None:
            self.notify("The model is not loaded yet.", severity="warning")
            return
        chat = self.query_one(ChatView)
        await chat.query(Welcome).remove()
        if self.busy or self._after_turn:
            widget = UserMessage(text, queued=True)
            await chat.mount(widget)
            self.queue.append(_Queued(text, widget))
            self._refresh_status()
            return
        widget = UserMessage(text)
        await chat.mount(widget)
        await self._start_turn(text)

    async def _start_turn(self, text: str) -> None:
        assert self.session is not None
        chat = self.query_one(ChatView)
        widget = AssistantMessage(self.model)
        await chat.mount(widget)
        chat.anchor()
        self.turn = _LiveReply(widget, text)
        self.live = None
        self.busy = True
        self._refresh_status()
        self.model_thread.submit(run_send, self.session, text, self._push)

    def _push(self, item: Any) -> None:
        box = self._inbox
        box.items.append(item)
        if not box.wake_pending:
            box.wake_pending = True
            self.post_message(self.Wake())

    @staticmethod
    def _coalesce(items: list[Any]) -> list[Any]:
        out: list[Any] = []
        for it in items:
            prev = out[-1] if out else None
            if isinstance(it, ReasoningDelta) and isinstance(prev, ReasoningDelta):
                out[-1] = ReasoningDelta(prev.text + it.text)
            elif isinstance(it, AnswerDelta) and isinstance(prev, AnswerDelta) and prev.channel == it.channel:
                out[-1] = AnswerDelta(prev.text + it.text, it.channel)
            elif isinstance(it, UnparsedDelta) and isinstance(prev, UnparsedDelta):
                out[-1] = UnparsedDelta(prev.text + it.text)
            elif isinstance(it, Progress) and isinstance(prev, Progress):
                out[-1] = it
            else:
                out.append(it)
        return out

    async def on_chat_app_wake(self, _message: Wake) -> None:
        self._inbox.wake_pending = False
        items = []
        while self._inbox.items:
            items.append(self._inbox.items.popleft())
        for item in self._coalesce(items):
            await self._apply(item)

    async def _apply(self, item: Any) -> None:
        turn = self.turn
        if turn is None:
            return
        w = turn.widget
        live = not turn.cancel_requested
        if isinstance(item, ReasoningDelta):
            if live:
                await w.add_reasoning(item.text)
        elif isinstance(item, AnswerDelta):
            if live:
                await w.add_answer(item.text, channel=item.channel)
        elif isinstance(item, UnparsedDelta):
            if live:
                await w.add_unparsed(item.text)
        elif isinstance(item, Progress):
            self.live = item
        elif isinstance(item, ToolCall):
            if live:
                await w.add_tool_call(item.name, item.arguments, item.raw, error=item.error, call_id=item.id)
        elif isinstance(item, ToolResult):
            if live:
                await w.add_tool_result(item.name, item.content, error=item.error, call_id=item.id)
        elif isinstance(item, Done):
            turn.stats = item.stats
            turn.answer = getattr(item.reply, "answer", "") or w.answer_text
            self.last_stats = item.stats
            self.live = None
            await self._report_stop(w, item.stats)
        elif isinstance(item, Failure):
            await w.add_note(self._failure_text(item.error))
            self.last_error = one_line(item.error)
        elif isinstance(item, Finished):
            await self._end_turn()
        self._refresh_status()

    def _failure_text(self, e: BaseException) -> str:
        if type(e).__name__ == "ContextLengthError":
            return (f"{one_line(e)}\nThe conversation no longer fits in the context: start a new chat (ctrl+n)"
                    " or raise --max-context.")  # fmt: skip
        return f"Generation failed: {one_line(e)}"

    async def _report_stop(self, w: AssistantMessage, s: Stats) -> None:
        reason = s.stop_reason
        if reason == "error":
            self.last_error = s.error or "unknown error"
            await w.add_note(f"Generation failed: {self.last_error}")
        elif reason == "cancelled":
            await w.add_note("Stopped.", kind="notice")
        elif reason == "context":
            await w.add_note("Stopped: the context is full. Start a new chat (ctrl+n) or raise --max-context.", kind="notice")
        elif reason == "tool_call":
            detail = getattr(s, "stop_detail", None) or "a tool call was not run"
            await w.add_note(f"Stopped: {detail}.", kind="notice")
        elif reason == "length":
            await w.add_note("Stopped at the --max-tokens limit.", kind="notice")

    async def _end_turn(self) -> None:
        turn = self.turn
        assert turn is not None
        s = turn.stats
        summary = ""
        if s is not None and s.generated_tokens:
            summary = f"{s.generated_tokens} tokens · {s.decode_tps:.1f} tok/s · TTFT {s.ttft_s:.2f} s"
        if not turn.widget.query("ReasoningBlock, AnswerBlock, UnparsedBlock, ToolBlock, ErrorNote"):
            await turn.widget.add_note("The model produced no visible reply.", kind="notice")
        await turn.widget.finish(summary)
        if turn.answer:
            self.last_answer = turn.answer
        self.turn = None
        self.busy = False
        pending, self._after_turn = self._after_turn, []
        for action in pending:
            await action()
        if self.turn is None and self.queue and not self._after_turn:
            nxt = self.queue.pop(0)
            nxt.widget.set_queued(False)
            await self._start_turn(nxt.text)
        self._refresh_status()

    # ------------------------------------------------------------------ actions

    def action_stop(self) -> None:
        """Esc: stop the running answer at once (the Chat ends the stream with Done)."""
        if self.turn is None or self.session is None:
            return
        if not self.turn.cancel_requested:
            self.turn.cancel_requested = True
            self.session.cancel()
            self.turn.widget.set_state("stopping…")
            self._refresh_status()

    def set_effort(self, effort: str) -> None:
        """Applies from the next turn (the running one keeps its prompt)."""
        if self.session is None:
            return
        self.session.reasoning_effort = effort
        self._refresh_status()
        note = " from the next message" if self.busy else ""
        self.notify(f"Reasoning effort: {effort}{note}", timeout=2)

    def action_cycle_effort(self) -> None:
        i = EFFORTS.index(self.effort) if self.effort in EFFORTS else 1
        self.set_effort(EFFORTS[(i + 1) % len(EFFORTS)])

    def action_toggle_reasoning(self) -> None:
        """Expand / collapse the latest reasoning block."""
        blocks = list(self.query(ReasoningBlock))
        if self.hide_reasoning:
            self.notify("Reasoning is hidden; show it from the command palette (ctrl+p).", timeout=3)
            return
        if not blocks:
            return
        blocks[-1].collapsed = not blocks[-1].collapsed

    def action_set_hide_reasoning(self, hide: bool) -> None:
        self.hide_reasoning = hide

    async def action_new_chat(self) -> None:
        if self.session is None:
            return
        self._clear_queue()
        if self.turn is not None:  # stop first; messages typed meanwhile go to the new chat
            self._after_turn.append(self._new_chat_now)
            self.action_stop()
            return
        await self._new_chat_now()

    async def _new_chat_now(self) -> None:
        assert self.session is not None
        await asyncio.wrap_future(self.model_thread.submit(self.session.reset))
        chat = self.query_one(ChatView)
        await chat.remove_children()
        if not self.queue:
            await chat.mount(Welcome(self.model))
        for q in self.queue:
            q.widget = UserMessage(q.text, queued=True)
            await chat.mount(q.widget)
        self.last_stats = None
        self.context_used = None
        self.last_answer = ""
        self._refresh_status()
        self.notify("New chat", timeout=2)

    def _clear_queue(self) -> None:
        for q in self.queue:
            q.widget.remove()
        self.queue.clear()

    def action_edit_instructions(self) -> None:
        if self.session is None:
            return

        def apply(text: str | None) -> None:
            if text is None or self.session is None:
                return
            self.session.instructions = text.strip() or None
            note = " from the next message" if self.busy else ""
            self.notify(f"Instructions {'updated' if text.strip() else 'cleared'}{note}", timeout=2)

        self.push_screen(InstructionsScreen(self.session.instructions), apply)

    def action_save(self) -> None:
        if self.session is None:
            return
        if self.busy:
            self.notify("Wait for the answer to end (or press Esc) before saving.", severity="warning")
            return
        default = self.chats_dir / f"chat-{datetime.now():%Y%m%d-%H%M%S}"
        self.push_screen(SaveScreen(default), self.save_to)

    def save_to(self, base: Path | None) -> None:
        if base is None or self.session is None:
            return
        try:
            md, js = save_conversation(self.session, base, model=self.model)
        except Exception as e:  # noqa: BLE001
            self.notify(f"Could not save: {one_line(e)}", severity="error", timeout=6)
            return
        self.notify(f"Saved {md.name} and {js.name} in {js.parent}", timeout=4)

    def action_open(self) -> None:
        if self.session is None:
            return
        if self.busy:
            self.notify("Wait for the answer to end (or press Esc) before opening a conversation.", severity="warning")
            return
        self.push_screen(OpenScreen(self.chats_dir), self._open_picked)

    def _open_picked(self, path: Path | None) -> None:
        if path is not None:
            self.run_worker(self.open_conversation(path), group="open", exclusive=True)

    async def open_conversation(self, path: Path) -> bool:
        """Replace the session with a saved one and redraw its messages; errors become a notice."""
        assert self.backend is not None
        try:
            data = read_conversation(path)
            session = await asyncio.wrap_future(self.model_thread.submit(self.backend.open_chat, data))
            used = await asyncio.wrap_future(self.model_thread.submit(prompt_size, session))
        except Exception as e:  # noqa: BLE001
            why = str(e).strip().splitlines()[0] if isinstance(e, ValueError) and str(e).strip() else one_line(e)
            self.notify(f"Could not open {Path(path).name}: {why}", severity="error", timeout=6)
            return False
        self._clear_queue()
        self.session = session
        self.last_stats = None
        self.context_used = used
        await self.rebuild_view()
        self._refresh_status()
        self.notify(f"Opened {Path(path).name}", timeout=3)
        return True

    async def rebuild_view(self) -> None:
        """Redraw the conversation from the session's harmony messages (after opening a file)."""
        assert self.session is not None
        chat = self.query_one(ChatView)
        await chat.remove_children()
        current: AssistantMessage | None = None
        self.last_answer = ""
        for kind, item in turns(self.session.messages):
            if kind == "user":
                current = None
                await chat.mount(UserMessage(item["text"]))
                continue
            if kind == "instructions":
                continue
            if current is None:
                current = AssistantMessage(self.model)
                await chat.mount(current)
            if kind == "reasoning":
                await current.add_reasoning(item["text"], live=False)
            elif kind == "answer":
                await current.add_answer(item["text"], channel=item["channel"])
                if item["channel"] == "final":
                    self.last_answer = current.answer_text
            elif kind == "tool_call":
                await current.add_tool_call(item["name"], None, item["raw"])
            elif kind == "tool_result":
                await current.add_tool_result(item["name"], item["text"])
            elif kind == "unparsed":
                await current.add_unparsed(item["text"])
        for w in chat.query(AssistantMessage):
            await w.finish()
        chat.scroll_end(animate=False)

    def action_copy_answer(self) -> None:
        text = self.last_answer
        if not text:
            unparsed = bool(self.query("UnparsedBlock"))
            self.notify("No answer to copy: the model's output was not in harmony format (shown as unparsed text)."
                        if unparsed else "No answer to copy yet.", severity="warning", timeout=3)  # fmt: skip
            return
        self.copy_to_clipboard(text)  # OSC 52 (iTerm2, kitty, WezTerm, tmux...)
        if platform.system() == "Darwin" and shutil.which("pbcopy"):  # Terminal.app ignores OSC 52
            try:
                subprocess.run(["pbcopy"], input=text.encode(), check=False, timeout=2)
            except (OSError, subprocess.SubprocessError):
                pass
        self.notify(f"Copied the last answer ({len(text)} characters)", timeout=2)

    def action_scroll_chat(self, direction: int) -> None:
        chat = self.query_one(ChatView)
        if direction < 0:
            chat.scroll_page_up(animate=False)
        else:
            chat.scroll_page_down(animate=False)

    def action_scroll_chat_edge(self, direction: int) -> None:
        chat = self.query_one(ChatView)
        if direction < 0:
            chat.scroll_home(animate=False)
        else:
            chat.scroll_end(animate=False)

    def action_show_keys(self) -> None:
        if self.screen.query("KeyPanel"):
            self.action_hide_help_panel()
        else:
            self.action_show_help_panel()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Keys of the chat screen are inactive on the loading screen and dialogs (they have their own)."""
        if action in ("quit", "command_palette", "show_keys"):
            return True
        if isinstance(self.screen, (LoadingScreen,)) or self.screen is not self.screen_stack[0]:
            return False
        if action == "stop":
            return self.turn is not None
        return True

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        if self.session is None:
            return
        for e in EFFORTS:
            yield SystemCommand(f"Reasoning effort: {e}", f"Applies from the next message (now {self.effort})",
                                lambda e=e: self.set_effort(e))  # fmt: skip
        yield SystemCommand("New chat", "Start over (ctrl+n)", self.action_new_chat)
        yield SystemCommand("Edit instructions", "The developer message / system prompt (ctrl+g)", self.action_edit_instructions)
        yield SystemCommand("Save conversation", "As Markdown and JSON (ctrl+s)", self.action_save)
        yield SystemCommand("Open conversation", "Reopen a saved JSON conversation (ctrl+o)", self.action_open)
        yield SystemCommand("Copy last answer", "To the clipboard (ctrl+l)", self.action_copy_answer)
        yield SystemCommand("Toggle reasoning block", "Expand / collapse the latest reasoning (ctrl+r)", self.action_toggle_reasoning)
        if self.hide_reasoning:
            yield SystemCommand("Show reasoning", "Show the reasoning blocks again", lambda: self.action_set_hide_reasoning(False))
        else:
            yield SystemCommand("Hide reasoning", "Hide reasoning blocks entirely", lambda: self.action_set_hide_reasoning(True))
        if self.turn is not None:
            yield SystemCommand("Stop generation", "Stop the running answer (esc)", self.action_stop)
