"""JSON schema -> the TypeScript-like type text gpt-oss saw in training for tool parameters.

This follows openai-harmony's renderer rule for rule (comments for title/description/examples,
`?` for optional keys, oneOf as `|` lines, defaults as trailing comments) because the model is
sensitive to the exact text. Default values print as serde_json would print them, which differs
from Python's json for some floats (1e+20 vs 1e20).
"""

from __future__ import annotations

import json
import math
from decimal import Decimal
from typing import Any

__all__ = ["json_schema_to_typescript", "json_display", "rust_lines"]


def rust_lines(text: str) -> list[str]:
    """Split like Rust's `str::lines`: on "\\n" (dropping a "\\r" before it), no empty last line."""
    parts = text.split("\n")
    last = parts.pop()  # the piece after the final "\n" (no terminator, so no "\r" stripping)
    lines = [p[:-1] if p.endswith("\r") else p for p in parts]
    if last:
        lines.append(last)
    return lines


def _format_float(x: float) -> str:
    """Shortest round-trip float in Rust's ryu layout (what serde_json's Display uses)."""
    if x == 0:
        return "-0.0" if math.copysign(1.0, x) < 0 else "0.0"
    sign = "-" if x < 0 else ""
    _, digits_t, exp = Decimal(repr(abs(x))).as_tuple()
    digits = "".join(map(str, digits_t)).rstrip("0") or "0"
    exp = int(exp) + (len(digits_t) - len(digits))
    length = len(digits)
    kk = length + exp  # 10^(kk-1) <= |x| < 10^kk
    if 0 <= exp and kk <= 16:
        body = digits + "0" * exp + ".0"
    elif 0 < kk <= 16:
        body = digits[:kk] + "." + digits[kk:]
    elif -5 < kk <= 0:
        body = "0." + "0" * (-kk) + digits
    elif length == 1:
        body = f"{digits}e{kk - 1}"
    else:
        body = f"{digits[0]}.{digits[1:]}e{kk - 1}"
    return sign + body


_U64_MAX = 2**64 - 1
_POW10 = [float(f"1e{i}") for i in range(309)]


def _serde_f64(number_text: str) -> float:
    """The f64 serde_json (without its float_roundtrip feature) reads from a JSON number.

    openai-harmony receives schemas as JSON text and parses them this way: digits go into a u64
    (later ones only move the exponent once it would overflow), then one multiplication or
    division by a power of ten. That can land one ulp away from Python's correctly rounded
    value (e.g. for integers beyond u64), and the model saw the printed result of that value.
    """
    negative = number_text.startswith("-")
    mantissa, _, exp_text = number_text.lstrip("-").lower().partition("e")
    int_part, _, frac_part = mantissa.partition(".")
    significand, exponent, overflowed = 0, 0, False
    for ch in int_part:
        if overflowed or significand * 10 + int(ch) > _U64_MAX:
            overflowed = True
            exponent += 1
        else:
            significand = significand * 10 + int(ch)
    for ch in frac_part:
        if overflowed or significand * 10 + int(ch) > _U64_MAX:
            overflowed = True
        else:
            significand = significand * 10 + int(ch)
            exponent -= 1
    if exp_text:
        exponent += int(exp_text)
    f = float(significand)
    while True:
        if abs(exponent) < len(_POW10):
            f = f * _POW10[exponent] if exponent >= 0 else f / _POW10[-exponent]
            break
        if f == 0.0 or exponent >= 0:
            break
        f /= 1e308
        exponent += 308
    return -f if negative else f


def json_display(value: Any) -> str:
    """Compact JSON as openai-harmony prints a schema value: serde_json `Display` of the value
    parsed from Python's JSON (no spaces, non-ASCII kept, ryu float layout)."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        if -(2**63) <= value <= _U64_MAX:
            return str(value)
        return _format_float(_serde_f64(str(value)))  # serde_json reads larger integers as f64
    if isinstance(value, float):
        return _format_float(_serde_f64(repr(value)))
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(str(k), ensure_ascii=False)}:{json_display(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(json_display(v) for v in value) + "]"
    raise TypeError(f"not JSON-serializable: {type(value).__name__}")


def _get(obj: Any, key: str) -> Any:
    """serde_json's `Value::get`: only objects have keys."""
    return obj.get(key) if isinstance(obj, dict) else None


def _has(obj: Any, key: str) -> bool:
    return isinstance(obj, dict) and key in obj


def _str(obj: Any, key: str) -> str | None:
    v = _get(obj, key)
    return v if isinstance(v, str) else None


def _is_enum(schema: Any) -> bool:
    e = _get(schema, "enum")
    return isinstance(e, list) and len(e) > 0


def _nullable(schema: Any) -> bool:
    return _get(schema, "nullable") is True


def _with_null(type_str: str, schema: Any) -> str:
    if _nullable(schema) and "null" not in type_str:
        return f"{type_str} | null"
    return type_str


def _default_text(schema: Any, quote_enum_strings: bool) -> str:
    """`default: ...` text. Strings are quoted raw unless the schema is an enum, where harmony
    prints them bare (property level) or JSON-quoted (top-level oneOf variants)."""
    default = schema["default"]
    if isinstance(default, str):
        if not _is_enum(schema):
            return f'default: "{default}"'
        if not quote_enum_strings:
            return f"default: {default}"
    return f"default: {json_display(default)}"


def _one_of_top(variants: list[Any], indent: str) -> str:
    out = []
    for variant in variants:
        out.append(f"\n{indent} | ")
        out.append(_with_null(json_schema_to_typescript(variant, indent + "   "), variant))
        trailing = []
        desc = _str(variant, "description")
        if desc is not None:
            trailing.append(desc)
        if _has(variant, "default"):
            trailing.append(_default_text(variant, quote_enum_strings=True))
        if trailing:
            out.append(" // " + " ".join(trailing))
    return "".join(out)


def _object(schema: dict[str, Any], indent: str) -> str:
    out = []
    desc = _str(schema, "description")
    if desc is not None:
        out.append(f"{indent}// {desc}\n")
    out.append("{\n")
    props = schema.get("properties")
    if isinstance(props, dict):
        req = schema.get("required")
        required = {r for r in req if isinstance(r, str)} if isinstance(req, list) else set()
        for key, val in props.items():
            opt = "" if key in required else "?"
            title = _str(val, "title")
            if title is not None:
                out.append(f"{indent}// {title}\n{indent}//\n")
            if not _has(val, "oneOf"):
                d = _str(val, "description")
                if d is not None:
                    out.append(f"{indent}// {d}\n")
            examples = _get(val, "examples")
            if isinstance(examples, list) and examples:
                out.append(f"{indent}// Examples:\n")
                out.extend(f'{indent}// - "{ex}"\n' for ex in examples if isinstance(ex, str))
            variants = _get(val, "oneOf")
            if isinstance(variants, list):
                prop_desc = _str(val, "description")
                skip_desc = prop_desc is not None and bool(variants) and _str(variants[0], "description") == prop_desc
                desc_above = False
                if not skip_desc and prop_desc is not None:
                    out.append(f"{indent}// {prop_desc}\n")
                    desc_above = True
                if _has(val, "default"):
                    out.append(f"{indent}// {_default_text(val, quote_enum_strings=False)}\n")
                out.append(f"{indent}{key}{opt}:\n")
                for i, variant in enumerate(variants):
                    out.append(f"{indent} | ")
                    out.append(_with_null(json_schema_to_typescript(variant, indent + "   "), variant))
                    trailing = []
                    vdesc = _str(variant, "description")
                    if not (i == 0 and desc_above) and vdesc is not None and vdesc != prop_desc:
                        trailing.append(vdesc)
                    if _has(variant, "default"):
                        trailing.append(_default_text(variant, quote_enum_strings=False))
                    if trailing:
                        out.append(" // " + " ".join(trailing))
                    out.append("\n")
                out.append(f"{indent},\n")
                continue
            out.append(f"{indent}{key}{opt}: ")
            out.append(_with_null(json_schema_to_typescript(val, indent + "    "), val))
            out.append(",")
            if not _has(val, "oneOf") and _has(val, "default"):
                out.append(f" // {_default_text(val, quote_enum_strings=False)}")
            out.append("\n")
    out.append(f"{indent}}}")
    return "".join(out)


def json_schema_to_typescript(schema: Any, indent: str = "") -> str:
    """Render a JSON schema as harmony's TypeScript-like type (see module docstring)."""
    variants = _get(schema, "oneOf")
    if isinstance(variants, list):
        return _one_of_top(variants, indent)
    ty = _get(schema, "type")
    if isinstance(ty, list):
        names = ["number" if t == "integer" else t for t in ty if isinstance(t, str)]
        if names:
            return " | ".join(names)
    if isinstance(ty, str):
        if ty == "object":
            return _object(schema, indent)
        if ty == "string":
            enum = _get(schema, "enum")
            if isinstance(enum, list):
                names = [f'"{v}"' for v in enum if isinstance(v, str)]
                if names:
                    return " | ".join(names)
            return "string"
        if ty in ("number", "integer"):
            return "number"
        if ty == "boolean":
            return "boolean"
        if ty == "array":
            if _has(schema, "items"):
                return json_schema_to_typescript(schema["items"], indent) + "[]"
            return "Array<any>"
    return "any"
