"""The OpenAI Agents SDK (openai-agents, pinned in pyproject.toml's `test` extra) against mlx-oss serve,
unmodified: an agent with two function tools through `Runner.run_sync` and `Runner.run_streamed`, and
an agent with a pydantic `output_type`, on both model classes (OpenAIResponsesModel,
OpenAIChatCompletionsModel). Tracing is off (it would send spans to OpenAI)."""

from __future__ import annotations

import asyncio
import json

import pytest
from pydantic import BaseModel

agents = pytest.importorskip("agents")
from agents import (  # noqa: E402
    Agent,
    OpenAIChatCompletionsModel,
    OpenAIResponsesModel,
    Runner,
    function_tool,
    set_tracing_disabled,
)
from openai import AsyncOpenAI  # noqa: E402

from server_harness import MODEL_ID, reply  # noqa: E402

pytestmark = pytest.mark.slow
set_tracing_disabled(True)

ANSWER = "Paris: 21 C at 14:05."
PATHS = {"responses": "/v1/responses", "chat": "/v1/chat/completions"}


class Weather(BaseModel):
    city: str
    temperature_c: int


def _model(kind: str, url: str):
    client = AsyncOpenAI(base_url=url, api_key="none", max_retries=0, timeout=120)
    return OpenAIResponsesModel(MODEL_ID, client) if kind == "responses" else OpenAIChatCompletionsModel(MODEL_ID, client)


def _tool_agent(kind: str, url: str, ran: list) -> Agent:
    @function_tool
    def get_weather(city: str) -> str:
        """Current temperature in a city."""
        ran.append(("get_weather", city))
        return "21 C"

    @function_tool
    def get_time(city: str) -> str:
        """Local time in a city."""
        ran.append(("get_time", city))
        return "14:05"

    return Agent(name="weather", instructions="Answer with the tools.", tools=[get_weather, get_time], model=_model(kind, url))


def _script_two_calls(server) -> None:
    tok = server.tok
    server.push(reply(tok, analysis="Weather first.", call=("get_weather", '{"city": "Paris"}')))
    server.push(reply(tok, analysis="Now the time.", call=("get_time", '{"city": "Paris"}')))
    server.push(reply(tok, analysis="Both known.", final=ANSWER))


def _tool_outputs(kind: str, body: dict) -> list[tuple[str, str]]:
    """(call id, output) of every tool result a request sends back."""
    if kind == "responses":
        return [(i["call_id"], i["output"]) for i in body["input"] if i.get("type") == "function_call_output"]
    return [(m["tool_call_id"], m["content"]) for m in body["messages"] if m["role"] == "tool"]


def _check_two_calls(server, kind: str, ran: list, final_output) -> None:
    assert ran == [("get_weather", "Paris"), ("get_time", "Paris")]
    assert final_output == ANSWER
    assert [(q["method"], q["path"]) for q in server.requests] == [("POST", PATHS[kind])] * 3
    assert all(q["user_agent"].startswith("Agents/Python ") for q in server.requests), server.requests
    first, second, third = server.scripts.bodies
    names = sorted(t.get("name") or t["function"]["name"] for t in first["tools"])
    assert names == ["get_time", "get_weather"]
    assert [o for _, o in _tool_outputs(kind, second)] == ["21 C"]
    assert [o for _, o in _tool_outputs(kind, third)] == ["21 C", "14:05"]


@pytest.mark.parametrize("kind", ["responses", "chat"])
def test_agent_two_tools_run_sync(server, kind):
    _script_two_calls(server)
    ran: list = []
    result = Runner.run_sync(_tool_agent(kind, server.url, ran), "Weather and time in Paris?")
    _check_two_calls(server, kind, ran, result.final_output)


@pytest.mark.parametrize("kind", ["responses", "chat"])
def test_agent_two_tools_run_streamed(server, kind):
    _script_two_calls(server)
    ran: list = []

    async def run():
        result = Runner.run_streamed(_tool_agent(kind, server.url, ran), "Weather and time in Paris?")
        kinds = [ev.type async for ev in result.stream_events()]
        return result, kinds

    result, kinds = asyncio.run(run())
    _check_two_calls(server, kind, ran, result.final_output)
    assert "raw_response_event" in kinds and "run_item_stream_event" in kinds
    assert all(server.scripts.bodies[i]["stream"] is True for i in range(3))


@pytest.mark.parametrize("kind", ["responses", "chat"])
def test_agent_output_type(server, kind):
    # compact JSON: the SDK sends a strict schema, which the server enforces (its documents have no spaces)
    server.push(reply(server.tok, analysis="Fill the schema.", final='{"city":"Paris","temperature_c":21}'))
    agent = Agent(name="structured", instructions="Report the weather.", output_type=Weather, model=_model(kind, server.url))
    result = Runner.run_sync(agent, "Weather in Paris?")
    assert result.final_output == Weather(city="Paris", temperature_c=21)
    (body,) = server.scripts.bodies
    fmt = body["text"]["format"] if kind == "responses" else body["response_format"]
    schema = fmt["schema"] if kind == "responses" else fmt["json_schema"]["schema"]
    assert fmt["type"] == "json_schema" and set(schema["properties"]) == {"city", "temperature_c"}, json.dumps(fmt)
