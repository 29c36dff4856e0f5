"""The Responses API without HTTP (`mlx_oss/server/responses.py`): a body that passed the schema becomes a
`ResponsesRequest` (every input item kind, `previous_response_id` / `item_reference` through
`StoredResponses`, reasoning sealed by `ReasoningSeal`, each setting as its Turn field and echo), each
refusal as its one line with its `param`; the byte-bounded store; and generation events (as
mlx_oss/server/generation.py emits them) become the response object and its stream events, field by field.
The server tests cover the same over HTTP; these make a broken line fail in milliseconds."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import pytest

from mlx_oss.events import Citation, ToolResult
from mlx_oss.harmony import ANALYSIS, COMMENTARY, Message, ReasoningEffort, ResponseFormat
from mlx_oss.sampling import SamplingConfig
from mlx_oss.server.builtin import ServerTools
from mlx_oss.server.conversation import JSON_OBJECT
from mlx_oss.server.errors import APIError
from mlx_oss.server.generation import (
    BROWSER_CALL,
    FUNCTION_CALL,
    MESSAGE,
    PYTHON_CALL,
    REASONING,
    Finished,
    ItemDelta,
    ItemDone,
    ItemStarted,
    ToolDone,
    Usage,
)
from mlx_oss.server.responses import (
    ENCRYPTED,
    LOGPROBS,
    OutputOptions,
    ReasoningSeal,
    ResponseBuilder,
    StoredResponses,
    _image,
    _json_size,
    parse_request,
    slim_item,
    url_citation,
    web_search_action,
)
from mlx_oss.server.tools import CUSTOM, FUNCTION, LOCAL_SHELL, CallKind, ToolChoice, shell_action
from refusals import refusal_line

BASE = SamplingConfig(temperature=0.6, top_p=0.95)
GET = {"type": "function", "name": "get", "parameters": {"type": "object", "properties": {}}}
USER = {"type": "message", "role": "user", "content": "q"}


def req(input, stored: StoredResponses | None = None, builtin: ServerTools | None = None, **kw):
    return parse_request({"model": "m", "input": input, **kw}, stored if stored is not None else StoredResponses(), BASE, builtin)


def refusal(body: dict, stored: StoredResponses | None = None, builtin: ServerTools | None = None, status: int = 400):
    stored = stored if stored is not None else StoredResponses()
    return refusal_line(parse_request, {"model": "m", **body}, stored, BASE, builtin, status=status)


# ----------------------------------------------------------------------------- parse_request: input items


def test_a_string_input_is_one_user_message_and_the_defaults_echoed():
    r = req("Hi")
    assert r.turn.history == (Message.user("Hi"),) and r.turn.instructions is None
    assert r.items == [{"type": "message", "role": "user", "content": "Hi"}]
    assert (r.stream, r.store, r.previous, r.max_calls) == (False, True, None, 0)
    t = r.turn
    assert (t.effort, t.response_format, t.max_tokens, t.truncate, t.logit_bias) == (ReasoningEffort.MEDIUM, None, None, False, ())
    assert (t.sampling.temperature, t.sampling.top_p, t.sampling.logprobs) == (0.6, 0.95, None)
    assert t.tool_choice == ToolChoice() and not t.tools.client_tools
    assert dict(r.echo) == {
        "instructions": None, "max_output_tokens": None, "previous_response_id": None,
        "reasoning": {"effort": "medium", "summary": None}, "temperature": 0.6, "top_p": 0.95,
        "text": {"format": {"type": "text"}}, "tool_choice": "auto", "tools": [], "parallel_tool_calls": True,
        "metadata": {}, "store": True, "truncation": "disabled", "user": None, "max_tool_calls": None,
    }  # fmt: skip
    assert r.echo.options == OutputOptions()


def test_messages_of_every_role_become_the_history_and_instructions():
    r = req([
        {"type": "message", "role": "system", "content": "Be brief."},
        {"role": "developer", "content": [{"type": "input_text", "text": "Metric "}, {"type": "text", "text": "units."}]},
        {"role": "user", "id": "msg_u", "content": [{"type": "input_text", "text": "Weather?"}, "!"]},  # an id, no type: a message
        {"type": "message", "role": "assistant", "reasoning_content": "Look it up.",
         "content": [{"type": "output_text", "text": "Mild.", "annotations": []}]},
        {"role": "assistant", "thinking": "", "content": [{"type": "refusal", "text": "No."}]},
        {"role": "user", "content": None},
    ], instructions="Top.")  # fmt: skip
    assert r.turn.instructions == "Top.\n\nBe brief.\n\nMetric units."
    assert r.turn.history == (
        Message.user("Weather?!"),
        Message.assistant("Look it up.", channel=ANALYSIS),
        Message.assistant("Mild."),
        Message.assistant("No."),
        Message.user(""),
    )
    assert r.echo["instructions"] == "Top."
    assert req("q", instructions="").turn.instructions is None


def test_reasoning_items_from_content_summary_or_encrypted_content():
    stored = StoredResponses(state_key="k")
    sealed = stored.seal.seal("Sealed thought.")
    r = req([
        USER,
        {"type": "reasoning", "id": "rs_1", "content": [{"type": "reasoning_text", "text": "A "}, {"type": "reasoning_text", "text": "b."}]},
        {"type": "reasoning", "id": "rs_2", "summary": [{"type": "summary_text", "text": "S1 "}, {"type": "summary_text", "text": None}, {"type": "summary_text", "text": "S2"}]},
        {"type": "reasoning", "id": "rs_3", "summary": [{"type": "summary_text", "text": "ignored"}], "content": "Plain."},
        {"type": "reasoning", "id": "rs_4", "encrypted_content": sealed, "content": [{"type": "reasoning_text", "text": "not this"}], "summary": []},
        {"type": "reasoning", "id": "rs_5", "summary": [], "content": []},
        {"role": "assistant", "content": "A."},
    ], stored)  # fmt: skip
    a = lambda t: Message.assistant(t, channel=ANALYSIS)  # noqa: E731
    assert r.turn.history == (Message.user("q"), a("A b."), a("S1 S2"), a("Plain."), a("Sealed thought."), Message.assistant("A."))
    # what a stored response keeps: the text moved into `content`
    assert r.items[2] == {"type": "reasoning", "id": "rs_2", "summary": r.items[2]["summary"],
                          "content": [{"type": "reasoning_text", "text": "S1 S2"}]}  # fmt: skip
    assert r.items[4] == {"type": "reasoning", "id": "rs_4", "content": [{"type": "reasoning_text", "text": "Sealed thought."}]}
    assert r.items[5] == {"type": "reasoning", "id": "rs_5", "summary": [], "content": []}


def test_a_code_call_that_never_ran_is_left_out_when_sent_back():
    """A python call cut off or past the call limit (status incomplete, no outputs) never ran: sent back, it
    must not read as code that printed nothing."""
    code = {"type": "code_interpreter_call", "id": "ci_1", "code": "import os", "outputs": None, "container_id": "c"}
    r = req([USER, {**code, "status": "incomplete"}, {"role": "assistant", "content": "A."}])
    assert r.turn.history == (Message.user("q"), Message.assistant("A."))
    ran = req([USER, {**code, "status": "completed", "outputs": [{"type": "logs", "logs": "ok"}]}]).turn.history
    assert [m.text for m in ran[1:]] == ["import os", "ok"]


def test_a_null_type_is_a_message_and_string_parts_of_reasoning_count():
    """Fields the schema lets through as null or as strings read as OpenAI reads them."""
    r = req([{"type": None, "role": "user", "content": "hi"},
             {"type": "reasoning", "content": ["thought ", {"type": "reasoning_text"}, {"type": "reasoning_text", "text": "more"}],
              "summary": [{"type": "summary_text", "text": "not this"}]}])  # fmt: skip
    assert r.turn.history == (Message.user("hi"), Message.assistant("thought more", channel=ANALYSIS))
    assert req("q", parallel_tool_calls=None).echo["parallel_tool_calls"] is True  # a boolean, as OpenAI's object has
    assert req("q", parallel_tool_calls=False).echo["parallel_tool_calls"] is False


@pytest.mark.parametrize("bad", ["", "garbage", "mlxoss-r1.!!!", "mlxoss-r1.AAAA", "mlxoss-r1.é",
                                 ReasoningSeal("another").seal("x"), "gAAAAABo-openai-blob"])  # fmt: skip
def test_a_foreign_or_altered_encrypted_content_is_refused(bad):
    stored = StoredResponses(state_key="k")
    items = [USER, {"type": "reasoning", "summary": [], "encrypted_content": bad}]
    assert refusal({"input": items}, stored) == (
        "input[1].encrypted_content was not made by this server, or was altered (reasoning sealed by a server with "
        "another state key, e.g. before a restart without --state-key)", "input[1].encrypted_content")  # fmt: skip
    with pytest.raises(APIError) as e:
        req(items, stored)
    assert e.value.code == "invalid_encrypted_content"


def test_function_calls_answered_out_of_order_and_namespaced():
    r = req([
        USER,
        {"type": "function_call", "call_id": "c1", "name": "get", "arguments": '{"a": 1}'},
        {"type": "function_call", "call_id": "c2", "name": "spawn_agent", "namespace": "multi_agent_v1", "arguments": "{}"},
        {"type": "function_call", "call_id": "c3", "name": "put", "namespace": "functions"},
        {"type": "function_call", "call_id": "c4", "name": "rm", "namespace": ""},
        {"type": "function_call_output", "call_id": "c2", "output": "spawned"},
        {"type": "function_call_output", "call_id": "c1", "output": [{"type": "input_text", "text": "mi"}, {"type": "output_text", "text": "ld"}]},
        {"type": "function_call_output", "call_id": "c3", "output": None},
        {"type": "function_call_output", "call_id": "c4", "output": [{"type": "text", "text": "gone"}]},
    ])  # fmt: skip
    assert r.turn.history[1:] == (
        Message.tool_call("functions.get", '{"a": 1}'),
        Message.tool_call("multi_agent_v1.spawn_agent", "{}"),
        Message.tool_call("functions.put", ""),
        Message.tool_call("functions.rm", ""),
        Message.tool_result("multi_agent_v1.spawn_agent", "spawned"),
        Message.tool_result("functions.get", "mild"),
        Message.tool_result("functions.put", ""),
        Message.tool_result("functions.rm", "gone"),
    )


def test_custom_and_local_shell_calls_and_their_outputs():
    action = {"type": "exec", "command": ["ls", "-l"], "working_directory": "/w", "timeout_ms": 500, "env": {}}
    r = req([
        USER,
        {"type": "custom_tool_call", "call_id": "p1", "name": "apply_patch", "input": "*** Begin Patch"},
        {"type": "custom_tool_call", "call_id": "p2", "name": "edit", "namespace": "ed", "input": ""},
        {"type": "local_shell_call", "id": "lsh_1", "call_id": "s1", "action": action},
        {"type": "local_shell_call", "id": "lsh_2", "action": None},
        {"type": "custom_tool_call_output", "call_id": "p1", "output": "Done!"},
        {"type": "custom_tool_call_output", "call_id": "p2", "output": "ok"},
        {"type": "local_shell_call_output", "call_id": "s1", "output": "a.txt"},
        {"type": "local_shell_call_output", "id": "lsh_1", "output": "again by id"},
        {"type": "local_shell_call_output", "id": "lsh_2", "output": "b.txt"},
    ])  # fmt: skip
    assert r.turn.history[1:] == (
        Message.tool_call("functions.apply_patch", '{"input": "*** Begin Patch"}'),
        Message.tool_call("ed.edit", '{"input": ""}'),
        Message.tool_call("functions.local_shell", '{"command": ["ls", "-l"], "workdir": "/w", "timeout_ms": 500}'),
        Message.tool_call("functions.local_shell", '{"command": []}'),
        Message.tool_result("functions.apply_patch", "Done!"),
        Message.tool_result("ed.edit", "ok"),
        Message.tool_result("functions.local_shell", "a.txt"),
        Message.tool_result("functions.local_shell", "again by id"),
        Message.tool_result("functions.local_shell", "b.txt"),
    )


def test_built_in_call_items_render_as_stored_else_from_their_code():
    stored = StoredResponses()
    search = (Message.tool_call("browser.search", '{"query": "q"}', channel=ANALYSIS),
              Message.tool_result("browser.search", "page", channel=ANALYSIS))  # fmt: skip
    stored.put({"id": "r0", "output": []}, [USER], {"ws_1": search})
    r = req([
        USER,
        {"type": "web_search_call", "id": "ws_1", "status": "completed", "action": {"type": "search", "query": "q"}},
        {"type": "web_search_call", "id": "ws_unknown", "status": "completed"},
        {"type": "web_search_call", "status": "completed"},
        {"type": "code_interpreter_call", "id": "ci_1", "code": "print(1)", "container_id": "c",
         "outputs": [{"type": "logs", "logs": "1\n"}, {"type": "image", "url": "data:x"}, {"type": "logs", "logs": "2"}]},
        {"type": "code_interpreter_call", "id": "ci_2", "code": None, "outputs": None},
    ], stored)  # fmt: skip
    py = lambda code: Message.tool_call("python", code, channel=ANALYSIS, content_type="code")  # noqa: E731
    assert r.turn.history[1:] == (*search, py("print(1)"), Message.tool_result("python", "1\n2", channel=ANALYSIS),
                                  py(""), Message.tool_result("python", "", channel=ANALYSIS))  # fmt: skip


def test_item_references_are_replaced_by_the_stored_items():
    stored = StoredResponses(state_key="k")
    out = [{"id": "rs_9", "type": "reasoning", "summary": [], "content": [{"type": "reasoning_text", "text": "x"}],
            "encrypted_content": stored.seal.seal("Why.")},
           {"id": "fc_9", "type": "function_call", "status": "completed", "name": "get", "arguments": "{}", "call_id": "c9"}]  # fmt: skip
    stored.put({"id": "r1", "output": out}, [{"type": "message", "id": "in_1", "role": "user", "content": "q", "extra": 1}])
    r = req([{"type": "item_reference", "id": "in_1"}, {"id": "rs_9"}, {"type": "item_reference", "id": "fc_9"},
             {"type": "function_call_output", "call_id": "c9", "output": "r"}], stored)  # fmt: skip
    assert r.turn.history == (Message.user("q"), Message.assistant("Why.", channel=ANALYSIS),
                              Message.tool_call("functions.get", "{}"), Message.tool_result("functions.get", "r"))  # fmt: skip
    assert r.items[0] == {"type": "message", "id": "in_1", "role": "user", "content": "q"}  # as stored (slimmed)
    assert r.items[1] == {"type": "reasoning", "id": "rs_9", "content": [{"type": "reasoning_text", "text": "Why."}]}
    assert r.items[2] == out[1]


@pytest.mark.parametrize("item, ref", [({"type": "item_reference", "id": "nope"}, "'nope'"),
                                       ({"id": "x" * 150}, repr("x" * 100)),
                                       ({"type": "item_reference"}, "'None'")])  # fmt: skip
def test_an_unknown_item_reference_is_refused(item, ref):
    assert refusal({"input": [USER, item]}) == (
        f"input[1]: no item with id {ref} is stored on this server (store=true keeps the newest responses' input and "
        "output items)", "input[1].id")  # fmt: skip
    with pytest.raises(APIError) as e:
        req([item])
    assert e.value.code == "item_not_found"


SUPPORTED = ("message, reasoning, function_call, function_call_output, custom_tool_call, custom_tool_call_output, "
             "local_shell_call, local_shell_call_output, web_search_call, code_interpreter_call, item_reference")  # fmt: skip


@pytest.mark.parametrize("body, message, param", [
    ({}, "'input' is required", "input"),
    ({"input": None}, "'input' is required", "input"),
    ({"input": []}, "'input' must be a string or a non-empty array of items (an empty one only with 'previous_response_id')", "input"),
    ({"input": [{"role": "system", "content": "s"}]}, "'input' needs at least one user, assistant or tool item", "input"),
    ({"input": [{"type": "web_search_call", "id": "ws_x"}]}, "'input' needs at least one user, assistant or tool item", "input"),
    ({"input": [{"type": "reasoning", "content": []}]}, "'input' needs at least one user, assistant or tool item", "input"),
    ({"input": [USER, {"role": "tool", "content": "r"}]},
     "input[1].role must be user, assistant, system or developer, not 'tool'", "input[1].role"),
    ({"input": [{"type": "message", "content": "r"}]}, "input[0].role must be user, assistant, system or developer, not None", "input[0].role"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
     "input[0].content[0]: only text parts are supported (got 'input_image')", "input[0].content[0]"),
    ({"input": [USER, {"type": "image_generation_call", "id": "ig"}]}, f"input[1].type 'image_generation_call' is not supported ({SUPPORTED})", "input[1].type"),
    ({"input": [USER, {"type": "function_call", "call_id": "c", "arguments": "{}"}]},
     "input[1]: a function_call needs string 'name', 'arguments' and 'call_id'", "input[1]"),
    ({"input": [USER, {"type": "function_call", "name": "f", "call_id": "c", "arguments": None}]},
     "input[1]: a function_call needs string 'name', 'arguments' and 'call_id'", "input[1]"),
    ({"input": [USER, {"type": "function_call", "name": "f", "arguments": "{}"}]},
     "input[1]: a function_call needs string 'name', 'arguments' and 'call_id'", "input[1]"),
    ({"input": [USER, {"type": "custom_tool_call", "name": "f", "call_id": "c"}]},
     "input[1]: a custom_tool_call needs string 'name', 'input' and 'call_id'", "input[1]"),
    ({"input": [USER, {"type": "custom_tool_call", "name": "", "call_id": "c", "input": "x"}]},
     "input[1]: a custom_tool_call needs string 'name', 'input' and 'call_id'", "input[1]"),
    ({"input": [USER, {"type": "custom_tool_call", "name": "f", "input": "x"}]},
     "input[1]: a custom_tool_call needs string 'name', 'input' and 'call_id'", "input[1]"),
    ({"input": [USER, {"type": "local_shell_call", "action": {}}]}, "input[1]: a local_shell_call needs a 'call_id'", "input[1].call_id"),
    ({"input": [USER, {"type": "function_call_output", "call_id": "c9", "output": "r"}]},
     "input[1].call_id 'c9' does not match any earlier function_call", "input[1].call_id"),
    ({"input": [USER, {"type": "custom_tool_call_output", "id": "c9", "output": "r"}]},
     "input[1].call_id None does not match any earlier function_call", "input[1].call_id"),
    ({"input": [USER, {"type": "local_shell_call_output", "output": "r"}]},
     "input[1].call_id None does not match any earlier function_call", "input[1].call_id"),
    ({"input": [USER, {"type": "function_call_output", "call_id": "c1", "output": "r"},
                {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"}]},
     "input[1].call_id 'c1' does not match any earlier function_call", "input[1].call_id"),
    ({"input": [USER, {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "c", "output": [{"type": "input_file"}]}]},
     "input[2].output[0]: only text parts are supported (got 'input_file')", "input[2].output[0]"),
    ({"input": "q", "top_logprobs": 2}, "'top_logprobs' needs 'include': ['message.output_text.logprobs']", "top_logprobs"),
    ({"input": "q", "tool_choice": "required"}, "tool_choice 'required' needs at least one function tool in 'tools'", "tool_choice"),
    ({"input": "q", "reasoning": {"effort": "ultra"}},
     "reasoning.effort must be one of low, medium, high (none/minimal mean low, xhigh/max high), not 'ultra'", "reasoning.effort"),
    ({"input": "q", "text": {"format": {"type": "xml"}}},
     "text.format.type 'xml' is not supported (use 'text', 'json_object' or 'json_schema')", "text.format.type"),
    ({"input": "q", "text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format needs a 'schema' object", "text.format.schema"),
])  # fmt: skip
def test_refusals_name_the_parameter(body, message, param):
    assert refusal(body) == (message, param)


# ----------------------------------------------------------------------------- parse_request: previous_response_id


def stored_turn() -> StoredResponses:
    stored = StoredResponses()
    out = [{"id": "fc_1", "type": "function_call", "status": "completed", "name": "get", "arguments": "{}", "call_id": "c1"}]
    stored.put({"id": "r1", "output": out}, [{"type": "message", "role": "system", "content": "Sys."}, USER])
    return stored


def test_previous_response_id_puts_its_input_and_output_first():
    stored = stored_turn()
    r = req([{"type": "function_call_output", "call_id": "c1", "output": "sunny"}], stored, previous_response_id="r1",
            instructions="Extra.")  # fmt: skip
    assert r.turn.history == (Message.user("q"), Message.tool_call("functions.get", "{}"), Message.tool_result("functions.get", "sunny"))
    assert r.turn.instructions == "Extra.\n\nSys."
    assert r.previous == "r1" and r.echo["previous_response_id"] == "r1"
    assert [it["type"] for it in r.items] == ["message", "message", "function_call", "function_call_output"]
    for empty in ([], None):
        again = req(empty, stored, previous_response_id="r1")
        assert again.turn.history == (Message.user("q"), Message.tool_call("functions.get", "{}"))
        assert len(again.items) == 3


def test_errors_in_the_client_items_after_a_previous_response_count_from_its_input():
    stored = stored_turn()
    got = refusal({"input": [USER, {"role": "robot", "content": "x"}], "previous_response_id": "r1"}, stored)
    assert got == ("input[1].role must be user, assistant, system or developer, not 'robot'", "input[1].role")
    stored.put({"id": "bad", "output": []}, [USER, {"role": "robot", "content": "x"}])
    got = refusal({"input": "q", "previous_response_id": "bad"}, stored)
    assert got == ("previous_response_id.role must be user, assistant, system or developer, not 'robot'", "previous_response_id.role")


def test_an_unknown_previous_response_is_a_404():
    got = refusal({"input": "q", "previous_response_id": "resp_" + "z" * 120}, stored_turn(), status=404)
    assert got == (f"No response with id {'resp_' + 'z' * 95!r} is stored on this server (store=true keeps the newest "
                   "responses within 268,435,456 bytes)", "previous_response_id")  # fmt: skip
    with pytest.raises(APIError) as e:
        req([], stored_turn(), previous_response_id="r2")
    assert e.value.code == "response_not_found" and e.value.type == "invalid_request_error"


# ----------------------------------------------------------------------------- parse_request: settings


def test_the_settings_of_a_request_and_their_echo():
    fmt = {"type": "json_schema", "name": "pt", "description": "A point.", "strict": True,
           "schema": {"type": "object", "properties": {"x": {"type": "integer"}}}}  # fmt: skip
    r = req("q", stream=True, store=False, temperature=0.2, top_p=0.5, seed=7, max_output_tokens=99,
            reasoning={"effort": "high", "summary": "auto"}, text={"format": fmt}, include=[LOGPROBS, ENCRYPTED],
            top_logprobs=3, truncation="auto", metadata={"k": "v"}, user="u1", parallel_tool_calls=False,
            tools=[GET], tool_choice={"type": "function", "name": "get"}, logit_bias={"5": -1})  # fmt: skip
    t = r.turn
    assert (r.stream, r.store) == (True, False)
    assert [req("q", stream=v, store=v).stream for v in (False, None)] == [False, False]
    assert [req("q", store=v).store for v in (None, True)] == [True, True]
    assert (t.effort, t.max_tokens, t.truncate, t.logit_bias) == (ReasoningEffort.HIGH, 99, True, ((5, -1.0),))
    assert (t.sampling.temperature, t.sampling.top_p, t.sampling.seed, t.sampling.logprobs) == (0.2, 0.5, 7, 3)
    assert t.response_format == ResponseFormat("pt", fmt["schema"], "A point.")
    assert t.tool_choice == ToolChoice("required", ("functions.get",)) and t.tools.recipients() == ("functions.get",)
    assert dict(r.echo) == {
        "instructions": None, "max_output_tokens": 99, "previous_response_id": None,
        "reasoning": {"effort": "high", "summary": "auto"}, "temperature": 0.2, "top_p": 0.5,
        "text": {"format": fmt}, "tool_choice": {"type": "function", "name": "get"}, "tools": [GET],
        "parallel_tool_calls": False, "metadata": {"k": "v"}, "store": False, "truncation": "auto", "user": "u1",
        "max_tool_calls": None,
    }  # fmt: skip
    assert r.echo.options == OutputOptions(r.echo.options.seal, True, (("functions.get", CallKind(FUNCTION, "get")),))


def test_include_and_reasoning_summary_set_the_output_options():
    stored = StoredResponses()
    assert req("q", stored, include=[ENCRYPTED]).echo.options.seal is stored.seal
    assert req("q", stored, include=[LOGPROBS]).echo.options.seal is None
    assert req("q", stored, include=[LOGPROBS]).turn.sampling.logprobs == 0
    assert req("q", stored, include=["file_search_call.results"]).turn.sampling.logprobs is None
    for summary in ("auto", "concise", "detailed"):
        r = req("q", reasoning={"summary": summary})
        assert r.echo.options.summary and r.echo["reasoning"] == {"effort": "medium", "summary": summary}
    for summary in ("none", None):
        r = req("q", reasoning={"summary": summary, "effort": "minimal"})
        assert not r.echo.options.summary and r.echo["reasoning"] == {"effort": "low", "summary": None}


def test_text_formats():
    schema = {"type": "object"}
    strict = req("q", text={"format": {"type": "json_schema", "name": "a", "schema": schema, "strict": True}}).turn
    loose = req("q", text={"format": {"type": "json_schema", "name": "a", "schema": schema, "strict": False}}).turn
    assert strict.response_format == loose.response_format == ResponseFormat("a", schema, None)
    unnamed = req("q", text={"format": {"type": "json_schema", "schema": schema}}).turn.response_format
    assert unnamed == ResponseFormat("response", schema, None)
    r = req("q", text={"format": {"type": "json_object"}})
    assert r.turn.response_format is JSON_OBJECT and r.echo["text"] == {"format": {"type": "json_object"}}
    r = req("q", text={"format": {"type": "text"}})
    assert r.turn.response_format is None and r.echo["text"] == {"format": {"type": "text"}}
    assert req("q", text={}).echo["text"] == {"format": {"type": "text"}}


def test_client_tool_kinds_become_the_output_options_calls():
    tools = [{"type": "custom", "name": "apply_patch"}, {"type": "local_shell"},
             {"type": "namespace", "name": "ns", "tools": [{"type": "function", "name": "f"}]}]  # fmt: skip
    r = req("q", tools=tools, tool_choice="none")
    assert r.echo.options.calls == (("functions.apply_patch", CallKind(CUSTOM, "apply_patch")),
                                    ("functions.local_shell", CallKind(LOCAL_SHELL, "local_shell")),
                                    ("ns.f", CallKind(FUNCTION, "f", "ns")))  # fmt: skip
    assert r.echo["tools"] == tools and r.echo["tool_choice"] == "none" and r.turn.tool_choice.mode == "none"


@pytest.mark.parametrize("asked, builtin, want", [(None, ServerTools(), 8), (3, ServerTools(), 3), (20, ServerTools(), 8),
                                                  (3, ServerTools(max_calls=2), 2), (3, None, 0), (None, None, 0)])  # fmt: skip
def test_max_tool_calls_is_bounded_by_the_servers_limit(asked, builtin, want):
    r = req("q", builtin=builtin, max_tool_calls=asked)
    assert r.max_calls == want and r.echo["max_tool_calls"] == asked


def test_built_in_tool_types_with_the_servers_tools():
    r = req("q", builtin=ServerTools(), tools=[{"type": "web_search"}])
    assert r.turn.tools.builtin_names == ("browser",) and r.echo.options.calls == ()
    assert refusal({"input": "q", "tools": [{"type": "code_interpreter"}]}, builtin=ServerTools())[1] == "tools[0].type"


# ----------------------------------------------------------------------------- StoredResponses, slim_item, _json_size


def compact(value) -> int:
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode())


def test_json_size_is_the_compact_utf8_length():
    v = {"a": "é", "b": [1, 2], "c": None}
    assert _json_size(v) == compact(v) == 29 and len(json.dumps(v).encode()) == 39
    assert _json_size("€") == 5 and _json_size([]) == 2


def test_stored_put_get_item_and_tool_messages():
    s = StoredResponses(max_bytes=10_000)
    assert s.max_bytes == 10_000 and StoredResponses().max_bytes == 256 << 20 and len(s) == 0 and s.bytes == 0
    call = (Message.tool_call("browser.search", "{}"), Message.tool_result("browser", "page"))
    items = [{"type": "message", "id": "in_1", "role": "user", "content": [{"type": "input_text", "text": "q", "x": 1}], "junk": 2}]
    resp = {"id": "r1", "output": [{"id": "msg_1", "type": "message", "content": []}, {"type": "no id"}, {"id": 5}]}
    assert s.put(resp, items, {"ws_1": call}) is True
    kept = [{"type": "message", "id": "in_1", "role": "user", "content": [{"type": "input_text", "text": "q"}]}]
    assert len(s) == 1 and s.bytes == compact(kept) + compact(resp) + (2 + 64) + (4 + 64)
    resp["output"].append("later")  # the store keeps its own copy
    assert s.get("r1") == (kept, {"id": "r1", "output": resp["output"][:3]})
    assert s.item("in_1") == kept[0] and s.item("msg_1") == {"id": "msg_1", "type": "message", "content": []}
    s.item("msg_1")["content"].append("x")  # a copy
    assert s.item("msg_1")["content"] == [] and s.item("nope") is None and s.item(5) is None
    assert s.tool_messages("ws_1") == call and s.tool_messages("ws_2") is None and s.tool_messages(None) is None
    with pytest.raises(APIError) as e:
        s.get("r2")
    assert (e.value.status, e.value.param, e.value.code) == (404, None, "response_not_found")
    assert str(e.value) == "No response with id 'r2' is stored on this server (store=true keeps the newest responses within 10,000 bytes)"


def entry(n: int, fill: str = "a") -> tuple[dict, list]:
    return {"id": f"r{n}", "output": [{"id": f"out_{n}", "type": "x"}]}, [{"id": f"in_{n}", "role": "user", "content": fill * 100}]


def size(n: int, fill: str = "a") -> int:
    resp, items = entry(n, fill)
    return compact(resp) + compact(items)


def test_the_oldest_go_first_with_their_items_and_tool_messages():
    call = (Message.tool_call("python", "1"), Message.tool_result("python", "1"))
    s = StoredResponses(max_bytes=size(1) + size(2) + 2 * (1 + 64))  # r1 (with its tool messages) and r2 fit exactly
    assert s.put(*entry(1), {"ci_1": call}) and s.put(*entry(2))
    assert len(s) == 2 and s.bytes == s.max_bytes and s.tool_messages("ci_1") == call
    assert s.put(*entry(3))
    assert len(s) == 2 and s.bytes == size(2) + size(3)
    assert s.tool_messages("ci_1") is None and s.item("out_1") is None and s.item("in_1") is None
    with pytest.raises(APIError):
        s.get("r1")
    assert s.item("out_2") and s.item("in_3")
    assert s.put(*entry(2))  # put again: now the newest, so r3 goes next
    assert s.bytes == size(2) + size(3) and list(s._items) == ["r3", "r2"]
    assert s.put(*entry(4))
    assert list(s._items) == ["r2", "r4"] and s.item("in_3") is None and s.item("in_2")


def test_one_response_over_the_whole_budget_is_not_kept():
    s = StoredResponses(max_bytes=size(1))
    assert s.put(*entry(1)) and s.bytes == size(1) and s.item("in_1")  # exactly the budget: kept
    assert s.put(*entry(2, "b"))  # r1 makes room
    assert len(s) == 1 and s.item("in_1") is None
    assert s.put(*entry(2, "bb")) is False  # over the budget alone: not kept, and its older version is gone too
    assert len(s) == 0 and s.bytes == 0 and s.item("in_2") is None
    with pytest.raises(APIError):
        s.get("r2")


def test_a_shared_item_id_belongs_to_the_newest_response_holding_it():
    s = StoredResponses(max_bytes=size(1) + size(2) + 50)
    resp1, items1 = entry(1)
    resp2 = {"id": "r2", "output": [{"id": "in_1", "type": "message", "role": "assistant", "content": "from r2"}]}
    s.put(resp1, items1)
    s.put(resp2, [{"id": "in_1", "role": "user", "content": "a" * 100}])  # output before input in one response
    assert s.item("in_1")["content"] == "from r2"
    s.put(*entry(3))  # r1 goes: in_1 still r2's
    assert "r1" not in s._items and s.item("in_1")["content"] == "from r2"


def test_slim_item_keeps_what_history_renders():
    assert slim_item("x") == "x" and slim_item(None) is None
    assert slim_item({"role": "user", "content": [{"type": "input_text", "text": "a", "annotations": [1]}, "s"], "x": 1,
                      "reasoning": "r", "status": "done"}) == \
        {"role": "user", "content": [{"type": "input_text", "text": "a"}, "s"], "reasoning": "r"}  # fmt: skip
    assert slim_item({"type": "reasoning", "id": "rs", "content": "t", "summary": [], "encrypted_content": "e"}) == \
        {"type": "reasoning", "id": "rs", "content": "t"}  # fmt: skip
    assert slim_item({"type": "function_call", "id": "fc", "name": "f", "namespace": "n", "arguments": "{}",
                      "call_id": "c", "status": "completed", "x": 1}) == \
        {"type": "function_call", "id": "fc", "name": "f", "namespace": "n", "arguments": "{}", "call_id": "c", "status": "completed"}  # fmt: skip
    assert slim_item({"type": "function_call_output", "call_id": "c", "output": [{"type": "input_text", "text": "o", "x": 1}]}) == \
        {"type": "function_call_output", "call_id": "c", "output": [{"type": "input_text", "text": "o"}]}  # fmt: skip
    assert slim_item({"type": "custom_tool_call", "name": "p", "input": "i", "call_id": "c", "x": 1}) == \
        {"type": "custom_tool_call", "name": "p", "input": "i", "call_id": "c"}  # fmt: skip
    assert slim_item({"type": "local_shell_call", "id": "l", "call_id": "c", "action": {"command": []}, "x": 1}) == \
        {"type": "local_shell_call", "id": "l", "call_id": "c", "action": {"command": []}}  # fmt: skip
    for kind in ("custom_tool_call_output", "local_shell_call_output"):
        assert slim_item({"type": kind, "id": "i", "call_id": "c", "output": "o", "x": 1}) == {"type": kind, "id": "i", "call_id": "c", "output": "o"}
    assert slim_item({"type": "web_search_call", "id": "ws", "status": "completed", "action": {"type": "search"}, "x": 1}) == \
        {"type": "web_search_call", "id": "ws", "status": "completed", "action": {"type": "search"}}  # fmt: skip
    assert slim_item({"type": "code_interpreter_call", "id": "ci", "status": "completed", "code": "1", "container_id": "c",
                      "outputs": [{"type": "logs", "logs": "L"}, {"type": "image", "url": "data:..."}, "s"]}) == \
        {"type": "code_interpreter_call", "id": "ci", "status": "completed", "code": "1", "container_id": "c",
         "outputs": [{"type": "logs", "logs": "L"}]}  # fmt: skip
    assert slim_item({"type": "other", "id": "o", "content": "c"}) == {"type": "other"}


# ----------------------------------------------------------------------------- ReasoningSeal


def test_the_seal_round_trips_and_its_format_is_stable():
    a = ReasoningSeal("k")
    assert a.open(a.seal("héllo\nwörld")) == "héllo\nwörld" and a.open(a.seal("")) == ""
    # the format clients keep across a restart with the same --state-key (never change it silently)
    assert a.seal("think") == "mlxoss-r1.ACU3C_-V68cSEqrk6vaz6ai66quq9JzLMR4M3de951l0aGluaw=="
    key = hmac.new(b"k", b"mlx-oss reasoning encrypted_content v1", hashlib.sha256).digest()
    raw = hmac.new(key, b"think", hashlib.sha256).digest() + b"think"
    assert a.seal("think") == "mlxoss-r1." + base64.urlsafe_b64encode(raw).decode()
    assert ReasoningSeal(b"k").seal("think") == a.seal("think") == ReasoningSeal(bytearray(b"k")).seal("think")


def test_only_this_keys_unaltered_seals_open():
    a = ReasoningSeal("k")
    sealed = a.seal("thought")
    body = sealed[len("mlxoss-r1.") :]
    flipped = sealed[:-4] + ("A" if sealed[-4] != "A" else "B") + sealed[-3:]
    raw = base64.urlsafe_b64decode(body)
    tag_only = "mlxoss-r1." + base64.urlsafe_b64encode(raw[:31]).decode()
    non_utf8 = "mlxoss-r1." + base64.urlsafe_b64encode(a._tag(b"\xff") + b"\xff").decode()
    for bad in (flipped, ReasoningSeal("k2").seal("thought"), "mlxoss-r2." + body, body, "", "mlxoss-r1.",
                "mlxoss-r1." + body[:-1], "mlxoss-r1.é" + body, tag_only, non_utf8, "mlxoss-r1." + body + "!"):  # fmt: skip
        assert a.open(bad) is None, bad
    assert a.open("mlxoss-r1." + base64.urlsafe_b64encode(a._tag(b"") + b"").decode()) == ""


def test_without_a_key_each_seal_has_its_own_random_key():
    a, b = ReasoningSeal(), ReasoningSeal(None)
    assert a.open(a.seal("x")) == "x" and b.open(a.seal("x")) is None and a.seal("x") != b.seal("x")
    s1, s2 = StoredResponses(), StoredResponses()
    assert s2.seal.open(s1.seal.seal("x")) is None
    assert StoredResponses(state_key="k").seal.seal("think") == ReasoningSeal("k").seal("think")


# ----------------------------------------------------------------------------- ResponseBuilder


USAGE = Usage(prompt_tokens=10, cached_tokens=4, completion_tokens=6, reasoning_tokens=2)
LP = ({"token": "Hi", "logprob": -0.1, "bytes": [72, 105], "top_logprobs": []},)


def run(b: ResponseBuilder, events) -> list[tuple[str, dict]]:
    """Feed `events`, each reply as the client sees it (serialized when it is sent), checking each
    event's `type` and that `sequence_number` counts on from the builder's; returned without both."""
    out = []
    for ev in events:
        for kind, payload in b.feed(ev):
            sent = json.loads(json.dumps(payload))
            assert sent.pop("type") == kind
            out.append((kind, sent, sent.pop("sequence_number")))
    assert [s for _, _, s in out] == list(range(b.seq - len(out), b.seq))
    return [(k, p) for k, p, _ in out]


def builder(input="q", **kw) -> ResponseBuilder:
    return ResponseBuilder("gpt-oss-20b", req(input, **kw).echo, "cntr_1")


def test_start_events_and_the_response_object():
    b = builder(metadata={"a": "b"})
    assert b.id.startswith("resp_") and len(b.id) == 5 + 32 and isinstance(b.created, int)
    start = b.start()
    assert [(k, ev["type"], ev["sequence_number"]) for k, ev in start] == [
        ("response.created", "response.created", 0), ("response.in_progress", "response.in_progress", 1)]
    r = start[0][1]["response"]
    assert r == start[1][1]["response"] == b.response()
    assert {k: r[k] for k in ("id", "object", "created_at", "status", "model", "output", "usage", "error", "incomplete_details")} == \
        {"id": b.id, "object": "response", "created_at": b.created, "status": "in_progress", "model": "gpt-oss-20b",
         "output": [], "usage": None, "error": None, "incomplete_details": None}  # fmt: skip
    assert r["metadata"] == {"a": "b"} and r["store"] is True and r["tool_choice"] == "auto"
    snapshot = b.response()
    run(b, [ItemStarted(MESSAGE, channel="final"), ItemDelta("x")])
    assert snapshot["output"] == [] and b.response()["output"][0]["content"][0]["text"] == "x"  # a snapshot, not a view
    assert b.options == OutputOptions() and ResponseBuilder("m", {}, "").options == OutputOptions()
    assert ResponseBuilder("m", {}, "", options=OutputOptions(summary=True)).options.summary


def test_reasoning_then_an_answer_with_logprobs():
    b = builder(include=[LOGPROBS])
    b.start()
    evs = run(b, [ItemStarted(REASONING, channel=ANALYSIS), ItemDelta("th"), ItemDelta("ink"), ItemDone(REASONING, "think"),
                  ItemStarted(MESSAGE, channel="final"), ItemDelta("Hi", LP), ItemDelta("!"), ItemDone(MESSAGE, "Hi!"),
                  Finished(USAGE, "stop")])  # fmt: skip
    rs, msg = b.output
    assert rs["id"].startswith("rs_") and msg["id"].startswith("msg_") and len(msg["id"]) == 4 + 32
    R, M = {"item_id": rs["id"], "output_index": 0}, {"item_id": msg["id"], "output_index": 1}
    text = {"type": "output_text", "text": "Hi!", "annotations": [], "logprobs": list(LP)}
    assert rs == {"id": rs["id"], "type": "reasoning", "summary": [], "content": [{"type": "reasoning_text", "text": "think"}],
                  "status": "completed"}  # fmt: skip
    assert msg == {"id": msg["id"], "type": "message", "role": "assistant", "status": "completed", "content": [text]}
    assert evs == [
        ("response.output_item.added", {"output_index": 0, "item": {**rs, "content": [], "status": "in_progress"}}),
        ("response.content_part.added", {**R, "content_index": 0, "part": {"type": "reasoning_text", "text": ""}}),
        ("response.reasoning_text.delta", {**R, "content_index": 0, "delta": "th"}),
        ("response.reasoning_text.delta", {**R, "content_index": 0, "delta": "ink"}),
        ("response.reasoning_text.done", {**R, "content_index": 0, "text": "think"}),
        ("response.content_part.done", {**R, "content_index": 0, "part": {"type": "reasoning_text", "text": "think"}}),
        ("response.output_item.done", {"output_index": 0, "item": rs}),
        ("response.output_item.added", {"output_index": 1, "item": {**msg, "status": "in_progress", "content": []}}),
        ("response.content_part.added", {**M, "content_index": 0, "part": {"type": "output_text", "text": "", "annotations": [], "logprobs": []}}),
        ("response.output_text.delta", {**M, "content_index": 0, "delta": "Hi", "logprobs": list(LP)}),
        ("response.output_text.delta", {**M, "content_index": 0, "delta": "!", "logprobs": []}),
        ("response.output_text.done", {**M, "content_index": 0, "text": "Hi!", "logprobs": list(LP)}),
        ("response.content_part.done", {**M, "content_index": 0, "part": text}),
        ("response.output_item.done", {"output_index": 1, "item": msg}),
        ("response.completed", {"response": json.loads(json.dumps(b.response()))}),
    ]  # fmt: skip
    r = b.response()
    assert (r["status"], r["error"], r["incomplete_details"]) == ("completed", None, None)
    assert r["usage"] == {"input_tokens": 10, "input_tokens_details": {"cached_tokens": 4}, "output_tokens": 6,
                          "output_tokens_details": {"reasoning_tokens": 2}, "total_tokens": 16}  # fmt: skip
    assert b.seq == 2 + len(evs)


def test_reasoning_summary_and_encrypted_content_when_asked():
    stored = StoredResponses(state_key="k")
    b = ResponseBuilder("m", req("q", stored, include=[ENCRYPTED], reasoning={"summary": "detailed"}).echo, "")
    evs = run(b, [ItemStarted(REASONING, channel=ANALYSIS), ItemDelta("a"), ItemDelta("b"), ItemDone(REASONING, "ab")])
    rs = b.output[0]
    R = {"item_id": rs["id"], "output_index": 0}
    summary = {"type": "summary_text", "text": "ab"}
    assert rs == {"id": rs["id"], "type": "reasoning", "summary": [summary], "content": [{"type": "reasoning_text", "text": "ab"}],
                  "status": "completed", "encrypted_content": ReasoningSeal("k").seal("ab")}  # fmt: skip
    assert evs == [
        ("response.output_item.added", {"output_index": 0, "item": {"id": rs["id"], "type": "reasoning", "summary": [], "content": [], "status": "in_progress"}}),
        ("response.content_part.added", {**R, "content_index": 0, "part": {"type": "reasoning_text", "text": ""}}),
        ("response.reasoning_summary_part.added", {**R, "summary_index": 0, "part": {"type": "summary_text", "text": ""}}),
        ("response.reasoning_text.delta", {**R, "content_index": 0, "delta": "a"}),
        ("response.reasoning_summary_text.delta", {**R, "summary_index": 0, "delta": "a"}),
        ("response.reasoning_text.delta", {**R, "content_index": 0, "delta": "b"}),
        ("response.reasoning_summary_text.delta", {**R, "summary_index": 0, "delta": "b"}),
        ("response.reasoning_text.done", {**R, "content_index": 0, "text": "ab"}),
        ("response.content_part.done", {**R, "content_index": 0, "part": {"type": "reasoning_text", "text": "ab"}}),
        ("response.reasoning_summary_text.done", {**R, "summary_index": 0, "text": "ab"}),
        ("response.reasoning_summary_part.done", {**R, "summary_index": 0, "part": summary}),
        ("response.output_item.done", {"output_index": 0, "item": rs}),
    ]  # fmt: skip
    # sent back alone (store: false clients), the item renders as the reasoning it was
    back = {"type": "reasoning", "id": rs["id"], "summary": [], "encrypted_content": rs["encrypted_content"]}
    assert req([USER, back], StoredResponses(state_key="k")).turn.history[1] == Message.assistant("ab", channel=ANALYSIS)


def test_a_function_call_streams_its_arguments():
    b = builder(tools=[GET])
    evs = run(b, [ItemStarted(FUNCTION_CALL, "get", COMMENTARY, "functions.get"), ItemDelta('{"a":'), ItemDelta(" 1}"),
                  ItemDone(FUNCTION_CALL, '{"a": 1}', "get", channel=COMMENTARY), Finished(USAGE, "tool_call")])  # fmt: skip
    fc = b.output[0]
    assert fc["id"].startswith("fc_") and fc["call_id"] == "call_" + fc["id"][3:27]
    assert fc == {"id": fc["id"], "type": "function_call", "status": "completed", "name": "get", "arguments": '{"a": 1}',
                  "call_id": fc["call_id"]}  # fmt: skip
    F = {"item_id": fc["id"], "output_index": 0}
    assert evs[:-1] == [
        ("response.output_item.added", {"output_index": 0, "item": {**fc, "status": "in_progress", "arguments": ""}}),
        ("response.function_call_arguments.delta", {**F, "delta": '{"a":'}),
        ("response.function_call_arguments.delta", {**F, "delta": " 1}"}),
        ("response.function_call_arguments.done", {**F, "arguments": '{"a": 1}'}),
        ("response.output_item.done", {"output_index": 0, "item": fc}),
    ]
    assert evs[-1][0] == "response.completed" and b.status == "completed"


def test_namespaced_and_unknown_function_calls():
    ns = {"type": "namespace", "name": "multi_agent_v1", "tools": [{"type": "function", "name": "spawn_agent"},
                                                                     {"type": "custom", "name": "note"}]}  # fmt: skip
    b = builder(tools=[ns])
    run(b, [ItemStarted(FUNCTION_CALL, "multi_agent_v1.spawn_agent", COMMENTARY, "multi_agent_v1.spawn_agent"), ItemDelta("{}"),
            ItemDone(FUNCTION_CALL, "{}", "multi_agent_v1.spawn_agent"),
            ItemStarted(FUNCTION_CALL, "multi_agent_v1.note", COMMENTARY, "multi_agent_v1.note"), ItemDelta('{"input": "n"}'),
            ItemDone(FUNCTION_CALL, '{"input": "n"}', "multi_agent_v1.note"),
            ItemStarted(FUNCTION_CALL, "nope", COMMENTARY, "functions.nope"), ItemDone(FUNCTION_CALL, "", "nope", complete=False)])  # fmt: skip
    spawn, note, nope = b.output
    assert (spawn["type"], spawn["name"], spawn["namespace"], spawn["arguments"]) == ("function_call", "spawn_agent", "multi_agent_v1", "{}")
    assert (note["type"], note["name"], note["namespace"], note["input"]) == ("custom_tool_call", "note", "multi_agent_v1", "n")
    assert (nope["type"], nope["name"], nope["status"], "namespace" in nope) == ("function_call", "nope", "incomplete", False)


def test_a_custom_tool_call_shows_its_input_once_complete():
    b = builder(tools=[{"type": "custom", "name": "apply_patch"}])
    evs = run(b, [ItemStarted(FUNCTION_CALL, "apply_patch", COMMENTARY, "functions.apply_patch"), ItemDelta('{"input": "*** '),
                  ItemDelta('Begin"}'), ItemDone(FUNCTION_CALL, '{"input": "*** Begin"}', "apply_patch")])  # fmt: skip
    c = b.output[0]
    assert c["id"].startswith("ctc_") and c["call_id"] == "call_" + c["id"][4:28]
    assert c == {"id": c["id"], "type": "custom_tool_call", "status": "completed", "call_id": c["call_id"], "name": "apply_patch",
                 "input": "*** Begin"}  # fmt: skip
    C = {"item_id": c["id"], "output_index": 0}
    assert evs == [
        ("response.output_item.added", {"output_index": 0, "item": {**c, "status": "in_progress", "input": ""}}),
        ("response.custom_tool_call_input.delta", {**C, "delta": "*** Begin"}),
        ("response.custom_tool_call_input.done", {**C, "input": "*** Begin"}),
        ("response.output_item.done", {"output_index": 0, "item": c}),
    ]


def test_a_local_shell_call_shows_its_action_once_complete():
    b = builder(tools=[{"type": "local_shell"}])
    args = '{"command": ["ls"], "workdir": "/w", "timeout_ms": 9}'
    evs = run(b, [ItemStarted(FUNCTION_CALL, "local_shell", COMMENTARY, "functions.local_shell"), ItemDelta(args[:5]),
                  ItemDelta(args[5:]), ItemDone(FUNCTION_CALL, args, "local_shell")])  # fmt: skip
    s = b.output[0]
    assert s["id"].startswith("lsh_") and s["call_id"] == "call_" + s["id"][4:28]
    action = {"type": "exec", "command": ["ls"], "env": {}, "timeout_ms": 9, "working_directory": "/w", "user": None}
    assert s == {"id": s["id"], "type": "local_shell_call", "status": "completed", "call_id": s["call_id"], "action": action}
    assert evs == [
        ("response.output_item.added", {"output_index": 0, "item": {**s, "status": "in_progress", "action": shell_action("")}}),
        ("response.output_item.done", {"output_index": 0, "item": s}),
    ]


def browser_round(function: str, args: str, result: ToolResult, complete: bool = True):
    recipient = f"browser.{function}"
    call = Message.tool_call(recipient, args, channel=ANALYSIS)
    done = ToolDone(call, Message.tool_result(recipient, result.content, channel=ANALYSIS), result)
    return [ItemStarted(BROWSER_CALL, recipient, ANALYSIS, recipient), ItemDelta(args[:3]), ItemDelta(args[3:]),
            ItemDone(BROWSER_CALL, args, recipient, complete, ANALYSIS)], done  # fmt: skip


def test_a_web_search_call_then_an_answer_with_citations():
    b = builder(builtin=ServerTools(), tools=[{"type": "web_search"}])
    found = ToolResult("browser.search", "results", tool="browser", url="https://s/?q=mlx", title="search")
    call, done = browser_round("search", '{"query": "mlx"}', found)
    assert run(b, call[:3]) == []  # announced once the arguments are complete
    evs = run(b, call[3:])
    ws = b.output[0]
    W = {"item_id": ws["id"], "output_index": 0}
    added = {"id": ws["id"], "type": "web_search_call", "status": "in_progress", "action": {"type": "search", "query": "mlx"}}
    assert ws["id"].startswith("ws_") and evs == [
        ("response.output_item.added", {"output_index": 0, "item": added}),
        ("response.web_search_call.in_progress", W), ("response.web_search_call.searching", W)]  # fmt: skip
    assert ws["status"] == "searching"
    assert run(b, [done]) == [("response.web_search_call.completed", W),
                              ("response.output_item.done", {"output_index": 0, "item": {**added, "status": "completed"}})]  # fmt: skip
    assert b.tool_messages == {ws["id"]: (done.call, done.reply)}
    cites = (Citation("【3†L1】", 4, 9, 3, "https://a", "A"), Citation("【4†L2】", 10, 15, 4, "https://b", "B"))
    evs = run(b, [ItemStarted(MESSAGE, channel="final"), ItemDelta("Yes 【3†L1】【4†L2】"),
                  ItemDone(MESSAGE, "Yes 【3†L1】【4†L2】", citations=cites), Finished(USAGE, "stop")])  # fmt: skip
    msg = b.output[1]
    M = {"item_id": msg["id"], "output_index": 1}
    notes = [{"type": "url_citation", "url": "https://a", "title": "A", "start_index": 4, "end_index": 9},
             {"type": "url_citation", "url": "https://b", "title": "B", "start_index": 10, "end_index": 15}]  # fmt: skip
    assert msg["content"][0]["annotations"] == notes
    assert evs[3:6] == [("response.output_text.annotation.added", {**M, "content_index": 0, "annotation_index": 0, "annotation": notes[0]}),
                        ("response.output_text.annotation.added", {**M, "content_index": 0, "annotation_index": 1, "annotation": notes[1]}),
                        ("response.output_text.done", {**M, "content_index": 0, "text": "Yes 【3†L1】【4†L2】", "logprobs": []})]  # fmt: skip
    assert evs[-1][0] == "response.completed" and b.status == "completed"


@pytest.mark.parametrize("function, args, url, before, after", [
    ("open", '{"id": 3}', "https://p", {"type": "open_page", "url": None}, {"type": "open_page", "url": "https://p"}),
    ("open", '{"id": "https://x"}', "", {"type": "open_page", "url": "https://x"}, {"type": "open_page", "url": "https://x"}),
    ("find", '{"pattern": "mlx"}', "https://p", {"type": "find_in_page", "pattern": "mlx", "url": ""},
     {"type": "find_in_page", "pattern": "mlx", "url": "https://p"}),
])  # fmt: skip
def test_open_and_find_actions_take_the_url_the_tool_showed(function, args, url, before, after):
    b = builder()
    call, done = browser_round(function, args, ToolResult(f"browser.{function}", "page", tool="browser", url=url))
    evs = run(b, call)
    assert evs[0][1]["item"]["action"] == before
    assert run(b, [done])[-1][1]["item"]["action"] == after and b.output[0]["action"] == after


def test_a_failed_and_an_incomplete_web_search():
    b = builder()
    call, done = browser_round("search", '{"query": "x"}', ToolResult("browser.search", "Error: down", error=True, tool="browser"))
    run(b, call)
    assert run(b, [done])[-1][1]["item"]["status"] == "failed"
    b = builder()
    call, _ = browser_round("search", '{"query": "x"}', ToolResult("browser.search", ""), complete=False)
    evs = run(b, [*call, Finished(USAGE, "length")])
    ws = b.output[0]
    W = {"item_id": ws["id"], "output_index": 0}
    assert [k for k, _ in evs] == ["response.output_item.added", "response.web_search_call.in_progress",
                                   "response.output_item.done", "response.incomplete"]  # fmt: skip
    assert evs[1][1] == W and evs[2][1] == {"output_index": 0, "item": {**ws, "status": "incomplete"}}
    assert ws["status"] == "incomplete" and b.incomplete == {"reason": "max_output_tokens"}


def test_a_code_interpreter_call_with_logs_and_images(tmp_path):
    png, svg, other = tmp_path / "a.PNG", tmp_path / "b.svg", tmp_path / "c.bin"
    png.write_bytes(b"\x89PNG")
    svg.write_bytes(b"<svg/>")
    other.write_bytes(b"x")
    b = builder()
    result = ToolResult("python", "1\n", tool="python", images=(str(png), str(tmp_path / "gone.png"), str(svg), str(other)))
    call = Message.tool_call("python", "print(1)", channel=ANALYSIS, content_type="code")
    done = ToolDone(call, Message.tool_result("python", "1\n", channel=ANALYSIS), result)
    evs = run(b, [ItemStarted(PYTHON_CALL, "python", ANALYSIS, "python"), ItemDelta("print("), ItemDelta("1)"),
                  ItemDone(PYTHON_CALL, "print(1)", "python", channel=ANALYSIS), done])  # fmt: skip
    ci = b.output[0]
    P = {"item_id": ci["id"], "output_index": 0}
    outputs = [{"type": "logs", "logs": "1\n"}, {"type": "image", "url": "data:image/png;base64,iVBORw=="},
               {"type": "image", "url": "data:image/svg+xml;base64,PHN2Zy8+"},
               {"type": "image", "url": "data:application/octet-stream;base64,eA=="}]  # fmt: skip
    assert ci == {"id": ci["id"], "type": "code_interpreter_call", "status": "completed", "code": "print(1)",
                  "container_id": "cntr_1", "outputs": outputs}  # fmt: skip
    assert ci["id"].startswith("ci_") and evs == [
        ("response.output_item.added", {"output_index": 0, "item": {**ci, "status": "in_progress", "code": "", "outputs": None}}),
        ("response.code_interpreter_call.in_progress", P),
        ("response.code_interpreter_call_code.delta", {**P, "delta": "print("}),
        ("response.code_interpreter_call_code.delta", {**P, "delta": "1)"}),
        ("response.code_interpreter_call_code.done", {**P, "code": "print(1)"}),
        ("response.code_interpreter_call.interpreting", P),
        ("response.code_interpreter_call.completed", P),
        ("response.output_item.done", {"output_index": 0, "item": ci}),
    ]  # fmt: skip
    assert b.tool_messages == {ci["id"]: (call, done.reply)}


def test_code_interpreter_calls_that_fail_are_cut_or_are_never_run():
    call = Message.tool_call("python", "1/0", channel=ANALYSIS, content_type="code")
    failed = ToolDone(call, Message.tool_result("python", "ZeroDivisionError"), ToolResult("python", "ZeroDivisionError", error=True))
    start = [ItemStarted(PYTHON_CALL, "python", ANALYSIS, "python"), ItemDelta("1/0")]
    b = builder()
    run(b, [*start, ItemDone(PYTHON_CALL, "1/0", "python"), failed])
    assert (b.output[0]["status"], b.output[0]["outputs"]) == ("failed", [{"type": "logs", "logs": "ZeroDivisionError"}])
    b = builder()  # cut off while the model wrote the code
    evs = run(b, [*start, ItemDone(PYTHON_CALL, "1/0", "python", complete=False), Finished(USAGE, "length")])
    assert [k for k, _ in evs][-3:] == ["response.code_interpreter_call_code.done", "response.output_item.done", "response.incomplete"]
    assert b.output[0]["status"] == "incomplete" and b.output[0]["outputs"] is None
    b = builder()  # the limit of built-in calls reached: the last call is shown, not run
    evs = run(b, [*start, ItemDone(PYTHON_CALL, "1/0", "python")])
    assert b.output[0]["status"] == "interpreting"  # while it runs (a response failed now shows it so)
    evs += run(b, [Finished(USAGE, "tool_limit")])
    P = {"item_id": b.output[0]["id"], "output_index": 0}
    assert evs[-3:] == [("response.code_interpreter_call.interpreting", P),
                        ("response.output_item.done", {"output_index": 0, "item": {**b.output[0]}}),
                        ("response.incomplete", {"response": json.loads(json.dumps(b.response()))})]  # fmt: skip
    assert b.output[0]["status"] == "incomplete" and b.incomplete == {"reason": "max_tool_calls"}


def test_a_web_search_ended_before_it_ran():
    b = builder()
    call, _ = browser_round("search", '{"query": "x"}', ToolResult("browser.search", ""))
    evs = run(b, [*call, Finished(USAGE, "cancelled")])
    assert [k for k, _ in evs][-2:] == ["response.output_item.done", "response.incomplete"]
    assert b.output[0]["status"] == "incomplete" and b.incomplete == {"reason": "cancelled"}
    b = builder()  # not yet shown (its arguments were never complete): left out
    evs = run(b, [*call[:2], Finished(USAGE, "error", "boom")])
    assert [k for k, _ in evs] == ["response.failed"] and b.output == []


@pytest.mark.parametrize("reason, status, incomplete, error", [
    ("stop", "completed", None, None), ("tool_call", "completed", None, None),
    ("length", "incomplete", {"reason": "max_output_tokens"}, None), ("context", "incomplete", {"reason": "max_output_tokens"}, None),
    ("cancelled", "incomplete", {"reason": "cancelled"}, None), ("tool_limit", "incomplete", {"reason": "max_tool_calls"}, None),
    ("error", "failed", None, {"code": "server_error", "message": "MemoryError: out"}),
])  # fmt: skip
def test_finish_for_each_stop_reason(reason, status, incomplete, error):
    b = builder()
    evs = run(b, [Finished(Usage(3, 0, 2, 0, 1), reason, "MemoryError: out" if reason == "error" else None)])
    kind = {"completed": "response.completed", "incomplete": "response.incomplete", "failed": "response.failed"}[status]
    assert evs == [(kind, {"response": json.loads(json.dumps(b.response()))})]
    assert (b.status, b.incomplete, b.error) == (status, incomplete, error)
    assert b.usage == {"input_tokens": 3, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 2,
                       "output_tokens_details": {"reasoning_tokens": 0, "unparsed_tokens": 1}, "total_tokens": 5}  # fmt: skip


def test_an_error_without_a_message_and_fail():
    b = builder()
    b.feed(Finished(Usage(), "error"))
    assert b.error == {"code": "server_error", "message": "generation failed"}
    b = builder()
    run(b, [ItemStarted(MESSAGE, channel="final"), ItemDelta("par")])
    (kind, ev), = b.fail("cancelled", "the server is shutting down")
    assert kind == "response.failed" and ev["response"]["status"] == "failed"
    assert ev["response"]["error"] == {"code": "cancelled", "message": "the server is shutting down"}
    assert ev["response"]["output"][0]["content"][0]["text"] == "par" and ev["sequence_number"] == b.seq - 1


def test_events_without_an_open_item_are_ignored():
    b = builder()
    assert b.feed(ItemDelta("x")) == [] and b.feed(ItemDone(MESSAGE, "x")) == [] and b.feed("other") == [] and b.seq == 0
    assert b.feed(ToolDone(Message.user("x"), Message.user("y"), ToolResult("python", ""))) == [] and b.tool_messages == {}
    run(b, [ItemStarted(MESSAGE), ItemDone(MESSAGE, "", complete=False)])
    assert b.output[0]["status"] == "incomplete" and b.feed(ItemDelta("late")) == [] and b.output[0]["content"][0]["text"] == ""


# ----------------------------------------------------------------------------- helpers


@pytest.mark.parametrize("recipient, raw, url, want", [
    ("browser.search", '{"query": "a b"}', "", {"type": "search", "query": "a b"}),
    ("browser.search", '{"query": 3}', "", {"type": "search", "query": None}),
    ("browser.search", "not json", "", {"type": "search", "query": None}),
    ("browser.search", "  ", "", {"type": "search", "query": None}),
    ("browser.search", "[1]", "", {"type": "search", "query": None}),
    ("browser.open", '{"id": 2, "cursor": 1}', "", {"type": "open_page", "url": None}),
    ("browser.open", '{"id": "https://a"}', "https://b", {"type": "open_page", "url": "https://b"}),
    ("browser.find", '{"pattern": 1}', "u", {"type": "find_in_page", "pattern": "", "url": "u"}),
    ("browser", '{"query": "q"}', "", {"type": "search", "query": "q"}),
    ("open", '{"query": "q"}', "", {"type": "search", "query": "q"}),
])  # fmt: skip
def test_web_search_action(recipient, raw, url, want):
    assert web_search_action(recipient, raw, url) == want


def test_image_data_urls_and_their_limit(tmp_path):
    for name, mime in (("a.png", "image/png"), ("a.jpg", "image/jpeg"), ("a.JPEG", "image/jpeg"), ("a.gif", "image/gif"),
                       ("a.svg", "image/svg+xml"), ("a", "application/octet-stream")):  # fmt: skip
        (tmp_path / name).write_bytes(b"ab")
        assert _image(str(tmp_path / name)) == {"type": "image", "url": f"data:{mime};base64,YWI="}
    assert _image(str(tmp_path / "missing.png")) is None and _image(str(tmp_path)) is None
    edge = tmp_path / "edge.png"
    with open(edge, "wb") as f:
        f.truncate(8 << 20)  # exactly the limit: kept
    assert _image(str(edge))["url"].startswith("data:image/png;base64,AAAA")
    with open(edge, "ab") as f:
        f.write(b"x")
    assert _image(str(edge)) is None


def test_url_citation():
    c = Citation("【1†L2】", 3, 8, 1, "https://u", "T", 2, 2, "quote")
    assert url_citation(c) == {"type": "url_citation", "url": "https://u", "title": "T", "start_index": 3, "end_index": 8}


def test_after_its_end_a_response_shows_nothing_more():
    b = builder()
    run(b, [ItemStarted(MESSAGE, channel="final"), ItemDelta("done")])
    assert [k for k, _ in b.feed(Finished(Usage(), "length"))][-1] == "response.incomplete"
    assert b.feed(ItemDelta("late")) == [] and b.feed(ItemDone(MESSAGE, "late")) == []
    assert b.output[0]["content"][0]["text"] == "done"


def test_a_strict_text_format_and_a_reasoning_budget_reach_the_turn():
    from mlx_oss.server.tools import StrictSchema

    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"], "additionalProperties": False}
    t = req("q", text={"format": {"type": "json_schema", "name": "count", "schema": schema, "strict": True}},
            reasoning={"max_tokens": 32}).turn  # fmt: skip
    assert (t.answer_schema, t.reasoning_budget) == (StrictSchema("final", schema, "text.format.schema"), 32)
    assert (req("q").turn.answer_schema, req("q").turn.reasoning_budget) == (None, None)
    assert req("q", reasoning={"max_tokens": 32}).echo["reasoning"] == {"effort": "medium", "summary": None, "max_tokens": 32}
    assert "max_tokens" not in req("q").echo["reasoning"]  # echoed only when asked for
