"""Structured output through the server (issue 27), end to end on the synthetic model: a real uvicorn on
127.0.0.1 driven by the openai SDK's own `responses.parse` / `chat.completions.parse` (pydantic models),
streaming and not. The model has random weights and nothing is scripted here (unless a test says so):
it never writes harmony by itself, so a reply that parses and validates can only come from the
constraint (the same seeds without it do not validate). Every string of the schemas has `maxLength` or
an enum and every integer is bounded, so a random model's document always ends; a reasoning budget
(`reasoning.max_tokens`) makes its analysis end too. `json_object` has unbounded strings, so that test
nudges the model with a `logit_bias` towards `"` and `}` (the constraint still does the rest)."""

from __future__ import annotations

import json
from typing import Literal

import httpx
import jsonschema
import openai
import pydantic
import pytest
from pydantic import BaseModel, Field

from mlx_oss.sampling import SamplingConfig
from server_harness import MODEL_ID, post_json, reply, serve_folder, stream_chat, stream_responses

BASE = SamplingConfig()
SEEDS = (1, 2, 3, 4, 5)
BUDGET = {"max_tokens": 8}  # reasoning.max_tokens: analysis tokens before the analysis is closed
LIMIT = 160  # max output tokens: a budget-8 analysis and a Weather document fit with room to spare
USER = [{"role": "user", "content": "What is the weather in Oslo?"}]


class Weather(BaseModel):
    city: str = Field(max_length=12)
    sky: Literal["sunny", "rainy", "cloudy"]
    celsius: int = Field(ge=-40, le=50)


WEATHER = {**Weather.model_json_schema(), "additionalProperties": False}  # as strict as the SDK makes it


PARAMS = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 10}, "unit": {"enum": ["c", "f"]},
          "days": {"type": "integer", "minimum": 1, "maximum": 7}}, "required": ["city", "unit", "days"],
          "additionalProperties": False}  # fmt: skip
TOOL_R = {"type": "function", "name": "get_weather", "description": "Weather in a city", "parameters": PARAMS, "strict": True}
TOOL_C = {"type": "function", "function": {k: v for k, v in TOOL_R.items() if k != "type"}}
UNENFORCEABLE = ({"type": "array", "uniqueItems": True}, "uniqueItems"), ({"not": {}}, "not")


@pytest.fixture(scope="module")
def served(tiny_chat_converted):
    yield from serve_folder(tiny_chat_converted, max_context=2048)


def _valid(model: type[BaseModel], text: str | None) -> bool:
    try:
        model.model_validate_json(text or "")
    except pydantic.ValidationError:
        return False
    return True


# ----------------------------------------------------------------------------- the request -> Turn (no model)


def test_which_formats_and_tools_are_strict():
    from mlx_oss.grammar import ANY_JSON_OBJECT
    from mlx_oss.server import chat_completions, responses
    from mlx_oss.server.conversation import strict_answer
    from mlx_oss.server.tools import NO_ARGUMENTS, StrictSchema, parse_tools

    schema = {"type": "object"}
    flat = {"type": "json_schema", "name": "a", "schema": schema}
    assert strict_answer({**flat, "strict": True}, "text.format") == StrictSchema("final", schema, "text.format.schema")
    assert [strict_answer({**flat, "strict": v}, "text.format") for v in (False, None)] == [None, None]
    assert strict_answer(flat, "text.format") is None  # absent: described only
    nested = {"type": "json_schema", "json_schema": {"name": "a", "schema": schema, "strict": True}}
    assert strict_answer(nested, "response_format").param == "response_format.json_schema.schema"
    assert strict_answer({"type": "json_object"}, "response_format") == StrictSchema("final", ANY_JSON_OBJECT,
                                                                                     "response_format.type")  # fmt: skip
    assert [strict_answer(f, "text.format") for f in (None, {"type": "text"}, {})] == [None, None, None]
    fn = {"type": "function", "name": "f", "parameters": PARAMS}
    tools = parse_tools([{**fn, "strict": True}, {**fn, "name": "g"}, {"type": "function", "name": "h", "strict": True},
                         {"type": "namespace", "name": "ns", "tools": [{**fn, "strict": True}]}], responses=True)  # fmt: skip
    assert tools.strict == (StrictSchema("functions.f", PARAMS, "tools[0].parameters"),
                            StrictSchema("functions.h", NO_ARGUMENTS, "tools[2].parameters"),
                            StrictSchema("ns.f", PARAMS, "tools[3].tools[0].parameters"))  # fmt: skip
    chat = chat_completions.parse_request({"messages": USER, "tools": [TOOL_C], "reasoning": {"max_tokens": 5},
                                           "response_format": {"type": "json_object"}}, BASE).turn  # fmt: skip
    assert [x.target for x in chat.schemas()] == ["final", "functions.get_weather"]
    assert chat.schemas()[1].param == "tools[0].function.parameters" and chat.reasoning_budget == 5
    req = responses.parse_request({"input": "q", "reasoning": {"effort": "low", "max_tokens": 0}},
                                  responses.StoredResponses(), BASE)  # fmt: skip
    assert req.turn.reasoning_budget == 0 and req.turn.schemas() == ()
    assert req.echo["reasoning"] == {"effort": "low", "summary": None, "max_tokens": 0}
    assert responses.parse_request({"input": "q"}, responses.StoredResponses(), BASE).turn.reasoning_budget is None


# ----------------------------------------------------------------------------- the answer's format


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_responses_parse_validates_on_every_seed(srv, client, stream):
    for seed in SEEDS:
        kw = dict(model=MODEL_ID, input=USER, text_format=Weather, reasoning={"effort": "low", **BUDGET},
                  max_output_tokens=LIMIT, extra_body={"seed": seed})  # fmt: skip
        if stream:
            with client.responses.stream(**kw) as s:
                kinds = [ev.type for ev in s]
                r = s.get_final_response()
            assert "response.output_text.delta" in kinds and kinds[-1] == "response.completed"
        else:
            r = client.responses.parse(**kw)
        assert r.status == "completed", (seed, r.output)
        assert isinstance(r.output_parsed, Weather), (seed, r.output_text)
        assert r.usage.output_tokens_details.reasoning_tokens <= BUDGET["max_tokens"]
        assert r.usage.output_tokens < 64  # (what the test without strict gives the same seeds)
    body = srv[2].bodies[-1]
    assert body["text"]["format"]["strict"] is True and body["reasoning"]["max_tokens"] == 8  # what the SDK sent


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_chat_completions_parse_validates_on_every_seed(srv, client, stream):
    for seed in SEEDS:
        kw = dict(model=MODEL_ID, messages=USER, response_format=Weather, seed=seed, max_completion_tokens=LIMIT,
                  extra_body={"reasoning": BUDGET})  # fmt: skip
        if stream:
            with client.chat.completions.stream(**kw, stream_options={"include_usage": True}) as s:
                for _ in s:
                    pass
                r = s.get_final_completion()
        else:
            r = client.chat.completions.parse(**kw)
        c = r.choices[0]
        assert c.finish_reason == "stop" and isinstance(c.message.parsed, Weather), (seed, c.message.content)
        assert r.usage.completion_tokens_details.reasoning_tokens <= BUDGET["max_tokens"]
    body = srv[2].bodies[-1]
    assert body["response_format"]["json_schema"]["strict"] is True and body["reasoning"] == BUDGET


def test_the_same_seeds_without_strict_do_not_validate(srv):
    """strict false: the schema is only described, and a random model does not follow a description
    (64 tokens: room for the analysis and a Weather document, which take under 50 when constrained)."""
    schema = Weather.model_json_schema()
    fmt = {"type": "json_schema", "name": "Weather", "schema": schema, "strict": False}
    valid = 0
    for seed in SEEDS:
        r = post_json(srv[0], "/responses", {"model": MODEL_ID, "input": USER, "text": {"format": fmt}, "seed": seed,
                                             "reasoning": BUDGET, "max_output_tokens": 64})  # fmt: skip
        assert r.status_code == 200, r.text
        texts = [p["text"] for it in r.json()["output"] if it["type"] == "message" for p in it["content"]]
        valid += _valid(Weather, "".join(texts))
        r = post_json(srv[0], "/chat/completions", {"model": MODEL_ID, "messages": USER, "seed": seed,
                                                    "max_tokens": 64, "response_format": {"type": "json_schema",
                                                    "json_schema": {**fmt, "strict": None}}})  # fmt: skip
        assert r.status_code == 200, r.text
        valid += _valid(Weather, r.json()["choices"][0]["message"]["content"])
    assert valid == 0


def test_json_object_gives_a_json_object_in_both_apis(srv):
    """JSON mode: any object. Its strings are unbounded, so a random model rarely ends one by itself
    (a real model does); a logit_bias towards `"` and `}` makes it end, and the constraint alone makes
    what it writes an object (the bias would rather start with `"`)."""
    end = {"1": 30, "92": 30, "18583": 30}  # `"`, `}`, `"}`
    for seed in SEEDS[:3]:
        r = post_json(srv[0], "/responses", {"model": MODEL_ID, "input": USER, "text": {"format": {"type": "json_object"}},
                                             "seed": seed, "reasoning": {"max_tokens": 0}, "max_output_tokens": 200,
                                             "logit_bias": end})  # fmt: skip
        out = r.json()
        assert out["status"] == "completed", out["output"]
        text = "".join(p["text"] for it in out["output"] if it["type"] == "message" for p in it["content"])
        assert isinstance(json.loads(text), dict)
        r = post_json(srv[0], "/chat/completions", {"model": MODEL_ID, "messages": USER, "seed": seed,
                                                    "response_format": {"type": "json_object"}, "logit_bias": end,
                                                    "reasoning": {"max_tokens": 0}, "max_tokens": 200})  # fmt: skip
        c = r.json()["choices"][0]
        assert c["finish_reason"] == "stop" and isinstance(json.loads(c["message"]["content"]), dict)
        assert c["message"]["reasoning"] is None  # a budget of 0: no analysis at all


# ----------------------------------------------------------------------------- strict function tools


@pytest.mark.parametrize("choice", ["required", "named"])
def test_strict_tool_arguments_validate_in_both_apis(srv, client, choice):
    named_r = {"type": "function", "name": "get_weather"}
    named_c = {"type": "function", "function": {"name": "get_weather"}}
    for seed in SEEDS:
        r = client.responses.create(model=MODEL_ID, input=USER, tools=[TOOL_R], reasoning=BUDGET, max_output_tokens=LIMIT,
                                    tool_choice="required" if choice == "required" else named_r,
                                    extra_body={"seed": seed})  # fmt: skip
        calls = [it for it in r.output if it.type == "function_call"]
        assert r.status == "completed" and len(calls) == 1 and calls[0].name == "get_weather", (seed, r.output)
        jsonschema.validate(json.loads(calls[0].arguments), PARAMS)
        c = client.chat.completions.create(model=MODEL_ID, messages=USER, tools=[TOOL_C], seed=seed, max_tokens=LIMIT,
                                           tool_choice="required" if choice == "required" else named_c,
                                           extra_body={"reasoning": BUDGET}).choices[0]  # fmt: skip
        assert c.finish_reason == "tool_calls" and c.message.tool_calls[0].function.name == "get_weather"
        jsonschema.validate(json.loads(c.message.tool_calls[0].function.arguments), PARAMS)


def test_chat_parse_with_a_pydantic_function_tool_streamed(srv, client):
    tool = openai.pydantic_function_tool(Weather, name="report")
    assert tool["function"]["strict"] is True
    for seed in SEEDS[:3]:
        with client.chat.completions.stream(model=MODEL_ID, messages=USER, tools=[tool], tool_choice="required",
                                            seed=seed, max_tokens=LIMIT, extra_body={"reasoning": BUDGET}) as s:  # fmt: skip
            for _ in s:
                pass
            c = s.get_final_completion().choices[0]
        assert isinstance(c.message.tool_calls[0].function.parsed_arguments, Weather)


def test_a_strict_tool_and_a_strict_answer_together(srv):
    """tool_choice auto with a strict answer format: the reply is an answer or a call, each valid."""
    fmt = {"type": "json_schema", "name": "Weather", "schema": WEATHER, "strict": True}
    for seed in SEEDS:
        r = post_json(srv[0], "/responses", {"model": MODEL_ID, "input": USER, "tools": [TOOL_R], "text": {"format": fmt},
                                             "seed": seed, "reasoning": BUDGET, "max_output_tokens": LIMIT}).json()  # fmt: skip
        assert r["status"] == "completed", r["output"]
        last = r["output"][-1]
        if last["type"] == "function_call":
            jsonschema.validate(json.loads(last["arguments"]), PARAMS)
        else:
            Weather.model_validate_json(last["content"][0]["text"])


# ----------------------------------------------------------------------------- refusals, limits


@pytest.mark.parametrize("schema,keyword", UNENFORCEABLE, ids=[k for _, k in UNENFORCEABLE])
def test_an_unenforceable_strict_schema_is_a_400_naming_the_keyword(srv, schema, keyword):
    url = srv[0]
    cases = [
        ("/responses", {"input": "x", "text": {"format": {"type": "json_schema", "name": "a", "schema": schema,
                                                          "strict": True}}}, "text.format.schema"),
        ("/chat/completions", {"messages": USER, "response_format": {"type": "json_schema", "json_schema": {
            "name": "a", "schema": schema, "strict": True}}}, "response_format.json_schema.schema"),
        ("/responses", {"input": "x", "tools": [{"type": "function", "name": "f", "parameters": schema, "strict": True}]},
         "tools[0].parameters"),
        ("/chat/completions", {"messages": USER, "tools": [{"type": "function", "function": {
            "name": "f", "parameters": schema, "strict": True}}]}, "tools[0].function.parameters"),
        ("/responses", {"input": "x", "tools": [{"type": "namespace", "name": "ns", "tools": [
            {"type": "function", "name": "f", "parameters": schema, "strict": True}]}]}, "tools[0].tools[0].parameters"),
    ]  # fmt: skip
    for path, body, param in cases:
        r = post_json(url, path, {"model": MODEL_ID, **body})
        assert r.status_code == 400, (path, r.text)
        err = r.json()["error"]
        assert (err["param"], err["type"]) == (param, "invalid_request_error")
        assert err["message"].startswith(f"{param} cannot be enforced: ") and keyword in err["message"], err["message"]
        assert err["message"].endswith("; with strict false it would only be described to the model"), err["message"]
    assert not srv[1].state.backend.worker.busy  # refused before anything was queued
    # not strict: described only, so accepted
    scripts, tok = srv[2], srv[3]
    for path, body, _ in cases:
        loose = json.loads(json.dumps(body).replace('"strict": true', '"strict": false'))
        scripts.push(reply(tok, final="ok"))
        r = post_json(url, path, {"model": MODEL_ID, "max_tokens" if "messages" in body else "max_output_tokens": 16,
                                  **loose})  # fmt: skip
        assert r.status_code == 200, (path, r.text)


def test_a_strict_reply_cut_by_the_output_limit_is_incomplete(srv, client):
    fmt = {"type": "json_schema", "name": "Weather", "schema": WEATHER, "strict": True}
    r = post_json(srv[0], "/responses", {"model": MODEL_ID, "input": USER, "text": {"format": fmt}, "seed": 1,
                                         "reasoning": {"max_tokens": 0}, "max_output_tokens": 6}).json()  # fmt: skip
    assert r["status"] == "incomplete" and r["incomplete_details"] == {"reason": "max_output_tokens"}
    msg = [it for it in r["output"] if it["type"] == "message"]
    assert msg and msg[-1]["status"] == "incomplete" and not _valid(Weather, msg[-1]["content"][0]["text"])
    status, events = stream_responses(srv[0], {"model": MODEL_ID, "input": USER, "text": {"format": fmt}, "seed": 1,
                                               "reasoning": {"max_tokens": 0}, "max_output_tokens": 6, "stream": True})  # fmt: skip
    assert status == 200 and events[-1]["type"] == "response.incomplete"
    chat = {"model": MODEL_ID, "messages": USER, "seed": 1, "max_tokens": 6, "reasoning": {"max_tokens": 0},
            "response_format": {"type": "json_schema", "json_schema": {"name": "W", "schema": fmt["schema"], "strict": True}}}
    c = post_json(srv[0], "/chat/completions", chat).json()["choices"][0]
    assert c["finish_reason"] == "length" and not _valid(Weather, c["message"]["content"])
    status, chunks, done = stream_chat(srv[0], {**chat, "stream": True})
    assert done and [ch["choices"][0]["finish_reason"] for ch in chunks if ch["choices"]][-1] == "length"
    with pytest.raises(openai.LengthFinishReasonError):  # the SDK never presents it as parsed
        client.chat.completions.parse(model=MODEL_ID, messages=USER, response_format=Weather, seed=1, max_tokens=6,
                                      extra_body={"reasoning": {"max_tokens": 0}})  # fmt: skip


def test_reasoning_max_tokens_closes_the_analysis(srv):
    """Alone (no schema): after that many analysis tokens the analysis ends and the answer follows,
    although the script would have gone on thinking."""
    url, app, scripts, tok = srv
    thought = "one two three four five six seven eight nine ten"
    scripts.push(reply(tok, analysis=thought, final="Done."))
    r = post_json(url, "/responses", {"model": MODEL_ID, "input": "hi", "reasoning": {"max_tokens": 3},
                                      "max_output_tokens": 40}).json()  # fmt: skip
    kinds = [it["type"] for it in r["output"]]
    assert kinds[0] == "reasoning" and "message" in kinds
    assert r["output"][0]["content"][0]["text"] == tok.decode(tok.encode(thought)[:3])
    assert r["usage"]["output_tokens_details"]["reasoning_tokens"] == 3
    assert r["reasoning"]["max_tokens"] == 3  # echoed
    scripts.push(reply(tok, analysis=thought, final="Done."))
    c = post_json(url, "/chat/completions", {"model": MODEL_ID, "messages": USER, "reasoning": {"max_tokens": 3},
                                             "max_tokens": 40}).json()  # fmt: skip
    assert c["choices"][0]["message"]["reasoning"] == tok.decode(tok.encode(thought)[:3])


@pytest.mark.parametrize("value", [-1, 1.5, "8", True])
def test_reasoning_max_tokens_is_checked_by_the_request_schema(srv, value):
    for path, body in (("/responses", {"input": "x"}), ("/chat/completions", {"messages": USER})):
        r = post_json(srv[0], path, {"model": MODEL_ID, **body, "reasoning": {"max_tokens": value}})
        assert r.status_code == 400 and r.json()["error"]["param"] == "reasoning.max_tokens", r.text


def test_schemas_are_compiled_once_and_the_prompt_does_not_change(srv):
    """The compiled schema is cached by hash; the constraint acts on sampling only, so a strict request
    renders the same prompt as a non-strict one."""
    url, app, scripts, tok = srv
    schema = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 9}}, "required": ["n"],
              "additionalProperties": False}  # fmt: skip
    prompts = []
    for strict in (True, True, False):
        fmt = {"type": "json_schema", "name": "n", "schema": schema, "strict": strict}
        before = app.state.backend.grammars.compiled
        r = post_json(url, "/responses", {"model": MODEL_ID, "input": "n?", "text": {"format": fmt}, "seed": 3,
                                          "reasoning": {"max_tokens": 0}, "max_output_tokens": 40}).json()  # fmt: skip
        prompts.append(r["usage"]["input_tokens"])
        if strict:
            assert json.loads(r["output"][-1]["content"][0]["text"])["n"] in range(10)
        compiled = app.state.backend.grammars.compiled - before
        assert compiled == (1 if strict and len(prompts) == 1 else 0)
    assert len(set(prompts)) == 1
    assert httpx.get(url.rsplit("/v1", 1)[0] + "/health", timeout=30).json()["status"] == "ok"


def test_the_reasoning_budget_spans_the_rounds_of_built_in_calls(srv):
    """A built-in call ends a round; the next round gets a fresh constraint with what is left of the
    budget (2 of 4 here), so its analysis is cut after 2 tokens although the script goes on."""
    from test_builtin_chat import builtin_reply

    url, app, scripts, tok = srv
    scripts.push(builtin_reply(tok, calls=[("browser.search", '{"query": "x"}')], analysis="one two")
                 + builtin_reply(tok, final="Done.", analysis="three four five six seven"))  # fmt: skip
    r = post_json(url, "/responses", {"model": MODEL_ID, "input": "hi", "tools": [{"type": "web_search"}],
                                      "reasoning": {"max_tokens": 4}, "max_output_tokens": 80}).json()  # fmt: skip
    kinds = [it["type"] for it in r["output"]]
    assert kinds[:3] == ["reasoning", "web_search_call", "reasoning"] and kinds[-1] == "message", r["output"]
    assert [it["content"][0]["text"] for it in r["output"] if it["type"] == "reasoning"] == ["one two", "three four"]
    assert r["usage"]["output_tokens_details"]["reasoning_tokens"] == 4


def test_a_strict_answer_leaves_built_in_calls_possible_and_is_enforced_after_them(srv):
    """With `web_search` listed the headers are the model's: the scripted search happens, then the answer
    (scripted as prose) comes out as the schema's JSON."""
    from test_builtin_chat import builtin_reply

    url, app, scripts, tok = srv
    schema = {"type": "object", "properties": {"city": {"enum": ["Paris", "Oslo"]}}, "required": ["city"],
              "additionalProperties": False}  # fmt: skip
    scripts.push(builtin_reply(tok, calls=[("browser.search", '{"query": "x"}')], analysis="look")
                 + builtin_reply(tok, final="It is Paris, I think.", analysis="ok"))  # fmt: skip
    r = post_json(url, "/responses", {"model": MODEL_ID, "input": "hi", "tools": [{"type": "web_search"}],
                                      "text": {"format": {"type": "json_schema", "name": "c", "schema": schema,
                                                          "strict": True}},
                                      "max_output_tokens": 80}).json()  # fmt: skip
    kinds = [it["type"] for it in r["output"]]
    assert kinds[:2] == ["reasoning", "web_search_call"] and kinds[-1] == "message", r["output"]
    assert r["status"] == "completed" and json.loads(r["output"][-1]["content"][0]["text"])["city"] in ("Paris", "Oslo")
