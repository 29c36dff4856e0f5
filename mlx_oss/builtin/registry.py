"""A chat's built-in tools: which are on, their system-message sections, and running their calls.

`Chat` holds one `BuiltinTools`; it routes `browser.*` and `python` calls here and gets back the
`ToolResult` event (with the page, citations' source, images). Nothing here raises for a bad call.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

from mlx_oss.builtin.browser import Browser, SearchBackend
from mlx_oss.builtin.python import Approve, PythonTool
from mlx_oss.events import Citation, ToolCall, ToolResult
from mlx_oss.harmony import Message, Role, ToolNamespace

__all__ = ["BUILTIN_TOOLS", "BuiltinTools"]

BUILTIN_TOOLS = ("browser", "python")


def _names(value: Sequence[str] | str | None) -> tuple[str, ...]:
    names = (value,) if isinstance(value, str) else tuple(value or ())
    for n in names:
        if n not in BUILTIN_TOOLS:
            raise ValueError(f"builtin_tools: {n!r} is not a built-in tool (choose from {', '.join(BUILTIN_TOOLS)})")
    return tuple(dict.fromkeys(names))


class BuiltinTools:
    """The built-in tools of one chat. `browser` is a search backend name (`auto`, `exa`, `you`,
    `searxng`, `none`), a SearchBackend or a ready Browser; `python` a backend name (`jupyter`,
    `docker`) or a ready PythonTool. Python only runs calls `approve` says yes to."""

    def __init__(
        self,
        names: Sequence[str] | str | None = (),
        *,
        browser: str | SearchBackend | Browser = "auto",
        python: str | PythonTool = "jupyter",
        approve: Approve | None = None,
        workdir: str | Path | None = None,
        count_tokens: Callable[[str], int] | None = None,
    ) -> None:
        self.names = _names(names)
        self._config = {"browser": browser, "python": python, "approve": approve, "workdir": workdir, "count_tokens": count_tokens}
        self.browser: Browser | None = None
        self.python: PythonTool | None = None
        if "browser" in self.names:
            self.browser = browser if isinstance(browser, Browser) else Browser(browser, count_tokens=count_tokens)
            if count_tokens is not None and not self.browser.counts_exactly:  # a ready browser made without one
                self.browser.count_tokens, self.browser.counts_exactly = count_tokens, True
        if "python" in self.names:
            self.python = python if isinstance(python, PythonTool) else PythonTool(python, workdir=workdir)
            if approve is not None:  # (a ready tool keeps its own approval unless one is given)
                self.python.approve = approve

    def with_names(self, names: Sequence[str] | str | None) -> BuiltinTools:
        """The same chat's tools with another set turned on; tools that stay keep their state (pages,
        the python session); a tool turned off is closed."""
        cfg = dict(self._config, approve=self.approve)
        if self.browser is not None:
            cfg["browser"] = self.browser
        if self.python is not None:
            cfg["python"] = self.python
        new = BuiltinTools(names, **cfg)
        if self.python is not None and new.python is None:
            self.python.close()
        return new

    @property
    def approve(self) -> Approve | None:
        return self.python.approve if self.python else self._config["approve"]

    @approve.setter
    def approve(self, fn: Approve | None) -> None:
        self._config["approve"] = fn
        if self.python is not None:
            self.python.approve = fn

    def namespaces(self) -> tuple[ToolNamespace, ...]:
        """System-message sections, in openai-harmony's order for `with_browser_tool().with_python_tool()`."""
        return tuple(t.namespace() for t in (self.browser, self.python) if t is not None)

    def owner(self, recipient: str) -> str | None:
        """`browser` / `python` when the recipient is that built-in tool's, else None."""
        head = recipient.partition(".")[0]
        return head if head in BUILTIN_TOOLS else None

    def enabled(self, recipient: str) -> bool:
        owner = self.owner(recipient)
        return owner is not None and getattr(self, owner) is not None

    def run(self, call: ToolCall, should_stop: Callable[[], bool] = lambda: False) -> ToolResult:
        """Answer a call to a built-in tool; the ToolResult's content is what the model sees."""
        owner = self.owner(call.recipient)
        if owner == "browser" and self.browser is not None:
            function = call.recipient.split(".", 1)[1] if "." in call.recipient else ""
            a = self.browser.call(function, call.raw)
            page = a.page
            return ToolResult(call.name, a.text, call.id, a.error, tool="browser",
                              url=page.cited_url if page else "", title=page.title if page else "")  # fmt: skip
        if owner == "python" and self.python is not None:
            p = self.python.call(call, should_stop)
            return ToolResult(call.name, p.text, call.id, p.error, tool="python", images=p.images,
                              timed_out=p.timed_out, refused=p.refused)  # fmt: skip
        return ToolResult(call.name, f"Error: the {owner or call.recipient} tool is not enabled in this chat",
                          call.id, True, tool=owner or "functions")  # fmt: skip

    def restore(self, history: Sequence[Message]) -> None:
        """A reopened conversation: the browser's page stack rebuilt from the browser results in
        `history` (what the model was shown), so its cursors and citations resolve as before."""
        if self.browser is not None:
            self.browser.restore(m.text for m in history if m.role is Role.TOOL and (m.name or "").startswith("browser."))

    def citations(self, text: str) -> tuple[Citation, ...]:
        return self.browser.citations(text) if self.browser is not None else ()

    def settings(self) -> dict[str, Any]:
        """What a saved chat keeps: names and backend names; never keys, never the approve callback."""
        return {
            "builtin_tools": list(self.names),
            "browser_backend": self.browser.backend.name if self.browser else "auto",
            "python_backend": self.python.backend if self.python else "jupyter",
        }

    def reset(self) -> None:
        """A new conversation: no pages open, a fresh python session on the next call."""
        if self.browser is not None:
            self.browser.reset()
        self.close()

    def close(self) -> None:
        """Stop the python session's process, if one runs."""
        if self.python is not None:
            self.python.close()
