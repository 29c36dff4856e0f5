"""Where API tool definitions meet harmony: the one place that maps tool types to namespaces.

Both APIs send tools as a list of typed objects. `function` tools (both APIs' shapes) become the
developer message's `functions` namespace and are called as `functions.<name>`; the model's calls
come back to the client as function calls. Built-in tools live in the system message instead (that
is how gpt-oss was trained for `browser` and `python`): `BUILTIN_TOOLS` maps a Responses tool type
(e.g. `web_search`, `browser_search`, `code_interpreter`) to a factory of its `ToolNamespace`.
It is empty here: a type is only accepted once something runs it — the built-in tools package
(issue 14) registers its entries and the executor for its recipients (`builtin_recipient`).
Any other type is refused with a 400 naming it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from mlx_oss.harmony import ToolDescription, ToolNamespace, json_schema_to_typescript
from mlx_oss.server.errors import bad_request

__all__ = ["BUILTIN_TOOLS", "FUNCTIONS", "ToolSet", "check_schema", "parse_tools", "tool_choice", "call_name"]

FUNCTIONS = "functions."
BUILTIN_TOOLS: dict[str, Callable[[dict[str, Any]], ToolNamespace]] = {}


@dataclass(frozen=True)
class ToolSet:
    """Function tools for the developer message and built-in namespaces for the system message."""

    functions: tuple[ToolDescription, ...] = ()
    builtin: tuple[ToolNamespace, ...] = ()

    def names(self) -> set[str]:
        return {t.name for t in self.functions}

    def only(self, name: str) -> ToolSet:
        return ToolSet(tuple(t for t in self.functions if t.name == name), self.builtin)


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


def parse_tools(tools: Any, param: str = "tools") -> ToolSet:
    """The `tools` array of either API -> ToolSet; 400 for anything malformed or unsupported."""
    if tools is None:
        return ToolSet()
    if not isinstance(tools, list):
        raise bad_request("'tools' must be an array", param)
    functions: list[ToolDescription] = []
    builtin: list[ToolNamespace] = []
    for i, spec in enumerate(tools):
        where = f"{param}[{i}]"
        if not isinstance(spec, dict):
            raise bad_request("each tool must be an object", where)
        kind = spec.get("type", "function")
        if kind == "function":
            functions.append(_function(spec, where))
        elif kind in BUILTIN_TOOLS:
            builtin.append(BUILTIN_TOOLS[kind](spec))
        else:
            supported = ", ".join(["function", *BUILTIN_TOOLS])
            raise bad_request(f"tool type {kind!r} is not supported (supported: {supported})", f"{where}.type")
    names = [t.name for t in functions]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup:
        raise bad_request(f"two tools are named {dup!r}", param)
    return ToolSet(tuple(functions), tuple(builtin))


def call_name(recipient: str) -> str:
    """The function name a client sees for a harmony recipient (`functions.get_weather` -> `get_weather`)."""
    return recipient[len(FUNCTIONS) :] if recipient.startswith(FUNCTIONS) else recipient


def tool_choice(value: Any, tools: ToolSet) -> ToolSet:
    """The tools offered for `tool_choice` (either API's shape). auto and required: all of them
    (harmony cannot force a call without constraining the sampler; documented); none: no function
    tools in the prompt; a named function: only that one (400 if it is not in `tools`)."""
    if value is None or value in ("auto", "required"):
        return tools
    if value == "none":
        return ToolSet((), tools.builtin)
    if isinstance(value, dict) and value.get("type") == "function":
        fn = value.get("function") if isinstance(value.get("function"), dict) else value
        name = fn.get("name")
        if name not in tools.names():
            raise bad_request(f"tool_choice names {name!r}, which is not in 'tools'", "tool_choice")
        return tools.only(name)
    raise bad_request(f"tool_choice must be 'auto', 'none', 'required' or a named function, not {value!r}", "tool_choice")
