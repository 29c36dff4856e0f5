"""openai-harmony (OpenAI's Rust implementation) as a test-only oracle, offline.

Also the shared helpers the other harmony tests import: converting our messages to the oracle's
and back, and loading the oracle against the package's own o200k_base copy.
"""

from __future__ import annotations

import os
from functools import lru_cache

import pytest

from mlx_oss import tokenizer as tk
from mlx_oss.harmony import (
    ChannelConfig,
    DeveloperContent,
    Message,
    Role,
    SystemContent,
    ToolDescription,
    ToolNamespace,
)

try:
    import openai_harmony as oh
except ImportError:  # a test extra: without it only the tests that consult the oracle are skipped
    oh = None

HarmonyError = oh.HarmonyError if oh is not None else RuntimeError  # what the oracle raises on input it refuses

pytestmark = pytest.mark.skipif(oh is None, reason="openai-harmony (the test-only oracle) is not installed")


def _need_oracle() -> None:
    if oh is None:
        pytest.skip("openai-harmony (the test-only oracle) is not installed")


@lru_cache(maxsize=1)
def oracle():
    """The oracle encoding, reading o200k_base.tiktoken from the package (no network)."""
    _need_oracle()
    os.environ["TIKTOKEN_ENCODINGS_BASE"] = str(tk.bundled_vocab_path().parent)
    return oh.load_harmony_encoding(oh.HarmonyEncodingName.HARMONY_GPT_OSS)


def _tool(t: ToolDescription):
    return oh.ToolDescription(name=t.name, description=t.description, parameters=t.parameters)


def _namespaces(namespaces: tuple[ToolNamespace, ...]):
    if not namespaces:
        return None
    return {
        ns.name: oh.ToolNamespaceConfig(name=ns.name, description=ns.description, tools=[_tool(t) for t in ns.tools])
        for ns in namespaces
    }


def _system(c: SystemContent):
    cc = c.channel_config
    return oh.SystemContent(
        model_identity=c.model_identity,
        reasoning_effort=None if c.reasoning_effort is None else oh.ReasoningEffort[c.reasoning_effort.name],
        conversation_start_date=c.conversation_start_date,
        knowledge_cutoff=c.knowledge_cutoff,
        channel_config=None
        if cc is None
        else oh.ChannelConfig(valid_channels=list(cc.valid_channels), channel_required=cc.channel_required),
        tools=_namespaces(c.tools),
    )


def _developer(c: DeveloperContent):
    if c.response_formats:
        raise ValueError("openai-harmony has no response formats")
    return oh.DeveloperContent(instructions=c.instructions, tools=_namespaces(c.namespaces()))


def to_oracle_message(m: Message):
    _need_oracle()
    parts = []
    for c in m.contents:
        if isinstance(c, SystemContent):
            parts.append(_system(c))
        elif isinstance(c, DeveloperContent):
            parts.append(_developer(c))
        else:
            parts.append(oh.TextContent(text=c))
    return oh.Message(
        author=oh.Author(role=oh.Role(m.role.value), name=m.name),
        content=parts,
        channel=m.channel,
        recipient=m.recipient,
        content_type=m.content_type,
    )


def to_oracle(messages) -> object:
    _need_oracle()
    return oh.Conversation.from_messages([to_oracle_message(m) for m in messages])


def from_oracle_message(m) -> Message:
    text = "".join(c.text for c in m.content)
    return Message(Role(m.author.role.value), text, name=m.author.name, channel=m.channel,
                   recipient=m.recipient, content_type=m.content_type)


def oracle_render_completion(messages, next_role=Role.ASSISTANT, auto_drop_analysis=True) -> list[int]:
    _need_oracle()
    cfg = oh.RenderConversationConfig(auto_drop_analysis=auto_drop_analysis)
    return oracle().render_conversation_for_completion(to_oracle(messages), oh.Role(Role(next_role).value), cfg)


def oracle_render(messages, auto_drop_analysis=True) -> list[int]:
    _need_oracle()
    cfg = oh.RenderConversationConfig(auto_drop_analysis=auto_drop_analysis)
    return oracle().render_conversation(to_oracle(messages), cfg)


def oracle_render_training(messages, auto_drop_analysis=True) -> list[int]:
    _need_oracle()
    cfg = oh.RenderConversationConfig(auto_drop_analysis=auto_drop_analysis)
    return oracle().render_conversation_for_training(to_oracle(messages), cfg)


def oracle_render_message(m: Message, has_function_tools: bool = False) -> list[int]:
    _need_oracle()
    return oracle().render(to_oracle_message(m), oh.RenderOptions(conversation_has_function_tools=has_function_tools))


def oracle_parse(tokens, role: Role | None = Role.ASSISTANT, strict: bool = False):
    """(messages, per-token deltas, per-token (channel, recipient, content_type)) from the oracle."""
    _need_oracle()
    p = oh.StreamableParser(oracle(), None if role is None else oh.Role(role.value), strict=strict)
    deltas, headers = [], []
    for t in tokens:
        p.process(t)
        deltas.append(p.last_content_delta)
        headers.append((p.current_channel, p.current_recipient, p.current_content_type))
    p.process_eos()
    return [from_oracle_message(m) for m in p.messages], deltas, headers


# -- tests of the oracle setup itself -------------------------------------------------------------


def test_oracle_loads_offline_from_the_package_copy():
    enc = oracle()
    assert enc.encode("hello world") == [24912, 2375] == tk.load_tokenizer().encode("hello world")


def test_oracle_and_ours_agree_on_special_token_ids():
    ours = tk.load_tokenizer()
    for text, token in [("<|start|>", tk.START), ("<|message|>", tk.MESSAGE), ("<|channel|>", tk.CHANNEL),
                        ("<|constrain|>", tk.CONSTRAIN), ("<|end|>", tk.END), ("<|call|>", tk.CALL),
                        ("<|return|>", tk.RETURN), ("<|startoftext|>", tk.STARTOFTEXT),
                        ("<|endoftext|>", tk.ENDOFTEXT)]:
        assert oracle().encode(text, allowed_special="all") == [token]
        assert ours.encode(text, allowed_special="all") == [token]
    assert sorted(oracle().stop_tokens()) == sorted(tk.STOP_TOKENS)
    assert sorted(oracle().stop_tokens_for_assistant_actions()) == sorted(tk.STOP_TOKENS_FOR_ASSISTANT_ACTIONS)
    # The oracle lacks <|endofprompt|> (it calls 200018 reserved); every other reserved id agrees.
    for i in list(range(200013, 200018)) + [200019, 200500, 201087]:
        assert oracle().decode_utf8([i]) == ours.decode([i]) == f"<|reserved_{i}|>"


def test_converted_channel_config_round_trips():
    # Guards the converter used by every oracle comparison.
    m = Message(Role.SYSTEM, SystemContent(channel_config=ChannelConfig(("a", "b"), False)))
    assert oracle().decode_utf8(oracle_render_message(m)).endswith("\n\n# Valid channels: a, b.<|end|>")


# -- built-in tools: the system message of a chat with browser and python ---------------------------


def _oracle_system_with_builtins(effort, date, names):
    s = oh.SystemContent.new().with_reasoning_effort(oh.ReasoningEffort[effort.upper()])
    if date is not None:
        s = s.with_conversation_start_date(date)
    if "browser" in names:
        s = s.with_browser_tool()
    if "python" in names:
        s = s.with_python_tool()
    msg = oh.Message.from_role_and_content(oh.Role.SYSTEM, s)
    return oracle().render(msg, oh.RenderOptions(conversation_has_function_tools=False))


@pytest.mark.parametrize("names", [("browser",), ("python",), ("browser", "python")])
@pytest.mark.parametrize("effort, date", [("medium", None), ("high", "2025-06-28"), ("low", "2026-12-02")])
def test_builtin_tools_system_message_is_token_exact(names, effort, date, tmp_path):
    """The system message a Chat with built-in tools renders == openai-harmony's
    `with_browser_tool()` / `with_python_tool()`, token for token."""
    from mlx_oss.builtin import BuiltinTools
    from mlx_oss.harmony import ReasoningEffort, render_message

    builtins = BuiltinTools(names, browser="none", python="jupyter", workdir=tmp_path)
    ours = SystemContent(reasoning_effort=ReasoningEffort(effort), conversation_start_date=date)
    ours = ours.with_tools(*builtins.namespaces())
    assert render_message(Message(Role.SYSTEM, ours)) == _oracle_system_with_builtins(effort, date, names)
    builtins.close()
