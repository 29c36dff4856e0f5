"""Chat Completions without HTTP (`mlx_oss/server/chat_completions.py`): a body that passed the schema
becomes a `Turn` (messages of every role, reasoning sent back, tool calls and results by id, the settings
of the request), with each refusal's one line and parameter; and generation events become the completion
object or its stream chunks, field by field."""

from __future__ import annotations

import json
import time

import pytest

from mlx_oss.harmony import ANALYSIS, COMMENTARY, Message, ReasoningEffort, ResponseFormat
from mlx_oss.sampling import SamplingConfig
from mlx_oss.server.chat_completions import FINISH_REASONS, ChatAccumulator, parse_request
from mlx_oss.server.generation import FUNCTION_CALL, MESSAGE, REASONING, Finished, ItemDelta, ItemDone, ItemStarted, Usage
from mlx_oss.server.tools import ToolChoice
from refusals import refusal_line

BASE = SamplingConfig(temperature=0.6, top_p=0.95)
GET = {"type": "function", "function": {"name": "get", "parameters": {"type": "object", "properties": {}}}}


def body(messages, **kw) -> dict:
    return {"model": "m", "messages": messages, **kw}


def refusal(b: dict) -> tuple[str, str | None]:
    return refusal_line(parse_request, b, BASE)


def test_messages_of_every_role_become_the_history_and_instructions():
    req = parse_request(body([
        {"role": "system", "content": "Be brief."},
        {"role": "developer", "content": [{"type": "text", "text": "Use metric units."}]},
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "reasoning_content": "Need the tool.", "content": "Checking.",
         "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "get", "arguments": {"city": "Paris"}}},
                        {"id": "c2", "type": "function", "function": {"name": "get", "arguments": '{"city": "Oslo"}'}}]},
        {"role": "tool", "tool_call_id": "c2", "content": "cold"},
        {"role": "tool", "tool_call_id": "c1", "content": [{"type": "text", "text": "mild"}]},
        {"role": "assistant", "content": [{"type": "refusal", "text": "No more."}]},
    ], tools=[GET]), BASE)  # fmt: skip
    t = req.turn
    assert t.instructions == "Be brief.\n\nUse metric units."
    assert t.history == (
        Message.user("Weather?"),
        Message.assistant("Need the tool.", channel=ANALYSIS),
        Message.assistant("Checking.", channel=COMMENTARY),
        Message.tool_call("functions.get", '{"city": "Paris"}'),
        Message.tool_call("functions.get", '{"city": "Oslo"}'),
        Message.tool_result("functions.get", "cold"),
        Message.tool_result("functions.get", "mild"),
        Message.assistant("No more.", channel="final"),
    )
    assert (req.stream, req.include_usage) == (False, False)


@pytest.mark.parametrize("field", ["reasoning", "reasoning_content", "thinking"])
def test_reasoning_sent_back_under_any_of_its_names(field):
    t = parse_request(body([{"role": "user", "content": "q"}, {"role": "assistant", field: "thought", "content": "a"},
                            {"role": "user", "content": "more"}]), BASE).turn  # fmt: skip
    assert t.history[1] == Message.assistant("thought", channel=ANALYSIS)
    empty = parse_request(body([{"role": "user", "content": "q"}, {"role": "assistant", field: "", "content": "a"}]), BASE)
    assert empty.turn.history[1:] == (Message.assistant("a", channel="final"),)


def test_the_settings_of_a_request():
    req = parse_request(body([{"role": "user", "content": "q"}], stream=True, stream_options={"include_usage": True},
                             temperature=0.1, max_tokens=9, max_completion_tokens=7, stop="END", seed=4,
                             logprobs=True, top_logprobs=3, reasoning_effort="high", logit_bias={"5": 1},
                             response_format={"type": "json_object"}, tools=[GET], tool_choice="required"), BASE)  # fmt: skip
    t = req.turn
    assert (req.stream, req.include_usage) == (True, True)
    assert (t.max_tokens, t.stop, t.effort, t.logit_bias) == (7, ("END",), ReasoningEffort.HIGH, ((5, 1.0),))
    assert (t.sampling.temperature, t.sampling.top_p, t.sampling.seed, t.sampling.logprobs) == (0.1, 0.95, 4, 3)
    assert t.response_format == ResponseFormat("json_object", {"type": "object"}, "Reply with one JSON object.")
    assert t.tool_choice == ToolChoice("required", ("functions.get",)) and t.tools.recipients() == ("functions.get",)
    plain = parse_request(body([{"role": "user", "content": "q"}], max_tokens=9, reasoning={"effort": "low"}), BASE).turn
    assert (plain.max_tokens, plain.effort, plain.sampling.logprobs, plain.stop) == (9, ReasoningEffort.LOW, None, ())
    assert parse_request(body([{"role": "user", "content": "q"}], logprobs=True), BASE).turn.sampling.logprobs == 0
    assert parse_request(body([{"role": "user", "content": "q"}], n=1), BASE).turn.effort is ReasoningEffort.MEDIUM
    assert parse_request(body([{"role": "user", "content": "q"}], stream=True), BASE).include_usage is False


@pytest.mark.parametrize("b, message, param", [
    (body([{"role": "user", "content": "q"}], n=2), "only n=1 is supported (one generation at a time)", "n"),
    (body([{"role": "system", "content": "only instructions"}]), "'messages' needs at least one user, assistant or tool message", "messages"),
    (body([{"role": "robot", "content": "q"}]), "messages[0].role must be system, developer, user, assistant or tool, not 'robot'", "messages[0].role"),
    (body([{"role": "tool", "tool_call_id": "x", "content": "r"}]),
     "messages[0].tool_call_id 'x' does not match any earlier assistant tool call", "messages[0].tool_call_id"),
    (body([{"role": "user", "content": "q"}, {"role": "assistant", "tool_calls": [{"id": "a", "function": {}}]}]),
     "messages[1].tool_calls[0] needs a 'function' with a 'name'", "messages[1].tool_calls[0]"),
    (body([{"role": "user", "content": "q"}, {"role": "assistant", "tool_calls": [{"id": "a"}]}]),
     "messages[1].tool_calls[0] needs a 'function' with a 'name'", "messages[1].tool_calls[0]"),
    (body([{"role": "user", "content": "q"}], top_logprobs=2), "'top_logprobs' needs 'logprobs': true", "top_logprobs"),
    (body([{"role": "system", "content": [{"type": "image_url", "image_url": {}}]}, {"role": "user", "content": "q"}]),
     "messages[0].content[0]: only text parts are supported (got 'image_url')", "messages[0].content[0]"),
    (body([{"role": "user", "content": [{"type": "text", "text": "look"}, {"type": "input_audio"}]}]),
     "messages[0].content[1]: only text parts are supported (got 'input_audio')", "messages[0].content[1]"),
    (body([{"role": "user", "content": "q"}, {"role": "assistant", "content": [{"type": "image_url"}]}]),
     "messages[1].content[0]: only text parts are supported (got 'image_url')", "messages[1].content[0]"),
    (body([{"role": "user", "content": "q"}, {"role": "assistant", "tool_calls": [{"id": "a", "function": {"name": "f"}}]},
           {"role": "tool", "tool_call_id": "a", "content": [{"type": "image_url"}]}]),
     "messages[2].content[0]: only text parts are supported (got 'image_url')", "messages[2].content[0]"),
    (body([{"role": "user", "content": "q"}], reasoning_effort="ultra"),
     "reasoning_effort must be one of low, medium, high (none/minimal mean low, xhigh/max high), not 'ultra'", "reasoning_effort"),
])  # fmt: skip
def test_refusals_name_the_parameter(b, message, param):
    assert refusal(b) == (message, param)


def test_a_call_without_an_id_cannot_be_answered():
    b = body([{"role": "user", "content": "q"},
              {"role": "assistant", "tool_calls": [{"function": {"name": "get", "arguments": "{}"}}]},
              {"role": "tool", "tool_call_id": None, "content": "r"}])  # fmt: skip
    assert refusal(b)[1] == "messages[2].tool_call_id"


def feed_all(acc: ChatAccumulator, events) -> list[dict]:
    return [c for c in (acc.feed(e) for e in events) if c is not None]


USAGE = Usage(prompt_tokens=10, cached_tokens=4, completion_tokens=6, reasoning_tokens=2, unparsed_tokens=0)
LP = ({"token": "Hi", "logprob": -0.1, "bytes": [72, 105], "top_logprobs": []},)
EVENTS = [
    ItemStarted(REASONING, channel=ANALYSIS), ItemDelta("think"), ItemDone(REASONING, "think"),
    ItemStarted(REASONING, channel=ANALYSIS), ItemDelta("more"), ItemDone(REASONING, "more"),
    ItemStarted(MESSAGE, channel="final"), ItemDelta("Hi", LP), ItemDelta("!"), ItemDone(MESSAGE, "Hi!"),
    Finished(USAGE, "stop"),
]  # fmt: skip


def test_a_completion_from_events():
    acc = ChatAccumulator("gpt-oss-20b")
    assert feed_all(acc, EVENTS) == [acc._chunk({"reasoning": t, "reasoning_content": t}) for t in ("think", "more")] + [
        acc._chunk({"content": "Hi"}), acc._chunk({"content": "!"})]
    c = acc.completion()
    assert c["id"] == acc.id and c["id"].startswith("chatcmpl-") and c["object"] == "chat.completion"
    assert (c["model"], c["created"]) == ("gpt-oss-20b", acc.created)
    assert c["choices"] == [{"index": 0, "finish_reason": "stop", "logprobs": None, "message": {
        "role": "assistant", "content": "Hi!", "reasoning": "think\n\nmore", "reasoning_content": "think\n\nmore"}}]
    assert c["usage"] == {"prompt_tokens": 10, "completion_tokens": 6, "total_tokens": 16,
                          "prompt_tokens_details": {"cached_tokens": 4}, "completion_tokens_details": {"reasoning_tokens": 2}}


def test_stream_chunks_their_shape_and_the_last_ones():
    acc = ChatAccumulator("m", logprobs=True)
    first = acc.first_chunk()
    assert first == {"id": acc.id, "object": "chat.completion.chunk", "created": acc.created, "model": "m",
                     "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}]}
    assert isinstance(acc.created, int) and abs(acc.created - time.time()) < 60  # seconds since the epoch, now
    chunks = feed_all(acc, EVENTS)
    assert [c["choices"][0]["delta"] for c in chunks[2:]] == [{"content": "Hi"}, {"content": "!"}]
    assert chunks[2]["choices"][0]["logprobs"] == {"content": list(LP), "refusal": None}
    assert chunks[3]["choices"][0]["logprobs"] is None  # a delta with no entries
    last = acc.last_chunks(include_usage=True)
    assert last[0]["choices"] == [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}]
    assert last[1] == {"id": acc.id, "object": "chat.completion.chunk", "created": acc.created, "model": "m",
                       "choices": [], "usage": acc.completion()["usage"]}
    assert len(acc.last_chunks(include_usage=False)) == 1
    assert len(ChatAccumulator("m").last_chunks(include_usage=True)) == 1  # no Finished (never started): no usage
    assert acc.completion()["choices"][0]["logprobs"] == {"content": list(LP), "refusal": None}


def test_tool_calls_stream_by_index_and_end_in_tool_calls():
    acc = ChatAccumulator("m")
    events = [ItemStarted(FUNCTION_CALL, "get", COMMENTARY, "functions.get"), ItemDelta('{"a":'), ItemDelta(" 1}"),
              ItemDone(FUNCTION_CALL, '{"a": 1}', "get"),
              ItemStarted(FUNCTION_CALL, "put", COMMENTARY, "functions.put"), ItemDelta("{}"), ItemDone(FUNCTION_CALL, "{}", "put"),
              Finished(USAGE, "tool_call")]  # fmt: skip
    chunks = feed_all(acc, events)
    calls = [c["choices"][0]["delta"]["tool_calls"][0] for c in chunks]
    assert calls[0] == {"index": 0, "id": acc.calls[0]["id"], "type": "function", "function": {"name": "get", "arguments": ""}}
    assert acc.calls[0]["id"].startswith("call_") and len(acc.calls[0]["id"]) == 5 + 24
    assert calls[1:3] == [{"index": 0, "function": {"arguments": '{"a":'}}, {"index": 0, "function": {"arguments": " 1}"}}]
    assert calls[3]["index"] == 1 and calls[4] == {"index": 1, "function": {"arguments": "{}"}}
    msg = acc.completion()["choices"][0]
    assert msg["finish_reason"] == "tool_calls" and msg["message"]["content"] is None
    assert [(c["function"]["name"], c["function"]["arguments"]) for c in msg["message"]["tool_calls"]] == [("get", '{"a": 1}'), ("put", "{}")]
    assert msg["message"]["reasoning"] is None


@pytest.mark.parametrize("reason", ["stop", "tool_call", "length", "context", "cancelled", "error", "tool_limit"])
def test_finish_reasons(reason):
    acc = ChatAccumulator("m")
    acc.feed(Finished(Usage(), reason))
    assert acc.finish_reason == FINISH_REASONS.get(reason, "stop")
    assert FINISH_REASONS == {"stop": "stop", "tool_call": "tool_calls", "length": "length", "context": "length", "cancelled": "stop"}


def test_an_empty_answer_is_an_empty_string_and_unparsed_tokens_show_in_usage():
    acc = ChatAccumulator("m")
    assert acc.finish_reason == "stop" and acc.completion()["usage"] is None
    acc.feed(Finished(Usage(3, 0, 2, 0, 1), "length"))
    c = acc.completion()
    assert c["choices"][0]["message"]["content"] == "" and c["choices"][0]["finish_reason"] == "length"
    assert c["usage"]["completion_tokens_details"] == {"reasoning_tokens": 0, "unparsed_tokens": 1}
    assert json.dumps(c)  # all JSON


def test_reasoning_keeps_its_own_spaces_and_letters_at_its_ends():
    """Only the blank lines joining the analysis messages are trimmed from the reasoning: spaces and
    any letter at its ends are the model's text."""
    for text in ("  X marks it  ", "X marks it"):
        acc = ChatAccumulator("m")
        feed_all(acc, [ItemStarted(REASONING, channel=ANALYSIS), ItemDelta(text), ItemDone(REASONING, text),
                       ItemStarted(MESSAGE, channel="final"), ItemDone(MESSAGE, ""), Finished(USAGE, "stop")])  # fmt: skip
        assert acc.completion()["choices"][0]["message"]["reasoning"] == text


def test_sent_back_parts_calls_without_arguments_and_non_ascii_arguments():
    """An assistant's content in OpenAI's text, output_text and refusal parts (a refusal's text is in
    `refusal`); a call without `arguments` is a call with none; arguments given as an object keep their
    characters as written (no \\u escapes, which the model never wrote); no system message: no instructions."""
    t = parse_request(body([
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": [{"type": "text", "text": "a "}, {"type": "output_text", "text": "b "},
                                          {"type": "refusal", "refusal": "no"}]},
        {"role": "user", "content": "more"},
        {"role": "assistant", "tool_calls": [{"id": "c1", "function": {"name": "get"}},
                                             {"id": "c2", "function": {"name": "get", "arguments": {"city": "Zürich"}}}]},
    ], tools=[GET]), BASE).turn  # fmt: skip
    assert t.history[1:] == (
        Message.assistant("a b no", channel="final"),
        Message.user("more"),
        Message.tool_call("functions.get", ""),
        Message.tool_call("functions.get", '{"city": "Zürich"}'),
    )
    assert t.instructions is None


def test_a_strict_response_format_and_a_reasoning_budget_reach_the_turn():
    """`response_format` json_schema with `strict`: the answer must follow the schema (named where it was
    set); json_object: any object; `reasoning.max_tokens`: the analysis budget; a format of another type is
    refused naming `response_format.type`."""
    from mlx_oss.server.tools import StrictSchema

    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"], "additionalProperties": False}
    fmt = {"type": "json_schema", "json_schema": {"name": "count", "schema": schema, "strict": True}}
    t = parse_request(body([{"role": "user", "content": "q"}], response_format=fmt, reasoning={"max_tokens": 64}), BASE).turn
    assert t.answer_schema == StrictSchema("final", schema, "response_format.json_schema.schema")
    assert t.response_format.name == "count" and t.reasoning_budget == 64
    loose = parse_request(body([{"role": "user", "content": "q"}], response_format={**fmt, "json_schema": {
        "name": "count", "schema": schema}}), BASE).turn  # fmt: skip
    assert loose.answer_schema is None and loose.reasoning_budget is None  # described, not enforced
    assert parse_request(body([{"role": "user", "content": "q"}], response_format={"type": "json_object"}), BASE).turn.answer_schema.target == "final"
    assert refusal(body([{"role": "user", "content": "q"}], response_format={"type": "yaml"}))[1] == "response_format.type"
