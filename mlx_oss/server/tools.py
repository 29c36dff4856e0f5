"""Where API tool definitions meet harmony: the one place that maps tool types to namespaces.

Both APIs send tools as a list of typed objects. `function` tools (both APIs' shapes) become the
developer message's `functions` namespace and are called as `functions.<name>`; the model's calls
come back to the client as function calls. Built-in tools live in the system message instead (that
is how gpt-oss was trained for `browser` and `python`). Which Responses tool types name them is the
app's `ServerTools` (server/builtin.py): `web_search`/`web_search_preview`/`browser_search` -> `browser`
(left out when the client sets `external_web_access: false`: no live fetches),
`code_interpreter` -> `python` (a 400 unless the server was started with `--allow-python`). Routes
that do not run built-in tools (Chat Completions) pass none, and those types get a 400 there.

The Responses API also takes (what Codex and agent frameworks send):
- `namespace` `{name, description, tools: [function | custom, ...]}` -> a developer namespace of its
  own (`namespace multi_agent_v1 { ... }`), called as `multi_agent_v1.spawn_agent`; its calls come back
  as `function_call` items with `name` (the inner name) and `namespace`. A namespace named `functions`
  adds its tools to the plain function tools.
- `custom` (freeform) `{name, description, format}` -> a function taking `{"input": string}` (the
  format's grammar, if any, quoted in the description); calls come back as `custom_tool_call` items
  whose `input` is that string.
- `local_shell` -> a `functions.local_shell` function taking `{command: string[], workdir, timeout_ms}`;
  calls come back as `local_shell_call` items (`action` `{"type": "exec", ...}`).
- Any other type (`file_search`, `mcp`, `image_generation`, `computer_use_preview`, `tool_search`,
  `shell`, `apply_patch`, ..., or a type this server does not know) is a tool the model cannot use
  here: it is dropped, with one warning line in the server log (`mlx_oss.server`), so that a client
  that lists it is still served. Chat Completions keeps refusing anything but `function`.

`strict: true` on a function tool (either API's shape, in a namespace too) asks for its arguments to be
enforced: the tool's `parameters` are kept as a `StrictSchema` (target: its recipient; `param`: where
the request set them, for the 400 when they cannot be enforced); the server compiles them and the
sampler keeps each call's arguments to them (server/conversation.py, mlx_oss/constraint.py). Only an
explicit `true` counts: when `strict` is absent or false the schema is described to the model, never
enforced (docs/SERVER.md, "Structured output").
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from typing import Any

from mlx_oss.harmony import ToolDescription, ToolNamespace
from mlx_oss.server.builtin import BROWSER_TYPES, PYTHON_TYPES, ServerTools
from mlx_oss.server.errors import bad_request, clip

__all__ = ["FUNCTIONS", "ToolSet", "StrictSchema", "NO_ARGUMENTS", "CallKind", "check_schema", "parse_tools",
           "tool_choice", "ToolChoice", "call_name", "FUNCTION", "CUSTOM", "LOCAL_SHELL", "LOCAL_SHELL_NAME",
           "custom_arguments", "custom_input", "shell_arguments", "shell_action"]  # fmt: skip

FUNCTIONS = "functions."
FUNCTION, CUSTOM, LOCAL_SHELL = "function", "custom", "local_shell"  # what a call to a client tool comes back as
LOCAL_SHELL_NAME = "local_shell"  # the function a `local_shell` tool becomes (`functions.local_shell`)
_NAMESPACE_NAME = re.compile(r"[A-Za-z0-9_-]{1,128}")  # one word of a harmony header (`to=NAME.tool`)
log = logging.getLogger("mlx_oss.server")


@dataclass(frozen=True)
class CallKind:
    """What a call to `recipient` is for the client: `kind` (FUNCTION, CUSTOM, LOCAL_SHELL), the
    name it knows the tool by, and its namespace (None for plain function tools)."""

    kind: str
    name: str
    namespace: str | None = None


@dataclass(frozen=True)
class StrictSchema:
    """A JSON schema a message of the reply must follow: `target` is the message (`final` for the
    answer, a call's recipient for its arguments), `param` where the request set it."""

    target: str
    schema: dict[str, Any]
    param: str


NO_ARGUMENTS: dict[str, Any] = {"type": "object", "properties": {}, "additionalProperties": False}  # a strict
# function without `parameters` takes none: `{}`


@dataclass(frozen=True)
class ToolSet:
    """Function tools for the developer message and built-in namespaces for the system message."""

    functions: tuple[ToolDescription, ...] = ()
    builtin: tuple[ToolNamespace, ...] = ()  # filled from the response's session (server/builtin.py)
    builtin_names: tuple[str, ...] = ()  # `browser` / `python`: the built-in tools the request lists
    namespaces: tuple[ToolNamespace, ...] = ()  # the client's own namespaces (developer message), not `functions`
    calls: tuple[tuple[str, CallKind], ...] = ()  # recipient -> CallKind, for every client tool
    strict: tuple[StrictSchema, ...] = ()  # the arguments of `strict: true` functions, by recipient

    def recipients(self) -> tuple[str, ...]:
        """Every recipient a call to a client tool may have (`functions.x`, `ns.y`), in order."""
        return tuple(r for r, _ in self.calls)

    def call_kind(self, recipient: str | None) -> CallKind | None:
        return next((k for r, k in self.calls if r == recipient), None)  # None (no recipient) matches no call

    @property
    def client_tools(self) -> bool:
        return bool(self.calls)


def _function(spec: dict[str, Any], param: str) -> ToolDescription:
    # Chat Completions nests the definition under "function"; the Responses API does not.
    d = spec.get("function") if isinstance(spec.get("function"), dict) else spec
    name = d.get("name")
    if not isinstance(name, str) or not name:
        raise bad_request("a function tool needs a non-empty string 'name'", param)
    desc = d.get("description") or ""
    if not isinstance(desc, str):
        raise bad_request(f"tool {name!r}: 'description' must be a string", param)
    params = d.get("parameters")
    if params is not None:
        if not isinstance(params, dict):
            raise bad_request(f"tool {name!r}: 'parameters' must be a JSON schema object", param)
        check_schema(params, f"tool {name!r}: its parameters", param)
    return ToolDescription(name, desc, params)


def _strict(spec: dict[str, Any], where: str) -> tuple[dict[str, Any], str] | None:
    """A function tool's (parameters, their param) when it says `strict: true` (else None: described only)."""
    d = spec.get("function") if isinstance(spec.get("function"), dict) else spec
    if d.get("strict") is not True:
        return None
    params = d.get("parameters")
    param = f"{where}.function.parameters" if d is not spec else f"{where}.parameters"
    return (params if params is not None else NO_ARGUMENTS), param


def _custom(spec: dict[str, Any], param: str) -> ToolDescription:
    """A freeform tool as a function of one string, `input` (its grammar quoted for the model)."""
    name = spec.get("name")
    if not isinstance(name, str) or not name:
        raise bad_request("a custom tool needs a non-empty string 'name'", f"{param}.name")
    desc = spec.get("description") or ""
    fmt = spec.get("format") or {}
    kind = fmt.get("type") or "text"
    if kind == "grammar":
        syntax, definition = fmt.get("syntax") or "lark", fmt.get("definition")
        if not isinstance(definition, str) or not definition:
            raise bad_request(f"custom tool {name!r}: a grammar format needs its 'definition'", f"{param}.format.definition")
        if syntax not in ("lark", "regex"):
            raise bad_request(f"custom tool {name!r}: format.syntax must be 'lark' or 'regex', not {clip(str(syntax))!r}",
                              f"{param}.format.syntax")  # fmt: skip
        what = "this Lark grammar" if syntax == "lark" else "this regular expression"
        rule = f"The input must match {what}:\n{definition}"
    elif kind == "text":
        rule = "The input is free-form text."
    else:
        raise bad_request(f"custom tool {name!r}: format.type must be 'text' or 'grammar', not {clip(str(kind))!r}",
                          f"{param}.format.type")  # fmt: skip
    params = {"type": "object", "properties": {"input": {"type": "string"}}, "required": ["input"]}
    return ToolDescription(name, f"{desc}\n\n{rule}" if desc else rule, params)


_LOCAL_SHELL = ToolDescription(
    LOCAL_SHELL_NAME,
    "Runs a command on the user's machine (argv form, no shell unless you call one) and returns its output.",
    {"type": "object", "properties": {
        "command": {"type": "array", "items": {"type": "string"}, "description": "The program and its arguments."},
        "workdir": {"type": "string", "description": "The working directory (default: the session's)."},
        "timeout_ms": {"type": "number", "description": "How long the command may run, in milliseconds."},
    }, "required": ["command"]},
)  # fmt: skip


def check_schema(schema: Any, what: str, param: str) -> None:
    """400 unless `schema` is a valid JSON Schema (checked against its draft's meta-schema by
    `jsonschema`), so the model is never shown a schema that means nothing."""
    from jsonschema.exceptions import SchemaError
    from jsonschema.validators import Draft202012Validator, validator_for

    dialect = schema.get("$schema") if isinstance(schema, dict) else None
    if dialect is not None and not isinstance(dialect, str):
        raise bad_request(f"{what} schema's $schema must be a string naming a JSON Schema draft, not "
                          f"{type(dialect).__name__}", param)  # fmt: skip
    try:  # a draft it does not know: checked as the latest (no warning on the server's terminal)
        validator_for(schema, default=Draft202012Validator).check_schema(schema)
    except SchemaError as e:
        where = "/".join(str(p) for p in e.path)
        raise bad_request(f"{what} schema is not a valid JSON Schema: {e.message}" + (f" (at {where})" if where else ""),
                          param) from None  # fmt: skip


class _Collector:
    """The client tools of one request, by namespace, with their call kinds."""

    def __init__(self) -> None:
        self.functions: list[ToolDescription] = []
        self.spaces: dict[str, tuple[str | None, list[ToolDescription]]] = {}
        self.calls: dict[str, CallKind] = {}
        self.strict: list[StrictSchema] = []

    def add(self, tool: ToolDescription, kind: str, namespace: str | None, param: str,
            strict: tuple[dict[str, Any], str] | None = None) -> None:  # fmt: skip
        recipient = f"{namespace}.{tool.name}" if namespace else FUNCTIONS + tool.name
        if recipient in self.calls:
            raise bad_request(f"two tools are named {recipient if namespace else tool.name!r}", param)
        self.calls[recipient] = CallKind(kind, tool.name, namespace)
        if strict is not None:
            self.strict.append(StrictSchema(recipient, *strict))
        (self.spaces[namespace][1] if namespace else self.functions).append(tool)

    def namespace(self, spec: dict[str, Any], param: str) -> None:
        name = spec.get("name")
        if not isinstance(name, str) or not _NAMESPACE_NAME.fullmatch(name):
            raise bad_request("a namespace tool needs a 'name' of 1-128 letters, digits, '_' or '-'", f"{param}.name")
        inner = spec.get("tools") or []
        ns = None if name == "functions" else name  # `functions`: the plain function tools
        if ns is not None:
            desc = spec.get("description") or None
            known = self.spaces.get(ns)
            self.spaces[ns] = (known[0] if known and known[0] else desc, known[1] if known else [])
        for j, t in enumerate(inner):
            where = f"{param}.tools[{j}]"
            kind = t.get("type") or "function"
            if kind == "function":
                self.add(_function(t, where), FUNCTION, ns, where, _strict(t, where))
            elif kind == "custom":
                self.add(_custom(t, where), CUSTOM, ns, where)
            else:
                raise bad_request(f"a namespace holds function and custom tools, not {clip(str(kind))!r}", f"{where}.type")


def parse_tools(tools: Any, param: str = "tools", builtin: ServerTools | None = None, responses: bool = False) -> ToolSet:
    """The `tools` array of either API -> ToolSet; 400 for anything malformed or refused.
    `builtin`: the server's built-in tools (None where the route runs none). `responses`: the
    Responses API's tool types (namespace, custom, local_shell; others dropped with a warning)."""
    if tools is None:
        return ToolSet()
    if not isinstance(tools, list):
        raise bad_request("'tools' must be an array", param)
    got = _Collector()
    names: list[str] = []
    dropped: list[str] = []
    for i, spec in enumerate(tools):
        where = f"{param}[{i}]"
        if not isinstance(spec, dict):
            raise bad_request("each tool must be an object", where)
        kind = spec.get("type", "function")
        if kind == "function":
            got.add(_function(spec, where), FUNCTION, None, where, _strict(spec, where))
        elif builtin is not None and (owner := builtin.kind(kind)) is not None:
            if owner == "python" and not builtin.allow_python:
                raise bad_request(f"tool type {kind!r} runs code on the server, which this server does not allow "
                                  "(start it with --allow-python to allow it)", f"{where}.type")  # fmt: skip
            if owner == "browser" and spec.get("external_web_access") is False:
                log.info("%s: %r with external_web_access false: left out (this server has no offline web index)",
                         where, kind)  # fmt: skip
                continue
            names.append(owner)
        elif builtin is None and isinstance(kind, str) and kind in _BUILTIN_TYPES:
            raise bad_request(f"tool type {kind!r} is a built-in tool, run only by /v1/responses (use that endpoint, "
                              "or a function tool here)", f"{where}.type")  # fmt: skip
        elif responses and kind == "namespace":
            got.namespace(spec, where)
        elif responses and kind == "custom":
            got.add(_custom(spec, where), CUSTOM, None, where)
        elif responses and kind == "local_shell":
            got.add(_LOCAL_SHELL, LOCAL_SHELL, None, where)
        elif responses:
            dropped.append(f"{where} {clip(str(kind))!r}")
        else:
            supported = ", ".join(["function", *(builtin.types() if builtin is not None else ())])
            raise bad_request(f"tool type {kind!r} is not supported (supported: {supported})", f"{where}.type")
    if dropped:
        log.warning("tools the model cannot use on this server, left out of the prompt: %s", ", ".join(dropped))
    builtin_names = tuple(dict.fromkeys(n for n in ("browser", "python") if n in names))
    clash = next((n for n in got.spaces if n in builtin_names), None)
    if clash:
        raise bad_request(f"a namespace tool is named {clash!r}, like the built-in tool this request also lists", param)
    spaces = tuple(ToolNamespace(n, d, tuple(ts)) for n, (d, ts) in got.spaces.items() if ts)
    return ToolSet(tuple(got.functions), (), builtin_names, spaces, tuple(got.calls.items()), tuple(got.strict))


_BUILTIN_TYPES = BROWSER_TYPES + PYTHON_TYPES


def call_name(recipient: str) -> str:
    """The function name a client sees for a harmony recipient (`functions.get_weather` -> `get_weather`)."""
    return recipient[len(FUNCTIONS) :] if recipient.startswith(FUNCTIONS) else recipient


def custom_arguments(text: str) -> str:
    """A custom tool call's `input`, as the JSON arguments of the function the model sees."""
    return json.dumps({"input": text}, ensure_ascii=False)


def custom_input(arguments: str) -> str:
    """The `input` of a custom tool call from the model's JSON arguments (the raw text if they are
    not `{"input": string}`: what the model wrote is passed on, not lost)."""
    try:
        value = json.loads(arguments)
    except ValueError:
        return arguments
    if isinstance(value, dict) and isinstance(value.get("input"), str):
        return value["input"]
    return value if isinstance(value, str) else arguments


def shell_action(arguments: str) -> dict:
    """A local_shell_call's `action` from the model's arguments (`command` as a list of strings)."""
    try:
        args = json.loads(arguments)
    except ValueError:  # "" too
        args = None
    args = args if isinstance(args, dict) else {}
    command = args.get("command")
    if isinstance(command, str):
        command = [command]
    command = [c for c in command if isinstance(c, str)] if isinstance(command, list) else []
    timeout = args.get("timeout_ms", args.get("timeout"))
    number = isinstance(timeout, (int, float)) and not isinstance(timeout, bool)
    timeout = int(timeout) if number and 0 <= timeout < 2**63 else None
    workdir = args.get("workdir", args.get("working_directory"))
    return {"type": "exec", "command": command, "env": {}, "timeout_ms": timeout,
            "working_directory": workdir if isinstance(workdir, str) else None, "user": None}  # fmt: skip


def shell_arguments(action: Any) -> str:
    """A local_shell_call item's `action` as the arguments of `functions.local_shell`."""
    action = action if isinstance(action, dict) else {}
    args: dict[str, Any] = {"command": action.get("command") or []}
    if action.get("working_directory") is not None:
        args["workdir"] = action["working_directory"]
    if action.get("timeout_ms") is not None:
        args["timeout_ms"] = action["timeout_ms"]
    return json.dumps(args, ensure_ascii=False)


@dataclass(frozen=True)
class ToolChoice:
    """What `tool_choice` asks of the reply: `auto` (anything), `none` (no call) or `required` (a
    call to one of `recipients`, which a named choice narrows to one)."""

    mode: str = "auto"
    recipients: tuple[str, ...] = ()

    @property
    def constrained(self) -> bool:
        return self.mode != "auto"


def tool_choice(value: Any, tools: ToolSet) -> ToolChoice:
    """`tool_choice` in either API's shape -> ToolChoice (400 for an unknown value, a name not in
    `tools`, or `required` without client tools). The prompt always describes every tool (the
    choice constrains the sampler, see mlx_oss/constraint.py), so it renders, and caches, the same
    whatever the choice; `none` without any tool needs no constraint."""
    if value is None or value == "auto":
        return ToolChoice()
    if value == "none":
        return ToolChoice("none") if tools.client_tools or tools.builtin_names else ToolChoice()
    if value == "required":
        if not tools.client_tools:
            raise bad_request("tool_choice 'required' needs at least one function tool in 'tools'", "tool_choice")
        return ToolChoice("required", tools.recipients())
    if isinstance(value, dict) and value.get("type") in _BUILTIN_TYPES:
        return ToolChoice()  # a built-in tool type: like auto (the sampler cannot force a built-in call)
    if isinstance(value, dict) and value.get("type") in ("function", "custom", "local_shell"):
        kind = value["type"]
        fn = value.get("function") if isinstance(value.get("function"), dict) else value
        name = LOCAL_SHELL_NAME if kind == "local_shell" else fn.get("name")
        ns = value.get("namespace")
        recipient = f"{ns}.{name}" if ns else FUNCTIONS + str(name)  # (namespace `functions`: the same)
        found = tools.call_kind(recipient)
        if found is None or found.kind != {"function": FUNCTION, "custom": CUSTOM, "local_shell": LOCAL_SHELL}[kind]:
            what = "a local_shell tool" if kind == "local_shell" else repr(name)
            raise bad_request(f"tool_choice names {what}, which is not in 'tools'", "tool_choice")
        return ToolChoice("required", (recipient,))
    raise bad_request(f"tool_choice must be 'auto', 'none', 'required' or a named function, not {value!r}", "tool_choice")
