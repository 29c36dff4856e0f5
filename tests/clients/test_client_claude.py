"""The real Claude Code (@anthropic-ai/claude-code, pinned in package.json) against mlx-oss serve's
Messages API: `claude -p` run by bash with exactly the environment variables `mlx-oss serve` prints
(mlx_oss/server/settings.py, the README). The scripted model calls Claude Code's Bash tool; Claude Code
runs the command, sends its output back as a `tool_result` (with the signed thinking block and the
`tool_use` as the model wrote them), and prints the scripted answer.

No traffic may leave 127.0.0.1: the run is traced (strace, every connect/sendto/sendmsg of the whole
process tree) and the test fails on any address other than the server's, DNS included; the proxy
variables point at a closed local port, so an attempt through a proxy shows up as well."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from mlx_oss.server.settings import CLAUDE_CODE_VERSION, KEY_ENV, claude_code_env, client_settings
from server_harness import MODEL_ID, reply

pytestmark = pytest.mark.slow

CLIENTS = Path(__file__).resolve().parent
SECRET = "sk-claude-conformance-77c1"
COMMAND = "echo mlx-oss-$((6*7))"  # only a shell prints mlx-oss-42
ANSWER = "The command printed mlx-oss-42."
PROMPT = "Run the command that prints the answer, then tell me what it printed."
CONTEXT = 32768  # the client harness's server (client_harness.serve)
# Where a traced socket call names an IPv4/IPv6 peer: strace's sockaddr text.
PEER = re.compile(r'sin_port=htons\((\d+)\), sin_addr=inet_addr\("([^"]+)"\)|sin6_port=htons\((\d+)\).*?inet_pton\(AF_INET6, "([^"]+)"')


@pytest.fixture(scope="module")
def claude_home(tmp_path_factory) -> tuple[Path, Path]:
    """One HOME (Claude Code keeps ~/.claude.json and ~/.claude there) and one project folder for the
    module's runs: Claude Code writes the folder's memory path into its system prompt, so the same
    folder lets the second run reuse the server's prompt cache, as a user's next session in a project does."""
    return tmp_path_factory.mktemp("claude-home"), tmp_path_factory.mktemp("claude-project")


def _printed_block(text: str) -> str:
    """The Claude Code lines of what `mlx-oss serve` prints, unindented: a shell command ending in `claude`."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Claude Code "))
    end = lines.index("    claude", start)
    return "\n".join(line.removeprefix("    ") for line in lines[start + 1 : end + 1])


def _claude(server, home: Path, work: Path, has_key: bool, trace: Path) -> subprocess.CompletedProcess:
    printed = _printed_block(client_settings(server.url, MODEL_ID, has_key, CONTEXT))
    assert printed.splitlines()[:-1] == [f"{k}={v} \\" for k, v in claude_code_env(server.url, MODEL_ID, has_key, CONTEXT).items()]
    bin_dir = CLIENTS / "node_modules" / ".bin"
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "HOME": str(home), "NO_COLOR": "1",
           "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9", "NO_PROXY": "127.0.0.1,localhost"}  # fmt: skip
    if has_key:
        env[KEY_ENV] = SECRET
    # As printed, with the arguments of a scripted run after `claude`: print mode, JSON result, the one
    # command allowed without asking (root may not skip permissions altogether).
    command = f"{printed} -p --output-format json --allowedTools 'Bash(echo:*)' -- '{PROMPT}'"
    argv = ["strace", "-f", "-qq", "-e", "trace=connect,sendto,sendmsg", "-o", str(trace), "bash", "-c", command]
    return subprocess.run(argv, cwd=work, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600)


def _peers(trace: Path) -> set[tuple[str, int]]:
    out = set()
    for m in PEER.finditer(trace.read_text(errors="replace")):
        port, addr = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
        out.add((addr, int(port)))
    return out


def _script(server) -> None:
    call = ("Bash", json.dumps({"command": COMMAND, "description": "Print the answer"}))
    server.push(reply(server.tok, analysis="Run it in the shell.", call=call))
    server.push(reply(server.tok, analysis="It printed the answer.", final=ANSWER))


def _check_loop(server, r: subprocess.CompletedProcess, has_key: bool, trace: Path) -> dict:
    out = f"exit {r.returncode}\n--- stdout\n{r.stdout[-3000:]}\n--- stderr\n{r.stderr[-3000:]}"
    assert r.returncode == 0, out
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["result"] == ANSWER and result["is_error"] is False and result["num_turns"] == 2, out
    # Nothing but the server: every peer of the traced process tree is the server's address and port.
    port = int(server.url.split(":")[-1].split("/")[0])
    assert _peers(trace) == {("127.0.0.1", port)}, _peers(trace)
    # Two requests, Claude Code's own, to the Messages API, with the key when the settings name one.
    assert [(q["method"], q["path"]) for q in server.requests] == [("POST", "/v1/messages")] * 2, server.requests
    assert all(q["user_agent"].startswith(f"claude-cli/{CLAUDE_CODE_VERSION} ") for q in server.requests), server.requests
    assert all(q["authorization"] == f"Bearer {SECRET if has_key else 'none'}" for q in server.requests), server.requests
    first, second = server.scripts.bodies
    assert first["model"] == MODEL_ID and first["stream"] is True
    assert "Bash" in {t["name"] for t in first["tools"]}
    # The second request resends the conversation: the signed thinking, the call as the model wrote it
    # (its id round-trips), and the command's output as the tool_result.
    assistant = second["messages"][-2]
    assert assistant["role"] == "assistant", second["messages"]
    thinking = [b for b in assistant["content"] if b["type"] == "thinking"]
    uses = [b for b in assistant["content"] if b["type"] == "tool_use"]
    assert len(thinking) == 1 and thinking[0]["signature"].startswith("mlxoss-"), assistant
    assert [(u["name"], u["input"]) for u in uses] == [("Bash", {"command": COMMAND, "description": "Print the answer"})]
    results = [b for b in second["messages"][-1]["content"] if b.get("type") == "tool_result"]
    assert [b["tool_use_id"] for b in results] == [uses[0]["id"]]
    assert "mlx-oss-42" in json.dumps(results[0]["content"])
    return result


@pytest.fixture
def traced():
    if not shutil.which("strace"):
        if os.environ.get("CI"):
            pytest.fail("strace is needed to check that Claude Code talks to 127.0.0.1 only (CI is set)")
        pytest.skip("strace is needed to check that Claude Code talks to 127.0.0.1 only")


def test_claude_code_runs_a_bash_call(node_clients, traced, server, claude_home, tmp_path):
    """Claude Code with the settings printed for a server without a key (the README's)."""
    _script(server)
    _check_loop(server, _claude(server, *claude_home, False, tmp_path / "trace"), False, tmp_path / "trace")


def test_claude_code_sends_the_key_and_reuses_the_cache(node_clients, traced, server, claude_home, tmp_path):
    """The settings printed for a server with a key: Claude Code sends the key the shell expands from
    the variable. The same loop again, so the server's prompt cache holds Claude Code's long prompt:
    what it reports as read from the cache is most of what it sent."""
    _script(server)
    result = _check_loop(server, _claude(server, *claude_home, True, tmp_path / "trace"), True, tmp_path / "trace")
    usage = result["usage"]
    assert usage["cache_read_input_tokens"] > 0.9 * (usage["input_tokens"] + usage["cache_read_input_tokens"]), usage


def test_the_readme_shows_the_printed_settings():
    """The README's Claude Code block is what `mlx-oss serve` prints for a server without a key, for the
    README's address, model and the 20b's context; package.json pins the version it names."""
    readme = (CLIENTS.parents[1] / "README.md").read_text(encoding="utf-8")
    (block,) = re.findall(r"^```sh\n(ANTHROPIC_BASE_URL.*?)^```", readme, re.S | re.M)
    assert block.rstrip("\n") == _printed_block(client_settings("http://127.0.0.1:8000/v1", "gpt-oss-20b", False, 131072))
    assert f"Claude Code {CLAUDE_CODE_VERSION}" in readme
    assert json.loads((CLIENTS / "package.json").read_text())["dependencies"]["@anthropic-ai/claude-code"] == CLAUDE_CODE_VERSION
