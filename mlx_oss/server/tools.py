"""Where API tool definitions meet harmony: the one place that maps tool types to namespaces.

Both APIs send tools as a list of typed objects. `function` tools (both APIs' shapes) become the
developer message's `functions` namespace and are called as `functions.<name>`; the model's calls
come back to the client as function calls. Built-in tools live in the system message instead (that
is how gpt-oss was trained for `browser` and `python`). Which Responses tool types name them is the
app's `ServerTools` (server/builtin.py): `web_search`/`web_search_preview`/`browser_search` -> `browser`,
`code_interpreter` -> `python` (a 400 unless the server was started with `--allow-python`). Routes
that do not run built-in tools (Chat Completions) pass none, and those types get a 400 there.
Any other type is refused with a 400 naming it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mlx_oss.harmony import ToolDescription, ToolNamespace, json_schema_to_typescript
from mlx_oss.server.builtin import BROWSER_TYPES, PYTHON_TYPES, ServerTools
from mlx_oss.server.errors import bad_request

__all__ = ["FUNCTIONS", "ToolSet", "check_schema", "parse_tools", "tool_choice", "ToolChoice", "call_name"]

FUNCTIONS = "functions."


@dataclass(frozen=True)
class ToolSet:
    """Function tools for the developer message and built-in namespaces for the system message."""

    functions: tuple[ToolDescription, ...] = ()
    builtin: tuple[ToolNamespace, ...] = ()  # filled from the response's session (server/builtin.py)
    builtin_names: tuple[str, ...] = ()  # `browser` / `python`: the built-in tools the request lists

    def names(self) -> set[str]:
        return {t.name for t in self.functions}


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
        json_schema_to_typescript(params)
    return ToolDescription(name, desc, params)


def check_schema(schema: Any, what: str, param: str) -> None:
    """400 unless `schema` is a valid JSON Schema (checked against its draft's meta-schema by
    `jsonschema`), so the model is never shown a schema that means nothing."""
    from jsonschema.exceptions import SchemaError
    from jsonschema.validators import validator_for

    try:
        validator_for(schema).check_schema(schema)
    except SchemaError as e:
        where = "/".join(str(p) for p in e.path)
        raise bad_request(f"{what} schema is not a valid JSON Schema: {e.message}" + (f" (at {where})" if where else ""),
                          param) from None  # fmt: skip


def parse_tools(tools: Any, param: str = "tools", builtin: ServerTools | None = None) -> ToolSet:
    """The `tools` array of either API -> ToolSet; 400 for anything malformed or unsupported.
    `builtin`: the server's built-in tools (None where the route runs none)."""
    if tools is None:
        return ToolSet()
    if not isinstance(tools, list):
        raise bad_request("'tools' must be an array", param)
    functions: list[ToolDescription] = []
    names: list[str] = []
    for i, spec in enumerate(tools):
        where = f"{param}[{i}]"
        if not isinstance(spec, dict):
            raise bad_request("each tool must be an object", where)
        kind = spec.get("type", "function")
        if kind == "function":
            functions.append(_function(spec, where))
        elif builtin is not None and (owner := builtin.kind(kind)) is not None:
            if owner == "python" and not builtin.allow_python:
                raise bad_request(f"tool type {kind!r} runs code on the server, which this server does not allow "
                                  "(start it with --allow-python to allow it)", f"{where}.type")  # fmt: skip
            names.append(owner)
        elif builtin is None and isinstance(kind, str) and kind in _BUILTIN_TYPES:
            raise bad_request(f"tool type {kind!r} is a built-in tool, run only by /v1/responses (use that endpoint, "
                              "or a function tool here)", f"{where}.type")  # fmt: skip
        else:
            supported = ", ".join(["function", *(builtin.types() if builtin is not None else ())])
            raise bad_request(f"tool type {kind!r} is not supported (supported: {supported})", f"{where}.type")
    fnames = [t.name for t in functions]
    dup = next((n for n in fnames if fnames.count(n) > 1), None)
    if dup:
        raise bad_request(f"two tools are named {dup!r}", param)
    return ToolSet(tuple(functions), (), tuple(dict.fromkeys(n for n in ("browser", "python") if n in names)))


_BUILTIN_TYPES = BROWSER_TYPES + PYTHON_TYPES


def call_name(recipient: str) -> str:
    """The function name a client sees for a harmony recipient (`functions.get_weather` -> `get_weather`)."""
    return recipient[len(FUNCTIONS) :] if recipient.startswith(FUNCTIONS) else recipient


@dataclass(frozen=True)
class ToolChoice:
    """What `tool_choice` asks of the reply: `auto` (anything), `none` (no call) or `required` (a
    call to one of `functions`, which a named choice narrows to one)."""

    mode: str = "auto"
    functions: tuple[str, ...] = ()

    @property
    def constrained(self) -> bool:
        return self.mode != "auto"


def tool_choice(value: Any, tools: ToolSet) -> ToolChoice:
    """`tool_choice` in either API's shape -> ToolChoice (400 for an unknown value, a name not in
    `tools`, or `required` without function tools). The prompt always describes every tool (the
    choice constrains the sampler, see mlx_oss/constraint.py), so it renders, and caches, the same
    whatever the choice; `none` without any tool needs no constraint."""
    if value is None or value == "auto":
        return ToolChoice()
    if value == "none":
        return ToolChoice("none") if tools.functions or tools.builtin_names else ToolChoice()
    if value == "required":
        if not tools.functions:
            raise bad_request("tool_choice 'required' needs at least one function tool in 'tools'", "tool_choice")
        return ToolChoice("required", tuple(t.name for t in tools.functions))
    if isinstance(value, dict) and value.get("type") in _BUILTIN_TYPES:
        return ToolChoice()  # a built-in tool type: like auto (the sampler cannot force a built-in call)
    if isinstance(value, dict) and value.get("type") == "function":
        fn = value.get("function") if isinstance(value.get("function"), dict) else value
        name = fn.get("name")
        if name not in tools.names():
            raise bad_request(f"tool_choice names {name!r}, which is not in 'tools'", "tool_choice")
        return ToolChoice("required", (name,))
    raise bad_request(f"tool_choice must be 'auto', 'none', 'required' or a named function, not {value!r}", "tool_choice")
