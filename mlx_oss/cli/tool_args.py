"""The built-in tool flags shared by `mlx-oss generate` and `mlx-oss chat`, and the terminal approver."""

from __future__ import annotations

import argparse
import os
from typing import Any, Callable, TextIO

from mlx_oss.builtin.browser.search import SEARCH_BACKENDS
from mlx_oss.builtin.python.tool import PYTHON_BACKENDS
from mlx_oss.errors import UsageError
from mlx_oss.events import ToolCall

__all__ = ["add_builtin_tool_args", "builtin_chat_kwargs", "check_builtin_args", "TerminalApprover"]


def add_builtin_tool_args(p: argparse.ArgumentParser, *, ask_default: str = "ask") -> None:
    g = p.add_argument_group("built-in tools (see README 'Built-in tools')")
    g.add_argument("--browser", action="store_true", help="let the model search and read web pages (browser tool)")
    g.add_argument("--search-backend", choices=SEARCH_BACKENDS, default="auto",
                   help="auto: Exa if EXA_API_KEY is set, else You.com if YDC_API_KEY, else SearXNG if SEARXNG_URL, "
                        "else none (open pages by URL only)")  # fmt: skip
    g.add_argument("--searxng-url", metavar="URL", default=None, help="a SearXNG instance (with format=json enabled)")
    g.add_argument("--python", action="store_true",
                   help="let the model run Python (off by default; every call is shown and must be approved)")  # fmt: skip
    g.add_argument("--python-backend", choices=PYTHON_BACKENDS, default="jupyter",
                   help="jupyter: a local kernel in its own process (not a sandbox); docker: a fresh container per call, "
                        "no network, memory/CPU limits")  # fmt: skip
    g.add_argument("--python-timeout", type=float, default=120.0, metavar="S", help="seconds before a run is stopped (default 120)")
    g.add_argument("--python-dir", metavar="DIR", default=None, help="the working folder the code sees as /mnt/data")
    g.add_argument("--approve-python", choices=["ask", "always", "never"], default=ask_default,
                   help="ask before each run (default), run without asking, or refuse every run")  # fmt: skip


def check_builtin_args(a: argparse.Namespace) -> None:
    """UsageError (exit 2) for flag values that cannot work, before anything loads."""
    from mlx_oss.builtin.browser.search import make_search_backend

    if a.browser:
        try:
            make_search_backend(a.search_backend, url=a.searxng_url)
        except ValueError as e:
            raise UsageError(f"--search-backend: {e}") from None
    if a.python and a.python_timeout <= 0:
        raise UsageError("--python-timeout: expected a positive number of seconds")


def builtin_chat_kwargs(a: argparse.Namespace, approve: Callable[[ToolCall], bool] | None) -> dict[str, Any]:
    """`Chat(...)` keyword arguments for the flags (an empty dict when no built-in tool is on)."""
    from mlx_oss.builtin.browser.search import make_search_backend
    from mlx_oss.builtin.python.tool import PythonTool

    check_builtin_args(a)
    names = [n for n in ("browser", "python") if getattr(a, n, False)]
    if not names:
        return {}
    kw: dict[str, Any] = {"builtin_tools": tuple(names)}
    if a.browser:
        kw["browser_backend"] = make_search_backend(a.search_backend, url=a.searxng_url)
    if a.python:
        kw["python_backend"] = PythonTool(a.python_backend, approve=approve, workdir=a.python_dir, timeout_s=a.python_timeout)
        kw["approve"] = approve
    return kw


class TerminalApprover:
    """Shows the code on the terminal and asks Run / Skip / Always (for this chat). Without a terminal
    it refuses: code never runs unasked unless the user chose `--approve-python always`."""

    def __init__(self, mode: str = "ask", err: TextIO | None = None, tty_path: str = "/dev/tty") -> None:
        self.mode = mode
        self.err = err
        self.tty_path = tty_path

    def __call__(self, call: ToolCall) -> bool:
        if self.mode in ("always", "never"):
            return self.mode == "always"
        question = ("\n--- the model wants to run this Python code ---\n" + str(call.arguments).rstrip()
                    + "\n--- [r]un / [s]kip / [a]lways for this chat? ")  # fmt: skip
        try:
            fd = os.open(self.tty_path, os.O_RDWR | getattr(os, "O_NOCTTY", 0))
            try:
                os.write(fd, question.encode())
                answer = os.read(fd, 1024).decode(errors="replace").strip().lower()  # a terminal reads a line
            finally:
                os.close(fd)
        except OSError:
            if self.err is not None:
                print("python call refused: no terminal to ask (use --approve-python always to allow)", file=self.err)
            return False
        if answer in ("a", "always"):
            self.mode = "always"
            return True
        return answer in ("r", "run", "y", "yes")
