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
from textual.css.query import NoMatches
from textual.message import Message
from textual.reactive import reactive
from textual.screen import Screen
from textual.widgets import Footer, Header, ProgressBar

from mlx_oss.events import AnswerDelta, Done, Progress, ReasoningDelta, Stats, ToolCall, ToolResult, UnparsedDelta
from mlx_oss.tui.chatlist import ChatList, ConfirmScreen, EditMessageScreen, MessageActionsScreen, RenameScreen, code_blocks
from mlx_oss.tui.keeper import ChatKeeper, segments
from mlx_oss.tui.storage import ChatStore
from mlx_oss.tui.approval import TuiApprover
from mlx_oss.tui.export import default_chats_dir, read_conversation, save_conversation, turns
from mlx_oss.tui.session import EFFORTS, Backend, ChatSession, Failure, Finished, Loader, ModelThread, effort_name, prompt_size, run_send
from mlx_oss.tui.screens import InstructionsScreen, LoadingScreen, OpenScreen, SaveScreen, one_line
from mlx_oss.tui.widgets import AssistantMessage, ChatView, PromptInput, ReasoningBlock, StatusInfo, StatusLine, UserMessage, Welcome

__all__ = ["ChatApp"]


@dataclass
class _Note:
    """A problem beside the reply (e.g. the chat database could not be written), as an inbox item."""

    text: str


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


def _role(m: Any) -> str:
    r = getattr(m, "role", "")
    return str(getattr(r, "value", r))


def _reason(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if isinstance(e, ValueError) and str(e).strip() else one_line(e)


def reply_summary(s: Any) -> str:
    """A reply's last line: tokens, decode speed, TTFT and how much of the prompt came from the
    cache (`Stats`, or its stored dict; "" when nothing was generated)."""
    if s is None:
        return ""
    get = s.get if isinstance(s, dict) else (lambda k, d=0: getattr(s, k, d))
    if not get("generated_tokens", 0):
        return ""
    text = f"{get('generated_tokens', 0)} tokens · {get('decode_tps', 0.0):.1f} tok/s · TTFT {get('ttft_s', 0.0):.2f} s"
    reused = get("reused_tokens", 0) or 0
    return text + (f" · {reused:,} cached tokens reused" if reused else "")


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
        Binding("ctrl+b", "toggle_chats", "Chats", priority=True),
        Binding("up", "select_message(-1)", "Previous message", show=False, priority=True),
        Binding("down", "select_message(1)", "Next message", show=False, priority=True),
        Binding("enter", "message_actions", "Actions", show=False, priority=True),
        Binding("c", "on_message('copy')", "Copy", show=False, priority=True),
        Binding("e", "on_message('edit')", "Edit", show=False, priority=True),
        Binding("r", "on_message('regenerate')", "Regenerate", show=False, priority=True),
        Binding("d", "on_message('delete')", "Delete", show=False, priority=True),
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

    class Stored(Message):
        """The model thread created a chat in the database (the list shows it)."""

    class Warming(Message):
        """Progress of a reopened chat's background prefill (from the model thread)."""

        def __init__(self, done: int, total: int) -> None:
            super().__init__()
            self.done, self.total = done, total

    def __init__(self, loader: Loader, *, model: str = "gpt-oss", source: str | None = None,
                 hide_reasoning: bool = False, chats_dir: Path | None = None, store: ChatStore | None = None,
                 resume: int | None = None, tools_file: str | None = None, approve_python: str = "ask") -> None:  # fmt: skip
        """`store`: keep every chat there (None: nothing is kept); `resume`: open that stored chat."""
        super().__init__()
        self.approve_python = approve_python
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
        self.store = store
        self.keeper = ChatKeeper(store, model=source or model, tools_file=tools_file) if store is not None else None
        self.resume = resume
        self.selected: int | None = None  # index among the message widgets while selecting (↑)
        self.warm_state = ""  # "prefilling 40%", "cache warm · N tokens" for the status line
        self._turn_start = 0  # history length when the running turn started
        self.set_reactive(ChatApp.hide_reasoning, hide_reasoning)

    # ------------------------------------------------------------------ layout and loading

    def compose(self) -> ComposeResult:
        yield Header(icon="◆")
        yield ChatList(id="chatlist")
        yield ChatView(id="chat")
        yield PromptInput(id="prompt", soft_wrap=True, show_line_numbers=False, compact=True)
        yield ProgressBar(id="warm-progress", show_eta=False)
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
        if self.session is not None and (self.turn is not None or self.warm_state.startswith("prefilling")):
            try:
                self.session.cancel()
            except Exception:
                pass
        # Free the model and caches on the thread that made them, before the interpreter exits.
        held, self.session, self.backend = [self.session, self.backend], None, None
        self._close_session(held[0])
        if held[1] is not None and held[1].close is not None:
            self.model_thread.submit(held[1].close)  # a group: the other ranks stop, from the model's thread
        self.model_thread.submit(held.clear)
        self.model_thread.shutdown()

    def _close_session(self, session: ChatSession | None, keep: ChatSession | None = None) -> None:
        """A conversation left (another opened, or the app ends): its python kernel stops and its
        temporary folder goes, on the model thread, behind whatever runs there."""
        close = getattr(session, "close", None)
        if session is not None and session is not keep and close is not None:
            self.model_thread.submit(close)

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
        self._attach_approver(session)
        self.model = backend.name
        self.sub_title = backend.name
        await self.query_one(ChatView).mount(Welcome(self.model))
        self._refresh_status()
        self._loading = None
        self.pop_screen()
        self.query_one(PromptInput).focus()  # AUTO_FOCUS too, when the chat screen resumes
        if self.store is not None and self.store.notice:
            self.notify(self.store.notice, severity="warning", timeout=10)
        if self.resume is not None:
            await self.open_stored(self.resume)

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
        if self.warm_state:
            state = (state + " " if state else "") + self.warm_state
        info = StatusInfo(
            model=self.model, effort=self.effort, context_used=used, context_limit=limit,
            ttft_s=ttft, decode_tps=tps, memory_bytes=mem, state=state,
        )  # fmt: skip
        try:
            self.query_one(StatusLine).show(info)
        except NoMatches:  # closing: the widgets are gone while model-thread messages still arrive
            return
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

    async def _start_turn(self, text: str | None) -> None:
        """Start a reply to `text` (None: regenerate, i.e. answer the history's last message again)."""
        assert self.session is not None
        chat = self.query_one(ChatView)
        widget = AssistantMessage(self.model)
        await chat.mount(widget)
        chat.anchor()
        self.turn = _LiveReply(widget, text or "")
        self.live = None
        self._turn_start = len(self._history())
        self.busy = True
        self._refresh_status()
        session = self.session
        self.model_thread.submit(run_send, session, text, self._push, lambda ev: self._keep(session, ev))

    def _keep(self, session: ChatSession, ev: Any) -> None:
        """Engine thread: store what the session completed so far (never fails the reply)."""
        if self.keeper is None:
            return
        try:
            if isinstance(ev, Done):
                self.keeper.reply_done(session, ev.stats)
            elif self.keeper.sync(session):
                self.post_message(self.Stored())
        except Exception as e:  # noqa: BLE001 - the chat goes on; the user is told in it
            self._push(_Note(f"Could not save the chat: {one_line(e)}"))

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
                args = None if getattr(item, "tool", "") == "python" else item.arguments  # code shows as code
                await w.add_tool_call(item.name, args, item.raw, error=item.error, call_id=item.id)
        elif isinstance(item, ToolResult):
            if live:
                await w.add_tool_result(item.name, item.content, error=item.error, call_id=item.id,
                                        url=getattr(item, "url", ""), images=getattr(item, "images", ()))  # fmt: skip
        elif isinstance(item, Done):
            turn.stats = item.stats
            turn.answer = getattr(item.reply, "answer", "") or w.answer_text
            self.last_stats = item.stats
            self.live = None
            if live and getattr(item.reply, "citations", ()):
                await w.add_sources(item.reply.citations)
            await self._report_stop(w, item.stats)
        elif isinstance(item, Failure):
            await w.add_note(self._failure_text(item.error))
            self.last_error = one_line(item.error)
        elif isinstance(item, _Note):
            await w.add_note(item.text)
            self.last_error = item.text
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
        summary = reply_summary(s)
        if not turn.widget.query("ReasoningBlock, AnswerBlock, UnparsedBlock, ToolBlock, ErrorNote"):
            await turn.widget.add_note("The model produced no visible reply.", kind="notice")
        await turn.widget.finish(summary)
        self._place_turn(turn)
        if s is not None and self.warm_state:
            self.warm_state = ""  # the turn after a resume used the warm cache (its summary says how much)
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
        """Esc: stop the running answer at once (the Chat ends the stream with Done); when
        messages are selected (↑) and nothing runs, back to the message box."""
        if self.turn is None and self.selected is not None:
            self.leave_selection()
            return
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
        self._settings_changed()
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
        self.selected = None
        self.warm_state = ""
        if self.keeper is not None:
            self.keeper.start_new()
        self._refresh_chats()
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
            self._settings_changed()
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
        """Open a saved JSON conversation: with a chat database it is imported as a new chat (and
        opened); without one it replaces the session. Errors become a notice."""
        assert self.backend is not None
        if self.store is not None:
            try:
                chat_id = self.store.import_json(read_conversation(path), model=self.keeper.model if self.keeper else "")
            except Exception as e:  # noqa: BLE001
                self.notify(f"Could not import {Path(path).name}: {_reason(e)}", severity="error", timeout=6)
                return False
            return await self.open_stored(chat_id, note=f"Imported {Path(path).name}")
        try:
            data = read_conversation(path)
            session = await asyncio.wrap_future(self.model_thread.submit(self.backend.open_chat, data))
            used = await asyncio.wrap_future(self.model_thread.submit(prompt_size, session))
        except Exception as e:  # noqa: BLE001
            self.notify(f"Could not open {Path(path).name}: {_reason(e)}", severity="error", timeout=6)
            return False
        await self._show_session(session, used=used)
        self.notify(f"Opened {Path(path).name}", timeout=3)
        return True

    async def _show_session(self, session: ChatSession, stats: dict[int, dict[str, Any]] | None = None,
                            used: int | None = None) -> None:  # fmt: skip
        """Make `session` the open conversation and redraw it."""
        self._clear_queue()
        self._close_session(self.session, keep=session)
        self.session = session
        self._attach_approver(session)
        self.last_stats = None
        self.context_used = used
        self.warm_state = ""
        await self.rebuild_view(stats)
        self._refresh_status()

    async def open_stored(self, chat_id: int, *, note: str | None = None) -> bool:
        """Switch to a stored chat: its settings and messages, redrawn with each reply's stats; then
        its conversation is prefilled once in the background so the next turn answers fast."""
        if self.store is None or self.backend is None or self.keeper is None:
            return False
        if self.busy:
            self.notify("Wait for the answer to end (or press Esc) before switching chats.", severity="warning")
            return False
        try:
            info = self.store.get(chat_id)
            data = self.store.chat_json(chat_id)
            stats = self.store.stats(chat_id)
            session = await asyncio.wrap_future(self.model_thread.submit(self.backend.open_chat, data))
            used = await asyncio.wrap_future(self.model_thread.submit(prompt_size, session))
        except Exception as e:  # noqa: BLE001
            self.notify(f"Could not open chat {chat_id}: {_reason(e)}", severity="error", timeout=6)
            return False
        self.keeper.attach(chat_id, len(data["messages"]))
        await self._show_session(session, stats, used)
        self._refresh_chats()
        self.notify(note or f"Opened “{info.title or 'untitled'}”", timeout=3)
        self._warm()
        return True

    def _warm(self) -> None:
        warm = getattr(self.session, "warm", None)
        if warm is None or not self._history():
            return
        self.warm_state = "prefilling…"
        bar = self.query_one("#warm-progress", ProgressBar)
        bar.update(total=None, progress=0)
        bar.display = True
        self._refresh_status()
        self.run_worker(self._warm_job(self.session, warm), group="warm", exclusive=True)

    async def _warm_job(self, session: ChatSession, warm: Callable[..., int]) -> None:
        def progress(done: int, total: int) -> None:
            self.post_message(self.Warming(done, total))

        try:
            cached = await asyncio.wrap_future(self.model_thread.submit(warm, progress))
        except Exception as e:  # noqa: BLE001 - e.g. the conversation no longer fits the context
            cached, why = 0, one_line(e)
            self.notify(f"Could not prefill the chat: {why}", severity="warning", timeout=6)
        if session is not self.session or not self._warm_bar():
            return
        self._warm_bar()[0].display = False
        self.warm_state = f"cache warm · {cached:,} tokens" if cached else ""
        self._refresh_status()

    def _warm_bar(self) -> list[ProgressBar]:
        """The prefill progress bar, or none once the app is closing (the warm-up may still report)."""
        return list(self.query("#warm-progress").results(ProgressBar))

    def on_chat_app_warming(self, message: Warming) -> None:
        if not self.warm_state.startswith("prefilling") or not self._warm_bar():
            return
        self._warm_bar()[0].update(total=message.total, progress=message.done)
        pct = 100 * message.done // max(1, message.total)
        self.warm_state = f"prefilling {pct}% ({message.done:,}/{message.total:,})"
        self._refresh_status()

    def _history(self) -> list[Any]:
        return list(getattr(self.session, "history", ()) or ())

    def _settings_changed(self) -> None:
        if self.keeper is not None and self.session is not None:
            try:
                self.keeper.settings_changed(self.session)
            except Exception as e:  # noqa: BLE001
                self.notify(f"Could not save the chat's settings: {one_line(e)}", severity="error", timeout=6)

    def _place_turn(self, turn: _LiveReply) -> None:
        """Tell the turn's widgets which history messages they show (for edit / regenerate / delete)."""
        hist = self._history()
        n0, n1 = self._turn_start, len(hist)
        start = n0
        if n0 < n1 and _role(hist[n0]) == "user":
            children = list(self.query_one(ChatView).children)
            i = children.index(turn.widget) if turn.widget in children else 0
            if i > 0 and isinstance(children[i - 1], UserMessage):
                children[i - 1].span = (n0, n0 + 1)
            start = n0 + 1
        turn.widget.span = (start, n1) if n1 > start else None

    async def rebuild_view(self, stats: dict[int, dict[str, Any]] | None = None) -> None:
        """Redraw the conversation from the session's harmony messages (after opening a chat or a
        file, or changing the history), with each reply's stats line when they are known."""
        assert self.session is not None
        chat = self.query_one(ChatView)
        await chat.remove_children()
        self.last_answer = ""
        self.selected = None
        history = self._history()
        if not history:
            await chat.mount(Welcome(self.model))
        for kind, start, end in segments(history):
            if kind == "user":
                w = UserMessage(turns(history[start:end])[0][1]["text"])
                w.span = (start, end)
                await chat.mount(w)
                continue
            current = AssistantMessage(self.model)
            current.span = (start, end)
            await chat.mount(current)
            for kind, item in turns(history[start:end]):
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
            await current.finish(reply_summary((stats or {}).get(end - 1)))
        chat.scroll_end(animate=False)

    def action_copy_answer(self) -> None:
        if not self.last_answer:
            unparsed = bool(self.query("UnparsedBlock"))
            self.notify("No answer to copy: the model's output was not in harmony format (shown as unparsed text)."
                        if unparsed else "No answer to copy yet.", severity="warning", timeout=3)  # fmt: skip
            return
        self.copy_text(self.last_answer, "the last answer")

    def copy_text(self, text: str, what: str) -> None:
        """To the clipboard: OSC 52 (iTerm2, kitty, WezTerm, tmux...), plus pbcopy on macOS."""
        self.copy_to_clipboard(text)
        if platform.system() == "Darwin" and shutil.which("pbcopy"):  # Terminal.app ignores OSC 52
            try:
                subprocess.run(["pbcopy"], input=text.encode(), check=False, timeout=2)
            except (OSError, subprocess.SubprocessError):
                pass
        self.notify(f"Copied {what} ({len(text)} characters)", timeout=2)

    # ------------------------------------------------------------------ the chat list

    def action_toggle_chats(self) -> None:
        """ctrl+b: show the chat list (focused) or hide it."""
        if self.store is None:
            self.notify("Chats are not kept in this session (no chat database).", severity="warning", timeout=3)
            return
        chats = self.query_one(ChatList)
        if chats.display:
            chats.display = False
            self.query_one(PromptInput).focus()
            return
        chats.display = True
        self._refresh_chats()
        chats.focus_list()

    def _refresh_chats(self) -> None:
        if self.store is None:
            return
        chats = self.query_one(ChatList)
        if not chats.display:
            return
        q = chats.query_text
        try:
            found = self.store.search(q) if q.strip() else self.store.list()
        except Exception as e:  # noqa: BLE001
            self.notify(f"Could not read the chat list: {one_line(e)}", severity="error", timeout=6)
            return
        chats.show(found, self.keeper.chat_id if self.keeper else None)

    def on_chat_app_stored(self, _message: Stored) -> None:
        self._refresh_chats()

    def on_chat_list_searched(self, _message: ChatList.Searched) -> None:
        self._refresh_chats()

    def on_chat_list_closed(self, _message: ChatList.Closed) -> None:
        self.query_one(ChatList).display = False
        self.query_one(PromptInput).focus()

    async def on_chat_list_picked(self, message: ChatList.Picked) -> None:
        assert self.store is not None and self.keeper is not None
        cid = message.chat_id
        if message.action == "new":
            await self.action_new_chat()
            self.query_one(PromptInput).focus()
        elif message.action == "open" and cid is not None:
            if cid != self.keeper.chat_id and await self.open_stored(cid):
                self.query_one(PromptInput).focus()
            elif cid == self.keeper.chat_id:
                self.query_one(PromptInput).focus()
        elif message.action == "rename" and cid is not None:
            self.push_screen(RenameScreen(self.store.get(cid).title), lambda t: self._rename(cid, t))
        elif message.action == "delete" and cid is not None:
            title = self.store.get(cid).title or "untitled"
            self.push_screen(ConfirmScreen(f"Delete “{title}”? This cannot be undone."),
                             lambda yes: self.run_worker(self._delete_chat(cid)) if yes else None)  # fmt: skip
        elif message.action == "duplicate" and cid is not None:
            self._duplicate(cid)

    def _rename(self, chat_id: int, title: str | None) -> None:
        if title is None or self.store is None:
            return
        try:
            self.store.rename(chat_id, title)
        except Exception as e:  # noqa: BLE001
            self.notify(f"Could not rename: {one_line(e)}", severity="error", timeout=6)
        self._refresh_chats()

    async def _delete_chat(self, chat_id: int) -> None:
        assert self.store is not None and self.keeper is not None
        if chat_id == self.keeper.chat_id and self.busy:
            self.notify("Wait for the answer to end (or press Esc) before deleting this chat.", severity="warning")
            return
        try:
            self.store.delete(chat_id)
        except Exception as e:  # noqa: BLE001
            self.notify(f"Could not delete: {one_line(e)}", severity="error", timeout=6)
            return
        if chat_id == self.keeper.chat_id:
            self.keeper.start_new()
            await self._new_chat_now()
        self._refresh_chats()
        self.query_one(ChatList).focus_list()
        self.notify("Chat deleted", timeout=2)

    def _duplicate(self, chat_id: int) -> None:
        """A copy of the chat; for the current chat, the session moves on in the copy (the cache
        stays warm) and the original stays as it was."""
        assert self.store is not None and self.keeper is not None
        try:
            new = self.store.duplicate(chat_id)
        except Exception as e:  # noqa: BLE001
            self.notify(f"Could not duplicate: {one_line(e)}", severity="error", timeout=6)
            return
        if chat_id == self.keeper.chat_id and not self.busy:
            self.keeper.attach(new, self.store.get(new).messages)
        self._refresh_chats()
        self.notify(f"Duplicated as “{self.store.get(new).title}”", timeout=3)

    # ------------------------------------------------------------------ one message: copy, edit, regenerate, delete

    def _message_widgets(self) -> list[UserMessage | AssistantMessage]:
        return [w for w in self.query_one(ChatView).children
                if isinstance(w, (UserMessage, AssistantMessage)) and not w.has_class("-queued")]  # fmt: skip

    def _selected_widget(self) -> UserMessage | AssistantMessage | None:
        ws = self._message_widgets()
        return ws[self.selected] if self.selected is not None and self.selected < len(ws) else None

    def action_select_message(self, step: int) -> None:
        """↑ in the empty message box selects the last message; ↑ / ↓ move; past the last one (or
        Esc) goes back to the message box."""
        ws = self._message_widgets()
        i = len(ws) - 1 if self.selected is None or isinstance(self.focused, PromptInput) else self.selected + step
        for w in ws:
            w.remove_class("-selected")
        if not ws or i >= len(ws):
            self.leave_selection()
            return
        self.selected = max(0, i)
        ws[self.selected].add_class("-selected")
        ws[self.selected].scroll_visible(animate=False)
        self.query_one(ChatView).focus()
        self.query_one(PromptInput).border_title = "↑↓ messages · enter actions · c copy · e edit · r regenerate · d delete · esc back"

    def leave_selection(self) -> None:
        for w in self._message_widgets():
            w.remove_class("-selected")
        self.selected = None
        self._prompt_hint()
        self.query_one(PromptInput).focus()

    def _message_actions(self, w: UserMessage | AssistantMessage) -> list[tuple[str, str]]:
        user = isinstance(w, UserMessage)
        text = w.text if user else w.answer_text
        acts = [("copy", "Copy the message")] if text else []
        for k, code in enumerate(code_blocks(text)):
            first = (code.strip().splitlines() or [""])[0]
            acts.append((f"code:{k}", f"Copy code block {k + 1}: {first[:40]}"))
        span = getattr(w, "span", None)
        if span is not None and not self.busy:
            if user:
                acts.append(("edit", "Edit and continue from here (the chat as it was is kept as a copy)"))
            elif span[1] == len(self._history()):
                acts.append(("regenerate", "Regenerate this answer"))
            acts.append(("delete", "Delete this message and its answer" if user else "Delete this answer"))
        return acts

    def action_message_actions(self) -> None:
        w = self._selected_widget()
        if w is None:
            return
        acts = self._message_actions(w)
        if not acts:
            self.notify("Nothing to do with this message while the model answers.", timeout=2)
            return
        heading = "Your message" if isinstance(w, UserMessage) else "The answer"
        self.push_screen(MessageActionsScreen(heading, acts), lambda a: self.run_worker(self.message_action(a, w)) if a else None)

    def action_on_message(self, what: str) -> None:
        w = self._selected_widget()
        if w is None:
            return
        if what not in dict(self._message_actions(w)):
            self.notify(f"Cannot {what} this message" + (" while the model answers" if self.busy else ""), timeout=2)
            return
        self.run_worker(self.message_action(what, w))

    async def message_action(self, what: str, w: UserMessage | AssistantMessage) -> None:
        """Do one of `_message_actions` on the message widget `w`."""
        text = w.text if isinstance(w, UserMessage) else w.answer_text
        if what == "copy":
            self.copy_text(text, "the message")
        elif what.startswith("code:"):
            k = int(what.split(":", 1)[1])
            self.copy_text(code_blocks(text)[k], f"code block {k + 1}")
        elif what == "edit":
            self.push_screen(EditMessageScreen(text), lambda new: self.run_worker(self.edit_message(w.span[0], new)) if new else None)
        elif what == "regenerate":
            await self.regenerate()
        elif what == "delete":
            question = "Delete this message and its answer?" if isinstance(w, UserMessage) else "Delete this answer?"
            self.push_screen(ConfirmScreen(question), lambda yes: self.run_worker(self.delete_message(w.span)) if yes else None)

    def _change_history(self, history: list[Any], start: int) -> None:
        assert self.session is not None
        self.session.history = history
        if self.keeper is not None:
            self.keeper.truncated(self.session, start)

    def _stored_stats(self) -> dict[int, dict[str, Any]]:
        if self.store is None or self.keeper is None or self.keeper.chat_id is None:
            return {}
        return self.store.stats(self.keeper.chat_id)

    async def regenerate(self) -> bool:
        """Answer the last message again; the old answer is discarded."""
        if self.session is None or self.busy:
            return False
        hist = self._history()
        segs = segments(hist)
        if not segs or segs[-1][0] != "assistant" or len(segs) < 2:
            self.notify("No answer to regenerate.", severity="warning", timeout=2)
            return False
        start = segs[-1][1]
        self._change_history(hist[:start], start)
        self.leave_selection()
        await self.rebuild_view(self._stored_stats())
        await self._start_turn(None)
        return True

    async def edit_message(self, position: int, text: str) -> bool:
        """Replace your message at `position` with `text` and continue from there. The chat as it
        was is first kept as its own chat ("… (before edit)") in the list."""
        if self.session is None or self.busy:
            return False
        if self.keeper is not None and self.keeper.chat_id is not None:
            info = self.keeper.info()
            self.keeper.branch(title=f"{info.title or 'Chat'} (before edit)")
        hist = self._history()
        self._change_history(hist[:position], position)
        self.leave_selection()
        await self.rebuild_view(self._stored_stats())
        self._refresh_chats()
        await self.send_message(text)
        return True

    async def delete_message(self, span: tuple[int, int]) -> bool:
        """Remove a message (a user message goes with the answer that follows it)."""
        if self.session is None or self.busy:
            return False
        hist = self._history()
        start, end = span
        if end < len(hist) and _role(hist[start]) == "user":
            seg = next((x for x in segments(hist) if x[1] == end and x[0] == "assistant"), None)
            end = seg[2] if seg else end
        self._change_history(hist[:start] + hist[end:], start)
        self.leave_selection()
        await self.rebuild_view(self._stored_stats())
        self.notify("Deleted", timeout=2)
        return True

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
            return self.turn is not None or self.selected is not None
        if action in ("select_message", "message_actions", "on_message"):
            focused = self.focused
            if isinstance(focused, PromptInput):
                return action == "select_message" and parameters[:1] == (-1,) and not focused.text and bool(self._message_widgets())
            return self.selected is not None and isinstance(focused, ChatView)
        return True

    # ------------------------------------------------------------------ built-in tools

    def _attach_approver(self, session: Any) -> None:
        """Each chat asks through the dialog (Always is remembered for that chat only)."""
        if hasattr(session, "approve"):
            session.approve = TuiApprover(self, self.approve_python)

    def builtin_tools(self) -> tuple[str, ...]:
        return tuple(getattr(self.session, "builtin_tools", ()) or ())

    async def set_builtin_tool(self, name: str, on: bool) -> None:
        """Turn the browser or python tool on or off for this chat, from the next message."""
        if self.session is None or not hasattr(self.session, "builtin_tools"):
            return
        names = [n for n in self.builtin_tools() if n != name] + ([name] if on else [])
        order = [n for n in ("browser", "python") if n in names]
        session = self.session
        try:
            await asyncio.wrap_future(self.model_thread.submit(setattr, session, "builtin_tools", order))
        except Exception as e:  # noqa: BLE001 - e.g. a search backend that needs a URL
            self.notify(f"Could not turn {name} on: {one_line(e)}", severity="error", timeout=6)
            return
        self._attach_approver(session)
        state = "on" if on else "off"
        extra = " (every run asks first)" if on and name == "python" and self.approve_python == "ask" else ""
        self.notify(f"{name.capitalize()} tool {state} from the next message{extra}", timeout=3)

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        if self.session is None:
            return
        if hasattr(self.session, "builtin_tools"):
            on = self.builtin_tools()
            for name, what in (("browser", "search and read web pages"), ("python", "run Python code, asking first")):
                verb = "off" if name in on else "on"
                yield SystemCommand(f"{name.capitalize()} tool: turn {verb}", f"Let the model {what}" if verb == "on" else
                                    "From the next message", lambda n=name, v=verb: self.set_builtin_tool(n, v == "on"))  # fmt: skip
        for e in EFFORTS:
            yield SystemCommand(f"Reasoning effort: {e}", f"Applies from the next message (now {self.effort})",
                                lambda e=e: self.set_effort(e))  # fmt: skip
        yield SystemCommand("New chat", "Start over (ctrl+n)", self.action_new_chat)
        yield SystemCommand("Edit instructions", "The developer message / system prompt (ctrl+g)", self.action_edit_instructions)
        yield SystemCommand("Save conversation", "As Markdown and JSON (ctrl+s)", self.action_save)
        yield SystemCommand("Open conversation", "Reopen a saved JSON conversation (ctrl+o)", self.action_open)
        yield SystemCommand("Copy last answer", "To the clipboard (ctrl+l)", self.action_copy_answer)
        if self.store is not None:
            yield SystemCommand("Chats", "The chat list: search, switch, rename, delete, duplicate (ctrl+b)", self.action_toggle_chats)
            if self.keeper is not None and self.keeper.chat_id is not None:
                cid = self.keeper.chat_id
                yield SystemCommand("Rename chat", "Give this chat a title", lambda: self.post_message(ChatList.Picked("rename", cid)))
                yield SystemCommand("Duplicate chat", "Branch: continue in a copy, the original stays", lambda: self._duplicate(cid))
                yield SystemCommand("Delete chat", "Delete this chat (asks first)", lambda: self.post_message(ChatList.Picked("delete", cid)))
        if self.turn is None and len(segments(self._history())) >= 2:
            yield SystemCommand("Regenerate last answer", "Answer the last message again (↑ then r)", lambda: self.run_worker(self.regenerate()))
        yield SystemCommand("Toggle reasoning block", "Expand / collapse the latest reasoning (ctrl+r)", self.action_toggle_reasoning)
        if self.hide_reasoning:
            yield SystemCommand("Show reasoning", "Show the reasoning blocks again", lambda: self.action_set_hide_reasoning(False))
        else:
            yield SystemCommand("Hide reasoning", "Hide reasoning blocks entirely", lambda: self.action_set_hide_reasoning(True))
        if self.turn is not None:
            yield SystemCommand("Stop generation", "Stop the running answer (esc)", self.action_stop)
