"""Stateless Python in a fresh docker container per call: no network, memory/CPU/process limits,
the chat's working folder mounted at /mnt/data (where the code's files, images included, land)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from mlx_oss.builtin.python.kernel import Execution

__all__ = ["DockerLimits", "DockerSession", "docker_available"]


def docker_available(docker: str = "docker") -> str | None:
    """None when `docker` can run containers here, else why not (one line)."""
    exe = shutil.which(docker)
    if exe is None:
        return "docker is not installed (no `docker` on PATH)"
    try:
        r = subprocess.run([exe, "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"docker does not answer ({type(e).__name__})"
    if r.returncode != 0:
        return "the docker daemon is not running (`docker info` failed)"
    return None


@dataclass(frozen=True)
class DockerLimits:
    image: str = "python:3.12-slim"
    memory: str = "1g"
    cpus: float = 1.0
    pids: int = 256


class DockerSession:
    """Runs each call with `python -` in a new container (`--network none`, read-only root, limits)."""

    stateful = False

    def __init__(self, workdir: Path, limits: DockerLimits = DockerLimits(), *, docker: str = "docker") -> None:
        self.workdir = Path(workdir)
        self.limits = limits
        self.docker = docker

    def command(self, name: str) -> list[str]:
        lim = self.limits
        return [
            self.docker, "run", "--rm", "-i", "--name", name,
            "--network", "none", "--memory", lim.memory, "--memory-swap", lim.memory, "--cpus", f"{lim.cpus:g}",
            "--pids-limit", str(lim.pids), "--read-only", "--tmpfs", "/tmp", "--security-opt", "no-new-privileges",
            "--cap-drop", "ALL", "-v", f"{self.workdir.resolve()}:/mnt/data", "-w", "/mnt/data",
            "-e", "PYTHONUNBUFFERED=1", "-e", "MPLBACKEND=Agg", "-e", "HOME=/tmp",
            lim.image, "python", "-",
        ]  # fmt: skip

    def execute(self, code: str, timeout_s: float, should_stop: Callable[[], bool] = lambda: False) -> Execution:
        self.workdir.mkdir(parents=True, exist_ok=True)
        name = f"mlx-oss-python-{uuid.uuid4().hex[:12]}"
        out = Execution()
        proc = subprocess.Popen(self.command(name), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        deadline = time.monotonic() + timeout_s
        stdin: bytes | None = code.encode()
        while True:
            try:
                data, _ = proc.communicate(stdin, timeout=0.2)
                break
            except subprocess.TimeoutExpired:
                stdin = None  # sent; retrying communicate() keeps what was read
                if should_stop() or time.monotonic() > deadline:
                    out.status = "cancelled" if should_stop() else "timeout"
                    try:
                        subprocess.run([self.docker, "kill", name], capture_output=True, timeout=30)
                    except (OSError, subprocess.TimeoutExpired):
                        pass
                    try:  # the client and anything it started (its own process group)
                        os.killpg(proc.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                    data, _ = proc.communicate()
                    break
        out.text.append(data.decode(errors="replace"))
        if out.status == "ok" and proc.returncode:
            out.status, out.exit_code = ("died" if proc.returncode in (125, 137, -9) else "error"), proc.returncode
        return out

    def close(self) -> None:
        """Nothing outlives a call."""
