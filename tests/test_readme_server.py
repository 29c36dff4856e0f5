"""The README's `## Server` examples, run as written against a real server on 127.0.0.1 (only the port
differs): the curl command through bash, the openai and anthropic SDK snippets with exec, the Codex config parsed and
used the way Codex uses it (streaming Responses, whole conversation resent), the Open WebUI URL."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys

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
    (code,) = [b for b in blocks("python") if "from openai" in b]
    scripts.push(reply(tok, analysis="short", final="Hello from responses"))
    scripts.push(reply(tok, analysis="think", final="Hello from chat"))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(here(code, url), "README.md", "exec"), {})
    assert out.getvalue().splitlines() == ["Hello from responses", "think -> Hello from chat"]
    assert scripts.bodies[-2]["reasoning"] == {"effort": "low"}


def test_anthropic_sdk_example(server):
    url, scripts, tok = server
    (code,) = [b for b in blocks("python") if "import anthropic" in b]
    assert 'base_url="http://127.0.0.1:8000"' in code
    scripts.push(reply(tok, analysis="think", final="Hello from messages"))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code.replace("http://127.0.0.1:8000", url[: -len("/v1")]), "README.md", "exec"), {})
    assert out.getvalue().splitlines() == ["Hello from messages"]
    assert scripts.bodies[-1]["model"] == "gpt-oss-20b" and scripts.bodies[-1]["max_tokens"] == 1024


def test_codex_config_matches_printout_and_works(server):
    url, scripts, tok = server
    (toml_text,) = blocks("toml")
    cfg = tomllib.loads(toml_text)
    provider = cfg["model_providers"]["mlx-oss"]
    assert provider["wire_api"] == "responses" and cfg["model_provider"] == "mlx-oss" and "profiles" not in cfg
    printed = client_settings(BASE, "gpt-oss-20b", has_key=False, context=131072)
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


@pytest.fixture(scope="module")
def keyed_server(tiny_chat_converted):
    model, tok = mlx_oss.load(tiny_chat_converted, dtype="float32")
    scripts = Scripts()
    with running_server(model, tok, scripts, aliases=["gpt-oss-20b"], api_key="sk-printed-test") as (url, app):
        yield url, scripts, tok


def _printed_blocks(text: str) -> dict[str, str]:
    """The printout's sections by their title line (the indented lines under it, unindented)."""
    sections: dict[str, list[str]] = {}
    title = None
    for line in text.splitlines()[1:]:
        if line and not line.startswith(" "):
            title = line
            sections[title] = []
        elif title is not None:
            sections[title].append(line[4:])
    return {t: "\n".join(b).strip() + "\n" for t, b in sections.items()}


@pytest.mark.parametrize("keyed", [False, True])
def test_the_printed_settings_work_as_printed(server, keyed_server, monkeypatch, keyed):
    """What `mlx-oss serve` prints, run as printed (only the port differs): the SDK snippet, the curl
    command, the Codex profile and the Open WebUI line, with and without a key. With a key, every one
    names the environment variable and none holds the key itself."""
    url, scripts, tok = keyed_server if keyed else server
    key = "sk-printed-test"
    if keyed:
        monkeypatch.setenv("MLX_OSS_API_KEY", key)
    text = client_settings(BASE, "gpt-oss-20b", has_key=keyed, context=131072)  # gpt-oss-20b's context, as the README shows
    assert text.splitlines()[0] == f"mlx-oss serve: gpt-oss-20b at {BASE}  (Ctrl+C to stop)"
    assert key not in text
    assert all(line == line.rstrip() for line in text.splitlines())  # pastes cleanly
    b = _printed_blocks(text)
    sdk_key = 'os.environ["MLX_OSS_API_KEY"]' if keyed else '"none"'
    assert b["openai SDK (Python):"].splitlines()[0] == f'client = OpenAI(base_url="{BASE}", api_key={sdk_key})'
    assert list(b) == ["openai SDK (Python):", "curl:", next(t for t in b if t.startswith("Codex ")), "Claude Code 2.1.337:",
                       "Open WebUI: Admin Settings > Connections > OpenAI API > add"]  # fmt: skip

    scripts.push(reply(tok, final="sdk ok"))
    *setup, call = here(b["openai SDK (Python):"], url).strip().splitlines()
    namespace: dict = {}
    exec(compile("\n".join(["import os", "from openai import OpenAI", *setup, f"resp = {call}"]), "printout", "exec"), namespace)
    assert namespace["resp"].output_text == "sdk ok"

    scripts.push(reply(tok, final="curl ok"))
    cmd = here(b["curl:"], url)
    assert ("Authorization: Bearer $MLX_OSS_API_KEY" in cmd) is keyed
    done = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=120, check=True)
    assert json.loads(done.stdout)["choices"][0]["message"]["content"] == "curl ok"

    codex_title = next(t for t in b if t.startswith("Codex "))
    assert codex_title == ("Codex 0.171.0 (~/.codex/mlx-oss.config.toml), then `codex --profile mlx-oss`"
                           + (" (with MLX_OSS_API_KEY set in its environment):" if keyed else ":"))  # fmt: skip
    cfg = tomllib.loads(b[codex_title])
    assert cfg == {"model": "gpt-oss-20b", "model_provider": "mlx-oss", "model_providers": {"mlx-oss": {
        "name": "mlx-oss", "base_url": BASE, "wire_api": "responses", **({"env_key": "MLX_OSS_API_KEY"} if keyed else {})}}}

    # Claude Code's variables, as printed, in front of a program that reads them as Claude Code does: the
    # anthropic SDK takes ANTHROPIC_BASE_URL and ANTHROPIC_AUTH_TOKEN from the environment.
    claude = b["Claude Code 2.1.337:"].replace("http://127.0.0.1:8000", url[: -len("/v1")])
    assert claude.endswith("\nclaude\n") and ("ANTHROPIC_AUTH_TOKEN=$MLX_OSS_API_KEY" in claude) is keyed
    probe = ("import anthropic, os; m = anthropic.Anthropic(max_retries=0).messages.create(model=os.environ['ANTHROPIC_MODEL'], "
             "max_tokens=50, messages=[{'role': 'user', 'content': 'hi'}]); print(m.content[-1].text)")  # fmt: skip
    scripts.push(reply(tok, final="claude ok"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANTHROPIC_")}
    done = subprocess.run(["bash", "-c", claude.removesuffix("claude\n") + f'{sys.executable} -c "{probe}"'], env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0 and done.stdout == "claude ok\n", done.stderr[-2000:]

    webui = b["Open WebUI: Admin Settings > Connections > OpenAI API > add"]
    assert webui == f"URL {BASE}   key {'$MLX_OSS_API_KEY' if keyed else 'none (any string works)'}\n"
    if keyed:  # the key the printout names is the one the server wants
        assert httpx.get(here(BASE, url) + "/models", timeout=30).status_code == 401
        assert httpx.get(here(BASE, url) + "/models", headers={"Authorization": f"Bearer {key}"}, timeout=30).status_code == 200
