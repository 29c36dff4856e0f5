"""A stateful Python session in a Jupyter kernel (ipykernel) of its own, driven with jupyter_client.

The kernel is a separate process started in the chat's working folder from an allow-listed
environment (no secrets the app was given); on Linux the app hides its own environment from it too
(`hide_environment`). `execute` waits for the cell with a deadline: past it the kernel is killed (the
next call starts a fresh one); a kernel that dies is noticed while waiting; `should_stop` interrupts.
"""

from __future__ import annotations

import base64
import ctypes
import os
import queue
import re
import subprocess
import sys
import tempfile
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

__all__ = ["Execution", "KernelSession", "hide_environment", "safe_env"]

# What code needs to find programs, files, the language and time, and this interpreter's packages;
# nothing that holds credentials (URLs with passwords, proxies, tokens, DSNs). A secret can hide in
# any other name (DATABASE_URL, HTTPS_PROXY, SENTRY_DSN, GH_PAT...), so nothing else passes.
_ALLOWED = frozenset({
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TEMP", "TMP", "TERM",
    "VIRTUAL_ENV", "PYTHONPATH", "SSL_CERT_FILE", "SSL_CERT_DIR",
    "IPYTHONDIR", "JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_PATH", "JUPYTER_RUNTIME_DIR",
    "XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME",
})  # fmt: skip
_ALLOWED_PREFIXES = ("LC_",)
_PR_SET_DUMPABLE = 4
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
_IMAGE_TYPES = {"image/png": "png", "image/jpeg": "jpg", "image/svg+xml": "svg", "image/gif": "gif"}


def safe_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for code the model writes: only the allow-listed variables of the app's
    (PATH, HOME, locale, time zone, temp folder, terminal, the venv and Jupyter's folders)."""
    env = os.environ if env is None else env
    return {k: v for k, v in env.items() if k in _ALLOWED or k.startswith(_ALLOWED_PREFIXES)}


def hide_environment() -> bool:
    """Makes this process non-dumpable (Linux prctl PR_SET_DUMPABLE 0), so processes of the same
    user, the kernel among them, can no longer read its /proc/<pid>/environ (nor ptrace it); root
    still can. Also stops core dumps and same-user debuggers attaching. False where not done
    (not Linux, or the call failed): macOS has no such switch."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


@dataclass
class Execution:
    """What one run produced. `status`: ok, error (the code raised), timeout, died, cancelled."""

    status: str = "ok"
    text: list[str] = field(default_factory=list)
    images: list[tuple[str, bytes]] = field(default_factory=list)  # (extension, data)
    exit_code: int | None = None


class KernelSession:
    """One chat's kernel; started on first use, restarted after a timeout or a crash."""

    stateful = True

    def __init__(self, workdir: Path, *, startup_timeout_s: float = 60.0, env: Mapping[str, str] | None = None) -> None:
        self.workdir = Path(workdir)
        self.startup_timeout_s = startup_timeout_s
        self._env = safe_env(env)
        self._km = None
        self._kc = None
        self._sockets: tempfile.TemporaryDirectory | None = None
        self._finalizer: weakref.finalize | None = None

    @property
    def running(self) -> bool:
        return self._km is not None and self._km.is_alive()

    def _start(self) -> None:
        try:
            from jupyter_client import KernelManager
            from jupyter_client.kernelspec import KernelSpecManager
        except ImportError:  # pragma: no cover - a dependency; a clear message if it was removed
            raise RuntimeError("the python tool needs jupyter_client and ipykernel (pip install mlx-oss)") from None
        self.workdir.mkdir(parents=True, exist_ok=True)
        hide_environment()  # before the kernel exists: it could read the app's environment otherwise
        # Only ipykernel's own spec: the kernel runs this interpreter (and its packages), whatever
        # kernels the user has installed elsewhere.
        km = KernelManager(kernel_name="python3", kernel_spec_manager=KernelSpecManager(kernel_dirs=[]))
        # Unix sockets in a private folder instead of TCP ports other local users could reach.
        self._sockets = tempfile.TemporaryDirectory(prefix="mlx-oss-kernel-")
        km.transport, km.ip = "ipc", os.path.join(self._sockets.name, "k")
        km.start_kernel(cwd=str(self.workdir), env={**self._env, "PYTHONUNBUFFERED": "1"},
                        extra_arguments=["--HistoryManager.hist_file=:memory:"],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)  # fmt: skip
        kc = km.blocking_client()
        kc.start_channels()
        try:
            kc.wait_for_ready(timeout=self.startup_timeout_s)
        except RuntimeError:
            _stop(kc, km, self._sockets)
            self._sockets = None
            raise RuntimeError(f"the Python kernel did not start within {self.startup_timeout_s:g} s") from None
        self._km, self._kc = km, kc
        # A session dropped without close() (or the app exiting) still stops its kernel.
        self._finalizer = weakref.finalize(self, _stop, kc, km, self._sockets)

    def execute(self, code: str, timeout_s: float, should_stop: Callable[[], bool] = lambda: False) -> Execution:
        if not self.running:
            self.close()
            self._start()
        km, kc = self._km, self._kc
        out = Execution()
        msg_id = kc.execute(code, store_history=True, allow_stdin=False, stop_on_error=True)
        deadline = time.monotonic() + timeout_s
        interrupted = False
        while True:
            if should_stop() and not interrupted:
                km.interrupt_kernel()
                interrupted, deadline = True, min(deadline, time.monotonic() + 5.0)
                out.status = "cancelled"
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                out.status = "timeout" if not interrupted else "cancelled"
                self.close()  # kill: the next call starts a fresh kernel
                return out
            try:
                msg = kc.get_iopub_msg(timeout=min(0.2, remaining))
            except queue.Empty:
                if not km.is_alive():
                    out.status, out.exit_code = "died", _exit_code(km)
                    self.close()
                    return out
                continue
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream":
                out.text.append(content.get("text", ""))
            elif kind == "error":
                if out.status == "ok":
                    out.status = "error"
                out.text.append(_ANSI.sub("", "\n".join(content.get("traceback") or [f"{content.get('ename')}: {content.get('evalue')}"])) + "\n")
            elif kind in ("execute_result", "display_data"):
                data = content.get("data", {})
                image = next((m for m in _IMAGE_TYPES if m in data), None)
                if image:
                    raw = data[image]
                    blob = raw.encode() if image == "image/svg+xml" else base64.b64decode(raw)
                    out.images.append((_IMAGE_TYPES[image], blob))
                elif "text/plain" in data:
                    out.text.append(data["text/plain"].rstrip("\n") + "\n")
            elif kind == "status" and content.get("execution_state") == "idle":
                return out

    def close(self) -> None:
        """Stop the kernel process (if any); safe to call more than once."""
        finalizer, self._finalizer = self._finalizer, None
        self._kc = self._km = self._sockets = None
        if finalizer is not None:
            finalizer()


def _stop(kc, km, sockets: tempfile.TemporaryDirectory | None) -> None:
    for step in (kc.stop_channels, lambda: km.shutdown_kernel(now=True), km.cleanup_resources):
        try:
            step()
        except Exception:
            pass
    if sockets is not None:
        sockets.cleanup()


def _exit_code(km) -> int | None:
    proc = getattr(getattr(km, "provisioner", None), "process", None)
    code = getattr(proc, "returncode", None) if proc is not None else None
    return code if isinstance(code, int) else None

