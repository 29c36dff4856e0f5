"""Render harmony conversations to o200k_harmony token ids, token-exact with openai-harmony.

Every piece of a message (role, ` to=...`, channel, content type, each content part) is encoded
separately, as openai-harmony does, so ids match even where encoding the joined text would merge
across a boundary. A message's tokens depend only on the message and on whether the conversation
has function tools, which is what makes the prefix-reuse contract (see `render_with_spans`) hold.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Iterable, Sequence

import tiktoken

from mlx_oss import tokenizer as tk
from mlx_oss.harmony.messages import (
    ANALYSIS,
    FINAL,
    Conversation,
    DeveloperContent,
    Message,
    ResponseFormat,
    Role,
    SystemContent,
    ToolNamespace,
)
from mlx_oss.harmony.schema import json_schema_to_typescript, rust_lines

__all__ = [
    "MessageSpan",
    "RenderedConversation",
    "render_message",
    "render_conversation",
    "render_conversation_for_completion",
    "render_conversation_for_training",
    "render_with_spans",
    "rendered_message_indices",
    "has_function_tools",
    "system_text",
    "developer_text",
    "common_prefix_length",
    "prune_analysis",
]

Messages = Conversation | Sequence[Message]
_CONSTRAIN_TEXT = "<|constrain|>"


def _enc(encoding: tiktoken.Encoding | None) -> tiktoken.Encoding:
    return tk.load_tokenizer() if encoding is None else encoding


def _messages(conversation: Messages) -> tuple[Message, ...]:
    return tuple(conversation)  # a Conversation iterates over its messages


# ---------------------------------------------------------------------------------------------
# Text of the structured contents
# ---------------------------------------------------------------------------------------------


def _tools_section(namespaces: Iterable[ToolNamespace]) -> str:
    # Namespaces are sorted by name and a later one of the same name replaces an earlier one,
    # as openai-harmony keeps them in a BTreeMap.
    by_name = {ns.name: ns for ns in namespaces}
    sections = ["# Tools"]
    for name in sorted(by_name):
        ns = by_name[name]
        lines = [f"## {ns.name}\n"]
        if ns.description is not None:
            prefix = "// " if ns.tools else ""
            lines.extend(prefix + line for line in rust_lines(ns.description))
        if ns.tools:
            lines.append(f"namespace {ns.name} {{\n")
            for tool in ns.tools:
                lines.extend(f"// {line}" for line in rust_lines(tool.description))
                if tool.parameters is not None:
                    lines.append(f"type {tool.name} = (_: {json_schema_to_typescript(tool.parameters)}) => any;\n")
                else:
                    lines.append(f"type {tool.name} = () => any;\n")
            lines.append(f"}} // namespace {ns.name}")
        sections.append("\n".join(lines))
    return "\n\n".join(sections)


def system_text(content: SystemContent, has_function_tools: bool = False) -> str:
    """The text of a system message body."""
    sections = []
    top = [
        s
        for s in (
            content.model_identity,
            None if content.knowledge_cutoff is None else f"Knowledge cutoff: {content.knowledge_cutoff}",
            None if content.conversation_start_date is None else f"Current date: {content.conversation_start_date}",
        )
        if s is not None
    ]
    if top:
        sections.append("\n".join(top))
    if content.reasoning_effort is not None:
        sections.append(f"Reasoning: {content.reasoning_effort.value}")
    if content.tools:
        sections.append(_tools_section(content.tools))
    cc = content.channel_config
    if cc is not None and cc.valid_channels:
        line = f"# Valid channels: {', '.join(cc.valid_channels)}."
        if cc.channel_required:
            line += " Channel must be included for every message."
        if has_function_tools:
            line += "\nCalls to these tools must go to the commentary channel: 'functions'."
        sections.append(line)
    return "\n\n".join(sections)


def _response_formats_section(formats: Sequence[ResponseFormat]) -> str:
    # Layout from OpenAI's harmony guide ("Structured output"); openai-harmony has no field for it.
    parts = ["# Response Formats"]
    for f in formats:
        lines = [f"## {f.name}", ""]
        if f.description is not None:
            lines.extend(f"// {line}" for line in rust_lines(f.description))
        lines.append(json.dumps(f.schema, ensure_ascii=False, separators=(",", ":")))
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def developer_text(content: DeveloperContent) -> str:
    """The text of a developer message body."""
    sections = []
    if content.instructions is not None:
        sections += ["# Instructions", content.instructions]
    namespaces = content.namespaces()
    if namespaces:
        sections.append(_tools_section(namespaces))
    if content.response_formats:
        sections.append(_response_formats_section(content.response_formats))
    return "\n\n".join(sections)


# ---------------------------------------------------------------------------------------------
# Messages and conversations
# ---------------------------------------------------------------------------------------------


def has_function_tools(conversation: Messages) -> bool:
    """True if any developer message defines a non-empty `functions` namespace."""
    return any(
        isinstance(c, DeveloperContent) and c.has_function_tools()
        for m in _messages(conversation)
        for c in m.contents
    )


def render_message(
    message: Message, *, has_function_tools: bool = False, encoding: tiktoken.Encoding | None = None
) -> list[int]:
    """Tokens of one message, `<|start|>` through its end token.

    `has_function_tools` matters only for a system message (it adds the line that routes function
    calls to the commentary channel); conversation renderers work it out themselves.
    Raises ValueError for messages the format cannot express (a tool message with no name,
    structured content in the wrong role).
    """
    enc = _enc(encoding)
    text = enc.encode_ordinary
    out = [tk.START]
    if message.role is Role.TOOL:
        if message.name is None:
            raise ValueError("a tool message needs the tool's name (e.g. 'functions.get_weather')")
        out += text(message.name)
    else:
        out += text(message.role.value)
        if message.name is not None:
            out += text(f":{message.name}")
    if message.recipient is not None and message.recipient != "all":
        out += text(f" to={message.recipient}")
    if message.channel is not None:
        out.append(tk.CHANNEL)
        out += text(message.channel)
    if message.content_type is not None:
        if message.content_type.startswith(_CONSTRAIN_TEXT):
            out += text(" ")
            out.append(tk.CONSTRAIN)
            rest = message.content_type[len(_CONSTRAIN_TEXT) :]
            if rest:
                out += text(rest)
        else:
            out += text(f" {message.content_type}")
    out.append(tk.MESSAGE)
    for part in message.contents:
        if isinstance(part, SystemContent):
            if message.role is not Role.SYSTEM:
                raise ValueError(f"SystemContent may only appear in system messages, not {message.role.value}")
            out += text(system_text(part, has_function_tools))
        elif isinstance(part, DeveloperContent):
            if message.role is not Role.DEVELOPER:
                raise ValueError(f"DeveloperContent may only appear in developer messages, not {message.role.value}")
            out += text(developer_text(part))
        else:
            out += text(part)
    if message.role is Role.ASSISTANT and message.recipient is not None:
        out.append(tk.CALL)
    else:
        out.append(tk.END)
    return out


def rendered_message_indices(conversation: Messages, auto_drop_analysis: bool = True) -> list[int]:
    """Indices of the messages a render includes.

    With `auto_drop_analysis`, when the last assistant message is on the final channel, analysis
    messages before the first final message are left out (openai-harmony's rule: chain of thought
    of answered turns is not shown to the model again). Note the rule's consequence: while a later
    turn is mid tool call (last assistant message not final), that old analysis comes back; use
    `prune_analysis` on the history if that cache invalidation matters more than oracle parity.
    """
    msgs = _messages(conversation)
    last_assistant_final = next((m.channel == FINAL for m in reversed(msgs) if m.role is Role.ASSISTANT), False)
    first_final = next((i for i, m in enumerate(msgs) if m.channel == FINAL), None)
    drop = auto_drop_analysis and last_assistant_final and first_final is not None
    return [i for i, m in enumerate(msgs) if not (drop and i < first_final and m.channel == ANALYSIS)]


@dataclass(frozen=True)
class MessageSpan:
    """Where message `index` of the conversation sits in the rendered tokens: [start, end)."""

    index: int
    start: int
    end: int


@dataclass(frozen=True)
class RenderedConversation:
    """Tokens plus per-message spans, so the engine can map cache positions back to messages."""

    tokens: list[int]
    spans: tuple[MessageSpan, ...]


def render_with_spans(
    conversation: Messages,
    next_role: Role | None = None,
    *,
    auto_drop_analysis: bool = True,
    encoding: tiktoken.Encoding | None = None,
) -> RenderedConversation:
    """Render with message spans; with `next_role`, end with `<|start|>{role}` for completion.

    Prefix contract: the tokens are the concatenation of each included message's own tokens
    (`render_message` with the conversation's function-tools flag). So when turn N+1 keeps turn
    N's first k included messages unchanged (same messages, same function-tools flag, same
    drop-analysis outcome), both renders share at least the tokens of those k messages;
    `common_prefix_length(cached_tokens, new_tokens)` gives the exact reusable length.
    """
    enc = _enc(encoding)
    msgs = _messages(conversation)
    flag = has_function_tools(msgs)
    tokens: list[int] = []
    spans = []
    for i in rendered_message_indices(msgs, auto_drop_analysis):
        start = len(tokens)
        tokens += render_message(msgs[i], has_function_tools=flag, encoding=enc)
        spans.append(MessageSpan(i, start, len(tokens)))
    if next_role is not None:
        tokens.append(tk.START)
        tokens += enc.encode_ordinary(Role(next_role).value)
    return RenderedConversation(tokens, tuple(spans))


def render_conversation(
    conversation: Messages, *, auto_drop_analysis: bool = True, encoding: tiktoken.Encoding | None = None
) -> list[int]:
    """All included messages, nothing appended (final messages end with `<|end|>`)."""
    return render_with_spans(conversation, None, auto_drop_analysis=auto_drop_analysis, encoding=encoding).tokens


def render_conversation_for_completion(
    conversation: Messages,
    next_role: Role = Role.ASSISTANT,
    *,
    auto_drop_analysis: bool = True,
    encoding: tiktoken.Encoding | None = None,
) -> list[int]:
    """The prompt for sampling the next turn: the conversation, then `<|start|>assistant`."""
    return render_with_spans(
        conversation, next_role, auto_drop_analysis=auto_drop_analysis, encoding=encoding
    ).tokens


def render_conversation_for_training(
    conversation: Messages, *, auto_drop_analysis: bool = True, encoding: tiktoken.Encoding | None = None
) -> list[int]:
    """Like `render_conversation`, but a trailing assistant final message ends with `<|return|>`,
    the token the model must learn to stop on."""
    msgs = _messages(conversation)
    tokens = render_conversation(msgs, auto_drop_analysis=auto_drop_analysis, encoding=encoding)
    if msgs and msgs[-1].role is Role.ASSISTANT and msgs[-1].channel == FINAL and tokens:
        tokens[-1] = tk.RETURN
    return tokens


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix: how much of a cached token sequence a new prompt reuses."""
    n = min(len(a), len(b))
    i = 0
    # Compare in chunks first; long equal prefixes are the common case.
    step = 1024
    while i + step <= n and list(a[i : i + step]) == list(b[i : i + step]):
        i += step
    while i < n and a[i] == b[i]:
        i += 1
    return i


def prune_analysis(conversation: Messages) -> list[Message]:
    """Drop analysis messages that come before the last user message.

    Chain of thought of finished turns is never shown again by the renderer once the turn's final
    answer exists, but openai-harmony's rule brings it back while a later turn is mid tool call,
    which would invalidate the engine's cache from that point. Pruning history with this keeps
    turn-to-turn renders append-only within a turn.
    """
    msgs = _messages(conversation)
    last_user = max((i for i, m in enumerate(msgs) if m.role is Role.USER), default=-1)
    return [m for i, m in enumerate(msgs) if not (i < last_user and m.channel == ANALYSIS)]
