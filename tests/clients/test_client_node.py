"""Node clients, unmodified and pinned (package.json / package-lock.json here), against mlx-oss serve:
the Vercel AI SDK's tool loop (generateText and streamText, `openai.responses(...)` and
`openai.chat(...)`) and the openai npm SDK (a chat completion, a streamed response). The scripts
(vercel.mjs, openai_npm.mjs) print what the client returned; the server's Scripts hook records what
the client sent."""

from __future__ import annotations

import json

import pytest

from server_harness import MODEL_ID, reply
from client_harness import pinned, run_node

pytestmark = pytest.mark.slow

ANSWER = "It is 21 C in Paris."


def _env(server) -> dict:
    return {"MLX_OSS_BASE_URL": server.url, "MLX_OSS_MODEL": MODEL_ID}


@pytest.mark.parametrize(("mode", "api", "store"), [
    ("generate", "responses", "default"), ("stream", "responses", "default"), ("generate", "chat", "default"),
    ("stream", "chat", "default"),
    ("generate", "responses", "nostore"),  # store: false, as Codex does: the whole conversation resent
])  # fmt: skip
def test_vercel_ai_sdk_two_step_tool_loop(node_clients, server, mode, api, store):
    server.push(reply(server.tok, analysis="Look it up.", call=("get_weather", '{"city": "Paris"}')))
    server.push(reply(server.tok, analysis="Got it.", final=ANSWER))
    out = run_node("vercel.mjs", mode, api, store, env=_env(server))
    assert out["executed"] == ["Paris"]  # the SDK ran the tool with the model's arguments
    assert (out["text"], out["steps"], out["finishReason"]) == (ANSWER, 2, "stop")
    if mode == "stream":
        assert out["streamed"] == ANSWER
    path = "/v1/responses" if api == "responses" else "/v1/chat/completions"
    assert [(q["method"], q["path"]) for q in server.requests] == [("POST", path)] * 2
    sdk = (f"ai/{pinned('ai')} ", f"ai-sdk-openai/{pinned('@ai-sdk/openai')} ")  # generateText's, streamText's
    assert all(q["user_agent"].startswith(sdk) for q in server.requests), server.requests
    first, second = server.scripts.bodies
    assert first.get("stream", False) is (mode == "stream")
    assert second.get("store", True) is (store != "nostore")
    # The tool result went back in the second request, tied to the model's call.
    if api == "responses":
        (call,) = [i for i in second["input"] if i.get("type") == "function_call"]
        (result,) = [i for i in second["input"] if i.get("type") == "function_call_output"]
        assert (call["name"], json.loads(call["arguments"])) == ("get_weather", {"city": "Paris"})
    else:
        (assistant,) = [m for m in second["messages"] if m["role"] == "assistant"]
        (call,) = assistant["tool_calls"]
        (result,) = [m for m in second["messages"] if m["role"] == "tool"]
        assert (call["function"]["name"], json.loads(call["function"]["arguments"])) == ("get_weather", {"city": "Paris"})
        call = {"call_id": call["id"]}
        result = {"call_id": result["tool_call_id"], "output": result["content"]}
    assert result["call_id"] == call["call_id"]
    assert json.loads(result["output"]) == {"city": "Paris", "temperature_c": 21}


def test_openai_npm_sdk_chat_completion_and_streamed_response(node_clients, server):
    server.push(reply(server.tok, analysis="Greet.", final="Hello!"))
    server.push(reply(server.tok, analysis="Again.", final="Hello again!"))
    out = run_node("openai_npm.mjs", env=_env(server))
    chat = out["chat"]
    assert (chat["content"], chat["reasoning"], chat["finish_reason"]) == ("Hello!", "Greet.", "stop")
    assert chat["usage"]["completion_tokens"] > 0 and chat["usage"]["prompt_tokens"] > 0
    resp = out["response"]
    assert resp["streamed"] == resp["output_text"] == "Hello again!" and resp["status"] == "completed"
    assert out["events"][0] == "response.created" and out["events"][-1] == "response.completed"
    assert "response.output_text.delta" in out["events"] and "response.reasoning_text.delta" in out["events"]
    assert [(q["method"], q["path"]) for q in server.requests] == [("POST", "/v1/chat/completions"), ("POST", "/v1/responses")]
    assert all(q["user_agent"].startswith(f"OpenAI/JS {pinned('openai')}") for q in server.requests), server.requests
