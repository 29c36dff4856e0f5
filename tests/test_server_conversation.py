"""The API-independent request (`mlx_oss/server/conversation.py`), function by function, without HTTP:
each field's translation with its edges and its one-line 400, the header messages, `logit_bias` as a
logits processor, the processors a generation gets, and `truncation: "auto"` (the fewest turns dropped).
The server tests cover the same through both APIs; these make a broken line fail in milliseconds."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from mlx_oss.constraint import ReplyConstraint
from mlx_oss.harmony import ANALYSIS, Message, ReasoningEffort, ResponseFormat, Role, ToolDescription
from mlx_oss.sampling import SamplingConfig
from mlx_oss.server.conversation import (
    JSON_OBJECT,
    LogitBias,
    Turn,
    effort,
    first_of,
    logit_bias,
    logprobs_setting,
    reasoning_message,
    response_format,
    sampling,
    stop_strings,
    text_of,
)
from mlx_oss.server.tools import ToolChoice, ToolSet
from mlx_oss.tokenizer import load_tokenizer
from refusals import refusal

ENC = load_tokenizer(None)


@pytest.mark.parametrize("value, want", [(None, "medium"), ("none", "low"), ("minimal", "low"), ("low", "low"),
                                         ("medium", "medium"), ("high", "high"), ("HIGH", "high"), ("Low", "low"),
                                         ("xhigh", "high"), ("max", "high")])  # fmt: skip
def test_effort_maps_openais_values_onto_gpt_oss_levels(value, want):
    assert effort(value, "reasoning.effort") is ReasoningEffort(want)


@pytest.mark.parametrize("value", ["maximum", "", 3, ["low"]])
def test_an_unknown_effort_is_one_line_naming_the_parameter(value):
    e = refusal(effort, value, "reasoning.effort")
    assert str(e) == f"reasoning.effort must be one of low, medium, high (none/minimal mean low, xhigh/max high), not {value!r}"
    assert e.param == "reasoning.effort"


def test_first_of_takes_the_first_key_set():
    body = {"max_completion_tokens": None, "max_tokens": 7, "other": 9}
    assert first_of(body, "max_completion_tokens", "max_tokens") == 7
    assert first_of({"a": 0, "b": 5}, "a", "b") == 0  # 0 is set
    assert first_of({}, "a", "b") is None


def test_sampling_takes_each_field_set_over_the_servers_defaults():
    base = SamplingConfig(temperature=0.7, top_p=0.9, seed=3, top_k=5)
    assert sampling({}, base) == base
    got = sampling({"temperature": 0, "top_p": 1, "seed": 11}, base)
    assert (got.temperature, got.top_p, got.seed, got.top_k) == (0.0, 1.0, 11, 5)
    assert isinstance(got.temperature, float) and isinstance(got.top_p, float)
    assert sampling({"temperature": None, "top_p": None, "seed": None}, base) == base
    assert sampling({"top_p": 0.5}, base).temperature == 0.7


def test_response_format_in_both_apis_shapes():
    schema = {"type": "object", "properties": {"x": {"type": "integer"}}}
    assert response_format(None, "text.format") is None
    assert response_format({"type": "text"}, "text.format") is None
    assert response_format({}, "text.format") is None  # no type: text
    assert response_format({"type": "json_object"}, "response_format") is JSON_OBJECT
    assert JSON_OBJECT == ResponseFormat("json_object", {"type": "object"}, "Reply with one JSON object.")
    chat = {"type": "json_schema", "json_schema": {"name": "point", "schema": schema, "description": "A point."}}
    assert response_format(chat, "response_format") == ResponseFormat("point", schema, "A point.")
    flat = {"type": "json_schema", "name": "point", "schema": schema}  # the Responses API's text.format
    assert response_format(flat, "text.format") == ResponseFormat("point", schema, None)
    assert response_format({"type": "json_schema", "schema": schema}, "text.format").name == "response"


def test_response_format_refusals_name_the_field():
    e = refusal(response_format, {"type": "yaml"}, "text.format")
    assert (str(e), e.param) == ("text.format.type 'yaml' is not supported (use 'text', 'json_object' or 'json_schema')",
                                 "text.format.type")  # fmt: skip
    e = refusal(response_format, {"type": "json_schema", "json_schema": {"name": "x"}}, "response_format")
    assert (str(e), e.param) == ("response_format needs a 'schema' object", "response_format.json_schema.schema")
    e = refusal(response_format, {"type": "json_schema", "schema": ["not", "a", "dict"]}, "text.format")
    assert e.param == "text.format.schema"
    e = refusal(response_format, {"type": "json_schema", "json_schema": {"schema": {"type": 5}}}, "response_format")
    assert (str(e), e.param) == ("response_format schema is not a valid JSON Schema: 5 is not valid under any of the "
                                 "given schemas (at type)", "response_format.json_schema.schema")  # fmt: skip


def test_text_of_joins_text_parts_and_refuses_others_by_index():
    assert text_of(None, "content") == "" and text_of("hi", "content") == "hi"
    parts = ["a", {"type": "text", "text": "b"}, {"type": "input_text", "text": "c"}, {"type": "output_text", "text": "d"}]
    assert text_of(parts, "messages[0].content") == "abcd"
    assert text_of([{"type": "refusal", "text": "x"}], "c", kinds=("refusal",)) == "x"
    e = refusal(text_of, {"type": "text"}, "messages[0].content")
    assert (str(e), e.param) == ("messages[0].content must be a string or an array of content parts", "messages[0].content")
    e = refusal(text_of, ["ok", {"type": "image_url", "image_url": {}}], "messages[1].content")
    assert (str(e), e.param) == ("messages[1].content[1]: only text parts are supported (got 'image_url')",
                                 "messages[1].content[1]")  # fmt: skip
    assert str(refusal(text_of, [{"type": "text", "text": 5}], "c")) == "c[0]: only text parts are supported (got 'text')"
    assert str(refusal(text_of, [7], "c")) == "c[0]: only text parts are supported (got 'int')"


def test_stop_strings_and_logit_bias_and_logprobs_settings():
    assert stop_strings(None) == () and stop_strings("END") == ("END",) and stop_strings(["a", "b"]) == ("a", "b")
    assert logit_bias(None) == () and logit_bias({}) == ()
    assert logit_bias({"50": 5, "7": -100}) == ((7, -100.0), (50, 5.0))
    assert all(isinstance(t, int) and isinstance(v, float) for t, v in logit_bias({"3": 1}))
    assert logprobs_setting({}, False, "logprobs") is None
    assert logprobs_setting({"top_logprobs": 0}, False, "logprobs") is None
    e = refusal(logprobs_setting, {"top_logprobs": 2}, False, "'logprobs': true")
    assert (str(e), e.param) == ("'top_logprobs' needs 'logprobs': true", "top_logprobs")
    assert logprobs_setting({}, True, "logprobs") == 0 and logprobs_setting({"top_logprobs": 5}, True, "logprobs") == 5


def test_logit_bias_adds_to_its_tokens_only_and_follows_the_vocabulary_size():
    p = LogitBias(((1, 2.5), (3, -100.0), (10, 7.0)))  # id 10 is past a 5-token vocabulary: ignored
    logits = mx.array([[0.0, 1.0, 2.0, 3.0, 4.0]], dtype=mx.float16)
    out = p(mx.array([], dtype=mx.int32), logits)
    assert out.dtype == mx.float16
    np.testing.assert_allclose(np.array(out.astype(mx.float32)), [[0.0, 3.5, 2.0, -97.0, 4.0]])
    wider = p(mx.array([], dtype=mx.int32), mx.zeros((1, 12)))  # another vocabulary: built again
    assert np.array(wider)[0, 10] == 7.0 and np.array(wider)[0, 1] == 2.5
    assert np.array(p(mx.array([]), mx.zeros((1, 3))))[0].tolist() == [0.0, 2.5, 0.0]


def test_reasoning_message_is_an_analysis_message():
    m = reasoning_message("thinking")
    assert (m.role, m.channel, m.text) == (Role.ASSISTANT, ANALYSIS, "thinking")


def test_header_has_a_developer_message_only_when_something_goes_in_it():
    tool = ToolDescription("get", "Get it.", {"type": "object", "properties": {}})
    assert [m.role for m in Turn(()).header()] == [Role.SYSTEM]
    for turn in (Turn((), instructions=""), Turn((), tools=ToolSet(functions=(tool,))),
                 Turn((), response_format=JSON_OBJECT)):  # fmt: skip
        assert [m.role for m in turn.header()] == [Role.SYSTEM, Role.DEVELOPER]
    sys, dev = Turn((), instructions="Be brief.", effort=ReasoningEffort.HIGH, tools=ToolSet(functions=(tool,)),
                    response_format=JSON_OBJECT).header()  # fmt: skip
    assert sys.content.reasoning_effort is ReasoningEffort.HIGH
    d = dev.content
    assert (d.instructions, tuple(d.functions), tuple(d.response_formats)) == ("Be brief.", (tool,), (JSON_OBJECT,))


def test_a_generation_gets_the_bias_and_each_round_a_fresh_constraint():
    base = SamplingConfig(temperature=0.5, logits_processors=(LogitBias(((1, 1.0),)),))
    assert Turn((), sampling=base).generation_sampling() is base  # nothing to add
    assert Turn((), sampling=base).constraint(ENC, None) is None  # nothing demanded
    tools = ToolSet(calls=(("functions.get", None),))
    turn = Turn((), sampling=base, logit_bias=((5, 2.0),), tool_choice=ToolChoice("required", ("functions.get",)), tools=tools)
    procs = turn.generation_sampling().logits_processors
    assert procs[0] is base.logits_processors[0] and isinstance(procs[1], LogitBias) and procs[1].bias == ((5, 2.0),)
    assert len(procs) == 2  # the constraint is the sampler's `extra`, set per round by the generation
    c = turn.constraint(ENC, None)
    assert isinstance(c, ReplyConstraint) and turn.constraint(ENC, None) is not c  # stateful: a fresh one per round
    assert Turn((), logit_bias=((5, 2.0),)).generation_sampling().temperature == SamplingConfig().temperature
    budget = Turn((), reasoning_budget=10).constraint(ENC, None)
    assert isinstance(budget, ReplyConstraint) and budget.budget == 10
    assert Turn((), reasoning_budget=10).constraint(ENC, None, reasoning_used=25).budget == 0  # spent in earlier rounds


def test_a_logit_bias_id_past_the_vocabulary_is_refused_when_rendered():
    n = ENC.n_vocab
    assert Turn((Message.user("hi"),), logit_bias=((n - 1, 1.0),)).render(ENC)
    e = refusal(Turn((Message.user("hi"),), logit_bias=((n, 1.0),)).render, ENC)
    assert (str(e), e.param) == (f"logit_bias names token {n}; the vocabulary has {n} tokens (ids 0-{n - 1})", "logit_bias")


def _turns(n: int) -> tuple[Message, ...]:
    out: list[Message] = []
    for i in range(n):
        out += [Message.user(f"question {i} " + "word " * 20), Message.assistant(f"answer {i} " + "word " * 20, channel="final")]
    return (*out, Message.user("the last question"))


def test_truncation_drops_the_fewest_oldest_turns_that_make_it_fit():
    history = _turns(6)
    whole, _ = Turn(history, instructions="Be brief.").render(ENC)
    assert Turn(history, truncate=True).render(ENC, len(whole) + 100)[0] == Turn(history).render(ENC)[0]  # fits: as is
    exact = Turn(history, instructions="Be brief.", truncate=True)
    assert exact.render(ENC, len(whole) + 1)[0] == whole  # one token of room: as is
    assert len(exact.render(ENC, len(whole))[0]) < len(whole)  # no room to generate: the oldest turn goes
    without = {k: Turn((history[2 * k :]), instructions="Be brief.").render(ENC)[0] for k in range(7)}
    for limit in (len(without[1]) + 1, len(without[2]) + 1, len(without[5]) + 1, len(without[3]), len(without[6]) + 1):
        tokens, points = Turn(history, instructions="Be brief.", truncate=True).render(ENC, limit)
        k = min(k for k in range(7) if len(without[k]) < limit)
        assert tokens == without[k] and len(tokens) < limit
        assert points[-1] == len(tokens) - 2  # the last message's end, before <|start|>assistant
    assert Turn(history, instructions="Be brief.").render(ENC, len(without[6]))[0] == whole  # without truncate: as is
    two = (Message.user("first " + "word " * 50), *history)  # two user messages in a row: the first can go alone
    assert Turn(two, instructions="Be brief.", truncate=True).render(ENC, len(whole) + 1)[0] == whole
    e = refusal(Turn(history, instructions="Be brief.", truncate=True).render, ENC, len(without[6]))
    assert e.code == "context_length_exceeded" and e.param == "input"
    assert str(e) == (f"This model's maximum context length is {len(without[6])} tokens; with truncation 'auto' the last "
                      "turn alone (and the instructions and tools) does not fit.")  # fmt: skip


def test_a_conversation_that_is_not_harmony_is_a_400():
    bad = Turn((Message.user("hi"), Message(Role.TOOL, [], recipient=None)))
    e = refusal(bad.render, ENC)
    assert e.param == "messages" and str(e).startswith("the conversation cannot be rendered as harmony: ")


def test_a_turn_not_compiled_compiles_its_schemas_for_the_round_or_says_it_cannot():
    """The server compiles a turn's schemas before it queues the request; a turn that was not (the Python
    API's own use) compiles them when its round's constraint is made, and without the Grammars to do it
    that is a programming error, said in words."""
    from mlx_oss.grammar import Grammars
    from mlx_oss.server.tools import StrictSchema

    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    turn = Turn((Message.user("q"),), answer_schema=StrictSchema("final", schema, "text.format.schema"))
    with pytest.raises(ValueError, match=r"^a turn with strict schemas needs the Grammars to compile them$"):
        turn.constraint(ENC, None)
    grammars = Grammars(ENC)
    late, early = turn.constraint(ENC, grammars), turn.compile(grammars).constraint(ENC, grammars)
    assert list(late.content) == list(early.content) == ["final"] and late.content["final"] is early.content["final"]


def test_the_snapshot_points_are_the_ends_of_the_system_developer_and_last_messages():
    """Where the cache keeps states (`boundaries`): a conversation sharing the system message, or the system
    and developer messages, resumes from there."""
    from mlx_oss.harmony import render_conversation_for_completion

    turn = Turn((Message.user("q"),), instructions="Be brief.")
    tokens, points = turn.render(ENC)
    system, developer = turn.header()
    ends = [len(render_conversation_for_completion(msgs, None, encoding=ENC)) for msgs in ([system], [system, developer])]
    assert points == (ends[0], ends[1], len(tokens) - 2) and ends[0] < ends[1] < len(tokens) - 2


def test_json_object_and_strict_json_schema_formats_are_answers_the_reply_must_follow():
    from mlx_oss.server.conversation import strict_answer
    from mlx_oss.server.tools import StrictSchema

    schema = {"type": "object", "properties": {"n": {"type": "integer"}}}
    assert strict_answer({"type": "json_object"}, "text.format") == StrictSchema("final", {"type": "object"}, "text.format.type")
    assert strict_answer({"type": "json_schema", "name": "n", "schema": schema, "strict": True}, "text.format") == \
        StrictSchema("final", schema, "text.format.schema")  # fmt: skip
    assert strict_answer({"type": "json_schema", "name": "n", "schema": schema}, "text.format") is None
    assert strict_answer({"type": "text"}, "text.format") is None and strict_answer(None, "text.format") is None


def test_a_schema_that_cannot_be_enforced_is_a_400_naming_where_it_was_set():
    from mlx_oss.grammar import Grammars
    from mlx_oss.server.tools import StrictSchema

    bad = {"oneOf": [{"type": "integer"}, {"type": "number"}]}  # (2 matches both)
    turn = Turn((Message.user("q"),), answer_schema=StrictSchema("final", bad, "response_format.json_schema.schema"))
    e = refusal(turn.compile, Grammars(ENC))
    assert e.param == "response_format.json_schema.schema"
    assert str(e).startswith('response_format.json_schema.schema cannot be enforced: keyword(s) ["oneOf"] not supported')
    assert str(e).endswith("; with strict false it would only be described to the model")


def test_the_header_describes_the_built_in_tools_and_the_namespaces():
    from mlx_oss.server.builtin import ServerTools
    from mlx_oss.server.tools import parse_tools

    from dataclasses import replace

    tools = parse_tools([{"type": "web_search"}, {"type": "namespace", "name": "multi_agent_v1", "tools": [{"name": "spawn"}]}],
                        builtin=ServerTools(), responses=True)  # fmt: skip
    tools = replace(tools, builtin=ServerTools().session(tools.builtin_names).tools.namespaces())  # as the server does
    system, developer = Turn((Message.user("q"),), tools=tools).header()
    assert [ns.name for ns in system.content.tools] == ["browser"]
    assert [ns.name for ns in developer.content.tools] == ["multi_agent_v1"]
    prompt = ENC.decode(Turn((Message.user("q"),), tools=tools).render(ENC)[0])
    assert "namespace browser" in prompt and "namespace multi_agent_v1" in prompt


def test_each_rounds_constraint_follows_the_turns_tool_choice_schemas_and_built_in_tools():
    """`Turn.constraint`: a named choice allows that call only, `auto` with a strict answer the answer or any
    tool's call; with built-in tools on, a strict answer leaves the headers to the model (it writes those calls
    its own way)."""
    from dataclasses import replace

    from mlx_oss.constraint import call_header, channel_header
    from mlx_oss.grammar import Grammars
    from mlx_oss.harmony import FINAL
    from mlx_oss.server.builtin import ServerTools
    from mlx_oss.server.tools import StrictSchema, parse_tools

    tools = parse_tools([{"type": "function", "function": {"name": n}} for n in ("a", "b")])
    named = Turn((Message.user("q"),), tools=tools, tool_choice=ToolChoice("required", ("functions.b",)))
    assert named.constraint(ENC, None).then == [call_header("functions.b", ENC)]
    required = replace(named, tool_choice=ToolChoice("required", tools.recipients()))
    assert required.constraint(ENC, None).then == [call_header(r, ENC) for r in ("functions.a", "functions.b")]
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}}
    strict = Turn((Message.user("q"),), tools=tools, answer_schema=StrictSchema("final", schema, "text.format.schema"))
    grammars = Grammars(ENC)
    c = strict.compile(grammars).constraint(ENC, grammars)
    assert c.then == [channel_header(FINAL, ENC), call_header("functions.a", ENC), call_header("functions.b", ENC)]
    assert c.first is not None and list(c.content) == [FINAL]
    web = parse_tools([{"type": "web_search"}], builtin=ServerTools(), responses=True)
    web = replace(web, builtin=ServerTools().session(web.builtin_names).tools.namespaces())
    with_builtin = replace(strict, tools=web).compile(grammars).constraint(ENC, grammars)
    assert with_builtin.first is None and list(with_builtin.content) == [FINAL]  # headers free, the answer enforced
