"""JSON schemas a random-weight model always finishes under a grammar: every string has a maxLength or an
enum, every integer bounds, every array maxItems, no additional properties. Without those bounds a random
model never closes a string (any token continues it) and a test could only time out."""

from __future__ import annotations

PET = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "kind": {"enum": ["cat", "dog"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 5}, "maxItems": 3},
    },
    "required": ["name", "age", "kind", "tags"],
    "additionalProperties": False,
}
PERSON = {**PET, "properties": {**PET["properties"], "ok": {"type": "boolean"}}, "required": [*PET["required"], "ok"]}
CITY = {"type": "object", "properties": {"city": {"enum": ["Paris", "Oslo"]}, "days": {"type": "integer", "minimum": 1,
        "maximum": 9}}, "required": ["city", "days"], "additionalProperties": False}  # fmt: skip
