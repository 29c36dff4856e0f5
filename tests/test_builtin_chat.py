"""Built-in tools through `Chat`: a scripted conversation (forced replies on the tiny random model)
that searches, opens, finds, runs code and answers with a citation; refusals and bad calls that
become tool results while the conversation goes on."""

from __future__ import annotations

import json

import pytest

import mlx_oss
from mlx_oss.builtin.browser import Browser, ExaSearch, FetchLimits, Fetcher, NoSearch
from mlx_oss.builtin.python import PythonTool
from mlx_oss.events import Done, ToolCall, ToolResult
from mlx_oss.harmony import Role
from mlx_oss.sampling import SamplingConfig, ScriptedTokens
from tests.web_fixture import EXA_KEY, WebServer

pytest.importorskip("ipykernel")


@pytest.fixture(scope="module")
def model_tok(tiny_chat_converted):
    return mlx_oss.load(tiny_chat_converted, dtype="float32")


@pytest.fixture(scope="module")
def web():
    with WebServer() as w:
        yield w


def builtin_reply(tok, calls=(), final=None, analysis="Let me look.") -> list[int]:
    """An assistant reply after `<|start|>assistant`: analysis, then built-in tool calls (analysis
    channel, `code` content type, as gpt-oss writes them) or a final answer."""
    parts = [f"<|channel|>analysis<|message|>{analysis}<|end|>"]
    for recipient, body in calls:
        parts.append(f"<|channel|>analysis to={recipient} code<|message|>{body}<|call|>")
    if final is not None:
        parts.append(f"<|channel|>final<|message|>{final}<|return|>")
    return tok.encode("<|start|>assistant".join(parts), allowed_special="all")


def script(tok, steps: list[tuple]) -> SamplingConfig:
    tokens: list[int] = []
    for kind, payload in steps:
        tokens += builtin_reply(tok, calls=[payload]) if kind == "call" else builtin_reply(tok, final=payload)
    return SamplingConfig(seed=0, logits_processors=(ScriptedTokens(tokens),))


def test_browser_off_and_python_off_by_default(model_tok):
    model, tok = model_tok
    chat = mlx_oss.Chat(model, tok)
    assert chat.builtin_tools == () and chat.builtins.python is None
    system = chat.messages[0].contents[0]
    assert system.tools == ()
    with pytest.raises(ValueError, match="not a built-in tool"):
        mlx_oss.Chat(model, tok, builtin_tools=("shell",))


def test_scripted_chat_searches_opens_finds_runs_code_and_cites(model_tok, web, tmp_path):
    model, tok = model_tok
    browser = Browser(ExaSearch(base_url=web.url("/exa"), api_key=EXA_KEY),
                      fetcher=Fetcher(FetchLimits(timeout_s=5), allow_private=True), view_tokens=150)  # fmt: skip
    approved: list[str] = []
    chat = mlx_oss.Chat(model, tok, builtin_tools=("browser", "python"), browser_backend=browser,
                        approve=lambda call: approved.append(call.arguments) or True, python_workdir=str(tmp_path))  # fmt: skip
    answer = "Quantization got faster on M4【1†L2-L3】; 6 x 7 = 42."
    chat.sampling = script(tok, [
        ("call", ("browser.search", '{"query": "mlx release notes"}')),
        ("call", ("browser.open", '{"id": 0}')),
        ("call", ("browser.find", '{"pattern": "quantization"}')),
        ("call", ("python", "x = 6 * 7\nprint(x)")),
        ("final", answer),
    ])  # fmt: skip
    try:
        events = list(chat.send("What changed in MLX? Also compute 6*7."))
    finally:
        chat.close()
    calls = [e for e in events if isinstance(e, ToolCall)]
    results = [e for e in events if isinstance(e, ToolResult)]
    done = events[-1]
    assert isinstance(done, Done) and done.stats.stop_reason == "stop" and done.stats.rounds == 5
    assert [(c.tool, c.name) for c in calls] == [("browser", "browser.search"), ("browser", "browser.open"),
                                                 ("browser", "browser.find"), ("python", "python")]  # fmt: skip
    assert calls[3].arguments == "x = 6 * 7\nprint(x)" and approved == ["x = 6 * 7\nprint(x)"]
    assert [r.tool for r in results] == ["browser", "browser", "browser", "python"] and not any(r.error for r in results)
    assert results[0].content.startswith("[0] mlx release notes") and "【0†Result 0 about MLX" in results[0].content
    assert results[1].url == web.url("/page") and results[1].title == "MLX Release Notes"
    assert results[2].content.startswith("[2] Find results for text: `quantization`")
    assert results[3].content == "42"
    assert done.reply.answer == answer
    (cite,) = done.reply.citations
    assert (cite.url, cite.title, cite.cursor, cite.line_start, cite.line_end) == (web.url("/page"), "MLX Release Notes", 1, 2, 3)
    assert answer[cite.start : cite.end] == "【1†L2-L3】"
    # The tool results are in the history, addressed as harmony expects, on the call's channel.
    tool_msgs = [m for m in chat.history if m.role is Role.TOOL]
    assert [(m.name, m.channel, m.recipient) for m in tool_msgs] == [
        ("browser.search", "analysis", "assistant"), ("browser.open", "analysis", "assistant"),
        ("browser.find", "analysis", "assistant"), ("python", "analysis", "assistant")]  # fmt: skip
    assert not chat.builtins.python.session.running  # close() stopped the kernel


def test_refused_python_and_bad_browser_calls_are_results_and_the_chat_goes_on(model_tok, tmp_path):
    model, tok = model_tok
    chat = mlx_oss.Chat(model, tok, builtin_tools=("browser", "python"), browser_backend=NoSearch(),
                        python_workdir=str(tmp_path))  # no approve: every python call is refused  # fmt: skip
    chat.sampling = script(tok, [
        ("call", ("python", "import os; os.remove('x')")),
        ("call", ("browser.open", '{"id": "http://127.0.0.1:1/"}')),  # private address: refused, nothing sent
        ("call", ("browser.open", '{"id": 3, oops')),
        ("call", ("browser.search", '{"query": "x"}')),
        ("final", "Sorry, I could not look that up."),
    ])  # fmt: skip
    events = list(chat.send("hi"))
    results = [e for e in events if isinstance(e, ToolResult)]
    assert [r.error for r in results] == [True] * 4
    assert results[0].refused and "did not approve" in results[0].content
    assert not chat.builtins.python.session.running  # nothing was started for a refused call
    assert "local or private-network address" in results[1].content
    assert "invalid JSON arguments for browser.open" in results[2].content
    assert "search is not available" in results[3].content
    assert events[-1].reply.answer == "Sorry, I could not look that up." and events[-1].stats.stop_reason == "stop"


def test_calls_to_tools_that_are_off_get_an_error_result(model_tok):
    model, tok = model_tok
    chat = mlx_oss.Chat(model, tok)
    chat.sampling = script(tok, [("call", ("python", "print(1)")), ("final", "ok")])
    events = list(chat.send("hi"))
    (result,) = [e for e in events if isinstance(e, ToolResult)]
    assert (result.name, result.tool, result.error) == ("python", "python", True)
    assert result.content == "Error: unknown tool 'python' (tools: none configured)"
    assert events[-1].reply.answer == "ok"


def test_settings_save_backend_names_never_keys_and_reopen(model_tok, tmp_path, monkeypatch):
    model, tok = model_tok
    monkeypatch.setenv("EXA_API_KEY", "exa-secret-never-saved")
    chat = mlx_oss.Chat(model, tok, builtin_tools=("browser", "python"), python_workdir=str(tmp_path))
    assert chat.builtins.browser.backend.name == "exa"  # auto: the key in the environment
    saved = json.dumps(chat.to_json())
    assert "exa-secret-never-saved" not in saved
    s = chat.settings()
    assert (s["builtin_tools"], s["browser_backend"], s["python_backend"]) == (["browser", "python"], "exa", "jupyter")
    again = mlx_oss.Chat.from_json(saved, model, tok, approve=lambda c: True)
    assert again.builtin_tools == ("browser", "python") and again.approve is not None
    assert again.messages[0].contents[0].tools == chat.messages[0].contents[0].tools


def test_docker_backend_changes_the_description(model_tok, tmp_path):
    model, tok = model_tok
    chat = mlx_oss.Chat(model, tok, builtin_tools=("python",), python_backend=PythonTool("docker", workdir=tmp_path))
    (ns,) = chat.messages[0].contents[0].tools
    assert ns.name == "python" and "STATELESS" in ns.description


def test_reopened_chat_keeps_its_pages_so_earlier_citations_resolve(model_tok, web, monkeypatch):
    model, tok = model_tok
    monkeypatch.setenv("EXA_API_KEY", EXA_KEY)
    fetcher = Fetcher(FetchLimits(timeout_s=5), allow_private=True)
    chat = mlx_oss.Chat(model, tok, builtin_tools=("browser",),
                        browser_backend=Browser(ExaSearch(base_url=web.url("/exa")), fetcher=fetcher, view_tokens=150))  # fmt: skip
    chat.sampling = script(tok, [
        ("call", ("browser.search", '{"query": "mlx"}')),
        ("call", ("browser.open", '{"id": 0}')),
        ("call", ("browser.find", '{"pattern": "item number 3"}')),
        ("final", "Item 2【1†L2-L3】, see 【2†L0】."),
    ])  # fmt: skip
    first = list(chat.send("mlx?"))[-1].reply.citations
    saved = json.dumps(chat.to_json())
    assert EXA_KEY not in saved
    again = mlx_oss.Chat.from_json(saved, model, tok, browser_backend=Browser(ExaSearch(base_url=web.url("/exa")),
                                                                             fetcher=fetcher))  # fmt: skip
    assert len(again.builtins.browser.stack) == 3  # cursors 0-2, rebuilt from what the model was shown
    other = json.dumps({"id": web.url("/other")})  # old pages' link ids are not kept (only what was shown)
    again.sampling = script(tok, [("call", ("browser.open", other)),
                                  ("final", "As before【1†L2-L3】 and 【2†L0】; new【3†L1】.")])  # fmt: skip
    events = list(again.send("again?"))
    opened = next(e for e in events if isinstance(e, ToolResult))
    assert opened.content.startswith("[3] ")  # the next display goes on from the old cursors
    old1, old2, new = events[-1].reply.citations
    keep = lambda c: (c.cursor, c.url, c.title, c.line_start, c.line_end, c.quote)  # noqa: E731
    assert [keep(old1), keep(old2)] == [keep(c) for c in first]
    assert old1.quote and old1.url == web.url("/page") and old2.url == web.url("/page")  # a find page cites its page
    assert new.cursor == 3 and new.url == opened.url


class FakeKernel:
    """Stands in for the jupyter kernel (a fast turn through the built-in tools): runs nothing, says
    what it was given; `during` runs inside the call (to cancel the chat there)."""

    stateful, running = True, False

    def __init__(self, during=lambda: None):
        self.during, self.ran = during, []

    def execute(self, code, timeout_s, should_stop=lambda: False):
        from mlx_oss.builtin.python.kernel import Execution

        self.ran.append(code)
        self.during()
        return Execution("cancelled" if should_stop() else "ok", [f"ran {code}\n"])

    def close(self):
        pass


def fake_python(tmp_path, kernel) -> PythonTool:
    tool = PythonTool("jupyter", approve=lambda call: True, workdir=tmp_path)
    tool.session = kernel
    return tool


def test_builtin_calls_in_one_round_are_run_and_answered_on_their_channel(model_tok, tmp_path):
    """Two built-in calls in one round (the first closed by `<|end|>`): both are run, each result goes
    into the history as the tool's message on the call's channel, and the turn goes on to the answer."""
    model, tok = model_tok
    kernel = FakeKernel()
    chat = mlx_oss.Chat(model, tok, builtin_tools=("browser", "python"), browser_backend=NoSearch(),
                        python_backend=fake_python(tmp_path, kernel))  # fmt: skip
    search = tok.encode('<|channel|>analysis to=browser.search code<|message|>{"query": "mlx"}<|end|><|start|>assistant',
                        allowed_special="all")  # fmt: skip
    chat.sampling = SamplingConfig(seed=0, logits_processors=(ScriptedTokens(
        search + builtin_reply(tok, calls=[("python", "print(6 * 7)")]) + builtin_reply(tok, final="42.")),))  # fmt: skip
    events = list(chat.send("hi"))
    calls = [e for e in events if isinstance(e, ToolCall)]
    assert [(c.name, c.tool, c.id) for c in calls] == [("browser.search", "browser", "call_1"), ("python", "python", "call_3")]
    results = [e for e in events if isinstance(e, ToolResult)]
    assert [(r.name, r.tool, r.id, r.error) for r in results] == [
        ("browser.search", "browser", "call_1", True), ("python", "python", "call_3", False)]  # fmt: skip
    assert "search is not available" in results[0].content and results[1].content == "ran print(6 * 7)"
    assert kernel.ran == ["print(6 * 7)"]
    done = events[-1]
    assert done.stats.stop_reason == "stop" and done.reply.answer == "42." and done.stats.rounds == 2
    tool_messages = [(m.role, m.name, m.channel, m.text) for m in chat.history if m.role is Role.TOOL]
    assert tool_messages == [(Role.TOOL, "browser.search", "analysis", results[0].content),
                             (Role.TOOL, "python", "analysis", "ran print(6 * 7)")]  # fmt: skip


def test_cancel_during_a_python_call_reaches_the_kernel(model_tok, tmp_path):
    model, tok = model_tok
    holder = {}
    kernel = FakeKernel(during=lambda: holder["chat"].cancel())
    chat = holder["chat"] = mlx_oss.Chat(model, tok, builtin_tools=("python",), python_backend=fake_python(tmp_path, kernel))
    chat.sampling = script(tok, [("call", ("python", "while True: pass")), ("final", "never")])
    events = list(chat.send("hi"))
    (result,) = [e for e in events if isinstance(e, ToolResult)]
    assert result.error and result.content == "ran while True: pass\n[Execution was stopped by the user.]"
    assert events[-1].stats.stop_reason == "cancelled" and events[-1].reply.answer == ""
