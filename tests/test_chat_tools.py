"""Tools: callables -> harmony tool schemas, JSON-schema specs, argument parsing, running."""

from __future__ import annotations

import enum
from typing import Literal, Optional

import pytest

from mlx_oss.harmony import ToolDescription
from mlx_oss.tools import as_tool, as_tools, parse_arguments, run_tool, schema_from_callable


class Unit(enum.Enum):
    C = "celsius"
    F = "fahrenheit"


def get_weather(city: str, unit: Unit = Unit.C, days: Optional[int] = None, tags: list[str] = ()) -> str:
    """Get the weather forecast.

    Uses the national service.

    Args:
        city: City name,
            for example Paris.
        unit: Temperature unit.
        days (int): How many days.
    Returns:
        A forecast.
    """
    return f"{city}: sunny"


def test_schema_from_google_docstring_and_hints():
    d = schema_from_callable(get_weather)
    assert d.name == "get_weather"
    assert d.description == "Get the weather forecast.\n\nUses the national service."
    p = d.parameters
    assert p["required"] == ["city"]
    assert p["properties"]["city"] == {"type": "string", "description": "City name, for example Paris."}
    assert p["properties"]["unit"] == {"type": "string", "enum": ["celsius", "fahrenheit"],
                                       "description": "Temperature unit.", "default": "celsius"}  # fmt: skip
    assert p["properties"]["days"] == {"type": "integer", "description": "How many days."}
    assert p["properties"]["tags"] == {"type": "array", "items": {"type": "string"}}


def test_schema_sphinx_docstring_literal_and_untyped():
    def f(mode: Literal["a", "b"], x: float | None, y, *args, **kw):
        """Do f.

        :param mode: the mode
        :param y: anything
        """

    p = schema_from_callable(f).parameters
    assert p["properties"]["mode"] == {"type": "string", "enum": ["a", "b"], "description": "the mode"}
    assert p["properties"]["x"] == {"type": "number"}
    assert p["properties"]["y"] == {"description": "anything"}
    assert p["required"] == ["mode", "x", "y"] and "args" not in p["properties"]


def test_specs_in_all_forms():
    params = {"type": "object", "properties": {}}
    assert as_tool({"name": "a", "description": "d", "parameters": params}).description == ToolDescription("a", "d", params)
    assert as_tool({"type": "function", "function": {"name": "b"}}).name == "b"
    assert as_tool(ToolDescription("c")).fn is None
    assert as_tool(get_weather).fn is get_weather
    with pytest.raises(ValueError, match="name"):
        as_tool({"description": "x"})
    with pytest.raises(TypeError):
        as_tool(42)
    with pytest.raises(ValueError, match="two tools"):
        as_tools([get_weather, {"name": "get_weather"}])


def test_parse_arguments():
    assert parse_arguments('{"a": 1}') == ({"a": 1}, None)
    assert parse_arguments("  ") == ({}, None)
    args, err = parse_arguments('{"a": }')
    assert args is None and err.startswith("invalid JSON arguments")


def test_run_tool_results_and_errors():
    assert run_tool(as_tool(get_weather), {"city": "Oslo"}) == ("Oslo: sunny", False)
    assert run_tool(as_tool(lambda: {"ok": 1}), None) == ('{"ok": 1}', False)
    text, failed = run_tool(as_tool(get_weather), {"town": "Oslo"})
    assert failed and text.startswith("Error: TypeError")
    with pytest.raises(ValueError, match="no callable"):
        run_tool(as_tool({"name": "x"}), {})
