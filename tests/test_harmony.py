"""Harmony renderer and stream parser: token-exact against openai-harmony on fixed conversations,
parser round trips, malformed streams, and the prefix-reuse contract."""

from __future__ import annotations

import json

import pytest

from mlx_oss import tokenizer as tk
from mlx_oss.harmony import (
    ChannelConfig,
    Conversation,
    DeveloperContent,
    Message,
    ParserState,
    ReasoningEffort,
    ResponseFormat,
    Role,
    StreamParser,
    SystemContent,
    ToolDescription,
    ToolNamespace,
    common_prefix_length,
    json_schema_to_typescript,
    parse_completion,
    prune_analysis,
    render_conversation,
    render_conversation_for_completion,
    render_conversation_for_training,
    render_message,
    render_with_spans,
    rendered_message_indices,
)
from mlx_oss.harmony.schema import json_display, rust_lines

try:  # shared oracle helpers (see tests/test_harmony_oracle.py)
    from .test_harmony_oracle import (
        oracle_parse,
        oracle_render,
        oracle_render_completion,
        oracle_render_message,
        oracle_render_training,
    )
except ImportError:
    from test_harmony_oracle import (
        oracle_parse,
        oracle_render,
        oracle_render_completion,
        oracle_render_message,
        oracle_render_training,
    )

ENC = tk.load_tokenizer()


def text(tokens: list[int]) -> str:
    return ENC.decode(tokens)


def toks(s: str) -> list[int]:
    return ENC.encode(s, allowed_special="all")


# -- tools with rich schemas ------------------------------------------------------------------------

WEATHER = ToolDescription(
    "get_current_weather",
    "Gets the current weather in the provided location.",
    {
        "type": "object",
        "properties": {
            "location": {"type": "string", "description": "The city and state, e.g. San Francisco, CA"},
            "format": {"type": "string", "enum": ["celsius", "fahrenheit"], "default": "celsius"},
        },
        "required": ["location"],
    },
)
LOCATION = ToolDescription("get_location", "Gets the location of the user.")
KITCHENSINK = ToolDescription(
    "kitchensink",
    "A function with various complex schemas.\nSecond line of the description.\r\nThird after CRLF.",
    {
        "description": "params object",
        "type": "object",
        "properties": {
            "string": {"type": "string", "title": "STRING", "description": "A string", "examples": ["hello", "world", 3]},
            "string_nullable": {"type": "string", "nullable": True, "description": "A nullable string", "default": "the default"},
            "string_enum": {"type": "string", "enum": ["a", "b", "c"], "default": "b"},
            "oneof_string_or_number": {
                "oneOf": [
                    {"type": "string", "default": "default_string_in_oneof"},
                    {"type": "number", "description": "numbers can happen too"},
                ],
                "description": "a oneof",
                "default": 20,
            },
            "oneof_same_desc": {
                "oneOf": [{"type": "integer", "description": "same"}, {"type": "null", "nullable": True, "default": None}],
                "description": "same",
            },
            "int_list": {"type": "array", "items": {"type": "integer"}, "default": [1, 2, 3]},
            "anything": {"type": "array"},
            "union": {"type": ["integer", "string", "null"]},
            "nested": {
                "type": "object",
                "description": "a nested object",
                "properties": {
                    "flag": {"type": "boolean", "default": False},
                    "ratio": {"type": "number", "default": 0.5},
                    "big": {"type": "number", "default": 1e20},
                    "tiny": {"type": "number", "default": 1.5e-7},
                    "small": {"type": "number", "default": 0.00001},
                    "huge_int": {"type": "integer", "default": 123456789012345678901234},
                    "obj_default": {"type": "object", "default": {"k": "v", "n": [1, 2.0, None]}},
                    "deep": {"type": "array", "items": {"type": "object", "properties": {"x": {"type": "string"}}, "required": ["x"]}},
                },
                "required": ["flag"],
            },
            "no_type": {"description": "no type at all"},
            "any_of": {"anyOf": [{"type": "string"}, {"type": "number"}]},
            "unicode": {"type": "string", "description": "Ünïcødé «quotes» \"double\" 'single' 😊", "default": "é\"x"},
            "enum_mixed": {"type": "string", "enum": [1, "one", None]},
        },
        "required": ["string", "nested"],
    },
)
TOP_ONEOF = ToolDescription(
    "pick",
    "Top-level oneOf parameters.",
    {"oneOf": [{"type": "object", "properties": {"a": {"type": "string"}}, "description": "variant a"},
               {"type": "string", "enum": ["x", "y"], "default": "x"}]},
)
EMPTY_PARAMS = ToolDescription("ping", "", {"type": "object", "properties": {}})

SYS_DEFAULT = Message.system()


def _conv(*ms: Message) -> list[Message]:
    return list(ms)


TOOL_TURN = _conv(
    Message.system(reasoning_effort=ReasoningEffort.HIGH, conversation_start_date="2025-06-28"),
    Message.developer("Always answer in haiku.", functions=[WEATHER, LOCATION]),
    Message.user("What is the weather in SF?"),
    Message.assistant("User asks weather; call the tool.", channel="analysis"),
    Message.assistant("Let me check that for you.", channel="commentary"),
    Message.tool_call("functions.get_current_weather", {"location": "San Francisco, CA"}),
    Message.tool_result("functions.get_current_weather", '{"temperature": 20, "description": "sunny"}'),
)

CASES: dict[str, list[Message]] = {
    "default_system_only": _conv(SYS_DEFAULT),
    "simple": _conv(SYS_DEFAULT, Message.user("What is 2 + 2?")),
    **{
        f"effort_{e.value}_{'date' if d else 'nodate'}": _conv(
            Message.system(reasoning_effort=e, conversation_start_date=d), Message.user("hi")
        )
        for e in ReasoningEffort
        for d in (None, "2025-06-28")
    },
    "no_effort_no_identity_no_cutoff": _conv(
        Message.system(model_identity=None, reasoning_effort=None, knowledge_cutoff=None), Message.user("x")
    ),
    "custom_identity_channels_not_required": _conv(
        Message.system(model_identity="You are a pirate.", channel_config=ChannelConfig(("analysis", "final"), False)),
        Message.user("arr"),
    ),
    "no_channel_config": _conv(Message.system(channel_config=None), Message.user("x")),
    "empty_channels": _conv(Message.system(channel_config=ChannelConfig(())), Message.user("x")),
    "developer_instructions": _conv(SYS_DEFAULT, Message.developer("Talk like a pirate.\n\nAlways."), Message.user("hi")),
    "developer_empty": _conv(SYS_DEFAULT, Message(Role.DEVELOPER, DeveloperContent()), Message.user("hi")),
    "developer_tools_no_instructions": _conv(SYS_DEFAULT, Message.developer(functions=[WEATHER]), Message.user("hi")),
    "rich_schemas": _conv(
        Message.system(conversation_start_date="2025-01-01"),
        Message.developer("Use tools.", functions=[LOCATION, WEATHER, KITCHENSINK, TOP_ONEOF, EMPTY_PARAMS]),
        Message.user("go"),
    ),
    "empty_functions_namespace": _conv(
        SYS_DEFAULT, Message(Role.DEVELOPER, DeveloperContent(tools=(ToolNamespace("functions"),))), Message.user("x")
    ),
    "custom_namespace_with_description": _conv(
        SYS_DEFAULT,
        Message(Role.DEVELOPER, DeveloperContent(
            "i", tools=(ToolNamespace("zeta", "Zeta tools.\nTwo lines.", (LOCATION,)), ToolNamespace("alpha", "no tools")))),
        Message.user("x"),
    ),
    "browser_python_and_functions": _conv(
        Message(Role.SYSTEM, SystemContent(conversation_start_date="2025-06-28").with_python_tool().with_browser_tool()),
        Message.developer("be brief", functions=[WEATHER]),
        Message.user("search the news"),
        Message.assistant("Need to browse.", channel="analysis"),
        Message.tool_call("browser.search", '{"query": "news", "topn": 3}', channel="analysis", content_type="code"),
        Message.tool_result("browser.search", "【0†Result†example.com】", channel="analysis"),
        Message.tool_call("python", "print(1+1)", channel="analysis", content_type="code"),
        Message.tool_result("python", "2", channel="analysis"),
        Message.assistant("Here is the news.", channel="final"),
        Message.user("thanks"),
    ),
    "multi_turn_tool_calls": TOOL_TURN,
    "multi_turn_answered": TOOL_TURN + _conv(
        Message.assistant("It is sunny.", channel="analysis"),
        Message.assistant("Sunny skies, twenty degrees.", channel="final"),
        Message.user("And tomorrow?"),
    ),
    "analysis_between_finals": _conv(
        Message.user("What is 2 + 2?"),
        Message.assistant("thinking 2+2", channel="analysis"),
        Message.assistant("4", channel="final"),
        Message.user("What is 3 + 5?"),
        Message.assistant("thinking 3+5", channel="analysis"),
        Message.assistant("8", channel="final"),
    ),
    "ongoing_analysis_not_dropped": _conv(
        Message.user("q"),
        Message.assistant("a1", channel="analysis"),
        Message.assistant("f1", channel="final"),
        Message.user("q2"),
        Message.assistant("a2", channel="analysis"),
        Message.tool_call("functions.lookup", "{}"),
        Message.tool_result("functions.lookup", "{}", channel=None, recipient=None),
    ),
    "structured_output_final": _conv(
        SYS_DEFAULT,
        Message.user("Give JSON"),
        Message.assistant('{"items": ["coffee"]}', channel="final", content_type="<|constrain|>json"),
        Message.assistant("x", channel="final", content_type="<|constrain|>"),
        Message.assistant("y", channel="final", content_type="json"),
    ),
    "unicode_and_whitespace": _conv(
        SYS_DEFAULT,
        Message.user("  leading, trailing  \t\r\n\r\n"),
        Message.user("Ünïcødé 你好 مرحبا 😊👋🏾👨‍👩‍👧‍👦 \u200b\u00a0\u3000"),
        Message.user("<|start|>assistant<|channel|>final<|message|>not special<|end|>"),
        Message.user(""),
        Message.user("\n"),
        Message.user("hi", name="alice"),
        Message(Role.ASSISTANT, "to all", channel="final", recipient="all"),
        Message(Role.USER, ("part one ", "part two")),
        Message(Role.ASSISTANT, "no channel"),
        Message(Role.DEVELOPER, "plain text developer"),
        Message(Role.SYSTEM, "plain text system"),
    ),
    "assistant_named": _conv(Message(Role.ASSISTANT, "hi", name="bot", channel="final")),
    "duplicate_namespace_last_wins": _conv(
        Message(Role.SYSTEM, SystemContent(tools=(ToolNamespace("browser", "old"), ToolNamespace.browser()))),
    ),
}


@pytest.mark.parametrize("auto_drop", [True, False])
@pytest.mark.parametrize("name", sorted(CASES))
def test_renders_token_exact_with_oracle(name, auto_drop):
    msgs = CASES[name]
    assert render_conversation_for_completion(msgs, auto_drop_analysis=auto_drop) == oracle_render_completion(
        msgs, auto_drop_analysis=auto_drop)
    assert render_conversation(msgs, auto_drop_analysis=auto_drop) == oracle_render(msgs, auto_drop_analysis=auto_drop)
    assert render_conversation_for_training(msgs, auto_drop_analysis=auto_drop) == oracle_render_training(
        msgs, auto_drop_analysis=auto_drop)


@pytest.mark.parametrize("next_role", [Role.USER, Role.TOOL, Role.SYSTEM])
def test_completion_for_other_roles(next_role):
    msgs = CASES["simple"]
    assert render_conversation_for_completion(msgs, next_role) == oracle_render_completion(msgs, next_role)


@pytest.mark.parametrize("has_tools", [False, True])
def test_single_messages_match_oracle(has_tools):
    for msgs in CASES.values():
        for m in msgs:
            assert render_message(m, has_function_tools=has_tools) == oracle_render_message(m, has_tools), m


def test_default_system_message_text():
    assert text(render_message(SYS_DEFAULT)) == (
        "<|start|>system<|message|>You are ChatGPT, a large language model trained by OpenAI.\n"
        "Knowledge cutoff: 2024-06\n\nReasoning: medium\n\n"
        "# Valid channels: analysis, commentary, final. Channel must be included for every message.<|end|>"
    )
    sys_with_tools = text(render_conversation(CASES["developer_tools_no_instructions"]))
    assert "every message.\nCalls to these tools must go to the commentary channel: 'functions'.<|end|>" in sys_with_tools
    # system_text on its own: no function tools unless told
    from mlx_oss.harmony import system_text

    assert system_text(SystemContent()).endswith("Channel must be included for every message.")
    assert system_text(SystemContent(), True).endswith("commentary channel: 'functions'.")


def test_function_tools_render_as_typescript_namespace():
    rendered = text(render_message(Message.developer("Be nice.", functions=[LOCATION, WEATHER])))
    assert rendered == (
        "<|start|>developer<|message|># Instructions\n\nBe nice.\n\n# Tools\n\n## functions\n\nnamespace functions {\n\n"
        "// Gets the location of the user.\ntype get_location = () => any;\n\n"
        "// Gets the current weather in the provided location.\ntype get_current_weather = (_: {\n"
        "// The city and state, e.g. San Francisco, CA\nlocation: string,\n"
        'format?: "celsius" | "fahrenheit", // default: celsius\n}) => any;\n\n} // namespace functions<|end|>'
    )


def test_tool_calls_and_constrain_render_as_special_tokens():
    call = render_message(Message.tool_call("functions.get_weather", '{"location": "Tokyo"}'))
    assert text(call) == (
        '<|start|>assistant to=functions.get_weather<|channel|>commentary <|constrain|>json<|message|>'
        '{"location": "Tokyo"}<|call|>'
    )
    assert tk.CONSTRAIN in call and call[-1] == tk.CALL
    result = render_message(Message.tool_result("functions.get_weather", "{}"))
    assert text(result) == "<|start|>functions.get_weather to=assistant<|channel|>commentary<|message|>{}<|end|>"


def test_final_message_in_history_ends_with_end_and_training_with_return():
    msgs = [Message.user("hi"), Message.assistant("hello")]
    assert render_conversation(msgs)[-1] == tk.END
    assert render_conversation_for_training(msgs)[-1] == tk.RETURN
    assert render_conversation_for_training(msgs)[:-1] == render_conversation(msgs)[:-1]
    assert render_conversation_for_training([Message.user("hi")]) == render_conversation([Message.user("hi")])


def test_earlier_analysis_dropped_only_once_a_final_exists():
    msgs = CASES["multi_turn_answered"]
    kept = rendered_message_indices(msgs)
    assert 3 not in kept and 7 not in kept  # analysis before the first final: gone
    assert rendered_message_indices(msgs, auto_drop_analysis=False) == list(range(len(msgs)))
    assert rendered_message_indices(TOOL_TURN) == list(range(len(TOOL_TURN)))  # mid tool call: all kept
    assert "User asks weather" not in text(render_conversation_for_completion(msgs))


def test_render_rejects_inexpressible_messages():
    with pytest.raises(ValueError, match="tool's name"):
        render_message(Message(Role.TOOL, "x"))
    with pytest.raises(ValueError, match="SystemContent"):
        render_message(Message(Role.USER, SystemContent()))
    with pytest.raises(ValueError, match="DeveloperContent"):
        render_message(Message(Role.SYSTEM, DeveloperContent("x")))
    with pytest.raises(ValueError, match="not both"):
        DeveloperContent(functions=(LOCATION,), tools=(ToolNamespace.functions([WEATHER]),))


def test_response_formats_follow_the_harmony_guide_layout():
    schema = {"properties": {"items": {"type": "array", "description": "entries on the shopping list",
                                       "items": {"type": "string"}}}, "type": "object"}
    dev = DeveloperContent("You are a helpful shopping assistant",
                           response_formats=(ResponseFormat("shopping_list", schema, "A list of items\nto buy"),))
    expected_body = (
        "You are a helpful shopping assistant\n\n# Response Formats\n\n## shopping_list\n\n"
        "// A list of items\n// to buy\n"
        '{"properties":{"items":{"type":"array","description":"entries on the shopping list","items":{"type":"string"}}},"type":"object"}'
    )
    ours = render_message(Message(Role.DEVELOPER, dev))
    # openai-harmony has no response-format field; the same text given as instructions must tokenize identically.
    assert ours == oracle_render_message(Message(Role.DEVELOPER, DeveloperContent(expected_body)))
    with_tools = text(render_message(Message(Role.DEVELOPER, DeveloperContent(
        "x", functions=(LOCATION,), response_formats=(ResponseFormat("r", {"type": "object"}),)))))
    assert with_tools.endswith("} // namespace functions\n\n# Response Formats\n\n## r\n\n{\"type\":\"object\"}<|end|>")
    # several formats, one section each; the schema is compact JSON with non-ASCII text kept as is
    two = DeveloperContent(response_formats=(ResponseFormat("a", {"description": "café", "x": [1, 2]}),
                                             ResponseFormat("b", {"type": "string"})))
    assert text(render_message(Message(Role.DEVELOPER, two))) == (
        "<|start|>developer<|message|># Response Formats\n\n## a\n\n"
        '{"description":"café","x":[1,2]}\n\n## b\n\n{"type":"string"}<|end|>'
    )


def test_schema_helpers():
    assert json_schema_to_typescript({"type": "string", "enum": ["a", "b"]}) == '"a" | "b"'
    assert json_schema_to_typescript({"type": "array", "items": {"type": "integer"}}) == "number[]"
    assert json_schema_to_typescript({"type": ["integer", "null"]}) == "number | null"
    assert json_schema_to_typescript(True) == "any"
    assert json_display({"a": [1, 2.0, 1e20, -0.0, 1.5e-7, 1e-5, 1e16, 1e15, 123.456, None, True, "é\n"]}) == (
        '{"a":[1,2.0,1e20,-0.0,1.5e-7,0.00001,1e16,1000000000000000.0,123.456,null,true,"é\\n"]}'
    )
    assert rust_lines("a\r\nb\n") == ["a", "b"]
    assert rust_lines("") == [] and rust_lines("\n\n") == ["", ""] and rust_lines("a\r") == ["a\r"]


@pytest.mark.parametrize("desc", ["", "\n", "\n\n", "a\r\nb", "a\rb", "a\r", "a\r\n", "line\n\n\nend\n", " x \t"])
def test_description_line_splitting_matches_oracle(desc):
    m = Message.developer(functions=[ToolDescription("t", desc, {"type": "object", "title": "x"})])
    assert render_message(m) == oracle_render_message(m)
    s = Message(Role.SYSTEM, SystemContent(tools=(ToolNamespace("ns", desc), ToolNamespace("ns2", desc, (LOCATION,)))))
    assert render_message(s) == oracle_render_message(s)


# -- prefix reuse -----------------------------------------------------------------------------------


def test_spans_tile_the_render_and_match_single_messages():
    msgs = CASES["browser_python_and_functions"]
    r = render_with_spans(msgs, Role.ASSISTANT)
    assert r.tokens == render_conversation_for_completion(msgs)
    pos = 0
    for span in r.spans:
        assert span.start == pos
        assert r.tokens[span.start:span.end] == render_message(msgs[span.index], has_function_tools=True)
        pos = span.end
    assert r.tokens[pos:] == [tk.START] + ENC.encode_ordinary("assistant")


def test_next_turn_shares_prefix_up_to_first_changed_message():
    turn1 = TOOL_TURN[:3]
    prompt1 = render_conversation_for_completion(turn1)
    # The model's sampled reply, as the engine holds it in its cache.
    sampled = toks("<|channel|>analysis<|message|>User asks weather; call the tool.<|end|>"
                   "<|start|>assistant<|channel|>commentary<|message|>Let me check that for you.<|end|>"
                   "<|start|>assistant to=functions.get_current_weather<|channel|>commentary <|constrain|>json"
                   '<|message|>{"location": "San Francisco, CA"}<|call|>')
    cached = prompt1 + sampled
    prompt2 = render_conversation_for_completion(TOOL_TURN)
    assert prompt2[: len(cached)] == cached  # re-rendering the parsed reply reproduces it exactly
    assert common_prefix_length(cached, prompt2) == len(cached)
    # Turn 3: the final answer arrives; the next prompt drops turn-2 analysis, so reuse stops there.
    answered = CASES["multi_turn_answered"]
    prompt3 = render_conversation_for_completion(answered)
    spans = render_with_spans(answered).spans
    first_dropped = 3
    stable_end = max(s.end for s in spans if s.index < first_dropped)
    assert common_prefix_length(prompt2, prompt3) >= stable_end
    assert prompt3[:stable_end] == prompt2[:stable_end]


def test_conversation_value_type():
    conv = Conversation(CASES["simple"])
    longer = conv + Message.assistant("4") + [Message.user("thanks")]
    assert len(conv) == 2 and len(longer) == 4 and longer[:2] == conv and longer[2].text == "4"
    assert render_conversation_for_completion(longer) == render_conversation_for_completion(list(longer))
    assert Message(Role.USER, ["a", "b"]).contents == ("a", "b")  # lists become tuples (hashable, immutable)
    assert Message.system(reasoning_effort="HIGH").content.reasoning_effort is ReasoningEffort.HIGH


def test_messages_survive_json():
    for msgs in CASES.values():
        conv = Conversation(msgs)
        back = Conversation.from_dict(json.loads(json.dumps(conv.to_dict())))
        assert back == conv
        assert render_conversation(back) == render_conversation(conv)
    dev = Message(Role.DEVELOPER, DeveloperContent(
        "x", functions=(WEATHER,), response_formats=(ResponseFormat("r", {"type": "object"}, "d"),)))
    assert Message.from_dict(json.loads(json.dumps(dev.to_dict()))) == dev
    cut = Message(Role.ASSISTANT, "partial", channel="final", incomplete=True)
    assert Message.from_dict(cut.to_dict()) == cut
    with pytest.raises(ValueError, match="unknown content type"):
        Message.from_dict({"role": "user", "content": [{"type": "image"}]})


def test_common_prefix_length():
    assert common_prefix_length([], [1]) == 0
    assert common_prefix_length([1, 2, 3], [1, 2, 4]) == 2
    a = list(range(5000))
    assert common_prefix_length(a, a + [1]) == 5000
    assert common_prefix_length(a, a[:3000] + [-1] + a[3001:]) == 3000
    # a difference inside the first 1024-token chunk, and equal sequences not a multiple of it
    assert common_prefix_length(a, a[:500] + [-1] + a[501:]) == 500
    assert common_prefix_length(a[:1500], a[:1500]) == 1500


def test_prune_analysis_keeps_current_turn_reasoning():
    msgs = CASES["ongoing_analysis_not_dropped"]
    pruned = prune_analysis(msgs)
    assert [m.text for m in pruned if m.channel == "analysis"] == ["a2"]
    # With pruning, the turn's prompts only grow: the old analysis no longer reappears mid tool call.
    before = render_conversation_for_completion(prune_analysis(msgs[:4]))
    after = render_conversation_for_completion(pruned)
    assert after[: len(before) - 2] == before[:-2]
    # no user message yet: nothing comes before it, nothing is pruned
    no_user = [Message.system(), Message.assistant("think", channel="analysis"), Message.assistant("hi")]
    assert prune_analysis(no_user) == no_user
    assert prune_analysis(no_user[1:]) == no_user[1:]  # the reasoning first, no system message either
    assert prune_analysis([]) == []


# -- stream parser ----------------------------------------------------------------------------------

REPLY = [
    Message.assistant("User asks: \"What is 2 + 2?\" Simple arithmetic. 😊", channel="analysis"),
    Message.assistant("Let me call a tool.", channel="commentary"),
    Message.tool_call("functions.get_weather", '{"location": "Tokyo"}'),
]


def _reply_tokens(msgs: list[Message]) -> list[int]:
    out: list[int] = []
    for m in msgs:
        out += render_message(m)
    return out


def test_parser_round_trip_token_by_token():
    tokens = _reply_tokens(REPLY)
    for role, feed in [(None, tokens), (Role.ASSISTANT, tokens[2:])]:  # after "<|start|>assistant"
        p = StreamParser(role)
        events = [p.process(t) for t in feed]
        assert p.messages == REPLY
        assert p.errors == []
        done = [e for e in events if e.message is not None]
        assert [e.message for e in done] == REPLY
        assert [e.stop for e in done] == [False, False, True]
        headers = [(e.channel, e.recipient, e.content_type) for e in events if e.header_done]
        assert headers == [("analysis", None, None), ("commentary", None, None),
                           ("commentary", "functions.get_weather", "<|constrain|>json")]
        deltas = "".join(e.delta for e in events)
        assert deltas == "".join(m.text for m in REPLY)
        assert not any(e.unparsed or e.header_tokens for e in events) and p.unparsed_tokens == 0
        assert p.finish() == REPLY
        ours = oracle_parse(feed, role)
        assert ours[0] == REPLY
        assert [p2 for p2 in ours[1]] == [e.delta or None for e in events]


def test_parser_current_fields_while_streaming():
    p = StreamParser()
    p.feed(toks("<|channel|>final<|message|>Hel"))
    assert p.state is ParserState.CONTENT
    assert (p.current_role, p.current_channel, p.current_recipient) == (Role.ASSISTANT, "final", None)
    assert p.current_content == "Hel"
    ev = p.process(toks("lo")[0])
    assert ev.delta == "lo" and p.last_content_delta == "lo" and ev.channel == "final"
    ev = p.process(tk.RETURN)
    assert ev.stop and ev.message == Message.assistant("Hello") and p.state is ParserState.EXPECT_START
    assert p.current_channel is None and p.last_content_delta is None


@pytest.mark.parametrize(
    "stream, expected",
    [
        # recipient before the channel, as rendered
        ("<|start|>assistant to=functions.get_weather<|channel|>commentary <|constrain|>json<|message|>{}<|call|>",
         Message(Role.ASSISTANT, "{}", channel="commentary", recipient="functions.get_weather", content_type="<|constrain|>json")),
        # missing space before <|constrain|>
        ("<|start|>assistant to=functions.get_weather<|channel|>commentary<|constrain|>json<|message|>{}<|call|>",
         Message(Role.ASSISTANT, "{}", channel="commentary", recipient="functions.get_weather", content_type="<|constrain|>json")),
        # channel before the recipient, constrain glued to it (what gpt-oss usually emits)
        ("<|start|>assistant<|channel|>commentary to=functions.get_weather<|constrain|>json<|message|>{\"a\":1}<|call|>",
         Message(Role.ASSISTANT, '{"a":1}', channel="commentary", recipient="functions.get_weather", content_type="<|constrain|>json")),
        # built-in tool call on the analysis channel
        ("<|start|>assistant<|channel|>analysis to=browser.search code<|message|>{\"query\": \"x\"}<|call|>",
         Message(Role.ASSISTANT, '{"query": "x"}', channel="analysis", recipient="browser.search", content_type="code")),
        ("<|start|>assistant to=python<|channel|>analysis code<|message|>print(1)<|call|>",
         Message(Role.ASSISTANT, "print(1)", channel="analysis", recipient="python", content_type="code")),
        # tool result: the header names the tool instead of a role
        ("<|start|>functions.get_weather to=assistant<|channel|>commentary<|message|>{\"t\": 20}<|end|>",
         Message(Role.TOOL, '{"t": 20}', name="functions.get_weather", channel="commentary", recipient="assistant")),
        ("<|start|>assistant<|channel|>final<|message|>done<|return|>", Message.assistant("done")),
        ("<|start|>user<|message|>hi<|end|>", Message.user("hi")),
    ],
)
def test_parser_header_variants_agree_with_oracle(stream, expected):
    tokens = toks(stream)
    assert parse_completion(tokens, role=None) == [expected]
    assert oracle_parse(tokens, None)[0] == [expected]


def test_parser_reads_tool_message_without_recipient():
    # openai-harmony raises "Unknown role" here; the header is just the tool's name.
    m = Message.tool_result("functions.x", "{}", channel=None, recipient=None)
    assert parse_completion(render_message(m), role=None) == [m]


def test_parser_content_type_without_recipient():
    # openai-harmony would read a lone "<|constrain|>json" as the recipient; it is the content type.
    m = Message.assistant('{"a": 1}', channel="final", content_type="<|constrain|>json")
    assert parse_completion(render_message(m)[2:]) == [m]


@pytest.mark.parametrize(
    "stream, expected_texts",
    [
        ("I must refuse<|end|><|start|>assistant<|channel|>final<|message|>Sorry.<|return|>",
         [(None, "I must refuse"), ("final", "Sorry.")]),
        ("<|channel|>analysis I must refuse<|end|><|start|>assistant<|channel|>final<|message|>No.<|return|>",
         [("analysis", "I must refuse"), ("final", "No.")]),
        ("... Let's use the tool.<|end|><|start|>assistant to=functions.get_weather<|channel|>commentary json"
         '<|message|>{"location": "Tokyo"}<|call|>', [(None, "... Let's use the tool."), ("commentary", '{"location": "Tokyo"}')]),
    ],
)
def test_missing_message_token_recovers_like_oracle_non_strict(stream, expected_texts):
    tokens = toks(stream)
    p = StreamParser(Role.ASSISTANT)
    events = p.feed(tokens)
    msgs = p.finish()
    assert [(m.channel, m.text) for m in msgs] == expected_texts
    assert msgs == oracle_parse(tokens, Role.ASSISTANT, strict=False)[0]
    assert any("before <|message|>" in e for e in p.errors)
    assert events[-1].stop


def test_truncated_mid_content_returns_incomplete_message():
    tokens = toks("<|channel|>final<|message|>The answer is")
    p = StreamParser()
    p.feed(tokens)
    assert p.messages == []
    msgs = p.finish()
    assert msgs == [Message(Role.ASSISTANT, "The answer is", channel="final", incomplete=True)]
    assert p.finish() == msgs  # idempotent


def test_truncated_mid_header_returns_incomplete_message():
    p = StreamParser(None)
    p.feed(toks("<|start|>assistant<|channel|>analysis<|message|>ok<|end|><|start|>assistant to=functions.f<|channel|>comm"))
    msgs = p.finish()
    assert msgs[0] == Message.assistant("ok", channel="analysis")
    assert msgs[1] == Message(Role.ASSISTANT, "", channel="comm", recipient="functions.f", incomplete=True)
    assert any("inside a message header" in e for e in p.errors)
    # Stream that ends right after <|start|>: nothing to return, nothing raised.
    p = StreamParser(None)
    p.process(tk.START)
    assert p.finish() == []


def test_unknown_tokens_do_not_raise():
    bad = [201088, 10**9, -1]
    tokens = toks("<|start|>assistant<|channel|>final<|message|>a") + bad + toks("b<|return|>")
    p = StreamParser(None)
    events = p.feed(tokens)
    assert p.messages == [Message.assistant("a\ufffd\ufffd\ufffdb")]
    assert sum("unknown token" in e for e in p.errors) == 3
    assert [e.error is not None for e in events].count(True) == 3
    # in a header
    p = StreamParser(None)
    p.feed([tk.START] + toks("assistant") + [201088] + toks("<|channel|>final<|message|>x<|end|>"))
    assert p.messages[0].channel == "final" and p.messages[0].text == "x"


def test_stray_tokens_and_restarts():
    p = StreamParser(None)
    p.feed(toks("garbage<|end|>") + toks("<|start|>assistant<|channel|>final<|message|>ok<|return|>"))
    assert p.messages == [Message.assistant("ok")]
    assert len(p.errors) == len(toks("garbage<|end|>"))
    # A <|start|> inside content closes the message as incomplete and begins a new one.
    p = StreamParser()
    p.feed(toks("<|channel|>analysis<|message|>think<|start|>assistant<|channel|>final<|message|>ans<|return|>"))
    assert p.messages == [Message(Role.ASSISTANT, "think", channel="analysis", incomplete=True), Message.assistant("ans")]
    # A <|start|> inside a header drops the partial header.
    p = StreamParser()
    p.feed(toks("<|channel|>ana<|start|>assistant<|channel|>final<|message|>x<|end|>"))
    assert p.messages == [Message.assistant("x")]


def test_malformed_headers_do_not_raise():
    invalid_utf8 = [tk.START] + toks("assistant") + [ENC.encode_single_token(b"\xff")] + toks("<|message|>x<|end|>")
    for stream in ["<|start|><|message|>x<|end|>", "<|start|>assistant<|channel|><|message|>x<|end|>",
                   "<|start|>assistant a b c d<|message|>x<|end|>", "<|start|><|end|>", invalid_utf8]:
        p = StreamParser(None)
        p.feed(toks(stream) if isinstance(stream, str) else stream)
        p.finish()
        assert p.errors, stream
        assert len(p.messages) == (0 if stream == "<|start|><|end|>" else 1)
    p = StreamParser(None)
    p.feed(toks("<|start|>assistant<|channel|><|message|>x<|end|>"))
    assert p.messages == [Message(Role.ASSISTANT, "x")]


@pytest.mark.parametrize(
    "pieces",
    [
        [[9552, 9552], "worked"],   # invalid UTF-8 sequences
        [[9552], "XY"],              # invalid lead byte before valid text
        [[9552], " interesting"],
        ["Hello Müller, Γειά σου, 你好 😊👋🏾👨‍👩‍👧‍👦🇺🇸 naïve"],
    ],
)
def test_utf8_split_across_tokens_matches_oracle(pieces):
    body: list[int] = []
    for piece in pieces:
        body += piece if isinstance(piece, list) else ENC.encode_ordinary(piece)
    tokens = toks("<|start|>assistant<|message|>") + body + [tk.END]
    p = StreamParser(None)
    events = p.feed(tokens)
    assert p.messages == oracle_parse(tokens, None)[0]
    assert "".join(e.delta for e in events) == p.messages[0].text


def test_multibyte_character_split_over_tokens_emits_whole_characters():
    # Tokens of a rare CJK/emoji string often split a character's bytes between tokens.
    s = "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 🧑🏽‍🚀 龘"
    body = ENC.encode_ordinary(s)
    def is_partial(t: int) -> bool:
        try:
            ENC.decode_single_token_bytes(t).decode("utf-8")
            return False
        except UnicodeDecodeError:
            return True

    assert sum(map(is_partial, body)) > len(body) // 2  # most tokens hold partial characters
    p = StreamParser()
    events = p.feed(toks("<|channel|>final<|message|>") + body)
    assert all("\ufffd" not in e.delta for e in events)
    assert p.current_content == s


def test_parse_completion_convenience():
    assert parse_completion(_reply_tokens(REPLY)[2:]) == REPLY
    assert parse_completion(_reply_tokens(REPLY), role=None) == REPLY


# -- parser edges found by mutation testing (docs/TESTING.md) -----------------------------------------


@pytest.mark.parametrize(
    "stream, end, expected",
    [
        ("<|start|>assistant<|channel|>analysis thinking", tk.END, Message.assistant("thinking", channel="analysis")),
        ("<|start|>user hello there", tk.RETURN, Message.user("hello there")),
        ("<|start|>user", tk.CALL, Message.user("")),
    ],
)
def test_message_ended_before_message_token_after_a_start(stream, end, expected):
    # No role hint: the role is the header's first word, read even when <|channel|> is glued to it.
    p = StreamParser(None)
    p.feed(toks(stream))
    ev = p.process(end)
    assert (ev.token, ev.message, ev.stop) == (end, expected, end != tk.END)
    assert ev.header_tokens == len(toks(stream)) - 1  # every token after <|start|> (the words are the text)
    assert p.messages == [expected]
    assert p.errors == ["message ended before <|message|>"]
    assert p.state is ParserState.EXPECT_START
    p.feed(toks("<|start|>assistant<|channel|>final<|message|>ok<|return|>"))  # and parsing carries on
    assert p.messages == [expected, Message.assistant("ok")]
    assert p.errors == ["message ended before <|message|>"]


def test_message_without_a_role_ended_before_message_token_is_dropped():
    p = StreamParser(None)
    p.feed(toks("<|start|><|channel|>analysis x"))
    ev = p.process(tk.END)
    assert (ev.message, ev.stop, p.messages, ev.header_tokens) == (None, False, [], 0)
    assert p.errors == ["message ended before <|message|>; dropped"]
    assert p.state is ParserState.EXPECT_START


def test_finish_right_after_a_start_or_mid_header_records_exactly_why():
    p = StreamParser(None)
    p.process(tk.START)
    assert (p.finish(), p.errors, p.unparsed_text, p.unparsed_tokens) == ([], [], "", 0)
    # the role already rendered in the prompt is the cut-off header's role
    p = StreamParser(Role.ASSISTANT)
    p.feed(toks("<|channel|>analysis"))
    assert p.finish() == [Message(Role.ASSISTANT, "", channel="analysis", incomplete=True)]
    assert p.errors == ["stream ended inside a message header"]
    assert p.unparsed_tokens == 0  # a cut-off header is a message, not unparsed text


class _CountingEncoding:
    """The real tokenizer, counting the lookups the parser makes through it."""

    def __init__(self) -> None:
        self.calls = 0

    def decode_single_token_bytes(self, token: int) -> bytes:
        self.calls += 1
        return ENC.decode_single_token_bytes(token)


def test_parse_completion_uses_the_encoding_it_is_given():
    enc = _CountingEncoding()
    assert parse_completion(_reply_tokens(REPLY)[2:], encoding=enc) == REPLY  # type: ignore[arg-type]
    assert enc.calls > 0


def test_finish_keeps_words_that_are_no_header_as_unparsed_text():
    p = StreamParser()  # random weights: plain words where a header should be
    p.feed(toks("Hello world"))
    assert p.unparsed_tokens == 0  # still a header being read
    assert p.finish() == []
    assert (p.unparsed_text, p.unparsed_tokens) == ("Hello world", len(toks("Hello world")))
    assert p.errors == ["stream ended in text that is not a message header; kept as unparsed text"]


def test_finish_adds_its_errors_to_earlier_ones_and_flushes_split_bytes():
    p = StreamParser(None)
    p.process(toks("x")[0])
    p.feed(toks("<|start|>assistant to=functions.f<|channel|>comm"))
    assert p.finish() == [Message(Role.ASSISTANT, "", channel="comm", recipient="functions.f", incomplete=True)]
    assert len(p.errors) == 2 and p.errors[1] == "stream ended inside a message header"
    # half a character outside any message: kept (as U+FFFD) when the stream ends
    p = StreamParser(None)
    p.process(ENC.encode_single_token(b"\xe4"))
    assert (p.unparsed_text, p.unparsed_tokens) == ("", 1)  # counted though its text waits for more bytes
    p.finish()
    assert (p.unparsed_text, p.unparsed_tokens) == ("\ufffd", 1)


def test_a_message_cut_inside_a_character_ends_in_a_replacement_character():
    p = StreamParser()
    p.feed(toks("<|channel|>final<|message|>ab") + [ENC.encode_single_token(b"\xe4")])
    assert p.current_content == "ab"  # the half character waits for the rest of its bytes
    assert p.finish() == [Message(Role.ASSISTANT, "ab\ufffd", channel="final", incomplete=True)]


def test_text_outside_messages_is_released_as_unparsed_text():
    p = StreamParser(None)
    assert "".join(e.unparsed for e in p.feed(toks("Hi there"))) == "Hi there"
    # half a character, then <|start|>: the start token releases it (U+FFFD), the message reads on
    assert p.process(ENC.encode_single_token(b"\xe4")).unparsed == ""
    ev = p.process(tk.START)
    assert (ev.token, ev.unparsed, ev.error) == (tk.START, "\ufffd", None)
    assert p.unparsed_text == "Hi there\ufffd"
    assert p.unparsed_tokens == len(toks("Hi there")) + 1  # the <|start|> that released the half is markup
    p.feed(toks("assistant<|channel|>final<|message|>ok<|return|>"))
    assert p.messages == [Message.assistant("ok")] and p.unparsed_text == "Hi there\ufffd"
    assert p.unparsed_tokens == len(toks("Hi there")) + 1


def test_unknown_token_outside_a_message_and_parsing_on_after_finish():
    p = StreamParser(None)
    p.process(ENC.encode_single_token(b"\xe4"))
    ev = p.process(10**9)
    assert (ev.token, ev.unparsed) == (10**9, "\ufffd\ufffd")  # the pending half character, then the unknown id
    assert ev.error == "token 1000000000 outside a message (expected <|start|>); kept as unparsed text"
    # finish() forgets the prompt's role: the next message is read from its own <|start|>
    p = StreamParser(Role.ASSISTANT)
    p.feed(toks("<|channel|>final<|message|>a<|return|>"))
    p.finish()
    assert p.current_role is None
    p.feed(toks("<|start|>user<|message|>b<|end|>"))
    assert p.finish() == [Message.assistant("a"), Message.user("b")]


def test_first_channel_marker_names_the_channel_like_oracle():
    tokens = toks("<|start|>assistant<|channel|>analysis <|channel|>final<|message|>x<|end|>")
    expected = [Message(Role.ASSISTANT, "x", channel="analysis", recipient="<|channel|>final")]
    assert parse_completion(tokens, role=None) == expected
    assert oracle_parse(tokens, None)[0] == expected


@pytest.mark.parametrize(
    "stream, role, expected",
    [
        # header words are split on ASCII whitespace and trimmed of Unicode White_Space only, as openai-harmony
        # does: U+001C is neither, so it stays a word (here the recipient / part of the content type)
        ("\x1c<|channel|>final<|message|>x<|end|>", Role.ASSISTANT,
         Message(Role.ASSISTANT, "x", channel="final", recipient="\x1c")),
        ("<|start|>assistant<|channel|>final \x1c<|message|>x<|end|>", None,
         Message(Role.ASSISTANT, "x", channel="final", recipient="\x1c")),
        ("<|start|>assistant<|channel|>final to=f <|constrain|>json\x1c<|message|>x<|end|>", None,
         Message(Role.ASSISTANT, "x", channel="final", recipient="f", content_type="<|constrain|>json\x1c")),
        # the bare role "tool" is its own name
        ("<|start|>tool<|message|>x<|end|>", None, Message(Role.TOOL, "x", name="tool")),
    ],
)
def test_header_edge_cases_agree_with_oracle(stream, role, expected):
    tokens = toks(stream)
    assert parse_completion(tokens, role=role) == [expected]
    assert oracle_parse(tokens, role)[0] == [expected]


@pytest.mark.parametrize(
    "stream, errors",
    [
        ("<|start|>assistant<|channel|><|message|>x<|end|>", ["<|channel|> without a channel name"]),
        ("<|start|><|message|>x<|end|>", ["header has no role; assuming assistant"]),
        ("<|start|>assistant a b c d<|message|>x<|end|>", ["unexpected words in message header: 'a b'"]),
    ],
)
def test_malformed_header_errors_say_what_is_wrong(stream, errors):
    p = StreamParser(None)
    p.feed(toks(stream))
    assert len(p.messages) == 1 and p.messages[0].text == "x"
    assert p.errors == errors


@pytest.mark.parametrize("end", [tk.END, tk.START])
def test_a_half_character_is_flushed_when_the_message_ends(end):
    # <|end|> completes the message; <|start|> cuts it (incomplete): either way the pending byte is U+FFFD
    p = StreamParser()
    p.feed(toks("<|channel|>final<|message|>a") + [ENC.encode_single_token(b"\xe4")])
    assert p.current_content == "a"
    ev = p.process(end)
    expected = Message(Role.ASSISTANT, "a\ufffd", channel="final", incomplete=end == tk.START)
    assert (ev.token, ev.delta, ev.message, ev.stop) == (end, "\ufffd", expected, False)
    assert ev.error == (None if end == tk.END else "<|start|> inside message content")
    assert p.messages == [expected]


class _CountingEncoder(_CountingEncoding):
    def encode_ordinary(self, s: str) -> list[int]:
        self.calls += 1
        return ENC.encode_ordinary(s)


def test_renderers_use_the_encoding_they_are_given_and_drop_old_analysis_by_default():
    msgs = CASES["ongoing_analysis_not_dropped"][:4] + [Message.assistant("done")]
    for render in (render_conversation, render_conversation_for_completion, render_conversation_for_training,
                   lambda m, encoding: render_with_spans(m, encoding=encoding).tokens,
                   lambda m, encoding: render_message(m[0], encoding=encoding)):  # fmt: skip
        enc = _CountingEncoder()
        assert render(msgs, encoding=enc) == render(msgs, encoding=None)  # type: ignore[arg-type]
        assert enc.calls > 0, render
    assert render_conversation(msgs) == render_conversation(msgs, auto_drop_analysis=True)
    assert render_conversation(msgs) != render_conversation(msgs, auto_drop_analysis=False)
    assert render_conversation_for_training(msgs) != render_conversation_for_training(msgs, auto_drop_analysis=False)
    assert render_conversation_for_training([]) == []
    with pytest.raises(ValueError, match=r"^a tool message needs the tool's name \(e\.g\. 'functions\.get_weather'\)$"):
        render_message(Message(Role.TOOL, "x"))


def test_every_event_carries_its_token_and_the_fields_of_its_message():
    # A header that names the recipient without "to=" before a <|constrain|> content type.
    stream = toks("<|channel|>commentary functions.f <|constrain|>json<|message|>{}") + [tk.CALL]
    p = StreamParser()
    assert p.tokens == [] and p.last_content_delta is None  # nothing fed, nothing added
    events = p.feed(stream)
    assert p.tokens == stream and [e.token for e in events] == stream
    call = Message(Role.ASSISTANT, "{}", channel="commentary", recipient="functions.f", content_type="<|constrain|>json")
    assert p.messages == [call]
    fields = [(e.role, e.channel, e.recipient, e.content_type) for e in events]
    done = (Role.ASSISTANT, "commentary", "functions.f", "<|constrain|>json")
    assert fields[-1] == done and events[-1].message == call  # from the message the token completed
    header_done = events.index(next(e for e in events if e.header_done))
    assert stream[header_done] == tk.MESSAGE and fields[header_done:] == [done] * (len(stream) - header_done)
    assert fields[0] == (Role.ASSISTANT, None, None, None)  # in the header: the role only


def test_an_unknown_token_in_content_flushes_a_half_character_first():
    half, rest = ENC.encode_single_token(b"\xe2"), [ENC.encode_single_token(b) for b in (b"\x82", b"\xac")]  # "€" in 3
    p = StreamParser()
    p.feed(toks("<|channel|>final<|message|>"))
    assert p.process(half).delta == ""
    ev = p.process(10**9)
    assert (ev.token, ev.delta, ev.error) == (10**9, "\ufffd\ufffd", "unknown token 1000000000 in content")
    p.feed(rest + [tk.END])
    assert p.messages == [Message.assistant("\ufffd" * 4)]  # the last two bytes are no longer part of a "€"


def test_a_start_inside_a_header_names_the_dropped_header():
    p = StreamParser()
    p.feed(toks("<|channel|>ana"))
    ev = p.process(tk.START)
    assert ev.error == "<|start|> inside a header; dropped header '<|channel|>ana'" and ev.token == tk.START


def test_a_blank_header_without_a_role_ended_early_is_dropped_without_raising():
    p = StreamParser(None)
    ev = p.feed([tk.START] + toks(" ") + [tk.END])[-1]
    assert ev.message is None and ev.error == "message ended before <|message|>; dropped" and p.messages == []


def test_a_header_past_the_limit_becomes_unparsed_text_and_parsing_goes_on():
    """MAX_HEADER_TOKENS tokens are still a header; one more and they are text outside any message
    (a model not writing harmony), the role hint is spent, and the next <|start|> parses normally."""
    from mlx_oss.harmony.parser import MAX_HEADER_TOKENS

    word = ENC.encode_single_token(b"a")
    p = StreamParser()
    assert all(p.process(word).error is None for _ in range(MAX_HEADER_TOKENS))
    ev = p.process(word)
    assert (ev.token, ev.state, ev.role, ev.error, ev.unparsed) == (
        word, ParserState.EXPECT_START, None, f"message header longer than {MAX_HEADER_TOKENS} tokens; kept as unparsed text",
        "a" * (MAX_HEADER_TOKENS + 1))  # fmt: skip
    assert p.current_role is None and p.unparsed_text == "a" * (MAX_HEADER_TOKENS + 1)
    assert p.unparsed_tokens == MAX_HEADER_TOKENS + 1
    p.feed(toks("<|start|>assistant<|channel|>final<|message|>Hi<|end|>"))
    assert p.messages == [Message.assistant("Hi")] and p.unparsed_tokens == MAX_HEADER_TOKENS + 1


def test_bytes_a_header_cannot_decode_are_named_and_replaced():
    half = ENC.encode_single_token(b"\xe2")  # the first byte of "€": not UTF-8 alone
    for bad, error in ((10**9, "unknown token 1000000000 in header"), (half, "message header is not valid UTF-8")):
        p = StreamParser()
        p.feed([*toks("<|channel|>"), bad, *toks("<|message|>Hi<|end|>")])
        assert p.errors[0] == error and p.messages[0].channel == "\ufffd", (bad, p.errors)


def test_unparsed_tokens_add_up_over_the_stream():
    """Loose tokens, then a "header" given up (too long, or cut by the end of the stream): each adds its
    tokens to the ones before it."""
    from mlx_oss.harmony.parser import MAX_HEADER_TOKENS

    loose, word = toks("stray words"), ENC.encode_single_token(b"a")
    p = StreamParser(None)
    p.feed(loose + [tk.START] + [word] * (MAX_HEADER_TOKENS + 1))
    assert p.unparsed_tokens == len(loose) + MAX_HEADER_TOKENS + 1
    p = StreamParser(None)
    cut = toks("assistant no header here")
    p.feed(loose + [tk.START] + cut)
    p.finish()
    assert (p.unparsed_text, p.unparsed_tokens) == ("stray wordsassistant no header here", len(loose) + len(cut))
