"""Property-based tests: generated conversations rendered and parsed by us and by openai-harmony."""

from __future__ import annotations

import os
from dataclasses import replace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlx_oss import tokenizer as tk
from mlx_oss.harmony import (
    ChannelConfig,
    DeveloperContent,
    Message,
    ParserState,
    ReasoningEffort,
    Role,
    StreamParser,
    SystemContent,
    ToolDescription,
    ToolNamespace,
    common_prefix_length,
    has_function_tools,
    render_conversation,
    render_conversation_for_completion,
    render_conversation_for_training,
    render_message,
    render_with_spans,
)

try:  # shared oracle helpers (see tests/test_harmony_oracle.py)
    from .test_harmony_oracle import (
        HarmonyError,
        oracle_parse,
        oracle_render,
        oracle_render_completion,
        oracle_render_message,
        oracle_render_training,
    )
except ImportError:
    from test_harmony_oracle import (
        HarmonyError,
        oracle_parse,
        oracle_render,
        oracle_render_completion,
        oracle_render_message,
        oracle_render_training,
    )

# Kept small for the shared CI budget; MLX_OSS_PROPERTY_SCALE=50 runs a deep search locally.
SCALE = float(os.environ.get("MLX_OSS_PROPERTY_SCALE", "1"))


def _settings(n: int) -> settings:
    return settings(max_examples=max(1, int(n * SCALE)), deadline=None, suppress_health_check=[HealthCheck.too_slow])


SETTINGS = _settings(60)

# -- strategies ---------------------------------------------------------------------------------------

EDGE_TEXTS = ["", " ", "\n", "\r\n", "\n\n", "  \t ", "<|start|>", "<|end|>", "<|channel|>final", "to=x",
              " to=functions.f", "😊👋🏾👨‍👩‍👧‍👦", "e\u0301", "\u00a0\u3000\u200b", "Ġ", "'s", "{\"a\": 1}", "1234567"]
TEXT = st.one_of(
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=24),
    st.text("ab \n\t{}\":,.é😊<|>", max_size=24),
    st.sampled_from(EDGE_TEXTS),
)
IDENT = st.from_regex(r"[a-z][a-z0-9_]{0,7}", fullmatch=True)
CHANNEL = st.one_of(st.sampled_from(["analysis", "commentary", "final"]), IDENT)
RECIPIENT = st.one_of(
    st.sampled_from(["functions.get_weather", "browser.search", "browser.open", "python", "assistant"]),
    IDENT.map(lambda s: f"functions.{s}"),
)
CONTENT_TYPE = st.sampled_from(["<|constrain|>json", "json", "code", "<|constrain|>", "<|constrain|>yaml"])

JSON_SCALAR = st.one_of(
    st.none(), st.booleans(), st.integers(-(10**25), 10**25),
    st.floats(allow_nan=False, allow_infinity=False, min_value=-1e300, max_value=1e300), TEXT,
)
JSON_VALUE = st.recursive(
    JSON_SCALAR, lambda c: st.lists(c, max_size=3) | st.dictionaries(IDENT, c, max_size=3), max_leaves=4
)


def _schema_leaf() -> st.SearchStrategy[dict]:
    return st.fixed_dictionaries(
        {"type": st.sampled_from(["string", "number", "integer", "boolean", "null", "object", "array", "other"])},
        optional={
            "description": TEXT,
            "default": JSON_VALUE,
            "nullable": st.one_of(st.booleans(), st.just(1)),
            "enum": st.lists(JSON_SCALAR, max_size=3),
            "title": TEXT,
            "examples": st.lists(st.one_of(TEXT, st.integers()), max_size=2),
        },
    )


def _schema_extend(children: st.SearchStrategy[dict]) -> st.SearchStrategy[dict]:
    props = st.dictionaries(IDENT, children, max_size=4)
    obj = st.builds(
        lambda p, req, desc, extra: {"type": "object", "properties": p,
                                     "required": [k for k in p if k in req], **desc, **extra},
        props, st.sets(IDENT | st.sampled_from(["a", "b"]), max_size=3),
        st.fixed_dictionaries({}, optional={"description": TEXT}),
        st.fixed_dictionaries({}, optional={"default": JSON_VALUE, "oneOf": st.lists(children, max_size=2)}),
    )
    arr = st.builds(lambda items: {"type": "array", "items": items}, children)
    one_of = st.builds(lambda vs, extra: {"oneOf": vs, **extra}, st.lists(children, max_size=3),
                       st.fixed_dictionaries({}, optional={"description": TEXT, "default": JSON_VALUE}))
    multi = st.builds(lambda ts: {"type": ts}, st.lists(st.sampled_from(["integer", "string", "null", "number"]), max_size=3))
    return st.one_of(obj, arr, one_of, multi)


SCHEMA = st.recursive(_schema_leaf(), _schema_extend, max_leaves=6)
TOOL = st.builds(ToolDescription, IDENT, TEXT, st.one_of(st.none(), SCHEMA))


def _namespace(names: st.SearchStrategy[str]) -> st.SearchStrategy[ToolNamespace]:
    return st.one_of(
        st.builds(ToolNamespace, names, st.one_of(st.none(), TEXT), st.lists(TOOL, max_size=3).map(tuple)),
        st.sampled_from([ToolNamespace.browser(), ToolNamespace.python()]),
    )


SYSTEM = st.builds(
    SystemContent,
    model_identity=st.one_of(st.just(SystemContent().model_identity), st.none(), TEXT),
    reasoning_effort=st.one_of(st.none(), st.sampled_from(list(ReasoningEffort))),
    knowledge_cutoff=st.one_of(st.just("2024-06"), st.none(), TEXT),
    conversation_start_date=st.one_of(st.none(), st.just("2025-06-28"), TEXT),
    channel_config=st.one_of(
        st.just(ChannelConfig()), st.none(),
        st.builds(ChannelConfig, st.lists(CHANNEL, max_size=3).map(tuple), st.booleans()),
    ),
    tools=st.lists(_namespace(st.sampled_from(["browser", "python", "functions", "zz"]) | IDENT), max_size=2).map(tuple),
)
DEVELOPER = st.builds(
    DeveloperContent,
    instructions=st.one_of(st.none(), TEXT),
    functions=st.lists(TOOL, max_size=3).map(tuple),
    tools=st.lists(_namespace(IDENT.filter(lambda s: s != "functions")), max_size=1).map(tuple),
)


def _message(parseable: bool) -> st.SearchStrategy[Message]:
    """Any renderable message; `parseable` restricts to headers that parse back unchanged
    (no author names on non-tool roles, content types only with a recipient, no recipient 'all')."""
    name = st.none() if parseable else st.one_of(st.none(), IDENT)
    recipient = RECIPIENT if parseable else st.one_of(RECIPIENT, st.just("all"))
    channel = st.one_of(st.none(), CHANNEL)
    assistant_plain = st.builds(Message, st.just(Role.ASSISTANT), TEXT, name=name, channel=channel)
    assistant_call = st.builds(
        Message, st.just(Role.ASSISTANT), TEXT, name=name, channel=channel, recipient=recipient,
        content_type=st.one_of(st.none(), CONTENT_TYPE),
    )
    tool = st.builds(Message, st.just(Role.TOOL), TEXT, name=RECIPIENT.filter(lambda r: r != "assistant"),
                     channel=channel,
                     recipient=st.just("assistant") if parseable else st.one_of(st.none(), st.just("assistant")))
    user = st.builds(Message, st.just(Role.USER), TEXT, name=name)
    others = st.builds(Message, st.sampled_from([Role.SYSTEM, Role.DEVELOPER]), TEXT, channel=channel)
    if parseable:
        return st.one_of(assistant_plain, assistant_call, tool, user, others)
    # A content type without a recipient (structured final answers) renders fine, but
    # openai-harmony parses it back as a recipient; test_harmony covers our parse of it.
    assistant_typed = st.builds(Message, st.just(Role.ASSISTANT), TEXT, channel=channel, content_type=CONTENT_TYPE)
    return st.one_of(assistant_plain, assistant_call, assistant_typed, tool, user, others)


@st.composite
def conversations(draw: st.DrawFn, max_messages: int = 7) -> list[Message]:
    msgs: list[Message] = []
    if draw(st.booleans()):
        msgs.append(Message(Role.SYSTEM, draw(SYSTEM)))
    if draw(st.booleans()):
        msgs.append(Message(Role.DEVELOPER, draw(DEVELOPER)))
    msgs += draw(st.lists(_message(parseable=False), max_size=max_messages))
    return msgs


# -- rendering -------------------------------------------------------------------------------------------


@SETTINGS
@given(conversations(), st.booleans())
def test_render_matches_oracle(msgs, auto_drop):
    assert render_conversation_for_completion(msgs, auto_drop_analysis=auto_drop) == oracle_render_completion(
        msgs, auto_drop_analysis=auto_drop)
    assert render_conversation_for_training(msgs, auto_drop_analysis=auto_drop) == oracle_render_training(
        msgs, auto_drop_analysis=auto_drop)
    flag = has_function_tools(msgs)
    for m in msgs:
        assert render_message(m, has_function_tools=flag) == oracle_render_message(m, flag)


@_settings(40)
@given(st.lists(TOOL, min_size=1, max_size=4), SYSTEM)
def test_tool_schemas_match_oracle(tools, system):
    msgs = [Message(Role.SYSTEM, system), Message(Role.DEVELOPER, DeveloperContent("x", functions=tuple(tools)))]
    assert render_conversation(msgs) == oracle_render(msgs)


@SETTINGS
@given(conversations(max_messages=5), st.lists(_message(parseable=False), max_size=4), st.booleans())
def test_next_turn_keeps_prefix_of_unchanged_messages(msgs, more, auto_drop):
    before = render_with_spans(msgs, auto_drop_analysis=auto_drop)
    after = render_with_spans(msgs + more, auto_drop_analysis=auto_drop)
    for r, conv in ((before, msgs), (after, msgs + more)):  # spans tile the tokens
        assert [t for s in r.spans for t in r.tokens[s.start:s.end]] == r.tokens
        assert all(r.tokens[s.start:s.end] == render_message(conv[s.index], has_function_tools=has_function_tools(conv))
                   for s in r.spans)
    if has_function_tools(msgs) != has_function_tools(msgs + more):
        return  # the system message itself changed; nothing is promised
    i1, i2 = [s.index for s in before.spans], [s.index for s in after.spans]
    k = 0
    while k < min(len(i1), len(i2)) and i1[k] == i2[k]:
        k += 1
    guaranteed = before.spans[k - 1].end if k else 0
    assert common_prefix_length(before.tokens, after.tokens) >= guaranteed
    if i2[: len(i1)] == i1:
        assert after.tokens[: len(before.tokens)] == before.tokens


# -- parsing ---------------------------------------------------------------------------------------------


def _tokens(msgs: list[Message]) -> list[int]:
    return [t for m in msgs for t in render_message(m)]


@SETTINGS
@given(st.lists(_message(parseable=True), min_size=1, max_size=5))
def test_parse_round_trip_and_oracle_agree(msgs):
    tokens = _tokens(msgs)
    cases = [(None, tokens)]
    if msgs[0].role is Role.ASSISTANT:
        cases.append((Role.ASSISTANT, tokens[2:]))  # prompt already holds "<|start|>assistant"
    for role, feed in cases:
        p = StreamParser(role)
        events = [p.process(t) for t in feed]
        assert p.errors == []
        assert p.finish() == msgs
        o_msgs, o_deltas, o_headers = oracle_parse(feed, role)
        assert o_msgs == msgs
        assert [e.delta or None for e in events] == o_deltas
        # While in content, both report the same header fields.
        ours = [(e.channel, e.recipient, e.content_type) if e.state is ParserState.CONTENT else (None, None, None)
                for e in events]
        assert ours == o_headers
        assert "".join(e.delta for e in events) == "".join(m.text for m in msgs)
        assert [e.stop for e in events if e.message] == [m.role is Role.ASSISTANT and m.recipient is not None
                                                         for m in msgs]


@SETTINGS
@given(st.lists(_message(parseable=True), min_size=1, max_size=3), st.data())
def test_truncated_streams_return_what_they_have(msgs, data):
    tokens = _tokens(msgs)
    cut = data.draw(st.integers(0, len(tokens)))
    p = StreamParser(None)
    p.feed(tokens[:cut])
    got = p.finish()
    complete = [m for m in got if not m.incomplete]
    assert complete == msgs[: len(complete)]
    assert sum(m.incomplete for m in got) <= 1
    if got and got[-1].incomplete:
        whole = msgs[len(complete)]
        partial = got[-1]
        assert whole.text.startswith(partial.text.rstrip("\ufffd"))
        if p.errors == []:  # cut inside the content: header fields are exact
            assert replace(partial, content=whole.content, incomplete=False) == whole
            try:
                o_msgs = oracle_parse(tokens[:cut], None)[0]
            except HarmonyError:  # the oracle refuses some cuts that we parse; only its own error is expected
                return
            assert [replace(m, incomplete=False) for m in got] == o_msgs


SPECIALS = [tk.START, tk.END, tk.MESSAGE, tk.CHANNEL, tk.CONSTRAIN, tk.CALL, tk.RETURN, tk.ENDOFTEXT, 200018]
SOME_TEXT = tk.load_tokenizer().encode_ordinary("assistant to=functions.f analysis final json code hi 😊 \n")


@_settings(150)
@given(st.lists(st.one_of(st.sampled_from(SPECIALS), st.sampled_from(SOME_TEXT), st.integers(-5, 201_200)),
                max_size=40), st.sampled_from([None, Role.ASSISTANT]))
def test_parser_never_raises_on_garbage(tokens, role):
    p = StreamParser(role)
    for t in tokens:
        e = p.process(t)
        assert isinstance(e.delta, str)
    msgs = p.finish()
    assert all(isinstance(m, Message) and isinstance(m.content, str) for m in msgs)
    assert p.state is ParserState.EXPECT_START
    assert sum(m.incomplete for m in msgs) <= tokens.count(tk.START) + 1
