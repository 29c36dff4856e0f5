"""The chat list (a sidebar: ctrl+b) and the small dialogs around stored chats and messages:
rename, confirm a deletion, the actions on one message, edit a message.

The widgets only say what the user asked for (messages to the app); the app does it against the
store and the session.
"""

from __future__ import annotations

from datetime import datetime
from typing import Iterable

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, OptionList, Static, TextArea
from textual.widgets.option_list import Option

from mlx_oss.tui.storage import ChatInfo

__all__ = ["ChatList", "ConfirmScreen", "EditMessageScreen", "MessageActionsScreen", "RenameScreen", "code_blocks", "when"]


def when(ts: float, now: datetime | None = None) -> str:
    """A chat's time in the list: 14:05 today, `yesterday`, `Mon 14:05` this week, else the date."""
    t, now = datetime.fromtimestamp(ts), now or datetime.now()
    days = (now.date() - t.date()).days
    if days <= 0:
        return t.strftime("%H:%M")
    if days == 1:
        return "yesterday"
    if days < 7:
        return t.strftime("%a %H:%M")
    return t.strftime("%Y-%m-%d")


def code_blocks(markdown: str) -> list[str]:
    """The fenced and indented code blocks of a Markdown text, in order (markdown-it, as Textual renders)."""
    from markdown_it import MarkdownIt

    return [t.content.rstrip("\n") for t in MarkdownIt("commonmark").parse(markdown) if t.type in ("fence", "code_block")]


class ChatList(Vertical):
    """Stored chats, newest first, with a search box. Enter opens; n new, r rename, d delete,
    b duplicate (branch), / search."""

    BINDINGS = [
        Binding("n", "new", "New"),
        Binding("r,f2", "rename", "Rename"),
        Binding("d,delete", "delete", "Delete"),
        Binding("b", "duplicate", "Duplicate"),
        Binding("slash", "search", "Search", show=False),
        Binding("escape", "close", "Close", show=False),
    ]

    class Picked(Message):
        """The user asked for something on a chat (`action`: open, rename, delete, duplicate) or
        for a new chat (`chat_id` None)."""

        def __init__(self, action: str, chat_id: int | None) -> None:
            super().__init__()
            self.action = action
            self.chat_id = chat_id

    class Searched(Message):
        def __init__(self, query: str) -> None:
            super().__init__()
            self.query = query

    class Closed(Message):
        """Esc in the list: back to the message box."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.chats: list[ChatInfo] = []
        self.current: int | None = None

    def compose(self) -> ComposeResult:
        yield Label("Chats", classes="chatlist-title")
        yield Input(placeholder="search chats…", id="chat-search")
        yield OptionList(id="chat-options")

    @property
    def query_text(self) -> str:
        return self.query_one("#chat-search", Input).value

    def show(self, chats: Iterable[ChatInfo], current: int | None) -> None:
        """Fill the list (keeps the highlighted chat when it is still there)."""
        options = self.query_one("#chat-options", OptionList)
        keep = self.highlighted
        self.chats, self.current = list(chats), current
        options.clear_options()
        for c in self.chats:
            t = Text()
            t.append("● " if c.id == current else "  ", style="bold green")
            t.append(c.title or "(untitled)", style="bold" if c.id == current else "")
            t.append(f"\n  {when(c.updated_at)} · {c.messages} msg", style="dim")
            if c.snippet:
                t.append("\n  " + c.snippet[:80], style="italic dim")
            options.add_option(Option(t, id=str(c.id)))
        if not self.chats:
            options.add_option(Option(Text("no chats match" if self.query_text.strip() else "no chats yet", style="dim"), disabled=True))
            return
        ids = [c.id for c in self.chats]
        target = keep if keep in ids else (current if current in ids else ids[0])
        options.highlighted = ids.index(target)

    @property
    def highlighted(self) -> int | None:
        options = self.query_one("#chat-options", OptionList)
        i = options.highlighted
        return self.chats[i].id if i is not None and 0 <= i < len(self.chats) else None

    def focus_list(self) -> None:
        self.query_one("#chat-options", OptionList).focus()

    @on(Input.Changed, "#chat-search")
    def _search(self, event: Input.Changed) -> None:
        self.post_message(self.Searched(event.value))

    @on(Input.Submitted, "#chat-search")
    def _search_done(self) -> None:
        self.focus_list()

    @on(OptionList.OptionSelected, "#chat-options")
    def _open(self, event: OptionList.OptionSelected) -> None:
        if event.option.id:
            self.post_message(self.Picked("open", int(event.option.id)))

    def _on_highlighted(self, action: str) -> None:
        if self.highlighted is not None:
            self.post_message(self.Picked(action, self.highlighted))

    def action_new(self) -> None:
        self.post_message(self.Picked("new", None))

    def action_rename(self) -> None:
        self._on_highlighted("rename")

    def action_delete(self) -> None:
        self._on_highlighted("delete")

    def action_duplicate(self) -> None:
        self._on_highlighted("duplicate")

    def action_search(self) -> None:
        self.query_one("#chat-search", Input).focus()

    def action_close(self) -> None:
        self.post_message(self.Closed())


class RenameScreen(ModalScreen[str | None]):
    """A new title for a chat."""

    BINDINGS = [Binding("escape", "cancel", "Cancel", priority=True)]

    def __init__(self, title: str) -> None:
        super().__init__()
        self.title_text = title

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog", id="rename-dialog"):
            yield Label("Rename the chat", classes="dialog-title")
            yield Input(self.title_text, id="rename-input")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Rename (enter)", variant="primary", id="rename")
                yield Button("Cancel (esc)", id="cancel")

    def on_mount(self) -> None:
        self.query_one(Input).focus()

    @on(Input.Submitted)
    @on(Button.Pressed, "#rename")
    def _apply(self) -> None:
        value = " ".join(self.query_one(Input).value.split())
        if value:
            self.dismiss(value)

    @on(Button.Pressed, "#cancel")
    def action_cancel(self) -> None:
        self.dismiss(None)


class ConfirmScreen(ModalScreen[bool]):
    """Yes / no before something that cannot be undone (y or enter confirms, n or esc cancels)."""

    BINDINGS = [
        Binding("y", "answer(True)", "Yes", priority=True),
        Binding("n,escape", "answer(False)", "No", priority=True),
    ]

    def __init__(self, question: str, yes: str = "Delete") -> None:
        super().__init__()
        self.question = question
        self.yes = yes

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog", id="confirm-dialog"):
            yield Label(self.question, classes="dialog-title")
            with Horizontal(classes="dialog-buttons"):
                yield Button(f"{self.yes} (y)", variant="error", id="yes")
                yield Button("Cancel (n / esc)", id="no")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


class MessageActionsScreen(ModalScreen[str | None]):
    """What to do with one message: copy it or one of its code blocks, edit, regenerate, delete.
    Dismisses with the action id (`copy`, `code:N`, `edit`, `regenerate`, `delete`)."""

    BINDINGS = [Binding("escape", "cancel", "Cancel", priority=True)]

    def __init__(self, heading: str, actions: list[tuple[str, str]]) -> None:
        super().__init__()
        self.heading = heading
        self.actions = actions

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog", id="actions-dialog"):
            yield Label(self.heading, classes="dialog-title")
            yield OptionList(*[Option(label, id=key) for key, label in self.actions], id="actions")

    def on_mount(self) -> None:
        self.query_one(OptionList).focus()

    @on(OptionList.OptionSelected)
    def _picked(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(event.option.id)

    def action_cancel(self) -> None:
        self.dismiss(None)


class EditMessageScreen(ModalScreen[str | None]):
    """Edit one of your messages; ctrl+s sends the new text from that point, Esc cancels."""

    BINDINGS = [
        Binding("ctrl+s", "apply", "Send", priority=True),
        Binding("escape", "cancel", "Cancel", priority=True),
    ]

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog", id="edit-dialog"):
            yield Label("Edit your message", classes="dialog-title")
            yield Static(Text("ctrl+s sends it and the chat continues from here. The chat as it was stays "
                              "in the list as \"<title> (before edit)\".", style="dim"))  # fmt: skip
            yield TextArea(self.text, id="edit-text", soft_wrap=True)
            with Horizontal(classes="dialog-buttons"):
                yield Button("Send (ctrl+s)", variant="primary", id="apply")
                yield Button("Cancel (esc)", id="cancel")

    def on_mount(self) -> None:
        self.query_one(TextArea).focus()

    @on(Button.Pressed, "#apply")
    def action_apply(self) -> None:
        text = self.query_one(TextArea).text
        if text.strip():
            self.dismiss(text)

    @on(Button.Pressed, "#cancel")
    def action_cancel(self) -> None:
        self.dismiss(None)

