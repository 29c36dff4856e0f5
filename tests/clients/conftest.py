"""The client conformance layer (docs/CLIENTS.md): unmodified third-party clients, pinned in the repository
(Node: package.json + package-lock.json here; Python: pyproject.toml's `test` extra), against a real
uvicorn server around a lean tiny chat model (`lean_chat_converted`). Replies are scripted harmony
(server_harness.Scripts, which also records every request body); the server's rendering, parsing,
streaming and API translation are the real code (client_harness.py).

Node clients: `.ci/run` installs them (`npm ci --prefix tests/clients`); elsewhere the `node_clients`
fixture runs `npm ci` on first use (or when package-lock.json changed). Without node/npm those tests
skip, and fail when `CI` is set."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

import mlx_oss
from client_harness import CLIENTS, Served, serve
from server_harness import Scripts, wait_idle

NODE_MODULES = CLIENTS / "node_modules"
NPM_CI_TIMEOUT_S = 600


@pytest.fixture(scope="session")
def served_clients(lean_chat_converted):
    """One server for the whole layer (its prompt cache carries Codex's long prefix from run to run)."""
    model, tok = mlx_oss.load(lean_chat_converted, dtype="float32")
    scripts = Scripts()
    requests: list[dict] = []
    with serve(model, tok, scripts, requests) as (url, app):
        yield Served(url, app, scripts, tok, requests)


@pytest.fixture
def server(served_clients) -> Served:
    """The shared server, idle, with no script left over and empty records."""
    s = served_clients
    wait_idle(s.app)
    with s.scripts.lock:
        s.scripts.queue.clear()
        s.scripts.keyed.clear()
        s.scripts.bodies.clear()
    s.requests.clear()
    return s


def _missing_node(why: str):
    if os.environ.get("CI"):
        pytest.fail(f"{why} (CI is set: the client conformance tests must run)")
    pytest.skip(why)


@pytest.fixture(scope="session")
def node_clients() -> Path:
    """tests/clients/node_modules with the pinned clients: installed by `npm ci` when missing or when
    package-lock.json changed since (npm keeps a copy of the lockfile it installed)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        _missing_node("node and npm are needed for the Node clients (Codex, Vercel AI SDK, openai npm SDK)")
    installed = NODE_MODULES / ".package-lock.json"
    lock = CLIENTS / "package-lock.json"
    if not installed.exists() or installed.stat().st_mtime < lock.stat().st_mtime:
        try:
            r = subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=CLIENTS,
                               capture_output=True, text=True, timeout=NPM_CI_TIMEOUT_S)  # fmt: skip
        except subprocess.TimeoutExpired:
            _missing_node(f"`npm ci` in {CLIENTS} took over {NPM_CI_TIMEOUT_S}s")
        if r.returncode != 0:
            _missing_node(f"`npm ci` in {CLIENTS} failed:\n{r.stdout[-2000:]}{r.stderr[-2000:]}")
    return NODE_MODULES

