"""OpenAI's harmony chat format for gpt-oss: data model, token-exact renderer, streaming parser.

gpt-oss only behaves when prompted exactly as it was trained, so rendering matches
openai-harmony token for token (tests use it as an oracle; it is never imported here).
See docs/HARMONY.md for the design and the prefix-reuse contract.
"""

from mlx_oss.harmony.messages import (
    ANALYSIS,
    COMMENTARY,
    CONSTRAIN_JSON,
    DEFAULT_CHANNELS,
    DEFAULT_KNOWLEDGE_CUTOFF,
    DEFAULT_MODEL_IDENTITY,
    FINAL,
    ChannelConfig,
    Content,
    Conversation,
    DeveloperContent,
    Message,
    ReasoningEffort,
    ResponseFormat,
    Role,
    SystemContent,
    ToolDescription,
    ToolNamespace,
)
from mlx_oss.harmony.parser import ParserState, StreamEvent, StreamParser, parse_completion
from mlx_oss.harmony.render import (
    MessageSpan,
    RenderedConversation,
    common_prefix_length,
    developer_text,
    has_function_tools,
    prune_analysis,
    render_conversation,
    render_conversation_for_completion,
    render_conversation_for_training,
    render_message,
    render_with_spans,
    rendered_message_indices,
    system_text,
)
from mlx_oss.harmony.schema import json_schema_to_typescript

__all__ = [
    "ANALYSIS",
    "COMMENTARY",
    "CONSTRAIN_JSON",
    "DEFAULT_CHANNELS",
    "DEFAULT_KNOWLEDGE_CUTOFF",
    "DEFAULT_MODEL_IDENTITY",
    "FINAL",
    "ChannelConfig",
    "Content",
    "Conversation",
    "DeveloperContent",
    "Message",
    "MessageSpan",
    "ParserState",
    "ReasoningEffort",
    "RenderedConversation",
    "ResponseFormat",
    "Role",
    "StreamEvent",
    "StreamParser",
    "SystemContent",
    "ToolDescription",
    "ToolNamespace",
    "common_prefix_length",
    "developer_text",
    "has_function_tools",
    "json_schema_to_typescript",
    "parse_completion",
    "prune_analysis",
    "render_conversation",
    "render_conversation_for_completion",
    "render_conversation_for_training",
    "render_message",
    "render_with_spans",
    "rendered_message_indices",
    "system_text",
]
