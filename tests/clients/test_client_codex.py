"""The real Codex CLI (@openai/codex, pinned in package.json) against mlx-oss serve: `codex exec` with
the provider config `mlx-oss serve` prints (mlx_oss/server/settings.py, the README), byte for byte,
as the profile file `$CODEX_HOME/mlx-oss.config.toml` and `--profile mlx-oss`. The scripted model
calls Codex's shell tool; Codex runs the command, sends its output back in the next request, and
prints the scripted answer. CODEX_HOME is a temp folder whose config.toml only keeps Codex from
phoning home (no update check, no analytics); nothing is reachable but 127.0.0.1 anyway."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from mlx_oss.server.settings import CODEX_PROFILE, CODEX_VERSION, KEY_ENV, client_settings, codex_config
from server_harness import MODEL_ID, reply

pytestmark = pytest.mark.slow

CLIENTS = Path(__file__).resolve().parent
SECRET = "sk-codex-conformance-5d1e"
COMMAND = "echo mlx-oss-$((6*7))"  # only a shell prints mlx-oss-42
ANSWER = "The command printed mlx-oss-42."
# Test-only settings besides the printed profile: no update check, no analytics (nothing else is reachable).
BASE_CONFIG = """\
check_for_update_on_startup = false

[analytics]
enabled = false
"""


@pytest.fixture(scope="module")
def codex_home(tmp_path_factory) -> Path:
    """One CODEX_HOME for the module's runs: Codex writes its path into the prompt (the skill roots),
    so the same folder lets the second run reuse the server's prompt cache."""
    return tmp_path_factory.mktemp("codex-home")


def _codex(server, home: Path, work: Path, has_key: bool, *flags: str) -> subprocess.CompletedProcess:
    profile = codex_config(server.url, MODEL_ID, has_key)
    printed = client_settings(server.url, MODEL_ID, has_key, 32768)  # the client harness's server context
    assert all(line.strip() in printed for line in profile.splitlines())  # what the banner shows, exactly
    (home / "config.toml").write_text(BASE_CONFIG)
    (home / f"{CODEX_PROFILE}.config.toml").write_text(profile)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "CODEX_", KEY_ENV))}
    env.update(CODEX_HOME=str(home), NO_COLOR="1", NO_PROXY="127.0.0.1,localhost", RUST_LOG="error")
    if has_key:
        env[KEY_ENV] = SECRET
    argv = [str(CLIENTS / "node_modules" / ".bin" / "codex"), "exec", "--profile", CODEX_PROFILE, "--strict-config",
            "--skip-git-repo-check", "--dangerously-bypass-approvals-and-sandbox", "--color", "never", *flags,
            "Run the command that prints the answer, then tell me what it printed."]  # fmt: skip
    return subprocess.run(argv, cwd=work, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300)


def _check_loop(server, r: subprocess.CompletedProcess, has_key: bool) -> None:
    out = f"exit {r.returncode}\n--- stdout\n{r.stdout[-3000:]}\n--- stderr\n{r.stderr[-3000:]}"
    assert r.returncode == 0, out
    assert r.stdout.strip().splitlines()[-1] == ANSWER, out
    # Every request was Codex's own, to the Responses API, with the key from env_key when one is configured.
    assert [(q["method"], q["path"]) for q in server.requests] == [("POST", "/v1/responses")] * 2, server.requests
    assert all(q["user_agent"].startswith(f"codex_exec/{CODEX_VERSION} ") for q in server.requests), server.requests
    assert all(q["authorization"] == (f"Bearer {SECRET}" if has_key else None) for q in server.requests), server.requests
    first, second = server.scripts.bodies
    assert first["model"] == MODEL_ID and first["stream"] is True and first["store"] is False
    names = {t.get("name") for t in first["tools"] if t.get("type") == "function"}
    assert "exec_command" in names, names
    assert any(i.get("role") == "user" and "Run the command" in json.dumps(i) for i in first["input"])
    # The second request resends the conversation: the call as the model wrote it and the command's output.
    calls = [i for i in second["input"] if i.get("type") == "function_call"]
    outputs = [i for i in second["input"] if i.get("type") == "function_call_output"]
    assert [(c["name"], json.loads(c["arguments"])) for c in calls] == [("exec_command", {"cmd": COMMAND})]
    assert [o["call_id"] for o in outputs] == [calls[0]["call_id"]]
    assert "mlx-oss-42" in json.dumps(outputs[0]["output"])


def _script(server) -> None:
    call = ("exec_command", json.dumps({"cmd": COMMAND}))
    server.push(reply(server.tok, analysis="Run it in the shell.", call=call))
    server.push(reply(server.tok, analysis="It printed the answer.", final=ANSWER))


def test_codex_exec_runs_a_shell_call(node_clients, server, codex_home, tmp_path):
    """Codex as installed: default features, the config printed for a server without a key (the README's)."""
    _script(server)
    _check_loop(server, _codex(server, codex_home, tmp_path, False), False)


def test_codex_exec_sends_the_key_named_by_env_key(node_clients, server, codex_home, tmp_path):
    """The config printed for a server with a key: Codex sends the key from the environment variable
    it names (the same loop, so the server's prompt cache holds most of Codex's prompt already)."""
    _script(server)
    _check_loop(server, _codex(server, codex_home, tmp_path, True), True)


def test_the_readme_shows_the_printed_config():
    """The README's Codex block is what `mlx-oss serve` prints for a server without a key (the file the
    test above gives Codex), for the README's address and model."""
    readme = (CLIENTS.parents[1] / "README.md").read_text(encoding="utf-8")
    (block,) = re.findall(r"^```toml\n(.*?)^```", readme, re.S | re.M)
    assert block == codex_config("http://127.0.0.1:8000/v1", "gpt-oss-20b", False)
    assert f"Codex CLI {CODEX_VERSION}" in readme and f"~/.codex/{CODEX_PROFILE}.config.toml" in readme
    assert json.loads((CLIENTS / "package.json").read_text())["dependencies"]["@openai/codex"] == CODEX_VERSION
