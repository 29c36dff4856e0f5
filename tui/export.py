"""Saving conversations: Markdown to read or share, JSON (the engine's `Chat.to_json()`) to reopen.

The Markdown is derived from the harmony messages, not from the screen, so what is saved is what
the model saw: reasoning in `<details>` blocks, tool calls and results as fenced code.
"""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable

from mlx_oss.harmony import UNPARSED

__all__ = ["conversation_markdown", "default_chats_dir", "read_conversation", "save_conversation", "turns"]


def default_chats_dir() -> Path:
    """Where conversations are saved by default: $MLX_OSS_CHATS, else ~/mlx-oss-chats."""
    return Path(os.environ.get("MLX_OSS_CHATS") or Path.home() / "mlx-oss-chats").expanduser()


def _role(m: Any) -> str:
    r = getattr(m, "role", "")
    return str(getattr(r, "value", r))


def _text(m: Any) -> str:
    t = getattr(m, "text", None)
    if isinstance(t, str):
        return t
    c = getattr(m, "content", "")
    return c if isinstance(c, str) else "".join(x for x in c if isinstance(x, str)) if isinstance(c, tuple) else ""


def _instructions(m: Any) -> str | None:
    content = getattr(m, "content", None)
    for part in content if isinstance(content, tuple) else (content,):
        if hasattr(part, "instructions"):
            return part.instructions
    return None


def turns(messages: Iterable[Any]) -> list[tuple[str, dict[str, Any]]]:
    """Harmony messages -> display items, in order: ("instructions", {text}), ("user", {text}),
    ("reasoning", {text}), ("answer", {text, channel}), ("tool_call", {name, raw}),
    ("tool_result", {name, text}), ("unparsed", {text}): output that was not harmony (see
    `mlx_oss.harmony.UNPARSED`). System messages are settings, not items."""
    out: list[tuple[str, dict[str, Any]]] = []
    for m in messages:
        role = _role(m)
        if role == "developer":
            text = _instructions(m)
            if text:
                out.append(("instructions", {"text": text}))
        elif role == "user":
            out.append(("user", {"text": _text(m)}))
        elif role == "assistant":
            recipient = getattr(m, "recipient", None)
            channel = getattr(m, "channel", None) or "final"
            if recipient:
                name = recipient.split(".", 1)[1] if recipient.startswith("functions.") else recipient
                out.append(("tool_call", {"name": name, "raw": _text(m)}))
            elif channel == "analysis":
                out.append(("reasoning", {"text": _text(m)}))
            elif channel == UNPARSED:
                out.append(("unparsed", {"text": _text(m)}))
            else:
                out.append(("answer", {"text": _text(m), "channel": channel}))
        elif role == "tool":
            name = getattr(m, "name", None) or "tool"
            name = name.split(".", 1)[1] if name.startswith("functions.") else name
            out.append(("tool_result", {"name": name, "text": _text(m)}))
    return out


def _fence(text: str, lang: str = "") -> str:
    ticks = "```"
    while ticks in text:
        ticks += "`"
    return f"{ticks}{lang}\n{text}\n{ticks}"


def conversation_markdown(messages: Iterable[Any], *, model: str = "gpt-oss", effort: str | None = None,
                          saved_at: datetime | None = None) -> str:  # fmt: skip
    """A readable Markdown transcript of a harmony conversation."""
    when = (saved_at or datetime.now()).strftime("%Y-%m-%d %H:%M")
    lines = [f"# Chat with {model}", "", f"_Saved {when}" + (f" · reasoning effort {effort}_" if effort else "_"), ""]
    in_turn = False  # one "## model" heading per assistant turn, above its first block
    for kind, item in turns(messages):
        if kind in ("reasoning", "answer", "tool_call", "tool_result", "unparsed") and not in_turn:
            lines += [f"## {model}", ""]
            in_turn = True
        if kind == "instructions":
            lines += ["## Instructions", "", item["text"], ""]
        elif kind == "user":
            lines += ["## You", "", item["text"], ""]
            in_turn = False
        elif kind == "reasoning":
            lines += ["<details><summary>Reasoning</summary>", "", item["text"], "", "</details>", ""]
        elif kind == "answer":
            lines += ([] if item["channel"] == "final" else ["_(to the user, before a tool call)_", ""]) + [item["text"], ""]
        elif kind == "tool_call":
            lines += [f"**Tool call** `{item['name']}`", "", _fence(item["raw"], "json"), ""]
        elif kind == "tool_result":
            lines += [f"**Tool result** `{item['name']}`", "", _fence(item["text"]), ""]
        elif kind == "unparsed":
            lines += ["_Output not in harmony format (shown as is, not an answer):_", "", _fence(item["text"]), ""]
    return "\n".join(lines).rstrip() + "\n"


def _json_data(session: Any) -> Any:
    data = session.to_json()
    return json.loads(data) if isinstance(data, (str, bytes)) else data


def save_conversation(session: Any, base: Path, *, model: str = "gpt-oss") -> tuple[Path, Path]:
    """Write BASE.md and BASE.json (the JSON written first: it is the one that can be reopened)."""
    base = Path(base).expanduser()
    base.parent.mkdir(parents=True, exist_ok=True)
    md_path, json_path = base.with_name(base.name + ".md"), base.with_name(base.name + ".json")
    data = _json_data(session)
    tmp = json_path.with_name(json_path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, json_path)
    effort = getattr(session, "reasoning_effort", None)
    effort = getattr(effort, "value", effort)
    md_path.write_text(conversation_markdown(session.messages, model=model, effort=effort), encoding="utf-8")
    return md_path, json_path


def read_conversation(path: Path) -> Any:
    """The JSON data of a saved conversation; ValueError with a one-line reason if it is not one."""
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except OSError as e:
        raise ValueError(f"{path}: {e.strerror or e}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not a saved conversation (invalid JSON at line {e.lineno})") from None
