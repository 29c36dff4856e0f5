"""What the client conformance tests share (tests/clients/conftest.py holds the fixtures): a real
uvicorn server around a lean tiny chat model (`lean_chat_converted`) with the scripted-replies hook,
behind a recorder of each request's method, path, User-Agent and Authorization header, and running the
Node scripts."""

from __future__ import annotations

import json
import os
import subprocess
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from server_harness import Scripts, running_server

CLIENTS = Path(__file__).resolve().parent


@dataclass
class Served:
    url: str  # the base URL clients are given: http://127.0.0.1:PORT/v1
    app: object
    scripts: Scripts
    tok: object
    requests: list[dict] = field(default_factory=list)  # {"method", "path", "user_agent", "authorization"}

    def push(self, tokens) -> None:
        self.scripts.push(tokens)


class _Recorder:
    """ASGI wrapper: notes each HTTP request's method, path, User-Agent and Authorization header."""

    def __init__(self, app, requests: list[dict]) -> None:
        self.app, self.requests = app, requests

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
            self.requests.append({"method": scope["method"], "path": scope["path"],
                                  "user_agent": headers.get("user-agent", ""),
                                  "authorization": headers.get("authorization")})  # fmt: skip
        return await self.app(scope, receive, send)


@contextmanager
def serve(model, tok, scripts: Scripts, requests: list[dict]):
    """The harness's server (a context long enough for Codex's prompt), recording every request."""
    with running_server(model, tok, scripts, wrap=lambda app: _Recorder(app, requests), max_context=32768) as served:
        yield served


def pinned(package: str) -> str:
    """The exact version package.json pins for an npm package."""
    return json.loads((CLIENTS / "package.json").read_text())["dependencies"][package]


def run_node(script: str, *args: str, env: dict | None = None, timeout: float = 120) -> dict:
    """Run tests/clients/<script> with node; it prints one JSON object (its last stdout line)."""
    r = subprocess.run(["node", str(CLIENTS / script), *args], cwd=CLIENTS, capture_output=True, text=True,
                       timeout=timeout, env={**os.environ, **(env or {})})  # fmt: skip
    assert r.returncode == 0, f"{script} {' '.join(args)} exited {r.returncode}:\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    return json.loads(r.stdout.strip().splitlines()[-1])
