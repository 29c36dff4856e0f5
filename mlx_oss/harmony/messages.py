"""Harmony data model: immutable messages and the structured system/developer contents.

Immutable (frozen dataclasses, tuples) so the engine can keep turn N's conversation around and
compare it with turn N+1's without defensive copies. Defaults mirror openai-harmony exactly,
because the model was trained on those exact strings.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any, Iterable, Iterator, Sequence, Union, overload

__all__ = [
    "Role",
    "ReasoningEffort",
    "ANALYSIS",
    "COMMENTARY",
    "FINAL",
    "UNPARSED",
    "CONSTRAIN_JSON",
    "DEFAULT_MODEL_IDENTITY",
    "DEFAULT_KNOWLEDGE_CUTOFF",
    "DEFAULT_CHANNELS",
    "ToolDescription",
    "ToolNamespace",
    "ChannelConfig",
    "SystemContent",
    "ResponseFormat",
    "DeveloperContent",
    "Content",
    "Message",
    "Conversation",
]

ANALYSIS = "analysis"
COMMENTARY = "commentary"
FINAL = "final"
# Not a harmony channel: model output the parser could not place (a model not writing harmony, e.g.
# random weights). Chat keeps it in the history under this channel so that the screen, the saved chat
# and the reply agree; it is never rendered into a prompt.
UNPARSED = "unparsed"
CONSTRAIN_JSON = "<|constrain|>json"
DEFAULT_MODEL_IDENTITY = "You are ChatGPT, a large language model trained by OpenAI."
DEFAULT_KNOWLEDGE_CUTOFF = "2024-06"
DEFAULT_CHANNELS = (ANALYSIS, COMMENTARY, FINAL)


class Role(str, Enum):
    """Message author role; the value is the text rendered in the header."""

    SYSTEM = "system"
    DEVELOPER = "developer"
    USER = "user"
    ASSISTANT = "assistant"
    TOOL = "tool"


class ReasoningEffort(str, Enum):
    """Rendered as `Reasoning: <value>` in the system message."""

    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"


@dataclass(frozen=True)
class ToolDescription:
    """One callable tool; `parameters` is a JSON schema rendered as a TypeScript-like type."""

    name: str
    description: str = ""
    parameters: dict[str, Any] | None = None


@dataclass(frozen=True)
class ToolNamespace:
    """A `## name` tools section (`functions`, `browser`, `python`, ...)."""

    name: str
    description: str | None = None
    tools: tuple[ToolDescription, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "tools", tuple(self.tools))

    @classmethod
    def functions(cls, tools: Iterable[ToolDescription]) -> ToolNamespace:
        """The developer-defined function tools namespace (calls go to `functions.<name>`)."""
        return cls("functions", None, tuple(tools))

    @classmethod
    def browser(cls) -> ToolNamespace:
        """The built-in browsing tool exactly as gpt-oss was trained on it."""
        return cls(
            "browser",
            "Tool for browsing.\nThe `cursor` appears in brackets before each browsing display: `[{cursor}]`.\n"
            "Cite information from the tool using the following format:\n"
            "`【{cursor}†L{line_start}(-L{line_end})?】`, for example: `【6†L9-L11】` or `【8†L3】`.\n"
            "Do not quote more than 10 words directly from the tool output.\nsources=web (default: web)",
            (
                ToolDescription(
                    "search",
                    "Searches for information related to `query` and displays `topn` results.",
                    {
                        "type": "object",
                        "properties": {
                            "query": {"type": "string"},
                            "topn": {"type": "number", "default": 10},
                            "source": {"type": "string"},
                        },
                        "required": ["query"],
                    },
                ),
                ToolDescription(
                    "open",
                    "Opens the link `id` from the page indicated by `cursor` starting at line number `loc`, "
                    "showing `num_lines` lines.\nValid link ids are displayed with the formatting: `【{id}†.*】`.\n"
                    "If `cursor` is not provided, the most recent page is implied.\n"
                    "If `id` is a string, it is treated as a fully qualified URL associated with `source`.\n"
                    "If `loc` is not provided, the viewport will be positioned at the beginning of the document "
                    "or centered on the most relevant passage, if available.\n"
                    "Use this function without `id` to scroll to a new location of an opened page.",
                    {
                        "type": "object",
                        "properties": {
                            "id": {"type": ["number", "string"], "default": -1},
                            "cursor": {"type": "number", "default": -1},
                            "loc": {"type": "number", "default": -1},
                            "num_lines": {"type": "number", "default": -1},
                            "view_source": {"type": "boolean", "default": False},
                            "source": {"type": "string"},
                        },
                    },
                ),
                ToolDescription(
                    "find",
                    "Finds exact matches of `pattern` in the current page, or the page given by `cursor`.",
                    {
                        "type": "object",
                        "properties": {
                            "pattern": {"type": "string"},
                            "cursor": {"type": "number", "default": -1},
                        },
                        "required": ["pattern"],
                    },
                ),
            ),
        )

    @classmethod
    def python(cls) -> ToolNamespace:
        """The built-in stateful Python tool exactly as gpt-oss was trained on it."""
        return cls(
            "python",
            "Use this tool to execute Python code in your chain of thought. The code will not be shown to "
            "the user. This tool should be used for internal reasoning, but not for code that is intended "
            "to be visible to the user (e.g. when creating plots, tables, or files).\n\n"
            "When you send a message containing Python code to python, it will be executed in a stateful "
            "Jupyter notebook environment. python will respond with the output of the execution or time "
            "out after 120.0 seconds. The drive at '/mnt/data' can be used to save and persist user files. "
            "Internet access for this session is UNKNOWN. Depends on the cluster.",
            (),
        )


@dataclass(frozen=True)
class ChannelConfig:
    """The `# Valid channels` line; an empty tuple omits it."""

    valid_channels: tuple[str, ...] = DEFAULT_CHANNELS
    channel_required: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "valid_channels", tuple(self.valid_channels))


@dataclass(frozen=True)
class SystemContent:
    """The system message: identity, dates, reasoning effort, built-in tools, channels.

    Every field set to None is left out of the rendering, as in openai-harmony.
    """

    model_identity: str | None = DEFAULT_MODEL_IDENTITY
    reasoning_effort: ReasoningEffort | None = ReasoningEffort.MEDIUM
    knowledge_cutoff: str | None = DEFAULT_KNOWLEDGE_CUTOFF
    conversation_start_date: str | None = None
    channel_config: ChannelConfig | None = field(default_factory=ChannelConfig)
    tools: tuple[ToolNamespace, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.reasoning_effort, str) and not isinstance(self.reasoning_effort, ReasoningEffort):
            object.__setattr__(self, "reasoning_effort", ReasoningEffort(self.reasoning_effort.lower()))
        object.__setattr__(self, "tools", tuple(self.tools))

    def with_tools(self, *namespaces: ToolNamespace) -> SystemContent:
        """Copy with more built-in tool namespaces."""
        return replace(self, tools=self.tools + namespaces)

    def with_browser_tool(self) -> SystemContent:
        return self.with_tools(ToolNamespace.browser())

    def with_python_tool(self) -> SystemContent:
        return self.with_tools(ToolNamespace.python())


@dataclass(frozen=True)
class ResponseFormat:
    """A structured-output schema, rendered under `# Response Formats` in the developer message."""

    name: str
    schema: dict[str, Any]
    description: str | None = None


@dataclass(frozen=True)
class DeveloperContent:
    """The developer message (the usual "system prompt"): instructions, tools, response formats.

    `functions` is shorthand for a `functions` namespace in `tools` (the only namespace whose
    presence adds the "Calls to these tools must go to the commentary channel" line).
    """

    instructions: str | None = None
    functions: tuple[ToolDescription, ...] = ()
    tools: tuple[ToolNamespace, ...] = ()
    response_formats: tuple[ResponseFormat, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "functions", tuple(self.functions))
        object.__setattr__(self, "tools", tuple(self.tools))
        object.__setattr__(self, "response_formats", tuple(self.response_formats))
        if self.functions and any(ns.name == "functions" for ns in self.tools):
            raise ValueError("give function tools either as `functions` or as a 'functions' namespace, not both")

    def namespaces(self) -> tuple[ToolNamespace, ...]:
        """All tool namespaces, `functions` included."""
        if self.functions:
            return self.tools + (ToolNamespace.functions(self.functions),)
        return self.tools

    def has_function_tools(self) -> bool:
        return any(ns.name == "functions" and ns.tools for ns in self.namespaces())


Content = Union[str, SystemContent, DeveloperContent]


@dataclass(frozen=True)
class Message:
    """One harmony message: `<|start|>{header}<|message|>{content}<|end|>`.

    `name` is the author name; for tool results it is the tool that answered
    (e.g. "functions.get_weather") and is what the header shows instead of the role.
    `incomplete` is set only by the stream parser, for a message cut off before its end token.
    """

    role: Role
    content: Content | tuple[Content, ...] = ""
    name: str | None = None
    channel: str | None = None
    recipient: str | None = None
    content_type: str | None = None
    incomplete: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.role, Role):
            object.__setattr__(self, "role", Role(self.role))
        if isinstance(self.content, list):
            object.__setattr__(self, "content", tuple(self.content))

    @property
    def contents(self) -> tuple[Content, ...]:
        """Content parts as a tuple (a plain str content is one part)."""
        return self.content if isinstance(self.content, tuple) else (self.content,)

    @property
    def text(self) -> str:
        """The plain-text parts joined (what a tool call's arguments or an answer are)."""
        return "".join(c for c in self.contents if isinstance(c, str))

    # Constructors for the common cases -----------------------------------------------------

    @classmethod
    def system(cls, content: SystemContent | None = None, **fields: Any) -> Message:
        """System message; keyword fields go to SystemContent (e.g. reasoning_effort="high")."""
        if content is None:
            content = SystemContent(**fields)
        elif fields:
            content = replace(content, **fields)
        return cls(Role.SYSTEM, content)

    @classmethod
    def developer(
        cls,
        instructions: str | None = None,
        functions: Sequence[ToolDescription] = (),
        response_formats: Sequence[ResponseFormat] = (),
        tools: Sequence[ToolNamespace] = (),
    ) -> Message:
        return cls(Role.DEVELOPER, DeveloperContent(instructions, tuple(functions), tuple(tools), tuple(response_formats)))

    @classmethod
    def user(cls, text: str, name: str | None = None) -> Message:
        return cls(Role.USER, text, name=name)

    @classmethod
    def assistant(cls, text: str, channel: str | None = FINAL, content_type: str | None = None) -> Message:
        return cls(Role.ASSISTANT, text, channel=channel, content_type=content_type)

    @classmethod
    def tool_call(
        cls,
        recipient: str,
        arguments: str | dict[str, Any],
        channel: str = COMMENTARY,
        content_type: str | None = CONSTRAIN_JSON,
    ) -> Message:
        """An assistant call to `recipient` (e.g. "functions.get_weather"); dict arguments become JSON."""
        if not isinstance(arguments, str):
            arguments = json.dumps(arguments, ensure_ascii=False)
        return cls(Role.ASSISTANT, arguments, channel=channel, recipient=recipient, content_type=content_type)

    @classmethod
    def tool_result(
        cls, name: str, text: str, channel: str | None = COMMENTARY, recipient: str | None = "assistant"
    ) -> Message:
        """The answer of tool `name` (same string as the call's recipient), addressed to the assistant."""
        return cls(Role.TOOL, text, name=name, channel=channel, recipient=recipient)

    # JSON-compatible form, for saving and reopening conversations ------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-compatible dict; `from_dict` inverts it exactly."""
        out: dict[str, Any] = {"role": self.role.value}
        if isinstance(self.content, str):
            out["content"] = self.content
        else:
            out["content"] = [_content_to_dict(c) for c in self.contents]
        for key in ("name", "channel", "recipient", "content_type"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.incomplete:
            out["incomplete"] = True
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Message:
        content = data.get("content", "")
        if not isinstance(content, str):
            parts = tuple(_content_from_dict(c) for c in content)
            content = parts[0] if len(parts) == 1 and not isinstance(parts[0], str) else parts
        return cls(
            Role(data["role"]),
            content,
            name=data.get("name"),
            channel=data.get("channel"),
            recipient=data.get("recipient"),
            content_type=data.get("content_type"),
            incomplete=bool(data.get("incomplete", False)),
        )


def _namespace_to_dict(ns: ToolNamespace) -> dict[str, Any]:
    return {"name": ns.name, "description": ns.description,
            "tools": [{"name": t.name, "description": t.description, "parameters": t.parameters} for t in ns.tools]}


def _namespace_from_dict(d: dict[str, Any]) -> ToolNamespace:
    return ToolNamespace(d["name"], d.get("description"), tuple(ToolDescription(**t) for t in d.get("tools", ())))


def _content_to_dict(c: Content) -> dict[str, Any]:
    if isinstance(c, str):
        return {"type": "text", "text": c}
    if isinstance(c, SystemContent):
        cc = c.channel_config
        return {
            "type": "system_content",
            "model_identity": c.model_identity,
            "reasoning_effort": None if c.reasoning_effort is None else c.reasoning_effort.value,
            "knowledge_cutoff": c.knowledge_cutoff,
            "conversation_start_date": c.conversation_start_date,
            "channel_config": None if cc is None else {"valid_channels": list(cc.valid_channels),
                                                       "channel_required": cc.channel_required},
            "tools": [_namespace_to_dict(ns) for ns in c.tools],
        }
    return {
        "type": "developer_content",
        "instructions": c.instructions,
        "functions": [{"name": t.name, "description": t.description, "parameters": t.parameters} for t in c.functions],
        "tools": [_namespace_to_dict(ns) for ns in c.tools],
        "response_formats": [{"name": f.name, "schema": f.schema, "description": f.description}
                             for f in c.response_formats],
    }


def _content_from_dict(d: dict[str, Any]) -> Content:
    kind = d.get("type")
    if kind == "text":
        return str(d["text"])
    if kind == "system_content":
        cc = d.get("channel_config")
        return SystemContent(
            model_identity=d.get("model_identity"),
            reasoning_effort=d.get("reasoning_effort"),
            knowledge_cutoff=d.get("knowledge_cutoff"),
            conversation_start_date=d.get("conversation_start_date"),
            channel_config=None if cc is None else ChannelConfig(tuple(cc["valid_channels"]), cc["channel_required"]),
            tools=tuple(_namespace_from_dict(ns) for ns in d.get("tools", ())),
        )
    if kind == "developer_content":
        return DeveloperContent(
            instructions=d.get("instructions"),
            functions=tuple(ToolDescription(**t) for t in d.get("functions", ())),
            tools=tuple(_namespace_from_dict(ns) for ns in d.get("tools", ())),
            response_formats=tuple(ResponseFormat(**f) for f in d.get("response_formats", ())),
        )
    raise ValueError(f"unknown content type {kind!r}")


@dataclass(frozen=True)
class Conversation:
    """An ordered, immutable list of messages; `+` returns a longer conversation."""

    messages: tuple[Message, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "messages", tuple(self.messages))

    def __iter__(self) -> Iterator[Message]:
        return iter(self.messages)

    def __len__(self) -> int:
        return len(self.messages)

    @overload
    def __getitem__(self, i: int) -> Message: ...
    @overload
    def __getitem__(self, i: slice) -> Conversation: ...
    def __getitem__(self, i: int | slice) -> Message | Conversation:
        if isinstance(i, slice):
            return Conversation(self.messages[i])
        return self.messages[i]

    def __add__(self, other: Iterable[Message] | Message) -> Conversation:
        if isinstance(other, Message):
            return Conversation(self.messages + (other,))
        return Conversation(self.messages + tuple(other))

    def to_dict(self) -> dict[str, Any]:
        return {"messages": [m.to_dict() for m in self.messages]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Conversation:
        return cls(tuple(Message.from_dict(m) for m in data["messages"]))
