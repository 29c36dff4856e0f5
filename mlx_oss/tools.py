"""Function tools: JSON schemas or plain Python callables -> harmony tool descriptions; running them.

A callable's signature gives the parameter schema (type hints -> JSON types, defaults -> optional)
and its docstring the descriptions (the summary for the tool, `Args:` / `:param x:` lines for the
parameters), so `def get_weather(city: str) -> str` with a docstring is a complete tool.
"""

from __future__ import annotations

import enum
import inspect
import json
import re
import types
import typing
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

from mlx_oss.harmony import ToolDescription

__all__ = ["Tool", "as_tool", "as_tools", "schema_from_callable", "parse_arguments", "run_tool"]


@dataclass(frozen=True)
class Tool:
    """A function tool: what the model is shown, and the callable that runs it (None: the caller runs it)."""

    description: ToolDescription
    fn: Callable[..., Any] | None = None
    strict: bool = False  # the arguments are enforced to match `parameters` while sampling (grammar.py)

    @property
    def name(self) -> str:
        return self.description.name

    def to_dict(self) -> dict[str, Any]:
        d = self.description
        out = {"name": d.name, "description": d.description, "parameters": d.parameters}
        return {**out, "strict": True} if self.strict else out


_SIMPLE = {str: "string", int: "integer", float: "number", bool: "boolean", type(None): "null",
           dict: "object", list: "array", tuple: "array", set: "array", frozenset: "array"}  # fmt: skip


def _type_schema(tp: Any) -> dict[str, Any]:
    """A JSON schema for a Python annotation; unknown annotations give {} (any value)."""
    if tp is inspect.Parameter.empty or tp is Any:
        return {}
    if tp in _SIMPLE:
        return {"type": _SIMPLE[tp]}
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return {"type": "string" if all(isinstance(m.value, str) for m in tp) else "number",
                "enum": [m.value for m in tp]}  # fmt: skip
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Literal:
        kinds = {type(a) for a in args}
        out: dict[str, Any] = {"enum": list(args)}
        if len(kinds) == 1 and next(iter(kinds)) in _SIMPLE:
            out = {"type": _SIMPLE[next(iter(kinds))], **out}
        return out
    if origin in (typing.Union, types.UnionType):
        non_null = [a for a in args if a is not type(None)]
        if len(non_null) == 1:
            return _type_schema(non_null[0])
        return {"anyOf": [_type_schema(a) for a in non_null]}
    if origin in (list, tuple, set, frozenset, typing.Sequence, typing.Iterable):
        out = {"type": "array"}
        if args and args[0] is not Ellipsis:
            out["items"] = _type_schema(args[0])
        return out
    if origin in (dict, typing.Mapping):
        return {"type": "object"}
    return {}


def _docstring_parts(doc: str) -> tuple[str, dict[str, str]]:
    """(description, {param: text}) from a Google-style (`Args:`) or Sphinx-style (`:param x:`) docstring."""
    params: dict[str, str] = {}
    desc_lines: list[str] = []
    section = None
    current = None
    arg_indent = None  # indentation of the parameter lines in an Args: section
    for line in inspect.cleandoc(doc or "").splitlines():
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        m = re.match(r":param\s+(?:\w+\s+)?(\w+)\s*:\s*(.*)", stripped)
        if m:
            section, current = "sphinx", m.group(1)
            params[current] = m.group(2)
            continue
        if re.match(r"(Args|Arguments|Parameters)\s*:\s*$", stripped):
            section, current, arg_indent = "args", None, None
            continue
        if re.match(r"(Returns?|Raises|Yields|Examples?|Notes?)\s*:\s*$", stripped) or stripped.startswith(":return"):
            section, current = "other", None
            continue
        if section == "args":
            m = re.match(r"(\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)", stripped)
            if m and (arg_indent is None or indent <= arg_indent):
                arg_indent, current = indent, m.group(1)
                params[current] = m.group(2)
            elif current and stripped:
                params[current] += " " + stripped
        elif section == "sphinx":
            if current and stripped:
                params[current] += " " + stripped
        elif section is None:
            desc_lines.append(line)
    return "\n".join(desc_lines).strip(), {k: v.strip() for k, v in params.items()}


def schema_from_callable(fn: Callable[..., Any]) -> ToolDescription:
    """The tool description of a Python callable: name, docstring summary, parameter JSON schema."""
    name = getattr(fn, "__name__", None) or type(fn).__name__
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # unresolvable forward references: fall back to raw annotations
        hints = {}
    sig = inspect.signature(fn)
    description, param_docs = _docstring_parts(inspect.getdoc(fn) or "")
    properties: dict[str, Any] = {}
    required: list[str] = []
    for p in sig.parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.name in ("self", "cls"):
            continue
        schema = dict(_type_schema(hints.get(p.name, p.annotation)))
        if p.name in param_docs:
            schema["description"] = param_docs[p.name]
        if p.default is p.empty:
            required.append(p.name)
        elif isinstance(p.default, (str, int, float, bool)):  # None: optional, nothing to show
            schema["default"] = p.default
        elif isinstance(p.default, enum.Enum):
            schema["default"] = p.default.value
        properties[p.name] = schema
    params: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        params["required"] = required
    return ToolDescription(name, description, params)


def as_tool(spec: Any) -> Tool:
    """A Tool from a callable, a ToolDescription, a Tool, or a JSON-schema dict
    (`{"name", "description", "parameters", "strict"}` or OpenAI's `{"type": "function", "function": {...}}`;
    `"strict": true` enforces the arguments; for a callable: `Tool(schema_from_callable(fn), fn, strict=True)`)."""
    if isinstance(spec, Tool):
        return spec
    if isinstance(spec, ToolDescription):
        return Tool(spec)
    if isinstance(spec, Mapping):
        d = spec.get("function", spec) if spec.get("type") == "function" else spec
        if not isinstance(d.get("name"), str) or not d["name"]:
            raise ValueError(f"a tool schema needs a 'name': {json.dumps(spec)[:80]}")
        if d.get("strict") is not None and not isinstance(d["strict"], bool):
            raise ValueError(f"tool {d['name']!r}: 'strict' must be true or false, not {d['strict']!r}")
        desc = ToolDescription(d["name"], d.get("description") or "", d.get("parameters"))
        return Tool(desc, strict=bool(d.get("strict")))
    if callable(spec):
        return Tool(schema_from_callable(spec), spec)
    raise TypeError(f"a tool must be a callable or a JSON-schema dict, not {type(spec).__name__}")


def as_tools(specs: Iterable[Any] | None) -> tuple[Tool, ...]:
    """Tools from a list of specs; names must be unique (the model calls them by name)."""
    tools = tuple(as_tool(s) for s in specs or ())
    names = [t.name for t in tools]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup:
        raise ValueError(f"two tools are named {dup!r}")
    return tools


def parse_arguments(raw: str) -> tuple[Any, str | None]:
    """(parsed JSON, None) or (None, one-line reason). Empty text means no arguments ({})."""
    text = raw.strip()
    if not text:
        return {}, None
    try:
        return json.loads(text), None
    except json.JSONDecodeError as e:
        return None, f"invalid JSON arguments: {e.msg} at line {e.lineno} column {e.colno}"


def run_tool(tool: Tool, arguments: Any) -> tuple[str, bool]:
    """Call the tool; -> (text fed back to the model, raised?). Exceptions become text the model can read."""
    if tool.fn is None:
        raise ValueError(f"tool {tool.name!r} has no callable")
    try:
        if isinstance(arguments, Mapping):
            result = tool.fn(**arguments)
        elif arguments is None:
            result = tool.fn()
        else:
            result = tool.fn(arguments)
    except Exception as e:  # the model sees the failure and can retry or explain
        return f"Error: {type(e).__name__}: {e}", True
    if isinstance(result, str):
        return result, False
    try:
        return json.dumps(result, ensure_ascii=False, default=str), False
    except (TypeError, ValueError):
        return str(result), False
