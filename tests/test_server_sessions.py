"""The server's built-in tool settings and sessions (`mlx_oss/server/builtin.py`) without a server: which
Responses tool types are built-in, what a response's session is made of (a continued one keeps its pages,
python state and container id; one that drops code_interpreter stops its kernel), and `Sessions` filled
past its bound (which are closed, which stay). test_server_builtin.py covers the same through HTTP."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlx_oss.builtin.browser import Browser, NoSearch
from mlx_oss.builtin.python import PythonTool
from mlx_oss.server.builtin import BROWSER_TYPES, PYTHON_TYPES, ServerTools, Session, Sessions, allow_all


class _Tools:
    """Stands in for a session's BuiltinTools: records `close()`."""

    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True


class _Python(PythonTool):
    """A PythonTool that starts no kernel: counts `close()`."""

    def __init__(self) -> None:
        self.closed = 0
        self.approve = None

    def close(self) -> None:
        self.closed += 1


def _factories():
    made: dict[str, list] = {"browser": [], "python": []}

    def browser():
        made["browser"].append(Browser(NoSearch()))
        return made["browser"][-1]

    def python():
        made["python"].append(_Python())
        return made["python"][-1]

    return made, browser, python


@pytest.mark.parametrize("tool_type, kind", [*((t, "browser") for t in BROWSER_TYPES), ("code_interpreter", "python"),
                                             ("function", None), ("web_search_2025", None), ("", None), ("python", None)])  # fmt: skip
def test_kind_names_the_built_in_tool_of_a_responses_type(tool_type, kind):
    assert ServerTools().kind(tool_type) == kind
    assert BROWSER_TYPES == ("web_search", "web_search_preview", "browser_search") and PYTHON_TYPES == ("code_interpreter",)


def test_code_interpreter_is_a_type_only_with_allow_python():
    assert ServerTools().types() == BROWSER_TYPES
    assert ServerTools(allow_python=True).types() == BROWSER_TYPES + PYTHON_TYPES


def test_the_defaults_search_nothing_run_python_approved_and_bound_the_calls():
    tools = ServerTools()
    assert tools.max_calls == 8 and not tools.allow_python
    browser = tools.browser()
    assert isinstance(browser.backend, NoSearch) and tools.browser() is not browser  # one per session
    assert allow_all(object()) is True


def test_a_new_session_gets_the_tools_it_names_from_the_factories():
    made, browser, python = _factories()
    tools = ServerTools(browser=browser, python=python, allow_python=True)
    s = tools.session(("browser",))
    assert s.tools.names == ("browser",) and s.tools.browser is made["browser"][0] and s.tools.python is None
    assert made["python"] == []  # no kernel for a response that does not list code_interpreter
    both = tools.session(("browser", "python"))
    assert both.tools.browser is made["browser"][1] and both.tools.python is made["python"][0]
    assert both.tools.approve is allow_all  # --allow-python: the operator approved every run
    assert s.container_id.startswith("cntr_") and len(s.container_id) == 37 and s.container_id != both.container_id
    int(s.container_id[5:], 16)


def test_without_allow_python_a_session_approves_nothing():
    made, browser, python = _factories()
    s = ServerTools(browser=browser, python=python).session(("python",))
    assert s.tools.python is made["python"][0] and s.tools.approve is None


def test_a_continued_session_keeps_its_pages_python_and_container():
    made, browser, python = _factories()
    tools = ServerTools(browser=browser, python=python, allow_python=True)
    first = tools.session(("browser", "python"))
    second = tools.session(("browser", "python"), previous=first)
    assert second.tools.browser is first.tools.browser and second.tools.python is first.tools.python
    assert second.container_id == first.container_id and len(made["browser"]) == len(made["python"]) == 1
    assert made["python"][0].closed == 0


def test_a_continuation_adds_the_tools_the_first_response_did_not_have():
    made, browser, python = _factories()
    tools = ServerTools(browser=browser, python=python, allow_python=True)
    first = tools.session(("python",))
    second = tools.session(("browser", "python"), previous=first)
    assert second.tools.python is first.tools.python and second.tools.browser is made["browser"][0]
    first = tools.session(("browser",))
    third = tools.session(("browser", "python"), previous=first)
    assert third.tools.browser is first.tools.browser and third.tools.python is made["python"][-1]
    assert len(made["python"]) == 2


def test_a_continued_response_without_code_interpreter_closes_the_kernel_it_had():
    """A continuation that no longer lists code_interpreter stops that session's kernel (no process left
    behind) and keeps its browser pages."""
    made, browser, python = _factories()
    tools = ServerTools(browser=browser, python=python, allow_python=True)
    first = tools.session(("browser", "python"))
    second = tools.session(("browser",), previous=first)
    assert made["python"][0].closed == 1 and second.tools.python is None and second.tools.browser is first.tools.browser
    third = tools.session(("browser", "python"), previous=second)  # asked again: a fresh kernel
    assert third.tools.python is made["python"][1] and made["python"][1].closed == 0


def test_sessions_past_their_limit_close_the_oldest():
    """`Sessions` filled past `max_items`: the oldest put is closed (its kernel stopped) and gone, the newest
    stay; a session taken and put back under the next response's id counts as new."""
    sessions = Sessions(max_items=2)
    made = {rid: Session(_Tools()) for rid in ("r1", "r2", "r3")}
    for rid, session in made.items():
        sessions.put(rid, session)
    assert len(sessions) == 2 and [made[r].tools.closed for r in ("r1", "r2", "r3")] == [True, False, False]
    assert sessions.take("r1") is None
    sessions.put("r4", sessions.take("r2"))  # r2's conversation continued by r4
    sessions.put("r5", Session(_Tools()))
    assert made["r3"].tools.closed and not made["r2"].tools.closed
    assert sessions.take("r3") is None and sessions.take("r4") is made["r2"] and len(sessions) == 1


def test_several_past_the_limit_at_once_and_a_limit_of_zero():
    sessions = Sessions(max_items=3)
    kept = [Session(_Tools()) for _ in range(3)]
    for i, s in enumerate(kept):
        sessions.put(f"r{i}", s)
    sessions.max_items = 1  # every extra one goes at the next put, oldest first
    last = Session(_Tools())
    sessions.put("r9", last)
    assert [s.tools.closed for s in kept] == [True, True, True] and len(sessions) == 1 and not last.tools.closed
    none = Sessions(max_items=0)
    s = Session(_Tools())
    none.put("r", s)
    assert s.tools.closed and len(none) == 0


def test_take_of_no_id_or_an_unknown_one_is_none_and_take_removes():
    sessions = Sessions()
    s = Session(_Tools())
    sessions.put("r1", s)
    assert sessions.take(None) is None and sessions.take("r2") is None and len(sessions) == 1
    assert sessions.take("r1") is s and sessions.take("r1") is None and not s.tools.closed


def test_close_stops_every_kept_session_and_forgets_them():
    sessions = Sessions()
    kept = [Session(_Tools()) for _ in range(3)]
    for i, s in enumerate(kept):
        sessions.put(f"r{i}", s)
    sessions.close()
    assert all(s.tools.closed for s in kept) and len(sessions) == 0 and sessions.take("r0") is None


def test_the_server_keeps_as_many_sessions_as_its_docs_say():
    """Each kept session may hold a python kernel: the server keeps the 16 newest (docs/SERVER.md)."""
    docs = (Path(__file__).resolve().parents[1] / "docs" / "SERVER.md").read_text()
    assert Sessions().max_items == 16 and "is kept, at most 16 (the oldest is closed, its kernel stopped)" in " ".join(docs.split())
