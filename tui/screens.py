"""Screens around the chat: model loading (with progress and actionable errors), the
instructions editor, and the save / open dialogs."""

from __future__ import annotations

import errno
import os
import re
import traceback
from pathlib import Path

from rich.console import Group
from rich.table import Table
from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Center, Horizontal, Vertical, VerticalScroll
from textual.events import Print
from textual.message import Message
from textual.screen import ModalScreen, Screen
from textual.widgets import Button, Input, Label, OptionList, ProgressBar, Static, TextArea
from textual.widgets.option_list import Option

from mlx_oss.errors import UserError

__all__ = [
    "InstructionsScreen",
    "LoadingScreen",
    "OpenScreen",
    "SaveScreen",
    "error_hints",
    "one_line",
    "progress_from_output",
]

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\a]*\a")
_PERCENT = re.compile(r"(\d{1,3}(?:\.\d+)?)%")


def one_line(e: BaseException) -> str:
    """`Type: first line` for errors shown to the user (ConvertError messages are already one line)."""
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    if isinstance(e, UserError) and msg:
        return msg
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


def progress_from_output(buffer: str) -> tuple[str, float | None]:
    """The progress line a download/convert bar last drew into captured stderr, and its percentage.

    Bars redraw with `\\r` (and erase with ANSI codes); the last non-empty segment is what a terminal
    would be showing now.
    """
    clean = _ANSI.sub("", buffer)
    segments = [s.strip() for s in re.split(r"[\r\n]", clean) if s.strip()]
    if not segments:
        return "", None
    line = segments[-1]
    m = _PERCENT.search(line)
    pct = min(100.0, float(m.group(1))) if m else None
    return line, pct


def error_hints(e: BaseException, model: str) -> list[str]:
    """What the user can do about a failure to find, download, convert or load `model`: hints that fit
    the cause (a damaged local folder never gets "check your internet connection")."""
    from mlx_oss.convert.hub import is_repo_id
    from mlx_oss.convert.manifest import reconvert_hint

    msg = str(e)
    low = msg.lower()
    hints: list[str] = []
    if "huggingface_hub" in low or "mlx-oss[hub]" in low:
        hints.append("Install the Hub extra: pip install 'mlx-oss[hub]'")
    if is_repo_id(model) and ("download" in low or "hugging face hub" in low):
        hints += [
            "Check your internet connection; interrupted downloads resume when you start again.",
            f"Check the model id ({model}); for gated or private models run: huggingface-cli login",
        ]
    if "manifest.json" in low or "--verify" in low or "safetensors" in low:
        hints += [
            f"The model folder is damaged or incomplete: `mlx-oss info --verify {model}` checks every file.",
            f"To repair it, {reconvert_hint(Path(model).expanduser())}.",
        ]
    if "cannot chat" in low:
        hints.append("This model's vocabulary is smaller than the harmony tokenizer's (a test preset?); "
                     "chat needs the full one, e.g. `python -m mlx_oss.convert.synthetic DIR --preset tiny-chat`.")  # fmt: skip
    if "no such file" in low or "no such local folder" in low or "not a gpt-oss checkpoint" in low or "expected a checkpoint folder" in low:
        hints += [
            f"Check the path: {model}",
            "--model takes a Hub id (openai/gpt-oss-20b), a checkpoint folder (Hugging Face or OpenAI "
            "original/ layout) or a folder made by `mlx-oss convert`.",
        ]
    nospace = isinstance(e, OSError) and e.errno == errno.ENOSPC
    if nospace or "no space" in low or "disk full" in low:
        hints.append("Free disk space (gpt-oss-20b needs ~13 GB for the download and ~13 GB converted), "
                     "or set MLX_OSS_HOME to a folder on a larger disk.")  # fmt: skip
    if isinstance(e, MemoryError) or "out of memory" in low or "insufficient memory" in low:
        hints.append("Not enough memory: close other apps, or try the smaller openai/gpt-oss-20b.")
    if isinstance(e, PermissionError) or "permission denied" in low or "read-only" in low:
        hints.append("Check that you can write to the cache folder (MLX_OSS_HOME, default ~/.cache/mlx-oss).")
    if not hints or not isinstance(e, UserError):
        hints.append("Run again with MLX_OSS_DEBUG=1 to see the full traceback, and `mlx-oss info "
                     f"{model}` to check the model files.")  # fmt: skip
    return list(dict.fromkeys(hints))


class LoadingScreen(Screen):
    """Shown while the model is resolved (download, conversion) and loaded; becomes an error
    report with hints (r retries, q quits) when that fails."""

    BINDINGS = [
        Binding("q", "quit_app", "Quit"),
        Binding("r", "retry", "Retry", show=False),
    ]

    class Retry(Message):
        """The user asked to try loading again."""

    class Status(Message):
        """A stage message from the loader (posted from the model thread)."""

        def __init__(self, text: str) -> None:
            super().__init__()
            self.text = text

    def __init__(self, model: str, source: str | None = None) -> None:
        super().__init__(id="loading")
        self.model = model
        self.source = source or model
        self.failed: BaseException | None = None
        self.error_text = ""  # plain text of the error panel
        self.stages: list[str] = []
        self._captured = ""

    def compose(self) -> ComposeResult:
        with Center(id="loading-box"):
            with Vertical(id="loading-panel"):
                yield Label(Text.assemble(("mlx-oss chat", "bold"), "  ·  ", (self.model, "bold cyan")), id="loading-title")
                yield Static("", id="loading-stages")
                yield ProgressBar(total=None, show_eta=False, id="loading-progress")
                yield Static("", id="loading-line")
                yield Static("", id="loading-error")
                yield Static(Text("q quit", style="dim"), id="loading-keys")

    def on_mount(self) -> None:
        # The app already captures prints for this screen (from before the loader started).
        self.app.begin_capture_print(self, stdout=True, stderr=True)
        if not self.stages:
            self.stages.append(f"Resolving {self.source}")
        self._render_stages()
        self._render_progress()

    def on_unmount(self) -> None:
        try:
            self.app.end_capture_print(self)
        except KeyError:
            pass

    def set_status(self, text: str) -> None:
        """A new stage: earlier stages get a check mark, the progress bar restarts."""
        self.stages.append(text[:1].upper() + text[1:])
        self._captured = ""
        if self.is_mounted:
            self._render_stages()
            self.query_one("#loading-line", Static).update("")
            self.query_one("#loading-progress", ProgressBar).update(total=None, progress=0)

    def _render_stages(self) -> None:
        lines = Text()
        for i, s in enumerate(self.stages):
            done = i < len(self.stages) - 1
            if done:
                lines.append("✓ " + s + "\n", style="dim")
            elif self.failed is not None:
                lines.append("✗ " + s + "\n", style="bold red")
            else:
                lines.append("… " + s + "\n", style="bold")
        self.query_one("#loading-stages", Static).update(lines)

    def _render_progress(self) -> None:
        line, pct = progress_from_output(self._captured)
        if line:
            self.query_one("#loading-line", Static).update(Text(line[-200:], style="dim"))
        if pct is not None:
            self.query_one("#loading-progress", ProgressBar).update(total=100, progress=pct)

    def on_loading_screen_status(self, message: Status) -> None:
        self.set_status(message.text)

    def on_print(self, event: Print) -> None:
        """Progress bars of the download/converter arrive here as captured stderr."""
        if self.failed is not None:
            return
        self._captured = (self._captured + event.text)[-4000:]
        if self.is_mounted:
            self._render_progress()

    def show_error(self, e: BaseException) -> None:
        """Replace the progress with what failed and what to do about it."""
        self.failed = e
        self._render_stages()
        self.query_one("#loading-progress", ProgressBar).display = False
        self.query_one("#loading-line", Static).display = False
        head = Text()
        head.append("Could not open the model\n", style="bold red")
        head.append(one_line(e) + "\n\n")
        head.append("What to do:", style="bold")
        hints = Table.grid(padding=(0, 1))
        hints.add_column(width=3, justify="right")
        hints.add_column(ratio=1)
        for h in error_hints(e, self.source):
            hints.add_row("•", h)
        self.error_text = head.plain + "".join(f"\n • {h}" for h in error_hints(e, self.source))
        parts: list = [head, hints]
        if os.environ.get("MLX_OSS_DEBUG"):
            parts.append(Text("\n" + "".join(traceback.format_exception(e)), style="dim"))
        self.query_one("#loading-error", Static).update(Group(*parts))
        self.query_one("#loading-keys", Static).update(Text("r retry   q quit", style="bold"))

    def action_quit_app(self) -> None:
        self.app.exit(return_code=1 if self.failed is not None else 0)

    def action_retry(self) -> None:
        if self.failed is None:
            return
        self.failed = None
        self.stages.clear()
        self.query_one("#loading-progress", ProgressBar).display = True
        self.query_one("#loading-line", Static).display = True
        self.query_one("#loading-error", Static).update("")
        self.query_one("#loading-keys", Static).update(Text("q quit", style="dim"))
        self.set_status(f"Resolving {self.source}")
        self.post_message(self.Retry())


class InstructionsScreen(ModalScreen[str | None]):
    """Edit the developer instructions (the "system prompt"); they apply from the next turn."""

    BINDINGS = [
        Binding("ctrl+s", "apply", "Apply", priority=True),
        Binding("escape", "cancel", "Cancel", priority=True),
    ]

    def __init__(self, current: str | None) -> None:
        super().__init__()
        self.current = current or ""

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog", id="instructions-dialog"):
            yield Label("Instructions for the model (developer message)", classes="dialog-title")
            yield Static(Text("Applied from the next message. Empty: no instructions.", style="dim"))
            yield TextArea(self.current, id="instructions-text", soft_wrap=True)
            with Horizontal(classes="dialog-buttons"):
                yield Button("Apply (ctrl+s)", variant="primary", id="apply")
                yield Button("Cancel (esc)", id="cancel")

    def on_mount(self) -> None:
        self.query_one(TextArea).focus()

    @on(Button.Pressed, "#apply")
    def action_apply(self) -> None:
        self.dismiss(self.query_one(TextArea).text)

    @on(Button.Pressed, "#cancel")
    def action_cancel(self) -> None:
        self.dismiss(None)


class SaveScreen(ModalScreen[Path | None]):
    """Ask where to save: one base name gives NAME.md (to read) and NAME.json (to reopen)."""

    BINDINGS = [Binding("escape", "cancel", "Cancel", priority=True)]

    def __init__(self, default: Path) -> None:
        super().__init__()
        self.default = default

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog", id="save-dialog"):
            yield Label("Save the conversation", classes="dialog-title")
            yield Static(Text("Writes NAME.md (readable) and NAME.json (reopen with ctrl+o).", style="dim"))
            yield Input(str(self.default), id="save-path")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Save (enter)", variant="primary", id="save")
                yield Button("Cancel (esc)", id="cancel")

    def on_mount(self) -> None:
        self.query_one(Input).focus()

    @on(Input.Submitted)
    @on(Button.Pressed, "#save")
    def _save(self) -> None:
        value = self.query_one(Input).value.strip()
        if value:
            path = Path(value).expanduser()
            if path.suffix in (".md", ".json"):
                path = path.with_suffix("")
            self.dismiss(path)

    @on(Button.Pressed, "#cancel")
    def action_cancel(self) -> None:
        self.dismiss(None)


class OpenScreen(ModalScreen[Path | None]):
    """Pick a saved JSON conversation: recent ones from the chats folder, or type a path."""

    BINDINGS = [Binding("escape", "cancel", "Cancel", priority=True)]

    def __init__(self, folder: Path) -> None:
        super().__init__()
        self.folder = folder

    def _recent(self) -> list[Path]:
        try:
            files = [p for p in self.folder.glob("*.json") if p.is_file()]
        except OSError:
            return []
        return sorted(files, key=lambda p: p.stat().st_mtime, reverse=True)[:50]

    def compose(self) -> ComposeResult:
        recent = self._recent()
        with Vertical(classes="dialog", id="open-dialog"):
            yield Label("Open a saved conversation", classes="dialog-title")
            yield Input(placeholder=f"path to a .json file (saved with ctrl+s), e.g. {self.folder}/chat.json", id="open-path")
            if recent:
                yield Static(Text(f"Recent in {self.folder}:", style="dim"))
                with VerticalScroll(id="open-recent-box"):
                    yield OptionList(*[Option(p.name, id=str(p)) for p in recent], id="open-recent")
            else:
                yield Static(Text(f"No saved conversations in {self.folder} yet.", style="dim"))
            with Horizontal(classes="dialog-buttons"):
                yield Button("Open (enter)", variant="primary", id="open")
                yield Button("Cancel (esc)", id="cancel")

    def on_mount(self) -> None:
        self.query_one(Input).focus()

    @on(OptionList.OptionSelected)
    def _picked(self, event: OptionList.OptionSelected) -> None:
        if event.option.id:
            self.dismiss(Path(event.option.id))

    @on(Input.Submitted)
    @on(Button.Pressed, "#open")
    def _open(self) -> None:
        value = self.query_one(Input).value.strip()
        if value:
            self.dismiss(Path(value).expanduser())
            return
        options = self.query(OptionList)
        if options:
            ol = options.first()
            if ol.highlighted is not None:
                opt = ol.get_option_at_index(ol.highlighted)
                if opt.id:
                    self.dismiss(Path(opt.id))

    @on(Button.Pressed, "#cancel")
    def action_cancel(self) -> None:
        self.dismiss(None)
