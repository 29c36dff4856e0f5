"""Where API tool definitions meet harmony (`mlx_oss/server/tools.py`), without HTTP: each tool type of
both APIs and what it becomes (functions, namespaces, custom, local_shell, built-ins, dropped types),
every refusal as its one line with the parameter it names, `tool_choice` in every shape, and the
conversions of call arguments both ways."""

from __future__ import annotations

import json
import logging

import pytest

from mlx_oss.harmony import ToolDescription, ToolNamespace
from mlx_oss.server.builtin import BROWSER_TYPES, PYTHON_TYPES, ServerTools
from mlx_oss.server.tools import (
    CUSTOM,
    FUNCTION,
    LOCAL_SHELL,
    CallKind,
    ToolChoice,
    ToolSet,
    call_name,
    check_schema,
    custom_arguments,
    custom_input,
    parse_tools,
    shell_action,
    shell_arguments,
    tool_choice,
)
from refusals import refusal_line

OBJ = {"type": "object", "properties": {"city": {"type": "string"}}}


def test_function_tools_in_both_apis_shapes():
    chat = {"type": "function", "function": {"name": "get", "description": "Get it.", "parameters": OBJ}}
    flat = {"type": "function", "name": "put", "parameters": OBJ}
    untyped = {"name": "rm"}  # no type: a function
    ts = parse_tools([chat, flat, untyped])
    assert ts.functions == (ToolDescription("get", "Get it.", OBJ), ToolDescription("put", "", OBJ), ToolDescription("rm", "", None))
    assert ts.calls == (("functions.get", CallKind(FUNCTION, "get")), ("functions.put", CallKind(FUNCTION, "put")),
                        ("functions.rm", CallKind(FUNCTION, "rm")))  # fmt: skip
    assert ts.recipients() == ("functions.get", "functions.put", "functions.rm") and ts.client_tools
    assert ts.call_kind("functions.put") == CallKind(FUNCTION, "put") and ts.call_kind("functions.x") is None
    assert ts.call_kind(None) is None
    assert parse_tools(None) == ToolSet() and not ToolSet().client_tools and parse_tools([]) == ToolSet()


@pytest.mark.parametrize("tools, message, param", [
    ({"type": "function"}, "'tools' must be an array", "tools"),
    (["x"], "each tool must be an object", "tools[0]"),
    ([{"type": "function", "function": {"name": ""}}], "a function tool needs a non-empty string 'name'", "tools[0]"),
    ([{"type": "function", "name": 5}], "a function tool needs a non-empty string 'name'", "tools[0]"),
    ([{"name": "f", "description": 3}], "tool 'f': 'description' must be a string", "tools[0]"),
    ([{"name": "f", "parameters": []}], "tool 'f': 'parameters' must be a JSON schema object", "tools[0]"),
    ([{"name": "f", "parameters": {"type": "objekt"}}],
     "tool 'f': its parameters schema is not a valid JSON Schema: 'objekt' is not valid under any of the given schemas (at type)", "tools[0]"),
    ([{"name": "f", "parameters": {"$schema": 5, "type": "object"}}],
     "tool 'f': its parameters schema's $schema must be a string naming a JSON Schema draft, not int", "tools[0]"),
    ([{"name": "f", "parameters": {"$schema": "https://example.com/mine", "type": "objekt"}}],  # an unknown draft: the latest
     "tool 'f': its parameters schema is not a valid JSON Schema: 'objekt' is not valid under any of the given schemas (at type)", "tools[0]"),
    ([{"name": "f", "parameters": {"$schema": "http://json-schema.org/draft-04/schema#", "type": "object", "minimum": "x"}}],
     "tool 'f': its parameters schema is not a valid JSON Schema: 'x' is not of type 'number' (at minimum)", "tools[0]"),
    ([{"name": "f"}, {"name": "f"}], "two tools are named 'f'", "tools[1]"),
    ([{"type": "retrieval"}], "tool type 'retrieval' is not supported (supported: function)", "tools[0].type"),
    ([{"type": "web_search"}], "tool type 'web_search' is a built-in tool, run only by /v1/responses (use that endpoint, "
                               "or a function tool here)", "tools[0].type"),
])  # fmt: skip
def test_chat_completions_tool_refusals(tools, message, param):
    assert refusal_line(parse_tools, tools) == (message, param)


def test_an_unsupported_type_names_the_servers_builtin_types_when_it_has_them():
    msg, _ = refusal_line(parse_tools, [{"type": "x"}], builtin=ServerTools(allow_python=True))
    assert msg == f"tool type 'x' is not supported (supported: {', '.join(('function', *BROWSER_TYPES, *PYTHON_TYPES))})"
    msg, _ = refusal_line(parse_tools, [{"type": "x"}], builtin=ServerTools())
    assert msg == f"tool type 'x' is not supported (supported: {', '.join(('function', *BROWSER_TYPES))})"


def test_builtin_types_name_browser_and_python_once_each():
    ts = parse_tools([{"type": t} for t in (*BROWSER_TYPES, *PYTHON_TYPES)], builtin=ServerTools(allow_python=True))
    assert ts.builtin_names == ("browser", "python") and not ts.client_tools and ts.functions == ()
    assert parse_tools([{"type": PYTHON_TYPES[0]}, {"type": BROWSER_TYPES[0]}],
                       builtin=ServerTools(allow_python=True)).builtin_names == ("browser", "python")  # fmt: skip
    msg, param = refusal_line(parse_tools, [{"name": "f"}, {"type": PYTHON_TYPES[0]}], builtin=ServerTools())
    assert param == "tools[1].type" and msg == (f"tool type {PYTHON_TYPES[0]!r} runs code on the server, which this server "
                                                "does not allow (start it with --allow-python to allow it)")  # fmt: skip


def test_web_search_without_external_access_is_left_out(caplog):
    with caplog.at_level(logging.INFO, logger="mlx_oss.server"):
        ts = parse_tools([{"type": "web_search", "external_web_access": False}, {"name": "f"}], builtin=ServerTools(),
                         responses=True)  # fmt: skip
    assert ts.builtin_names == () and ts.recipients() == ("functions.f",)  # the tools after it still count
    (rec,) = [r for r in caplog.records if r.name == "mlx_oss.server"]
    assert rec.getMessage() == ("tools[0]: 'web_search' with external_web_access false: left out (this server has no "
                                "offline web index)")  # fmt: skip
    assert parse_tools([{"type": "web_search", "external_web_access": True}], builtin=ServerTools()).builtin_names == ("browser",)


def test_responses_types_the_model_cannot_use_are_dropped_with_one_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="mlx_oss.server"):
        ts = parse_tools([{"type": "file_search"}, {"name": "f"}, {"type": "mcp"}], responses=True)
    assert ts.recipients() == ("functions.f",)
    (rec,) = [r for r in caplog.records if r.name == "mlx_oss.server"]
    assert rec.levelno == logging.WARNING and rec.getMessage() == (
        "tools the model cannot use on this server, left out of the prompt: tools[0] 'file_search', tools[2] 'mcp'")


def test_namespaces_custom_and_local_shell_tools():
    ts = parse_tools([
        {"type": "namespace", "name": "multi_agent_v1", "description": "Agents.", "tools": [
            {"type": "function", "name": "spawn", "parameters": OBJ}, {"type": "custom", "name": "note"}]},
        {"type": "namespace", "name": "functions", "tools": [{"name": "plain"}]},
        {"type": "custom", "name": "patch", "description": "Apply a patch.",
         "format": {"type": "grammar", "syntax": "lark", "definition": "start: /.+/"}},
        {"type": "custom", "name": "re", "format": {"type": "grammar", "syntax": "regex", "definition": "a+"}},
        {"type": "local_shell"},
    ], responses=True)  # fmt: skip
    assert dict(ts.calls) == {
        "multi_agent_v1.spawn": CallKind(FUNCTION, "spawn", "multi_agent_v1"),
        "multi_agent_v1.note": CallKind(CUSTOM, "note", "multi_agent_v1"),
        "functions.plain": CallKind(FUNCTION, "plain"), "functions.patch": CallKind(CUSTOM, "patch"),
        "functions.re": CallKind(CUSTOM, "re"), "functions.local_shell": CallKind(LOCAL_SHELL, "local_shell"),
    }  # fmt: skip
    (ns,) = ts.namespaces
    assert (ns.name, ns.description, [t.name for t in ns.tools]) == ("multi_agent_v1", "Agents.", ["spawn", "note"])
    assert isinstance(ns, ToolNamespace)
    by_name = {t.name: t for t in ts.functions}
    assert list(by_name) == ["plain", "patch", "re", "local_shell"]
    assert by_name["patch"].description == "Apply a patch.\n\nThe input must match this Lark grammar:\nstart: /.+/"
    assert by_name["re"].description == "The input must match this regular expression:\na+"
    lark = parse_tools([{"type": "custom", "name": "g", "format": {"type": "grammar", "definition": "start: /x/"}}], responses=True)
    assert lark.functions[0].description == "The input must match this Lark grammar:\nstart: /x/"  # Lark unless said
    assert ns.tools[1].description == "The input is free-form text."
    string_input = {"type": "object", "properties": {"input": {"type": "string"}}, "required": ["input"]}
    assert by_name["patch"].parameters == string_input
    assert by_name["local_shell"].parameters["required"] == ["command"]


def test_a_namespace_seen_twice_keeps_its_first_description_and_all_tools():
    ts = parse_tools([{"type": "namespace", "name": "ns", "description": "First.", "tools": [{"name": "a"}]},
                      {"type": "namespace", "name": "ns", "description": "Second.", "tools": [{"name": "b"}]},
                      {"type": "namespace", "name": "empty", "tools": []}], responses=True)  # fmt: skip
    (ns,) = ts.namespaces  # an empty namespace is left out
    assert (ns.description, [t.name for t in ns.tools]) == ("First.", ["a", "b"])
    late = parse_tools([{"type": "namespace", "name": "ns", "tools": [{"name": "a"}]},
                        {"type": "namespace", "name": "ns", "description": "Later.", "tools": []}], responses=True)  # fmt: skip
    assert late.namespaces[0].description == "Later."


@pytest.mark.parametrize("tool, message, param", [
    ({"type": "namespace", "name": "a b"}, "a namespace tool needs a 'name' of 1-128 letters, digits, '_' or '-'", "tools[0].name"),
    ({"type": "namespace", "name": "x" * 129}, "a namespace tool needs a 'name' of 1-128 letters, digits, '_' or '-'", "tools[0].name"),
    ({"type": "namespace", "name": "ns", "tools": [{"type": "web_search"}]},
     "a namespace holds function and custom tools, not 'web_search'", "tools[0].tools[0].type"),
    ({"type": "namespace", "name": "ns", "tools": [{"name": "a"}, {"name": "a"}]}, "two tools are named 'ns.a'", "tools[0].tools[1]"),
    ({"type": "custom", "name": ""}, "a custom tool needs a non-empty string 'name'", "tools[0].name"),
    ({"type": "custom", "name": "c", "format": {"type": "grammar"}},
     "custom tool 'c': a grammar format needs its 'definition'", "tools[0].format.definition"),
    ({"type": "custom", "name": "c", "format": {"type": "grammar", "definition": ""}},
     "custom tool 'c': a grammar format needs its 'definition'", "tools[0].format.definition"),
    ({"type": "namespace", "name": "ns", "tools": [{"type": "function"}]}, "a function tool needs a non-empty string 'name'",
     "tools[0].tools[0]"),
    ({"type": "namespace", "name": "ns", "tools": [{"name": "f"}, {"type": "custom", "name": ""}]},
     "a custom tool needs a non-empty string 'name'", "tools[0].tools[1].name"),
    ({"type": "namespace", "name": "ns", "tools": [{"type": "custom", "name": "a"}, {"type": "custom", "name": "a"}]},
     "two tools are named 'ns.a'", "tools[0].tools[1]"),
    ({"type": "custom", "name": "c", "format": {"type": "grammar", "syntax": "ebnf", "definition": "x"}},
     "custom tool 'c': format.syntax must be 'lark' or 'regex', not 'ebnf'", "tools[0].format.syntax"),
    ({"type": "custom", "name": "c", "format": {"type": "json"}},
     "custom tool 'c': format.type must be 'text' or 'grammar', not 'json'", "tools[0].format.type"),
])  # fmt: skip
def test_responses_tool_refusals(tool, message, param):
    assert refusal_line(parse_tools, [tool], responses=True) == (message, param)


def test_a_namespace_named_like_a_listed_builtin_is_refused():
    tools = [{"type": "web_search"}, {"type": "namespace", "name": "browser", "tools": [{"name": "x"}]}]
    assert refusal_line(parse_tools, tools, builtin=ServerTools(), responses=True) == (
        "a namespace tool is named 'browser', like the built-in tool this request also lists", "tools")
    assert parse_tools(tools[1:], builtin=ServerTools(), responses=True).namespaces[0].name == "browser"


def test_check_schema_accepts_json_schema_and_names_where_it_is_wrong():
    check_schema({"type": "object", "properties": {"a": {"type": "array", "items": {"type": "integer"}}}}, "x", "p")
    msg, param = refusal_line(check_schema, {"type": "object", "properties": {"a": {"minLength": -1}}}, "the format", "text.format")
    assert param == "text.format" and msg.startswith("the format schema is not a valid JSON Schema: ")
    assert msg.endswith("(at properties/a/minLength)")
    msg, _ = refusal_line(check_schema, {"type": 5}, "w", "p")
    assert msg.endswith("(at type)")


def _tools() -> ToolSet:
    return parse_tools([{"name": "get"}, {"type": "custom", "name": "patch"}, {"type": "local_shell"},
                        {"type": "namespace", "name": "ns", "tools": [{"name": "go"}]}], responses=True)  # fmt: skip


@pytest.mark.parametrize("value, want", [
    (None, ToolChoice()), ("auto", ToolChoice()),
    ("none", ToolChoice("none")),
    ("required", ToolChoice("required", ("functions.get", "functions.patch", "functions.local_shell", "ns.go"))),
    ({"type": "function", "function": {"name": "get"}}, ToolChoice("required", ("functions.get",))),
    ({"type": "function", "name": "get"}, ToolChoice("required", ("functions.get",))),
    ({"type": "function", "name": "go", "namespace": "ns"}, ToolChoice("required", ("ns.go",))),
    ({"type": "function", "name": "get", "namespace": "functions"}, ToolChoice("required", ("functions.get",))),
    ({"type": "custom", "name": "patch"}, ToolChoice("required", ("functions.patch",))),
    ({"type": "local_shell"}, ToolChoice("required", ("functions.local_shell",))),
    ({"type": "web_search_preview"}, ToolChoice()),
])  # fmt: skip
def test_tool_choice_in_every_shape(value, want):
    got = tool_choice(value, _tools())
    assert got == want and got.constrained is (want.mode != "auto")


def test_tool_choice_none_without_tools_needs_no_constraint():
    assert tool_choice("none", ToolSet()) == ToolChoice()
    assert tool_choice("none", ToolSet(builtin_names=("browser",))) == ToolChoice("none")


@pytest.mark.parametrize("value, tools, message", [
    ("required", ToolSet(builtin_names=("browser",)), "tool_choice 'required' needs at least one function tool in 'tools'"),
    ({"type": "function", "name": "nope"}, None, "tool_choice names 'nope', which is not in 'tools'"),
    ({"type": "custom", "name": "get"}, None, "tool_choice names 'get', which is not in 'tools'"),  # a function, not custom
    ({"type": "function", "name": "patch"}, None, "tool_choice names 'patch', which is not in 'tools'"),
    ({"type": "local_shell"}, ToolSet(), "tool_choice names a local_shell tool, which is not in 'tools'"),
    ("sometimes", None, "tool_choice must be 'auto', 'none', 'required' or a named function, not 'sometimes'"),
    ({"type": "file_search"}, None, "tool_choice must be 'auto', 'none', 'required' or a named function, not {'type': 'file_search'}"),
])  # fmt: skip
def test_tool_choice_refusals(value, tools, message):
    assert refusal_line(tool_choice, value, _tools() if tools is None else tools) == (message, "tool_choice")


def test_call_names_and_custom_and_shell_arguments_both_ways():
    assert call_name("functions.get_weather") == "get_weather" and call_name("ns.go") == "ns.go"
    assert call_name("functionsX.y") == "functionsX.y"
    assert custom_arguments("naïve\n") == '{"input": "naïve\\n"}'
    assert custom_input(custom_arguments("a\"b")) == 'a"b'
    assert custom_input("not json") == "not json" and custom_input('"a string"') == "a string"
    assert custom_input('{"input": 5}') == '{"input": 5}' and custom_input("[1]") == "[1]"
    full = shell_action('{"command": ["ls", 3, "-l"], "workdir": "/tmp", "timeout_ms": 1500.7}')
    assert full == {"type": "exec", "command": ["ls", "-l"], "env": {}, "timeout_ms": 1500, "working_directory": "/tmp", "user": None}
    assert shell_action('{"command": "ls", "working_directory": "/w", "timeout": 9}')["command"] == ["ls"]
    other = shell_action('{"command": "ls", "working_directory": "/w", "timeout": 9}')
    assert (other["working_directory"], other["timeout_ms"]) == ("/w", 9)
    for bad in ("", "  ", "not json", "[1, 2]", '{"command": {"a": 1}, "timeout_ms": true, "workdir": 5}',
                '{"timeout_ms": -1}', '{"timeout_ms": 1e30}'):  # fmt: skip
        a = shell_action(bad)
        assert (a["timeout_ms"], a["working_directory"]) == (None, None), bad
        assert a["command"] == [] and a["type"] == "exec"
    assert shell_action('{"timeout_ms": 0}')["timeout_ms"] == 0
    assert shell_action(f'{{"timeout_ms": {2**63 - 1}}}')["timeout_ms"] == 2**63 - 1  # the largest a client can take
    assert shell_action(f'{{"timeout_ms": {2**63}}}')["timeout_ms"] is None
    assert json.loads(shell_arguments(full)) == {"command": ["ls", "-l"], "workdir": "/tmp", "timeout_ms": 1500}
    assert json.loads(shell_arguments({"command": ["é"]})) == {"command": ["é"]} and "é" in shell_arguments({"command": ["é"]})
    assert json.loads(shell_arguments(None)) == {"command": []}


def test_a_schema_of_an_unknown_draft_is_checked_as_the_latest_without_a_warning():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # jsonschema warns (and will refuse) when it guesses the draft itself
        ts = parse_tools([{"name": "f", "parameters": {"$schema": "https://example.com/mine", "type": "object"}}])
    assert ts.functions[0].parameters["type"] == "object"


def test_strict_functions_are_schemas_the_reply_must_follow_named_where_the_request_set_them():
    """`strict: true` in either API's shape and in a namespace: the arguments' schema (none given: no
    arguments at all), each with the parameter a 400 about it would name; `strict` false or absent: none."""
    from mlx_oss.server.tools import NO_ARGUMENTS, StrictSchema

    params = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"], "additionalProperties": False}
    chat = parse_tools([{"type": "function", "function": {"name": "f", "strict": True, "parameters": params}},
                        {"type": "function", "function": {"name": "g", "strict": True}},
                        {"type": "function", "function": {"name": "h", "strict": False, "parameters": params}},
                        {"type": "function", "function": {"name": "i", "parameters": params}}])  # fmt: skip
    assert chat.strict == (StrictSchema("functions.f", params, "tools[0].function.parameters"),
                           StrictSchema("functions.g", NO_ARGUMENTS, "tools[1].function.parameters"))  # fmt: skip
    resp = parse_tools([{"type": "function", "name": "f", "strict": True, "parameters": params},
                        {"type": "namespace", "name": "ns", "tools": [
                            {"type": "function", "name": "n", "strict": True, "parameters": params},
                            {"type": "function", "name": "m", "parameters": params}]}], responses=True)  # fmt: skip
    assert resp.strict == (StrictSchema("functions.f", params, "tools[0].parameters"),
                           StrictSchema("ns.n", params, "tools[1].tools[0].parameters"))  # fmt: skip


def test_a_boolean_schema_is_a_valid_schema():
    check_schema(True, "tools[0]", "tools[0].parameters")  # JSON Schema's "anything"
    check_schema(False, "tools[0]", "tools[0].parameters")


@pytest.mark.parametrize("tools, param", [
    ([{"type": "custom", "name": "x"}, {"type": "custom", "name": "x"}], "tools[1]"),
    ([{"type": "local_shell"}, {"type": "local_shell"}], "tools[1]"),
    ([{"type": "function", "function": {"name": "x"}}, {"type": "custom", "name": "x"}], "tools[1]"),
])  # fmt: skip
def test_a_second_tool_of_a_name_is_refused_naming_it(tools, param):
    msg, got = refusal_line(parse_tools, tools, responses=True)
    assert got == param and msg.startswith("two tools are named ")
