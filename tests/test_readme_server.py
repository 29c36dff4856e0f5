"""The README's `## Server` examples, run as written against a real server on 127.0.0.1 (only the port
differs): the curl command through bash, the openai SDK snippet with exec, the Codex config parsed and
used the way Codex uses it (streaming Responses, whole conversation resent), the Open WebUI URL."""

from __future__ import annotations

import contextlib
import io
import json
import re
import subprocess

from pathlib import Path

import httpx
import openai
import pytest

import mlx_oss
from mlx_oss.server.settings import client_settings
from server_harness import Scripts, reply, running_server

tomllib = pytest.importorskip("tomllib")  # Python 3.11+
README = Path(__file__).resolve().parents[1] / "README.md"
BASE = "http://127.0.0.1:8000/v1"


def blocks(lang: str) -> list[str]:
    text = README.read_text(encoding="utf-8")
    m = re.search(r"^## Server\n(.*?)(?=^## )", text, re.S | re.M)
    assert m, "README.md has no '## Server' section"
    return re.findall(rf"^```{lang}\n(.*?)^```", m.group(1), re.S | re.M)


@pytest.fixture(scope="module")
def server(tiny_chat_converted):
    model, tok = mlx_oss.load(tiny_chat_converted, dtype="float32")
    scripts = Scripts()
    with running_server(model, tok, scripts, aliases=["gpt-oss-20b"]) as (url, app):
        yield url, scripts, tok


def here(text: str, url: str) -> str:
    assert BASE in text
    return text.replace(BASE, url)


def test_curl_example(server):
    url, scripts, tok = server
    (curl,) = [b for b in blocks("sh") if b.startswith("curl ")]
    scripts.push(reply(tok, analysis="greet", final="Hello!"))
    out = subprocess.run(["bash", "-c", here(curl, url)], capture_output=True, text=True, timeout=120, check=True)
    msg = json.loads(out.stdout)["choices"][0]["message"]
    assert (msg["content"], msg["reasoning"]) == ("Hello!", "greet")


def test_sdk_example(server):
    url, scripts, tok = server
    (code,) = blocks("python")
    scripts.push(reply(tok, analysis="short", final="Hello from responses"))
    scripts.push(reply(tok, analysis="think", final="Hello from chat"))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(here(code, url), "README.md", "exec"), {})
    assert out.getvalue().splitlines() == ["Hello from responses", "think -> Hello from chat"]
    assert scripts.bodies[-2]["reasoning"] == {"effort": "low"}


def test_codex_config_matches_printout_and_works(server):
    url, scripts, tok = server
    (toml_text,) = blocks("toml")
    cfg = tomllib.loads(toml_text)
    provider = cfg["model_providers"]["mlx-oss"]
    assert provider["wire_api"] == "responses" and cfg["model_provider"] == "mlx-oss" and "profiles" not in cfg
    printed = client_settings(BASE, "gpt-oss-20b", has_key=False)
    for line in toml_text.strip().splitlines():
        assert line.strip() in printed
    # What Codex sends: streaming Responses, store=false, the whole conversation each time.
    client = openai.OpenAI(base_url=here(provider["base_url"], url), api_key="none", max_retries=0)
    model = cfg["model"]
    tool = {"type": "function", "name": "shell", "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}}}}
    scripts.push(reply(tok, analysis="list files", call=("shell", '{"cmd": "ls"}')))
    items = [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "what is here?"}]}]
    with client.responses.stream(model=model, input=items, tools=[tool], store=False, instructions="You are Codex.") as s:
        first = s.get_final_response()
    call = next(o for o in first.output if o.type == "function_call")
    items += [o.model_dump(exclude_none=True) for o in first.output]
    items.append({"type": "function_call_output", "call_id": call.call_id, "output": "README.md"})
    scripts.push(reply(tok, final="There is a README."))
    with client.responses.stream(model=model, input=items, tools=[tool], store=False, instructions="You are Codex.") as s:
        second = s.get_final_response()
    assert second.output_text == "There is a README."
    assert second.usage.input_tokens_details.cached_tokens >= first.usage.input_tokens


def test_open_webui_settings(server):
    url, scripts, tok = server
    text = README.read_text(encoding="utf-8")
    assert f"URL `{BASE}`" in text
    models = httpx.get(here(BASE, url) + "/models", timeout=30).json()["data"]
    assert models and models[0]["object"] == "model"
    scripts.push(reply(tok, final="hi"))
    c = openai.OpenAI(base_url=here(BASE, url), api_key="anything", max_retries=0)
    stream = c.chat.completions.create(model=models[0]["id"], messages=[{"role": "user", "content": "hi"}], stream=True)
    assert "".join(ch.choices[0].delta.content or "" for ch in stream if ch.choices) == "hi"
