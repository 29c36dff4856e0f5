"""The server's built-in tools: what the operator allowed, and one browser/python session per conversation.

`ServerTools` is built once per app from the `serve` flags (no module state): the Responses tool types
it accepts (`web_search`, `web_search_preview`, `browser_search` -> the `browser`; `code_interpreter`
-> `python`, only when the server was started with `--allow-python`, which is the operator's approval
of every run), and factories for a fresh `BuiltinTools`. `Sessions` keeps the sessions of stored
responses (bounded; the oldest is closed, stopping its python kernel), so a response continued with
`previous_response_id` keeps its page stack (cursors, citations) and python state.
"""

from __future__ import annotations

import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable

from mlx_oss.builtin import BuiltinTools
from mlx_oss.builtin.browser import Browser, NoSearch
from mlx_oss.builtin.python import PythonTool

__all__ = ["BROWSER_TYPES", "PYTHON_TYPES", "ServerTools", "Session", "Sessions", "allow_all"]

BROWSER_TYPES = ("web_search", "web_search_preview", "browser_search")
PYTHON_TYPES = ("code_interpreter",)


def allow_all(call) -> bool:
    """The approval of a server started with --allow-python: the operator approved every run."""
    return True


@dataclass
class ServerTools:
    """What the built-in tool types of a request get. `browser()` / `python()` make a new session's
    tools; `allow_python` False refuses `code_interpreter` (400). `max_calls` bounds the built-in calls
    of one response (a request's `max_tool_calls` may lower it)."""

    browser: Callable[[], Browser] = field(default=lambda: Browser(NoSearch()))
    python: Callable[[], PythonTool] = field(default=lambda: PythonTool("jupyter", approve=allow_all, keep_files=False))
    allow_python: bool = False
    max_calls: int = 8

    def kind(self, tool_type: str) -> str | None:
        """`browser` / `python` for a built-in Responses tool type, else None."""
        if tool_type in BROWSER_TYPES:
            return "browser"
        if tool_type in PYTHON_TYPES:
            return "python"
        return None

    def types(self) -> tuple[str, ...]:
        return BROWSER_TYPES + (PYTHON_TYPES if self.allow_python else ())

    def session(self, names: tuple[str, ...], previous: Session | None = None) -> Session:
        """The tools `names` for one response: the previous response's session (its pages and python
        state kept) when there is one, else new ones."""
        old = previous.tools if previous is not None else None
        browser = old.browser if old is not None else None
        python = old.python if old is not None else None
        if python is not None and "python" not in names:
            python.close()  # this response does not list code_interpreter: the old kernel goes
            python = None
        if browser is None and "browser" in names:
            browser = self.browser()
        if python is None and "python" in names:
            python = self.python()
        ready = {k: v for k, v in (("browser", browser), ("python", python)) if v is not None}  # the others: unused
        tools = BuiltinTools(names, **ready, approve=allow_all if self.allow_python else None)
        return Session(tools, previous.container_id) if previous is not None else Session(tools)


@dataclass
class Session:
    """One conversation's built-in tools; `container_id` names it in code_interpreter_call items."""

    tools: BuiltinTools
    container_id: str = field(default_factory=lambda: f"cntr_{uuid.uuid4().hex}")


class Sessions:
    """Sessions of stored responses by response id, at most `max_items` (the oldest is closed).
    `take` removes the session it returns: the response continuing it owns it until `put`.
    Thread-safe: the worker puts a session back when its generation ends."""

    def __init__(self, max_items: int = 16) -> None:
        self.max_items = max_items
        self._items: OrderedDict[str, Session] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, response_id: str | None) -> Session | None:
        if response_id is None:
            return None
        with self._lock:
            return self._items.pop(response_id, None)

    def put(self, response_id: str, session: Session) -> None:
        with self._lock:
            self._items[response_id] = session
            old = [self._items.popitem(last=False)[1] for _ in range(max(0, len(self._items) - self.max_items))]
        for s in old:
            s.tools.close()

    def __len__(self) -> int:
        return len(self._items)

    def close(self) -> None:
        """Stop every kept python session (server shutdown)."""
        with self._lock:
            items, self._items = list(self._items.values()), OrderedDict()
        for s in items:
            s.tools.close()
