"""The `python` built-in tool: approval, a session per chat, bounded output, images, the description.

Nothing runs unless the `approve` callback says yes for that call (no callback: every call is
refused). The code runs in another process: a local Jupyter kernel (stateful, as gpt-oss was
trained) or a fresh docker container per call (stateless, no network). Whatever happens (an
exception, a timeout, a crashed kernel, a refusal) the model gets a text it can read.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from mlx_oss.builtin.python.docker import DockerLimits, DockerSession, docker_available
from mlx_oss.builtin.python.kernel import Execution, KernelSession
from mlx_oss.convert.safe_paths import make_folder, remove_folder
from mlx_oss.errors import UserError
from mlx_oss.events import ToolCall
from mlx_oss.harmony import ToolNamespace

__all__ = ["PYTHON_BACKENDS", "PythonAnswer", "PythonTool", "python_namespace", "Approve"]

PYTHON_BACKENDS = ("jupyter", "docker")
DATA_DIR = "/mnt/data"  # where the trained description tells the model to save files
_IMAGE_FILES = (".png", ".jpg", ".jpeg", ".svg", ".gif")

Approve = Callable[[ToolCall], bool]
"""Asked before every run with the model's call (`call.arguments` is the code); only `True` runs it."""

_PREAMBLE = (
    "Use this tool to execute {kind}Python code in your chain of thought. The code will not be shown to "
    "the user. This tool should be used for internal reasoning, but not for code that is intended "
    "to be visible to the user (e.g. when creating plots, tables, or files).\n\n"
)
_INTERNET = {None: "UNKNOWN. Depends on the cluster.", False: "disabled.", True: "enabled."}


def python_namespace(*, stateful: bool = True, timeout_s: float = 120.0, internet: bool | None = None) -> ToolNamespace:
    """The python tool's system-message section, true to the backend. The defaults (a stateful
    notebook, 120 s, internet unknown) give exactly the text gpt-oss was trained on."""
    if stateful:
        body = (
            "When you send a message containing Python code to python, it will be executed in a stateful "
            f"Jupyter notebook environment. python will respond with the output of the execution or time "
            f"out after {timeout_s:.1f} seconds. The drive at '{DATA_DIR}' can be used to save and persist "
            f"user files. Internet access for this session is {_INTERNET[internet]}"
        )
        return ToolNamespace("python", _PREAMBLE.format(kind="") + body, ())
    body = (
        "When you send a message containing Python code to python, it will be executed in a fresh, "
        "stateless container, and the output of the process will be returned to you: use print() to "
        f"see values. It will time out after {timeout_s:.1f} seconds. The drive at '{DATA_DIR}' can be "
        f"used to save and persist user files. Internet access for this session is {_INTERNET[internet]}\n\n"
        "IMPORTANT: Your python environment is not shared between calls. You will have to pass your "
        "entire code each time."
    )
    return ToolNamespace("python", _PREAMBLE.format(kind="STATELESS ") + body, ())


@dataclass(frozen=True)
class PythonAnswer:
    """What the model is shown, and for the caller: saved image paths and what happened."""

    text: str
    error: bool = False
    images: tuple[str, ...] = ()
    timed_out: bool = False
    refused: bool = False


class PythonTool:
    """One chat's python tool. `workdir` is the chat's folder; None makes a temporary one, which
    `close()` removes when the code saved nothing in it, or always when `keep_files` is False (a
    server, whose clients got the images inline), so a long-running process leaves no folders behind."""

    name = "python"

    def __init__(
        self,
        backend: str = "jupyter",
        *,
        approve: Approve | None = None,
        workdir: str | Path | None = None,
        timeout_s: float = 120.0,
        max_output_chars: int = 16_000,
        docker_limits: DockerLimits = DockerLimits(),
        startup_timeout_s: float = 60.0,
        keep_files: bool = True,
    ) -> None:
        if backend not in PYTHON_BACKENDS:
            raise ValueError(f"python backend must be one of {', '.join(PYTHON_BACKENDS)}, not {backend!r}")
        self.backend = backend
        self.approve = approve
        self._made = make_folder(Path(tempfile.gettempdir()), "mlx-oss-python-", mode=0o700) if workdir is None else None
        self.workdir = self._made.path if self._made is not None else Path(workdir)
        self.keep_files = keep_files
        self.timeout_s = timeout_s
        self.max_output_chars = max_output_chars
        if backend == "docker":
            self.session: KernelSession | DockerSession = DockerSession(self.workdir, docker_limits)
        else:
            self.session = KernelSession(self.workdir, startup_timeout_s=startup_timeout_s)
        self._images_saved = 0

    def namespace(self) -> ToolNamespace:
        if self.backend == "docker":
            return python_namespace(stateful=False, timeout_s=self.timeout_s, internet=False)
        return python_namespace(stateful=True, timeout_s=self.timeout_s)

    def close(self) -> None:
        """Stop the session; remove the temporary folder unless it holds files the user keeps. Never a
        folder it did not make (a --python-dir, or whatever the code put in place of its own)."""
        self.session.close()
        if self._made is not None and self.workdir.is_dir() and not (self.keep_files and any(self.workdir.iterdir())):
            try:
                remove_folder(self._made)
            except (UserError, OSError):
                pass  # not ours (any more), or it will not go: left as it is

    # ------------------------------------------------------------------ a call

    def call(self, call: ToolCall, should_stop: Callable[[], bool] = lambda: False) -> PythonAnswer:
        """Ask for approval, run the code, report; never raises."""
        if not self._approved(call):
            return PythonAnswer("The user did not approve running this code, so it was not run.", error=True, refused=True)
        if self.backend == "docker" and (why := docker_available()) is not None:
            return PythonAnswer(f"The python tool is unavailable: {why}.", error=True)
        code = call.raw if isinstance(call.raw, str) else str(call.arguments)
        try:
            return self._run(code, should_stop)
        except Exception as e:  # a kernel that cannot start, a broken docker...
            self.session.close()
            return PythonAnswer(f"The python tool failed: {type(e).__name__}: {e}", error=True)

    def _approved(self, call: ToolCall) -> bool:
        """Only an answer that is `True` itself runs code: "no", 1, None or an approver that raises
        is a refusal, so a sloppy approver fails closed."""
        try:
            return self.approve is not None and self.approve(call) is True
        except Exception:
            return False

    def _run(self, code: str, should_stop: Callable[[], bool]) -> PythonAnswer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        before = _image_files(self.workdir)
        if self.session.stateful:  # a local kernel: the trained /mnt/data is the chat's folder
            code = code.replace(DATA_DIR, str(self.workdir))
        ex = self.session.execute(code, self.timeout_s, should_stop)
        saved = [self._save(ext, data) for ext, data in ex.images]
        saved += sorted(p for p in _image_files(self.workdir) - before if p not in saved)
        text = self._bounded("".join(ex.text))
        if self.session.stateful:
            text = text.replace(str(self.workdir), DATA_DIR)
        notes = [f"[image saved: {DATA_DIR}/{p.name}]" for p in saved]
        if ex.status == "timeout":
            notes.append(f"[Execution timed out after {self.timeout_s:g} seconds. The Python session was stopped and "
                         + ("restarted: variables, imports and definitions from earlier calls are lost.]"
                            if self.session.stateful else "its container removed.]"))  # fmt: skip
        elif ex.status == "died":
            code_note = f" (exit code {ex.exit_code})" if ex.exit_code is not None else ""
            notes.append(f"[The Python process died{code_note}. A new session will start on the next call; "
                         "earlier state is lost.]")  # fmt: skip
        elif ex.status == "cancelled":
            notes.append("[Execution was stopped by the user.]")
        parts = ([text.rstrip("\n")] if text.strip() else []) + notes
        body = "\n".join(parts) or "[No output. Use print() to see values.]"
        return PythonAnswer(
            body,
            error=ex.status != "ok",
            images=tuple(str(p) for p in saved),
            timed_out=ex.status == "timeout",
        )

    def _bounded(self, text: str) -> str:
        """At most `max_output_chars`: the head and the tail, with what was cut said in between."""
        n = self.max_output_chars
        if len(text) <= n:
            return text
        head, tail = text[: n * 2 // 3], text[-(n // 3) :]
        return f"{head}\n[... {len(text) - len(head) - len(tail):,} characters of output cut ...]\n{tail}"

    def _save(self, ext: str, data: bytes) -> Path:
        while True:
            self._images_saved += 1
            path = self.workdir / f"image-{self._images_saved}.{ext}"
            if not path.exists():
                break
        tmp = path.with_suffix(path.suffix + ".part")
        tmp.write_bytes(data)
        tmp.replace(path)
        return path


def _image_files(folder: Path) -> set[Path]:
    return {p for p in folder.iterdir() if p.suffix.lower() in _IMAGE_FILES and p.is_file()}
