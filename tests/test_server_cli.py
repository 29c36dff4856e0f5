"""`mlx-oss serve` as a user runs it: a subprocess on 127.0.0.1, its printed client settings,
and Ctrl+C/SIGTERM ending an in-flight stream cleanly with exit status 0."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from server_harness import free_port

pytestmark = pytest.mark.slow


def _start(folder, port, *extra):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("MLX_OSS_API_KEY", None)
    return subprocess.Popen(
        [sys.executable, "-m", "mlx_oss.cli.main", "serve", "--model", str(folder), "--port", str(port), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip


def _wait_health(base, proc, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read()
        try:
            return httpx.get(base + "/health", timeout=5).json()
        except httpx.HTTPError:
            time.sleep(0.2)
    raise AssertionError("server did not come up")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_ends_stream_cleanly_and_exits_zero(tiny_chat_converted, sig):
    port = free_port()
    proc = _start(tiny_chat_converted, port)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_health(base, proc)
        body = {"model": tiny_chat_converted.name, "messages": [{"role": "user", "content": "hi"}], "stream": True,
                "max_tokens": 100000}  # fmt: skip
        with httpx.stream("POST", base + "/v1/chat/completions", json=body, timeout=120) as r:
            assert r.status_code == 200
            lines = r.iter_lines()
            assert next(lines).startswith("data: ")  # the role chunk: generation is queued or running
            deadline = time.monotonic() + 60
            while not httpx.get(base + "/health", timeout=5).json()["busy"]:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            proc.send_signal(sig)
            rest = [ln for ln in lines if ln]
        assert rest[-1] == "data: [DONE]"
        err = json.loads(rest[-2][6:])["error"]
        assert err["code"] == "cancelled"
        assert proc.wait(60) == 0
        out = proc.stdout.read()
        assert f"http://127.0.0.1:{port}/v1" in out and 'wire_api = "responses"' in out
        err_text = proc.stderr.read()
        assert "mlx-oss serve: stopped" in err_text and "warning" not in err_text
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)


def test_public_host_without_key_warns():
    from mlx_oss.server.cli import host_warnings

    keyless, unnamed = host_warnings("0.0.0.0", None)
    assert "without an API key" in keyless and "--allowed-hosts" in unnamed
    assert host_warnings("0.0.0.0", "k", ["mac.local"]) == [] and host_warnings("127.0.0.1", None) == []
    assert host_warnings("::1", None) == [] and host_warnings("[::1]", None) == []
    assert host_warnings("192.168.1.5", "k") == []  # a specific address is itself an allowed Host
    assert len(host_warnings("192.168.1.5", None)) == 1


def test_missing_serve_extra_is_one_clear_line(monkeypatch):
    import argparse
    import builtins

    from mlx_oss.errors import UserError
    from mlx_oss.server import cli

    real = builtins.__import__

    def no_uvicorn(name, *args, **kw):
        if name == "uvicorn":
            raise ImportError("No module named 'uvicorn'", name="uvicorn")
        return real(name, *args, **kw)

    monkeypatch.setattr(builtins, "__import__", no_uvicorn)
    with pytest.raises(UserError, match=r"pip install 'mlx-oss\[serve\]'"):
        cli.run(argparse.Namespace())


def test_builtin_tool_flags_build_the_apps_server_tools(monkeypatch):
    import argparse

    from mlx_oss.builtin.browser import FetchLimits
    from mlx_oss.errors import UsageError
    from mlx_oss.server.cli import register, server_tools

    monkeypatch.delenv("EXA_API_KEY", raising=False)
    monkeypatch.delenv("YDC_API_KEY", raising=False)
    p = argparse.ArgumentParser()
    register(p.add_subparsers())
    t = server_tools(p.parse_args(["serve", "--fetch-timeout", "3", "--fetch-max-bytes", "1000"]))
    assert not t.allow_python and t.max_calls == 8  # python is refused unless the operator allows it
    b = t.browser()
    assert b.fetcher.limits == FetchLimits(timeout_s=3, max_bytes=1000) and b.backend.name == "none"
    assert not b.fetcher.allow_private  # pages on this machine or its network are never opened
    t = server_tools(p.parse_args(["serve", "--allow-python", "--python-timeout", "5", "--max-tool-calls", "3"]))
    py = t.python()
    try:
        assert t.allow_python and t.max_calls == 3 and py.timeout_s == 5 and py.approve(None)
        (py.workdir / "plot.png").write_bytes(b"png")  # sent inline to the client: not kept on the server
    finally:
        py.close()
    assert not py.workdir.exists()
    with pytest.raises(UsageError, match="--search-backend"):
        server_tools(p.parse_args(["serve", "--search-backend", "searxng"]))  # no --searxng-url
