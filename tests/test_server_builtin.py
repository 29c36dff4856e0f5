"""Built-in tools through `mlx-oss serve`: a real uvicorn server driven by the official openai SDK,
replies scripted harmony (server_harness), pages and search APIs served by the local web fixture.

The server runs the model's `browser.*` and `python` calls itself within one response: the output
has `web_search_call` / `code_interpreter_call` items with their events and the answer's citations
arrive as `url_citation` annotations. Every failure is a tool result the model reads."""

from __future__ import annotations

import json
import logging

import httpx
import openai
import pytest

from mlx_oss.builtin.browser import Browser, ExaSearch, FetchLimits, Fetcher
from mlx_oss.builtin.python import PythonTool
from mlx_oss.server.builtin import ServerTools, allow_all
from server_harness import MODEL_ID, Scripts, running_server
from test_builtin_chat import builtin_reply, model_tok, web  # noqa: F401 - shared fixtures
from tests.web_fixture import EXA_KEY

pytest.importorskip("ipykernel")
pytestmark = pytest.mark.slow

SECRET = "exa-env-secret-never-shown-789"
TOOLS = [{"type": "web_search"}, {"type": "code_interpreter", "container": {"type": "auto"}}]
ANSWER = "Quantization got faster on M4【1†L2-L3】; 6 x 7 = 42."


def steps(tok, *items) -> list[int]:
    """One response's rounds: ("call", (recipient, body)) or ("final", text)."""
    out: list[int] = []
    for kind, payload in items:
        out += builtin_reply(tok, calls=[payload]) if kind == "call" else builtin_reply(tok, final=payload)
    return out


@pytest.fixture(scope="module")
def served(model_tok, web, tmp_path_factory):
    model, tok = model_tok
    scripts = Scripts()
    search = {"backend": ExaSearch(base_url=web.url("/exa"), api_key=EXA_KEY)}  # a test may swap it
    tools = ServerTools(
        browser=lambda: Browser(search["backend"], fetcher=Fetcher(FetchLimits(timeout_s=5), allow_private=True),
                                view_tokens=150),  # fmt: skip
        python=lambda: PythonTool("jupyter", approve=allow_all, workdir=tmp_path_factory.mktemp("py"), timeout_s=4),
        allow_python=True,
        max_calls=8,
    )
    with running_server(model, tok, scripts, max_context=4096, builtin=tools) as (url, app):
        yield url, app, scripts, tok, search, web


@pytest.fixture
def srv(served):
    served[2].queue.clear()
    served[4]["backend"] = ExaSearch(base_url=served[5].url("/exa"), api_key=EXA_KEY)
    return served


@pytest.fixture
def client(srv):
    return openai.OpenAI(base_url=srv[0], api_key="unused", max_retries=0, timeout=120)


def _full_script(tok):
    return steps(tok,
        ("call", ("browser.search", '{"query": "mlx release notes"}')),
        ("call", ("browser.open", '{"id": 0}')),
        ("call", ("browser.find", '{"pattern": "quantization"}')),
        ("call", ("python", "x = 6 * 7\nprint(x)")),
        ("final", ANSWER),
    )  # fmt: skip


def _check_full_output(resp, page_url):
    kinds = [o.type for o in resp.output]
    assert kinds == ["reasoning", "web_search_call"] * 3 + ["reasoning", "code_interpreter_call", "reasoning", "message"]
    search, open_, find = (o for o in resp.output if o.type == "web_search_call")
    assert search.action.type == "search" and search.action.query == "mlx release notes" and search.status == "completed"
    assert open_.action.type == "open_page" and open_.action.url == page_url
    assert (find.action.type, find.action.pattern, find.action.url) == ("find_in_page", "quantization", page_url)
    (code,) = (o for o in resp.output if o.type == "code_interpreter_call")
    assert code.code == "x = 6 * 7\nprint(x)" and code.status == "completed" and code.container_id.startswith("cntr_")
    assert [(o.type, o.logs) for o in code.outputs] == [("logs", "42")]
    text = resp.output[-1].content[0]
    assert text.text == ANSWER and resp.output_text == ANSWER
    (cite,) = text.annotations
    assert (cite.type, cite.url, cite.title) == ("url_citation", page_url, "MLX Release Notes")
    assert ANSWER[cite.start_index : cite.end_index] == "【1†L2-L3】"
    assert resp.status == "completed"


def test_searches_opens_finds_runs_code_and_cites(client, srv):
    url, app, scripts, tok, _, web = srv
    scripts.push(_full_script(tok))
    resp = client.responses.create(model=MODEL_ID, input="What changed in MLX? Also compute 6*7.", tools=TOOLS)
    _check_full_output(resp, web.url("/page"))
    # What the model read after each call is in the store, as rendered for the next turn.
    store = app.state.stored
    seen = [store.tool_messages(o.id)[1].text for o in resp.output if o.type in ("web_search_call", "code_interpreter_call")]
    assert seen[0].startswith("[0] mlx release notes") and "【0†Result 0 about MLX" in seen[0]
    assert seen[1].startswith("[1] MLX Release Notes") and seen[2].startswith("[2] Find results for text: `quantization`")
    assert seen[3] == "42"
    assert client.responses.retrieve(resp.id).output[-1].content[0].annotations[0].url == web.url("/page")


def test_streamed_events_come_in_order(client, srv):
    url, app, scripts, tok, _, web = srv
    scripts.push(_full_script(tok))
    events = list(client.responses.create(model=MODEL_ID, input="What changed?", tools=TOOLS, stream=True))
    assert [e.sequence_number for e in events] == list(range(len(events)))
    types = [e.type for e in events]
    assert types[:2] == ["response.created", "response.in_progress"] and types[-1] == "response.completed"
    searches = [i for i, e in enumerate(events) if e.type == "response.output_item.added" and e.item.type == "web_search_call"]
    assert len(searches) == 3
    i = searches[0]
    assert types[i : i + 5] == ["response.output_item.added", "response.web_search_call.in_progress",
                                "response.web_search_call.searching", "response.web_search_call.completed",
                                "response.output_item.done"]  # fmt: skip
    assert events[i].item.action.query == "mlx release notes" and events[i + 4].item.status == "completed"
    assert len({events[j].item_id for j in range(i + 1, i + 4)} | {events[i].item.id}) == 1
    (c,) = [i for i, e in enumerate(events) if e.type == "response.output_item.added" and e.item.type == "code_interpreter_call"]
    tail = [t for t in types[c:] if not t.endswith("code.delta")]
    assert tail[:6] == ["response.output_item.added", "response.code_interpreter_call.in_progress",
                        "response.code_interpreter_call_code.done", "response.code_interpreter_call.interpreting",
                        "response.code_interpreter_call.completed", "response.output_item.done"]  # fmt: skip
    deltas = "".join(e.delta for e in events if e.type == "response.code_interpreter_call_code.delta")
    assert deltas == "x = 6 * 7\nprint(x)"
    a = types.index("response.output_text.annotation.added")
    assert types[a + 1] == "response.output_text.done" and events[a].annotation.url == web.url("/page")
    _check_full_output(events[-1].response, web.url("/page"))


def test_failures_are_tool_results_and_the_response_completes(client, srv):
    url, app, scripts, tok, search, web = srv
    search["backend"] = ExaSearch(base_url=web.url("/quota"), api_key=EXA_KEY)
    scripts.push(steps(tok,
        ("call", ("browser.search", '{"query": "x"}')),  # backend out of quota (429)
        ("call", ("browser.open", f'{{"id": "{web.url("/missing")}"}}')),  # HTTP 404
        ("call", ("browser.open", f'{{"id": "{web.url("/huge")}"}}')),  # 20 MB
        ("call", ("browser.open", f'{{"id": "{web.url("/image.png")}"}}')),  # not HTML
        ("call", ("browser.open", '{"id": "http://127.0.0.1:1/"}')),  # unreachable
        ("call", ("browser.find", '{"pattern": 3, oops')),  # malformed arguments
        ("call", ("python", "1 / 0")),
        ("call", ("python", "while True:\n    pass")),  # loops forever: stopped after 4 s
        ("final", "Sorry, nothing worked."),
    ))  # fmt: skip
    resp = client.responses.create(model=MODEL_ID, input="hi", tools=TOOLS, max_tool_calls=8)
    assert resp.status == "completed" and resp.output_text == "Sorry, nothing worked."
    calls = [o for o in resp.output if o.type in ("web_search_call", "code_interpreter_call")]
    assert [o.status for o in calls] == ["failed"] * 8
    seen = [app.state.stored.tool_messages(o.id)[1].text for o in calls]
    assert "Exa search is out of quota" in seen[0]
    assert "HTTP 404" in seen[1] and "too large" in seen[2] and "unsupported content type image/png" in seen[3]
    assert "cannot reach the site" in seen[4] and "invalid JSON arguments for browser.find" in seen[5]
    assert "ZeroDivisionError" in seen[6] and calls[6].outputs[0].logs == seen[6]
    assert "timed out after 4 seconds" in seen[7]
    assert calls[2].action.url == web.url("/huge")  # the page asked for, although it did not open
    # The server is fine: the next request works.
    scripts.push(steps(tok, ("final", "ok")))
    assert client.responses.create(model=MODEL_ID, input="again", tools=TOOLS).output_text == "ok"


def test_call_limit_ends_the_response_incomplete(client, srv):
    url, app, scripts, tok, _, web = srv
    call = ("call", ("browser.search", '{"query": "mlx"}'))
    scripts.push(steps(tok, call, call, call, ("final", "never")))
    resp = client.responses.create(model=MODEL_ID, input="hi", tools=TOOLS, max_tool_calls=1)
    assert resp.status == "incomplete" and resp.incomplete_details.reason == "max_tool_calls"
    calls = [o for o in resp.output if o.type == "web_search_call"]
    assert [o.status for o in calls] == ["completed", "failed", "incomplete"]  # the third was never run
    assert app.state.stored.tool_messages(calls[1].id)[1].text == (  # what the model is told
        "Error: the limit of 1 built-in tool calls for this response is reached, so this call was not run. "
        "Answer now with what you have.")  # fmt: skip
    assert len([p for p in web.posted if p.get("query") == "mlx"]) == 1  # the second call was not run


def test_previous_response_keeps_the_pages_so_old_citations_resolve(client, srv):
    url, app, scripts, tok, _, web = srv
    scripts.push(steps(tok, ("call", ("browser.search", '{"query": "mlx"}')), ("call", ("browser.open", '{"id": 0}')),
                       ("final", "Found it【1†L2】.")))  # fmt: skip
    first = client.responses.create(model=MODEL_ID, input="find mlx notes", tools=[{"type": "browser_search"}])
    assert first.output[-1].content[0].annotations[0].url == web.url("/page")
    scripts.push(steps(tok, ("final", "As I said【1†L3-L4】.")))
    second = client.responses.create(model=MODEL_ID, input="again?", tools=[{"type": "web_search_preview"}],
                                     previous_response_id=first.id)  # fmt: skip
    (cite,) = second.output[-1].content[0].annotations
    assert (cite.url, cite.title) == (web.url("/page"), "MLX Release Notes")
    # A client replaying the output itself (no previous_response_id) is accepted too; the pages come
    # back from what the model was shown, so its old citations still resolve.
    scripts.push(steps(tok, ("final", "ok【1†L2】")))
    items = [o.model_dump(exclude_none=True) for o in first.output] + [{"role": "user", "content": "more"}]
    third = client.responses.create(model=MODEL_ID, input=items, tools=TOOLS, store=False)
    assert third.output_text == "ok【1†L2】" and third.output[-1].content[0].annotations[0].url == web.url("/page")


def test_previous_response_keeps_the_python_state_past_a_refused_request(client, srv):
    """The python kernel goes on with `previous_response_id` (same container, same variables), also after a
    continuation that was refused before it ran (its prompt over the context): the conversation keeps its
    session. A response that does not continue one starts a kernel of its own."""
    url, app, scripts, tok, _, web = srv
    scripts.push(steps(tok, ("call", ("python", "x = 6 * 7")), ("final", "x is set.")))
    first = client.responses.create(model=MODEL_ID, input="set x", tools=TOOLS)
    (set_x,) = [o for o in first.output if o.type == "code_interpreter_call"]
    with pytest.raises(openai.BadRequestError, match="maximum context length"):
        client.responses.create(model=MODEL_ID, input="go " * 5000, tools=TOOLS, previous_response_id=first.id)
    scripts.push(steps(tok, ("call", ("python", "print(x)")), ("final", "x is 42.")))
    second = client.responses.create(model=MODEL_ID, input="print x", tools=TOOLS, previous_response_id=first.id)
    (print_x,) = [o for o in second.output if o.type == "code_interpreter_call"]
    assert [(o.type, o.logs) for o in print_x.outputs] == [("logs", "42")]
    assert print_x.container_id == set_x.container_id
    scripts.push(steps(tok, ("call", ("python", "print(x)")), ("final", "no x here.")))
    other = client.responses.create(model=MODEL_ID, input="print x", tools=TOOLS)
    (fresh,) = [o for o in other.output if o.type == "code_interpreter_call"]
    assert "NameError" in app.state.stored.tool_messages(fresh.id)[1].text and fresh.container_id != set_x.container_id


def test_python_refused_without_allow_python_and_web_tools_refused_in_chat_completions(model_tok):
    model, tok = model_tok
    with running_server(model, tok, Scripts(), max_context=1024) as (url, app):
        c = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=60)
        with pytest.raises(openai.BadRequestError) as e:
            c.responses.create(model=MODEL_ID, input="hi", tools=[{"type": "code_interpreter", "container": {"type": "auto"}}])
        err = e.value.body
        assert err["param"] == "tools[0].type" and "--allow-python" in err["message"]
        with pytest.raises(openai.BadRequestError) as e:
            c.chat.completions.create(model=MODEL_ID, messages=[{"role": "user", "content": "hi"}],
                                      tools=[{"type": "web_search"}])  # fmt: skip
        assert e.value.body["param"] == "tools[0].type" and "/v1/responses" in e.value.body["message"]


def test_search_keys_never_reach_responses_or_logs(model_tok, web, monkeypatch, caplog, capfd):
    model, tok = model_tok
    monkeypatch.setenv("EXA_API_KEY", SECRET)  # wrong for the fixture: it answers 401 echoing the key it got
    scripts = Scripts()
    tools = ServerTools(browser=lambda: Browser(ExaSearch(base_url=web.url("/exa")), fetcher=Fetcher(allow_private=True)))
    caplog.set_level(logging.DEBUG)
    with running_server(model, tok, scripts, max_context=2048, builtin=tools) as (url, app):
        scripts.push(steps(tok, ("call", ("browser.search", '{"query": "mlx"}')), ("final", "no luck")))
        body = {"model": MODEL_ID, "input": "search", "tools": [{"type": "web_search"}], "stream": True}
        with httpx.stream("POST", url + "/responses", json=body, timeout=120) as r:
            sse = "".join(r.iter_text())
        assert "response.completed" in sse and "rejected the API key" in _seen(app, sse)
        stored = httpx.get(url + "/responses/" + _response_id(sse), timeout=30).text
    out, err = capfd.readouterr()
    for text in (sse, stored, out, err, caplog.text, _seen(app, sse)):
        assert SECRET not in text


def _response_id(sse: str) -> str:
    for line in sse.splitlines():
        if line.startswith("data: ") and '"response.completed"' in line:
            return json.loads(line[6:])["response"]["id"]
    raise AssertionError("no response.completed event")


def _seen(app, sse: str) -> str:
    """The tool results the model read in the response `sse` streamed."""
    resp = next(json.loads(ln[6:])["response"] for ln in sse.splitlines() if '"response.completed"' in ln)
    return "\n".join(app.state.stored.tool_messages(o["id"])[1].text for o in resp["output"] if o["type"] == "web_search_call")
