"""The Responses API as current clients speak it (issue 26): Codex's `namespace` / `custom` / `local_shell`
tools and `web_search` with `external_web_access: false`, tool types the model cannot use (dropped with a
warning), `item_reference` inputs (the Vercel AI SDK's tool loop), `encrypted_content` and
`reasoning.summary` for stateless clients, `json_object`, `previous_response_id` with `input: []`,
`truncation: "auto"` and `logit_bias` (both APIs). A real uvicorn on 127.0.0.1 around the tiny chat model,
replies scripted as harmony (server_harness); raw httpx for the exact shapes, the openai SDK where a client
parses them."""

from __future__ import annotations

import json
import logging

import httpx
import openai
import pytest

import mlx_oss
from mlx_oss.harmony import DeveloperContent, Message, ToolDescription, ToolNamespace, render_conversation
from mlx_oss.server.responses import ReasoningSeal
from server_harness import MODEL_ID, AfterHeader, Scripts, fresh, reply, running_server

SPAWN = {"type": "function", "name": "spawn_agent", "description": "Spawn a sub-agent.\nIt runs in parallel.",
         "strict": False, "parameters": {"type": "object", "properties": {"message": {"type": "string"}},
                                         "required": ["message"], "additionalProperties": False}}  # fmt: skip
WAIT = {"type": "function", "name": "wait", "description": "Wait for agents.", "strict": False,
        "parameters": {"type": "object", "properties": {"ids": {"type": "array", "items": {"type": "string"}}}}}  # fmt: skip
# What Codex CLI (0.171) sends with its default features (codex-rs/tools: ToolSpec::Namespace, Freeform, WebSearch)
NAMESPACE = {"type": "namespace", "name": "multi_agent_v1", "description": "Tools to run sub-agents.", "tools": [SPAWN, WAIT]}
SHELL = {"type": "function", "name": "shell", "description": "Runs a shell command.", "strict": False,
         "parameters": {"type": "object", "properties": {"command": {"type": "array", "items": {"type": "string"}}},
                        "required": ["command"]}}  # fmt: skip
LARK = 'start: begin_patch hunk+ end_patch\nbegin_patch: "*** Begin Patch" LF\nend_patch: "*** End Patch" LF?'
APPLY_PATCH = {"type": "custom", "name": "apply_patch", "description": "Use `apply_patch` to edit files.",
               "format": {"type": "grammar", "syntax": "lark", "definition": LARK}}  # fmt: skip
WEB_OFFLINE = {"type": "web_search", "external_web_access": False}
CODEX_TOOLS = [SHELL, APPLY_PATCH, NAMESPACE, WEB_OFFLINE, {"type": "image_generation", "output_format": "png"}]


@pytest.fixture(scope="module")
def served(tiny_chat_converted):
    model, tok = mlx_oss.load(tiny_chat_converted, dtype="float32")
    scripts = Scripts()
    with running_server(model, tok, scripts, max_context=1024, max_queue=2) as (url, app):
        yield url, app, scripts, tok


@pytest.fixture
def srv(served):
    return fresh(served)


def post(url: str, path: str, body: dict) -> httpx.Response:
    return httpx.post(url + path, json=body, timeout=120)


def ok(r: httpx.Response) -> dict:
    assert r.status_code == 200, r.text
    return r.json()


def error(r: httpx.Response, param: str, code: str | None = None) -> dict:
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param, err
    if code is not None:
        assert err["code"] == code, err
    return err


def prompt_text(app, tok) -> str:
    return tok.decode(app.state.backend.engine.tokens)


def call(tok, recipient: str, args: str, analysis: str | None = None) -> list[int]:
    """A reply calling `recipient` (any namespace), as gpt-oss writes it."""
    text = f"<|channel|>analysis<|message|>{analysis}<|end|><|start|>assistant" if analysis else ""
    text += f"<|channel|>commentary to={recipient} <|constrain|>json<|message|>{args}<|call|>"
    return tok.encode(text, allowed_special="all")


def sse(text: str) -> list[tuple[str, dict]]:
    out = []
    for frame in text.split("\n\n"):
        lines = frame.strip().split("\n")
        if len(lines) == 2 and lines[0].startswith("event: "):
            out.append((lines[0][7:], json.loads(lines[1][6:])))
    return out


# ----------------------------------------------------------------------------- tool shapes


def test_codex_tools_are_accepted_and_a_namespaced_call_round_trips(srv, caplog):
    url, app, scripts, tok = srv
    caplog.set_level(logging.INFO, logger="mlx_oss.server")
    args = '{"message":"list the files"}'
    scripts.push(call(tok, "multi_agent_v1.spawn_agent", args, analysis="Delegate it."))
    body = {"model": MODEL_ID, "instructions": "You are Codex.", "input": [{"type": "message", "role": "user",
            "content": [{"type": "input_text", "text": "ls please"}]}], "tools": CODEX_TOOLS, "tool_choice": "auto",
            "parallel_tool_calls": False, "reasoning": {"effort": "low", "summary": "auto"}, "store": False,
            "stream": True, "include": ["reasoning.encrypted_content"]}  # fmt: skip
    r = httpx.post(url + "/responses", json=body, timeout=120)
    assert r.status_code == 200, r.text
    events = sse(r.text)
    assert events[-1][0] == "response.completed"
    done = [e["item"] for k, e in events if k == "response.output_item.done"]
    assert [i["type"] for i in done] == ["reasoning", "function_call"]
    fc = done[1]
    assert (fc["name"], fc["namespace"], fc["arguments"], fc["status"]) == ("spawn_agent", "multi_agent_v1", args, "completed")
    prompt = prompt_text(app, tok)
    # the namespace is its own developer section, the custom tool a function of one string, the offline
    # web search and the image generation tool are left out
    assert "## multi_agent_v1\n\n// Tools to run sub-agents.\nnamespace multi_agent_v1 {\n\n// Spawn a sub-agent.\n" in prompt
    assert "type spawn_agent = (_: {\nmessage: string,\n}) => any;" in prompt and "} // namespace multi_agent_v1" in prompt
    assert "type apply_patch = (_: {\ninput: string,\n}) => any;" in prompt and "*** Begin Patch" in prompt
    assert "## browser" not in prompt and "image_generation" not in prompt
    assert any("image_generation" in m and "tools[4]" in m for m in caplog.messages)
    assert any("external_web_access" in m for m in caplog.messages)
    # turn 2 (stateless): the call comes back with its namespace, then its output
    reasoning = done[0]
    scripts.push(reply(tok, final="Done."))
    body2 = {**body, "stream": False, "input": [*body["input"], {"type": "reasoning", "summary": reasoning["summary"],
             "encrypted_content": reasoning["encrypted_content"]},
             {"type": "function_call", "name": "spawn_agent", "namespace": "multi_agent_v1", "arguments": args,
              "call_id": fc["call_id"]},
             {"type": "function_call_output", "call_id": fc["call_id"], "output": "agent_1 started"}]}  # fmt: skip
    out = ok(post(url, "/responses", body2))
    assert out["output"][-1]["content"][0]["text"] == "Done."
    prompt = prompt_text(app, tok)
    assert ("<|start|>assistant<|channel|>analysis<|message|>Delegate it.<|end|>"
            f"<|start|>assistant to=multi_agent_v1.spawn_agent<|channel|>commentary <|constrain|>json<|message|>{args}<|call|>"
            "<|start|>multi_agent_v1.spawn_agent to=assistant<|channel|>commentary<|message|>agent_1 started<|end|>") in prompt


def test_namespace_developer_message_is_token_exact_with_openai_harmony():
    oh = pytest.importorskip("openai_harmony")
    from mlx_oss import tokenizer as tk

    enc = tk.load_tokenizer()
    ns = ToolNamespace("multi_agent_v1", "Tools to run sub-agents.\nTwo lines.",
                       (ToolDescription("spawn_agent", "Spawn.\nIn parallel.", SPAWN["parameters"]),
                        ToolDescription("wait", "Wait.", WAIT["parameters"])))  # fmt: skip
    other = ToolNamespace("mcp__docs", "Docs.", (ToolDescription("search", "", {"type": "object", "properties": {}}),))
    fn = ToolDescription("get_weather", "Weather", {"type": "object", "properties": {"city": {"type": "string"}}})
    dev = Message.developer("Be brief.", functions=[fn], tools=[ns, other])
    ours = render_conversation([Message.system(), dev, Message.user("hi")], encoding=enc)

    def space(n: ToolNamespace):
        return oh.ToolNamespaceConfig(name=n.name, description=n.description,
                                      tools=[oh.ToolDescription.new(t.name, t.description, parameters=t.parameters)
                                             for t in n.tools])  # fmt: skip

    content = oh.DeveloperContent.new().with_instructions("Be brief.")
    for n in (space(ns), space(other), space(ToolNamespace.functions([fn]))):
        content = content.with_tools(n)
    convo = oh.Conversation.from_messages([
        oh.Message.from_role_and_content(oh.Role.SYSTEM, oh.SystemContent.new()),
        oh.Message.from_role_and_content(oh.Role.DEVELOPER, content),
        oh.Message.from_role_and_content(oh.Role.USER, "hi"),
    ])  # fmt: skip
    theirs = oh.load_harmony_encoding(oh.HarmonyEncodingName.HARMONY_GPT_OSS).render_conversation(convo)
    assert ours == list(theirs)


def test_custom_tool_call_round_trips_as_custom_tool_call_items(srv):
    url, app, scripts, tok = srv
    patch = "*** Begin Patch\n*** Add File: a.txt\n+hi\n*** End Patch\n"
    args = json.dumps({"input": patch})
    scripts.push(call(tok, "functions.apply_patch", args))
    body = {"model": MODEL_ID, "input": "add a.txt", "tools": [APPLY_PATCH], "stream": True}
    events = sse(httpx.post(url + "/responses", json=body, timeout=120).text)
    kinds = [k for k, _ in events]
    assert "response.custom_tool_call_input.done" in kinds and "response.function_call_arguments.delta" not in kinds
    item = next(e["item"] for k, e in events if k == "response.output_item.done")
    assert item["type"] == "custom_tool_call" and item["name"] == "apply_patch" and item["input"] == patch
    assert "namespace" not in item and item["call_id"].startswith("call_")
    final = events[-1][1]["response"]
    assert final["output"][0]["input"] == patch
    # the openai SDK parses it as its ResponseCustomToolCall; a named custom tool_choice forces the call
    scripts.push(reply(tok, final="No."), AfterHeader(tok, args))
    client = openai.OpenAI(base_url=url, api_key="x", max_retries=0, timeout=120)
    r = client.responses.create(model=MODEL_ID, input="add a.txt", tools=[APPLY_PATCH], max_output_tokens=200,
                                tool_choice={"type": "custom", "name": "apply_patch"})  # fmt: skip
    assert r.output[-1].type == "custom_tool_call" and r.output[-1].input == patch
    # sent back with its output: the call and the result are rendered as the model saw them
    scripts.push(reply(tok, final="Added."))
    out = ok(post(url, "/responses", {"model": MODEL_ID, "tools": [APPLY_PATCH], "input": [
        {"type": "message", "role": "user", "content": "add a.txt"},
        {"type": "custom_tool_call", "call_id": "c1", "name": "apply_patch", "input": patch},
        {"type": "custom_tool_call_output", "call_id": "c1", "output": "Done!"}]}))  # fmt: skip
    assert out["status"] == "completed"
    prompt = prompt_text(app, tok)
    assert ("<|start|>assistant to=functions.apply_patch<|channel|>commentary <|constrain|>json"
            f"<|message|>{args}<|call|>") in prompt
    assert "<|start|>functions.apply_patch to=assistant<|channel|>commentary<|message|>Done!<|end|>" in prompt
    # a custom tool whose grammar has no definition
    bad = {**APPLY_PATCH, "format": {"type": "grammar", "syntax": "lark"}}
    error(post(url, "/responses", {"model": MODEL_ID, "input": "x", "tools": [bad]}), "tools[0].format.definition")


def test_local_shell_call_round_trips(srv):
    url, app, scripts, tok = srv
    scripts.push(call(tok, "functions.local_shell", '{"command":["ls","-la"],"workdir":"/tmp","timeout_ms":5000}'))
    out = ok(post(url, "/responses", {"model": MODEL_ID, "input": "ls", "tools": [{"type": "local_shell"}]}))
    item = out["output"][0]
    assert item["type"] == "local_shell_call" and item["status"] == "completed"
    assert item["action"] == {"type": "exec", "command": ["ls", "-la"], "env": {}, "timeout_ms": 5000,
                              "working_directory": "/tmp", "user": None}  # fmt: skip
    assert "type local_shell = (_: {" in prompt_text(app, tok)
    scripts.push(reply(tok, final="Two files."))
    ok(post(url, "/responses", {"model": MODEL_ID, "tools": [{"type": "local_shell"}], "input": [
        {"type": "message", "role": "user", "content": "ls"}, item,
        {"type": "local_shell_call_output", "id": item["call_id"], "output": "a\nb"}]}))  # fmt: skip
    prompt = prompt_text(app, tok)
    assert ('to=functions.local_shell<|channel|>commentary <|constrain|>json<|message|>'
            '{"command": ["ls", "-la"], "workdir": "/tmp", "timeout_ms": 5000}<|call|>') in prompt
    assert "<|start|>functions.local_shell to=assistant<|channel|>commentary<|message|>a\nb<|end|>" in prompt


def test_tool_choice_names_a_namespaced_function(srv):
    url, app, scripts, tok = srv
    scripts.push(reply(tok, final="No."), AfterHeader(tok, '{"message":"go"}'))
    named = {"type": "function", "name": "wait", "namespace": "multi_agent_v1"}
    out = ok(post(url, "/responses", {"model": MODEL_ID, "input": "x", "tools": [NAMESPACE], "max_output_tokens": 64,
                                      "tool_choice": named}))  # fmt: skip
    fc = [o for o in out["output"] if o["type"] == "function_call"]
    assert fc and (fc[-1]["name"], fc[-1]["namespace"]) == ("wait", "multi_agent_v1")
    assert "to=multi_agent_v1.wait<|channel|>commentary <|constrain|>json<|message|>" in prompt_text(app, tok)
    error(post(url, "/responses", {"model": MODEL_ID, "input": "x", "tools": [NAMESPACE],
                                   "tool_choice": {"type": "function", "name": "wait"}}), "tool_choice")  # fmt: skip


@pytest.mark.parametrize("tool,param", [
    ({"type": "namespace", "name": "bad name", "description": "", "tools": [SPAWN]}, "tools[0].name"),
    ({"type": "namespace", "name": "ns.x", "description": "", "tools": [SPAWN]}, "tools[0].name"),
    ({"type": "namespace", "name": "ns", "description": "", "tools": [{"type": "local_shell"}]}, "tools[0].tools[0].type"),
    ({"type": "namespace", "name": "ns", "description": "", "tools": [SPAWN, SPAWN]}, "tools[0].tools[1]"),
    ({"type": "namespace", "name": "ns", "description": "", "tools": [{**SPAWN, "parameters": {"type": 3}}]},
     "tools[0].tools[0]"),
    ({"type": "custom", "name": "x", "format": {"type": "grammar", "syntax": "peg", "definition": "a"}},
     "tools[0].format.syntax"),
    ({"type": "custom", "name": "x", "format": {"type": "json"}}, "tools[0].format.type"),
    ({"type": "custom"}, "tools[0].name"),
    ({"type": "namespace", "name": "ns", "description": "", "tools": [{**SPAWN, "name": 7}]}, "tools[0].tools[0].name"),
    ({"type": "web_search", "external_web_access": "no"}, "tools[0].external_web_access"),
])  # fmt: skip
def test_malformed_new_tool_shapes_are_a_400_naming_the_field(srv, tool, param):
    error(post(srv[0], "/responses", {"model": MODEL_ID, "input": "x", "tools": [tool]}), param)


def test_a_namespace_named_like_a_listed_builtin_or_functions(srv):
    url, app, scripts, tok = srv
    clash = {"type": "namespace", "name": "browser", "description": "", "tools": [SPAWN]}
    error(post(url, "/responses", {"model": MODEL_ID, "input": "x", "tools": [clash, {"type": "web_search"}]}), "tools")
    # `functions`: its tools are the plain function tools, their calls plain function calls
    scripts.push(call(tok, "functions.spawn_agent", '{"message":"m"}'))
    plain = {"type": "namespace", "name": "functions", "description": "Functions.", "tools": [SPAWN]}
    out = ok(post(url, "/responses", {"model": MODEL_ID, "input": "x", "tools": [plain]}))
    assert out["output"][0]["name"] == "spawn_agent" and "namespace" not in out["output"][0]
    assert "## functions\n\nnamespace functions {" in prompt_text(app, tok)


@pytest.mark.parametrize("kind", ["file_search", "mcp", "image_generation", "computer_use_preview", "tool_search",
                                  "shell", "apply_patch", "a_type_from_the_future"])  # fmt: skip
def test_tools_the_model_cannot_use_are_dropped_with_a_warning(srv, caplog, kind):
    url, app, scripts, tok = srv
    caplog.set_level(logging.WARNING, logger="mlx_oss.server")
    scripts.push(reply(tok, final="ok"))
    tools = [{"type": kind, "server_label": "x", "vector_store_ids": ["vs"]}, SHELL]
    out = ok(post(url, "/responses", {"model": MODEL_ID, "input": "hi", "tools": tools}))
    assert out["output"][-1]["content"][0]["text"] == "ok" and out["tools"] == tools
    assert any(f"tools[0] {kind!r}" in m for m in caplog.messages), caplog.messages
    assert "## functions" in prompt_text(app, tok)


def test_web_search_with_external_web_access_false_leaves_the_browser_out(srv):
    url, app, scripts, tok = srv
    sessions = len(app.state.sessions)
    scripts.push(reply(tok, final="ok"))
    ok(post(url, "/responses", {"model": MODEL_ID, "input": "hi", "tools": [WEB_OFFLINE]}))
    assert "## browser" not in prompt_text(app, tok)
    assert len(app.state.sessions) == sessions  # no browser session was made (store=true would keep one)
    scripts.push(reply(tok, final="ok"))
    ok(post(url, "/responses", {"model": MODEL_ID, "input": "hi", "store": False,
                                "tools": [{"type": "web_search", "external_web_access": True}]}))  # fmt: skip
    assert "## browser" in prompt_text(app, tok)


# ----------------------------------------------------------------------------- items by reference


def test_item_reference_resolves_stored_items(srv):
    url, app, scripts, tok = srv
    scripts.push(reply(tok, analysis="Need the weather.", call=("shell", '{"command":["date"]}')))
    first = ok(post(url, "/responses", {"model": MODEL_ID, "tools": [SHELL], "input": [
        {"type": "message", "id": "msg_client_1", "role": "user", "content": "what time is it?"}]}))  # fmt: skip
    rs, fc = first["output"]
    assert rs["type"] == "reasoning" and fc["type"] == "function_call"
    # step 2 of the Vercel AI SDK's tool loop: the reasoning by reference, the call and its output in full
    scripts.push(reply(tok, final="Noon."))
    second = ok(post(url, "/responses", {"model": MODEL_ID, "tools": [SHELL], "input": [
        {"type": "item_reference", "id": "msg_client_1"}, {"type": "item_reference", "id": rs["id"]},
        {"type": "function_call", "call_id": fc["call_id"], "name": "shell", "arguments": fc["arguments"], "id": fc["id"]},
        {"type": "function_call_output", "call_id": fc["call_id"], "output": "12:00"}]}))  # fmt: skip
    assert second["status"] == "completed"
    prompt = prompt_text(app, tok)
    assert "<|start|>user<|message|>what time is it?<|end|>" in prompt
    assert "<|channel|>analysis<|message|>Need the weather.<|end|>" in prompt  # kept: the tool call goes on
    assert "<|start|>functions.shell to=assistant<|channel|>commentary<|message|>12:00<|end|>" in prompt
    # a referenced function call (by the item id of the stored call), and an id that is not stored
    scripts.push(reply(tok, final="Noon again."))
    ok(post(url, "/responses", {"model": MODEL_ID, "tools": [SHELL], "input": [
        {"type": "item_reference", "id": "msg_client_1"}, {"type": "item_reference", "id": fc["id"]},
        {"type": "function_call_output", "call_id": fc["call_id"], "output": "12:01"}]}))  # fmt: skip
    r = post(url, "/responses", {"model": MODEL_ID, "input": [{"type": "message", "role": "user", "content": "x"},
                                                              {"type": "item_reference", "id": "rs_nope"}]})  # fmt: skip
    err = error(r, "input[1].id", "item_not_found")
    assert "rs_nope" in err["message"]
    error(post(url, "/responses", {"model": MODEL_ID, "input": [{"type": "item_reference"}]}), "input[0].id", "item_not_found")


def test_previous_response_id_with_empty_input(srv):
    url, app, scripts, tok = srv
    scripts.push(reply(tok, final="First."))
    first = ok(post(url, "/responses", {"model": MODEL_ID, "input": "one"}))
    scripts.push(reply(tok, final="Second."))
    client = openai.OpenAI(base_url=url, api_key="x", max_retries=0, timeout=120)
    r = client.responses.create(model=MODEL_ID, input=[], previous_response_id=first["id"])
    assert r.output_text == "Second." and r.previous_response_id == first["id"]
    turn1 = "<|start|>user<|message|>one<|end|><|start|>assistant<|channel|>final<|message|>First.<|end|>"
    assert turn1 in prompt_text(app, tok)
    error(post(url, "/responses", {"model": MODEL_ID, "input": []}), "input")
    # an error in a new item names the client's own index, not one shifted by the previous response's items
    r = post(url, "/responses", {"model": MODEL_ID, "previous_response_id": first["id"],
                                 "input": [{"type": "function_call_output", "call_id": "nope", "output": "1"}]})  # fmt: skip
    error(r, "input[0].call_id")


# ----------------------------------------------------------------------------- reasoning for stateless clients


def test_encrypted_content_keeps_reasoning_for_store_false_clients(srv):
    url, app, scripts, tok = srv
    scripts.push(reply(tok, analysis="Call the tool first.", call=("shell", '{"command":["ls"]}')))
    body = {"model": MODEL_ID, "tools": [SHELL], "store": False, "include": ["reasoning.encrypted_content"],
            "input": [{"type": "message", "role": "user", "content": "ls"}]}  # fmt: skip
    out = ok(post(url, "/responses", body))
    rs, fc = out["output"]
    sealed = rs["encrypted_content"]
    assert isinstance(sealed, str) and sealed and "Call the tool first." not in sealed
    assert not ok_get(url, out["id"])  # not stored
    # sent back as the Vercel AI SDK does with store: false (summary + encrypted_content, no content)
    scripts.push(reply(tok, final="One file."))
    back = {"type": "reasoning", "id": rs["id"], "summary": [], "encrypted_content": sealed}
    rest = [{"type": "function_call", "call_id": fc["call_id"], "name": "shell", "arguments": fc["arguments"]},
            {"type": "function_call_output", "call_id": fc["call_id"], "output": "a.txt"}]  # fmt: skip
    ok(post(url, "/responses", {**body, "input": [*body["input"], back, *rest]}))
    assert "<|channel|>analysis<|message|>Call the tool first.<|end|>" in prompt_text(app, tok)
    # altered, foreign (another server's key) or not ours at all: a 400 naming the field
    flipped = sealed[:-3] + ("A" if sealed[-3] != "A" else "B") + sealed[-2:]
    for bad in (flipped, ReasoningSeal(b"another server").seal("Call the tool first."), "gAAAAABo-openai-blob", ""):
        r = post(url, "/responses", {**body, "input": [*body["input"], {**back, "encrypted_content": bad}, *rest]})
        error(r, "input[1].encrypted_content", "invalid_encrypted_content")
    # without the include, no encrypted_content
    scripts.push(reply(tok, analysis="Hmm.", final="Hi."))
    out = ok(post(url, "/responses", {"model": MODEL_ID, "input": "hi", "store": False}))
    assert "encrypted_content" not in out["output"][0]


def ok_get(url: str, response_id: str) -> bool:
    return httpx.get(f"{url}/responses/{response_id}", timeout=30).status_code == 200


def test_the_state_key_seals_the_same_way_across_server_starts():
    a, b = ReasoningSeal("k1"), ReasoningSeal("k1")
    assert b.open(a.seal("héllo\nwörld")) == "héllo\nwörld"
    assert ReasoningSeal("k2").open(a.seal("x")) is None and ReasoningSeal().open(ReasoningSeal().seal("x")) is None
    assert a.open(a.seal("")) == ""


def test_reasoning_summary_is_the_raw_analysis(srv):
    url, app, scripts, tok = srv
    scripts.push(reply(tok, analysis="Think about it.", final="Done."))
    r = httpx.post(url + "/responses", json={"model": MODEL_ID, "input": "hi", "stream": True,
                                            "reasoning": {"effort": "low", "summary": "auto"}}, timeout=120)  # fmt: skip
    events = sse(r.text)
    deltas = "".join(e["delta"] for k, e in events if k == "response.reasoning_summary_text.delta")
    assert deltas == "Think about it."
    kinds = [k for k, _ in events]
    assert kinds.index("response.reasoning_summary_part.added") < kinds.index("response.reasoning_summary_text.done") \
        < kinds.index("response.reasoning_summary_part.done")  # fmt: skip
    final = events[-1][1]["response"]
    assert final["output"][0]["summary"] == [{"type": "summary_text", "text": "Think about it."}]
    assert final["reasoning"]["summary"] == "auto"
    # the openai SDK's stream accumulator and its non-streaming parse agree
    client = openai.OpenAI(base_url=url, api_key="x", max_retries=0, timeout=120)
    scripts.push(reply(tok, analysis="Think about it.", final="Done."))
    with client.responses.stream(model=MODEL_ID, input="hi", reasoning={"summary": "detailed"}) as s:
        got = s.get_final_response()
    assert got.output[0].summary[0].text == "Think about it." and got.output_text == "Done."
    scripts.push(reply(tok, analysis="Think.", final="Done."))
    out = ok(post(url, "/responses", {"model": MODEL_ID, "input": "hi", "reasoning": {"summary": "none"}}))
    assert out["output"][0]["summary"] == [] and out["reasoning"]["summary"] is None
    error(post(url, "/responses", {"model": MODEL_ID, "input": "hi", "reasoning": {"summary": "brief"}}), "reasoning.summary")


# ----------------------------------------------------------------------------- request options


def test_json_object_format_is_rendered_in_both_apis(srv):
    url, app, scripts, tok = srv
    client = openai.OpenAI(base_url=url, api_key="x", max_retries=0, timeout=120)
    expected = '# Response Formats\n\n## json_object\n\n// Reply with one JSON object.\n{"type":"object"}<|end|>'
    scripts.push(reply(tok, final='{"a":1}'))  # compact: json_object is enforced, and its documents have no spaces
    r = client.responses.create(model=MODEL_ID, input="JSON please", text={"format": {"type": "json_object"}})
    assert json.loads(r.output_text) == {"a": 1} and r.text.format.type == "json_object"
    assert expected in prompt_text(app, tok)
    scripts.push(reply(tok, final='{"b":2}'))
    c = client.chat.completions.create(model=MODEL_ID, messages=[{"role": "user", "content": "JSON please"}],
                                       response_format={"type": "json_object"})  # fmt: skip
    assert json.loads(c.choices[0].message.content) == {"b": 2}
    assert expected in prompt_text(app, tok)


def test_truncation_auto_drops_the_oldest_turns(srv):
    url, app, scripts, tok = srv
    turns = []
    for n in range(4):  # each turn ~300 tokens: 4 do not fit 1024
        turns += [{"type": "message", "role": "user", "content": f"turn{n} " + "word " * 300},
                  {"type": "message", "role": "assistant", "content": f"answer{n}"}]  # fmt: skip
    body = {"model": MODEL_ID, "input": [*turns, {"type": "message", "role": "user", "content": "last question"}],
            "instructions": "Keep me."}  # fmt: skip
    err = error(post(url, "/responses", body), "messages", "context_length_exceeded")
    assert "1024" in err["message"]
    scripts.push(reply(tok, final="ok"))
    out = ok(post(url, "/responses", {**body, "truncation": "auto"}))
    assert out["truncation"] == "auto" and out["usage"]["input_tokens"] < 1024
    prompt = prompt_text(app, tok)
    assert "Keep me." in prompt and "last question" in prompt and "turn3 " in prompt and "answer3" in prompt
    assert "turn0 " not in prompt and "answer0" not in prompt
    # as few turns as needed were dropped: keeping one more does not fit
    kept = min(n for n in range(4) if f"turn{n} " in prompt)
    assert all(f"turn{n} " in prompt for n in range(kept, 4))
    one_more = {**body, "input": [*turns[2 * (kept - 1) :], body["input"][-1]]}
    error(post(url, "/responses", one_more), "messages", "context_length_exceeded")
    # the last turn alone does not fit: still a 400
    huge = {"model": MODEL_ID, "truncation": "auto", "input": [*turns[:2], {"type": "message", "role": "user",
            "content": "word " * 1100}]}  # fmt: skip
    error(post(url, "/responses", huge), "input", "context_length_exceeded")
    error(post(url, "/responses", {**body, "truncation": "middle"}), "truncation")


def test_logit_bias_is_honoured_in_both_apis(srv):
    url, app, scripts, tok = srv
    z = tok.encode_ordinary("Z")[0]
    out = ok(post(url, "/responses", {"model": MODEL_ID, "input": "hi", "temperature": 0, "max_output_tokens": 3,
                                      "logit_bias": {str(z): 100}}))  # fmt: skip
    assert app.state.backend.engine.tokens[-3:] == [z, z, z]
    assert out["usage"]["output_tokens"] == 3
    ok(post(url, "/chat/completions", {"model": MODEL_ID, "messages": [{"role": "user", "content": "hi"}],
                                       "temperature": 0, "max_tokens": 2, "logit_bias": {str(z): 100}}))  # fmt: skip
    assert app.state.backend.engine.tokens[-2:] == [z, z]
    # without the bias the same greedy request writes something else
    ok(post(url, "/chat/completions", {"model": MODEL_ID, "messages": [{"role": "user", "content": "hi"}],
                                       "temperature": 0, "max_tokens": 2}))  # fmt: skip
    assert app.state.backend.engine.tokens[-2:] != [z, z]
    for path, key in (("/responses", "input"), ("/chat/completions", "messages")):
        base = {"model": MODEL_ID, key: "hi" if key == "input" else [{"role": "user", "content": "hi"}]}
        error(post(url, path, {**base, "logit_bias": {"201088": 1}}), "logit_bias")
        error(post(url, path, {**base, "logit_bias": {"abc": 1}}), "logit_bias")
        error(post(url, path, {**base, "logit_bias": {"007": 1}}), "logit_bias")
        error(post(url, path, {**base, "logit_bias": {"5": 101}}), "logit_bias.5")
        error(post(url, path, {**base, "logit_bias": {"5": "high"}}), "logit_bias.5")
