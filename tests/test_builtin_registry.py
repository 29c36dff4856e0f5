"""`BuiltinTools` (mlx_oss/builtin/registry.py) alone: which tools are on, how a call is routed and
what its ToolResult holds, the saved settings, a reopened chat's page stack, turning tools on and off.

No model, no network, no kernel: a search backend with one fixed result, and stand-ins for the browser's
and the python tool's `call` that record what they were asked and answer what the test says (ms per test).
"""

from __future__ import annotations

import pytest

from mlx_oss.builtin.browser import Browser, SearchResult, make_search_backend
from mlx_oss.builtin.browser.page import Page
from mlx_oss.builtin.browser.tool import BrowserAnswer
from mlx_oss.builtin.python import PythonTool
from mlx_oss.builtin.python.tool import PythonAnswer
from mlx_oss.builtin.registry import BUILTIN_TOOLS, BuiltinTools
from mlx_oss.events import ToolCall, ToolResult
from mlx_oss.harmony import Message, Role


class OneResult:
    """A search backend with one fixed result (nothing leaves the machine)."""

    name = "one"

    def search(self, query, topn, client):
        return [SearchResult("A page", "https://a.example/")]


class RecordingBrowser(Browser):
    """A browser whose calls answer `answer` and are recorded as (function, raw arguments)."""

    def __init__(self, answer: BrowserAnswer) -> None:
        super().__init__(OneResult())
        self.answer, self.calls = answer, []

    def call(self, function, raw_arguments):
        self.calls.append((function, raw_arguments))
        return self.answer


class RecordingPython(PythonTool):
    """A python tool (no session is ever started) whose calls answer `answer` and are recorded as
    (call, should_stop); counts its closes."""

    def __init__(self, workdir, answer: PythonAnswer = PythonAnswer("ran"), approve=None) -> None:
        super().__init__(approve=approve, workdir=workdir)
        self.answer, self.calls, self.closed = answer, [], 0

    def call(self, call, should_stop=lambda: False):
        self.calls.append((call, should_stop))
        return self.answer

    def close(self) -> None:
        self.closed += 1


def yes(call) -> bool:
    return True


def no(call) -> bool:
    return False


def browser_call(recipient: str, raw: str = '{"query": "q"}', id: str = "call_1") -> ToolCall:
    return ToolCall(recipient, None, raw, id=id, recipient=recipient, tool="browser")


def python_call(code: str = "print(1)", id: str = "call_2") -> ToolCall:
    return ToolCall("python", code, code, id=id, recipient="python", tool="python")


@pytest.fixture
def no_search_keys(monkeypatch):
    for key in ("EXA_API_KEY", "YDC_API_KEY", "SEARXNG_URL"):
        monkeypatch.delenv(key, raising=False)


# ------------------------------------------------------------------ which tools are on


def test_names_are_checked_deduplicated_and_keep_their_order(tmp_path):
    assert BUILTIN_TOOLS == ("browser", "python")
    assert BuiltinTools().names == () and BuiltinTools(None).names == () and BuiltinTools([]).names == ()
    assert BuiltinTools("browser", browser=OneResult()).names == ("browser",)  # one name as a string
    both = BuiltinTools(["python", "browser", "python"], browser=OneResult(), workdir=tmp_path)
    assert both.names == ("python", "browser")
    assert BuiltinTools(("browser", "browser"), browser=OneResult()).names == ("browser",)
    with pytest.raises(ValueError) as e:
        BuiltinTools(("browser", "shell"), browser=OneResult())
    assert str(e.value) == "builtin_tools: 'shell' is not a built-in tool (choose from browser, python)"
    with pytest.raises(ValueError, match="'browser.search' is not a built-in tool"):
        BuiltinTools("browser.search")


def test_defaults_are_the_auto_search_backend_and_a_jupyter_session(tmp_path, no_search_keys):
    tools = BuiltinTools(("browser", "python"), workdir=tmp_path)
    assert tools.browser.backend.name == make_search_backend("auto", env={}).name == "none"
    assert (tools.python.backend, tools.python.workdir, tools.python.approve) == ("jupyter", tmp_path, None)
    assert tools.settings() == {"builtin_tools": ["browser", "python"], "browser_backend": "none", "python_backend": "jupyter"}


def test_a_search_backend_gets_a_browser_that_counts_approximately_unless_told(tmp_path):
    backend = OneResult()
    browser = BuiltinTools("browser", browser=backend).browser
    assert isinstance(browser, Browser) and browser.backend is backend
    assert not browser.counts_exactly and browser.count_tokens("x" * 40) == 10  # the approximation: 4 chars a token
    browser = BuiltinTools("browser", browser=backend, count_tokens=len).browser
    assert browser.backend is backend and browser.counts_exactly and browser.count_tokens is len
    named = BuiltinTools("browser", browser="none").browser
    assert named.backend.name == "none" and not named.counts_exactly


def test_a_ready_browser_is_kept_and_gets_the_chats_count_only_when_it_has_none():
    ready = Browser(OneResult())
    tools = BuiltinTools("browser", browser=ready, count_tokens=len)
    assert tools.browser is ready and ready.counts_exactly and ready.count_tokens is len
    alone = Browser(OneResult())
    assert BuiltinTools("browser", browser=alone).browser is alone and not alone.counts_exactly

    def own(text: str) -> int:
        return 7

    exact = Browser(OneResult(), count_tokens=own)
    BuiltinTools("browser", browser=exact, count_tokens=len)
    assert exact.count_tokens is own and exact.counts_exactly


def test_python_is_made_from_a_backend_name_or_used_as_given(tmp_path):
    made = BuiltinTools("python", python="docker", approve=yes, workdir=tmp_path / "chat")
    assert isinstance(made.python, PythonTool) and made.browser is None
    assert (made.python.backend, made.python.approve, made.python.workdir) == ("docker", yes, tmp_path / "chat")
    assert made.settings() == {"builtin_tools": ["python"], "browser_backend": "auto", "python_backend": "docker"}

    ready = PythonTool(approve=yes, workdir=tmp_path)
    tools = BuiltinTools("python", python=ready)
    assert tools.python is ready and ready.approve is yes  # no approver given: the tool keeps its own
    assert tools.approve is yes
    BuiltinTools("python", python=ready, approve=no)
    assert ready.approve is no  # the chat's approver wins


def test_with_every_tool_off_nothing_is_on_and_nothing_fails():
    tools = BuiltinTools()
    assert tools.browser is None and tools.python is None
    assert tools.namespaces() == ()
    assert not tools.enabled("browser.search") and not tools.enabled("python")
    assert tools.citations("See 【0†L1-L2】.") == ()
    assert tools.settings() == {"builtin_tools": [], "browser_backend": "auto", "python_backend": "jupyter"}
    tools.restore([Message(Role.TOOL, "[0] q\n", name="browser.search")])
    tools.reset()
    tools.close()
    assert tools.approve is None


def test_namespaces_are_the_browser_then_python(tmp_path):
    tools = BuiltinTools(("python", "browser"), browser=OneResult(), workdir=tmp_path)
    assert tools.namespaces() == (tools.browser.namespace(), tools.python.namespace())
    assert [n.name for n in tools.namespaces()] == ["browser", "python"]
    assert [n.name for n in BuiltinTools("python", workdir=tmp_path).namespaces()] == ["python"]


# ------------------------------------------------------------------ whose call it is


@pytest.mark.parametrize(
    "recipient, owner",
    [
        ("browser.search", "browser"),
        ("browser.open.extra", "browser"),  # the tool is the part before the first dot
        ("browser", "browser"),
        ("python", "python"),
        ("python.run", "python"),
        ("functions.get_weather", None),
        ("functions.browser", None),
        ("pythonic", None),
        ("", None),
    ],
)
def test_owner_is_the_builtin_tool_before_the_first_dot(recipient, owner):
    assert BuiltinTools().owner(recipient) == owner


def test_enabled_only_for_the_tools_that_are_on(tmp_path):
    browser_only = BuiltinTools("browser", browser=OneResult())
    assert browser_only.enabled("browser.find") and browser_only.enabled("browser")
    assert not browser_only.enabled("python") and not browser_only.enabled("functions.get_weather")
    python_only = BuiltinTools("python", workdir=tmp_path)
    assert python_only.enabled("python") and not python_only.enabled("browser.search")


# ------------------------------------------------------------------ running a call


def test_a_browser_call_runs_its_function_and_the_result_carries_the_page_it_shows():
    page = Page.from_lines("https://a.example/find?q", "Find results", ["one"], "https://a.example/")
    rec = RecordingBrowser(BrowserAnswer("[1] shown", page=page))
    tools = BuiltinTools("browser", browser=rec)
    got = tools.run(browser_call("browser.find", '{"pattern": "x"}', id="call_7"))
    assert got == ToolResult("browser.find", "[1] shown", "call_7", False, tool="browser",
                             url="https://a.example/", title="Find results")  # fmt: skip
    assert got.url == page.cited_url and got.error is False
    # what follows the first dot is the function, dots and all; no dot: no function (the browser answers why)
    tools.run(browser_call("browser.open.extra", '{"id": 1}'))
    tools.run(browser_call("browser", "{}"))
    assert rec.calls == [("find", '{"pattern": "x"}'), ("open.extra", '{"id": 1}'), ("", "{}")]


def test_a_browser_error_has_no_page():
    rec = RecordingBrowser(BrowserAnswer("browser has no function 'x'", error=True))
    got = BuiltinTools("browser", browser=rec).run(browser_call("browser.x", "{}", id="c"))
    assert got == ToolResult("browser.x", "browser has no function 'x'", "c", True, tool="browser", url="", title="")


def test_a_real_browser_answers_a_call_without_a_function():
    got = BuiltinTools("browser", browser=OneResult()).run(browser_call("browser", "{}", id="c"))
    assert got.error is True and got.tool == "browser" and got.content == "browser has no function ''; use search, open or find"


def test_a_python_call_passes_the_stop_check_and_the_result_carries_images_and_what_happened(tmp_path):
    answer = PythonAnswer("out\n[Execution timed out]", error=True, images=("/tmp/a.png", "/tmp/b.svg"), timed_out=True)
    py = RecordingPython(tmp_path, answer)
    tools = BuiltinTools(("browser", "python"), browser=OneResult(), python=py)

    def stop() -> bool:
        return True

    call = python_call("while True: pass", id="call_9")
    got = tools.run(call, stop)
    assert got == ToolResult("python", "out\n[Execution timed out]", "call_9", True, tool="python",
                             images=("/tmp/a.png", "/tmp/b.svg"), timed_out=True, refused=False)  # fmt: skip
    assert py.calls == [(call, stop)]
    py.answer = PythonAnswer("not approved", error=True, refused=True)
    got = tools.run(python_call(id="call_10"))  # no stop check given: one that never stops
    assert got == ToolResult("python", "not approved", "call_10", True, tool="python", refused=True)
    assert got.timed_out is False and got.images == ()
    assert py.calls[1][1]() is False
    py.answer = PythonAnswer("1")
    assert tools.run(python_call(id="c")) == ToolResult("python", "1", "c", False, tool="python")


@pytest.mark.parametrize(
    "names, call, content, tool",
    [
        ("browser", python_call(id="c1"), "Error: the python tool is not enabled in this chat", "python"),
        ("python", browser_call("browser.search", id="c1"), "Error: the browser tool is not enabled in this chat", "browser"),
        ((), browser_call("browser", id="c1"), "Error: the browser tool is not enabled in this chat", "browser"),
        (("browser", "python"), ToolCall("get_weather", {}, "{}", id="c1", recipient="functions.get_weather"),
         "Error: the functions.get_weather tool is not enabled in this chat", "functions"),
    ],
    ids=["python-off", "browser-off", "all-off", "not-builtin"],
)
def test_a_call_to_a_tool_that_is_not_on_is_an_error_result(tmp_path, names, call, content, tool):
    py = RecordingPython(tmp_path)
    rec = RecordingBrowser(BrowserAnswer("shown"))
    tools = BuiltinTools(names, browser=rec, python=py)
    got = tools.run(call)
    assert got == ToolResult(call.name, content, "c1", True, tool=tool)
    assert got.error is True and rec.calls == [] and py.calls == []


# ------------------------------------------------------------------ a reopened chat, citations, settings


def _displays() -> list[str]:
    """What a browser showed for two searches: cursors 0 and 1."""
    b = Browser(OneResult())
    return [b.call("search", '{"query": "first"}').text, b.call("search", '{"query": "second"}').text]


def test_restore_rebuilds_the_page_stack_from_the_browsers_own_results_only():
    first, second = _displays()
    assert first.startswith("[0] first\n") and second.startswith("[1] second\n")
    tools = BuiltinTools("browser", browser=OneResult())
    tools.restore([
        Message(Role.USER, "Search for it."),
        Message(Role.ASSISTANT, '{"query": "first"}', recipient="browser.search"),
        Message(Role.TOOL, first, name="browser.search"),
        Message(Role.TOOL, second, name="functions.echo"),  # a function's result that reads like a display
        Message(Role.TOOL, second, name="python"),
        Message(Role.TOOL, second),  # no name
        Message(Role.USER, second, name="browser.search"),  # not a tool's result
    ])  # fmt: skip
    assert [p.title for p in tools.browser.stack] == ["first"]
    assert tools.run(browser_call("browser.search")).content.startswith("[1] q\n")  # the cursors go on


def test_citations_resolve_on_the_browsers_pages():
    tools = BuiltinTools("browser", browser=OneResult())
    tools.browser.stack.append(Page.from_lines("https://a.example/", "A page", ["zero", "one"]))
    (c,) = tools.citations("It says one 【0†L1】.")
    assert (c.marker, c.cursor, c.url, c.title, c.line_start, c.quote) == ("【0†L1】", 0, "https://a.example/", "A page", 1, "one")


def test_settings_name_the_tools_and_backends(tmp_path):
    tools = BuiltinTools(("python", "browser"), browser=OneResult(), python="docker", workdir=tmp_path)
    assert tools.settings() == {"builtin_tools": ["python", "browser"], "browser_backend": "one", "python_backend": "docker"}
    assert BuiltinTools("browser", browser=OneResult()).settings() == {
        "builtin_tools": ["browser"], "browser_backend": "one", "python_backend": "jupyter"}  # fmt: skip


# ------------------------------------------------------------------ reset, close, turning tools on and off


def test_reset_forgets_the_pages_and_closes_the_python_session(tmp_path):
    py = RecordingPython(tmp_path)
    tools = BuiltinTools(("browser", "python"), browser=OneResult(), python=py)
    tools.run(browser_call("browser.search"))
    assert len(tools.browser.stack) == 1
    tools.reset()
    assert tools.browser.stack == [] and py.closed == 1
    tools.close()
    assert py.closed == 2
    browser_only = BuiltinTools("browser", browser=OneResult())
    browser_only.run(browser_call("browser.search"))
    browser_only.reset()
    assert browser_only.browser.stack == []
    browser_only.close()


def test_with_names_keeps_what_stays_closes_what_goes_and_remembers_the_approver(tmp_path):
    py = RecordingPython(tmp_path, approve=yes)
    tools = BuiltinTools(("browser", "python"), browser=OneResult(), python=py, workdir=tmp_path, count_tokens=len)
    py.approve = no  # set on the tool itself: it is the chat's approver from now on
    both = tools.with_names(("python", "browser"))
    assert both.names == ("python", "browser") and both.browser is tools.browser and both.python is py
    assert py.approve is no and py.closed == 0
    browser_only = both.with_names("browser")
    assert browser_only.python is None and browser_only.browser is tools.browser and py.closed == 1
    assert browser_only.approve is no
    again = browser_only.with_names("browser")  # python was off and stays off: nothing to close
    assert again.python is None and py.closed == 1
    on = again.with_names(["browser", "python"])  # the chat's python tool again (its session starts anew)
    assert on.python is py and py.approve is no and py.closed == 1
    assert on.browser is tools.browser and on.browser.count_tokens is len
    none = on.with_names(None)
    assert none.names == () and none.browser is None and none.python is None


def test_the_approver_set_on_the_tools_reaches_the_python_tool(tmp_path):
    py = RecordingPython(tmp_path)
    tools = BuiltinTools("python", python=py)
    tools.approve = yes
    assert py.approve is yes and tools.approve is yes
    off = BuiltinTools("browser", browser=OneResult(), workdir=tmp_path / "chat")
    off.approve = no
    assert off.approve is no
    on = off.with_names(("browser", "python")).python  # made now: the chat's approver and folder
    assert (on.backend, on.approve, on.workdir) == ("jupyter", no, tmp_path / "chat")


def test_a_browser_made_by_name_counts_tokens_with_the_chats_counter():
    def count(text: str) -> int:
        return len(text.split())

    tools = BuiltinTools(["browser"], browser="none", count_tokens=count)
    assert tools.browser.count_tokens is count and tools.browser.counts_exactly
    assert tools.owner("browser.search") == "browser" and tools.owner("python") == "python"
    assert tools.owner("functions.browser") is None and tools.owner("browsers.x") is None
