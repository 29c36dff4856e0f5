"""Asking the user before the python tool runs code: the Run / Skip / Always dialog and the approver
the app gives each chat (it is called on the engine thread and waits for the dialog's answer)."""

from __future__ import annotations

from concurrent.futures import Future, TimeoutError as FutureTimeout
from typing import Any

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Label, Static, TextArea

__all__ = ["ApprovalScreen", "TuiApprover"]


class ApprovalScreen(ModalScreen[str]):
    """Shows the code the model wants to run; dismisses with `run`, `skip` or `always`."""

    BINDINGS = [
        Binding("r", "answer('run')", "Run", priority=True),
        Binding("s", "answer('skip')", "Skip", priority=True),
        Binding("escape", "answer('skip')", "Skip", priority=True),
        Binding("a", "answer('always')", "Always", priority=True),
    ]

    def __init__(self, code: str, where: str = "") -> None:
        super().__init__()
        self.code = code
        self.where = where

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog", id="approval-dialog"):
            yield Label("The model wants to run this Python code", classes="dialog-title")
            note = "It runs in a separate process" + (f", in {self.where}" if self.where else "") + "."
            yield Static(Text(note, style="dim"))
            yield TextArea(self.code, id="approval-code", read_only=True, language=None, soft_wrap=True)
            with Horizontal(classes="dialog-buttons"):
                yield Button("Run (r)", variant="primary", id="run")
                yield Button("Skip (s)", id="skip")
                yield Button("Always for this chat (a)", variant="warning", id="always")

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        self.action_answer(event.button.id or "skip")

    def action_answer(self, answer: str) -> None:
        self.dismiss(answer)


class TuiApprover:
    """`approve` for one chat: `ask` shows the dialog (and remembers Always), `always` / `never` decide
    without asking. Refuses when the app is gone, so a closed app never leaves code waiting to run."""

    def __init__(self, app: Any, mode: str = "ask") -> None:
        self.app = app
        self.mode = mode

    def __call__(self, call: Any) -> bool:
        if self.mode in ("always", "never"):
            return self.mode == "always"
        answer: Future[str] = Future()
        session = getattr(self.app, "session", None)
        workdir = getattr(getattr(getattr(session, "builtins", None), "python", None), "workdir", "")

        def show() -> None:
            self.app.push_screen(ApprovalScreen(str(call.arguments), str(workdir)), callback=answer.set_result)

        try:
            self.app.call_from_thread(show)
        except RuntimeError:  # the app is not running
            return False
        while True:
            try:
                result = answer.result(timeout=0.5)
                break
            except FutureTimeout:
                if not self.app.is_running:
                    return False
        if result == "always":
            self.mode = "always"
        return result in ("run", "always")
