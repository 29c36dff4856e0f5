"""The chat TUI in a real terminal (tmux), on the tiny synthetic model, with the chat database on
disk: two chats made, the app quit and restarted with `mlx-oss chat --resume`, both found with their
messages; the app killed (SIGKILL) in the middle of a reply and every completed message still there;
two app processes writing one database at once.

The first app runs from a small driver script written here: random weights never write harmony, so
the driver forces each reply with a test-only logits processor (a `ScriptedTokens` that restarts at
every reply). The restarts run the real command line. Skipped when tmux is not installed.
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from mlx_oss.tui.storage import ChatStore

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (apt-get install tmux)")

DRIVER = textwrap.dedent(
    '''
    """Runs ChatApp on the tiny model with every reply forced (test only)."""
    import os, sys, time
    import mlx_oss
    from mlx_oss.sampling import SamplingConfig, ScriptedTokens
    from mlx_oss.tui.app import ChatApp
    from mlx_oss.tui.session import Backend
    from mlx_oss.tui.storage import ChatStore

    model_path, db, sleep, words = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
    m, tok = mlx_oss.load(model_path, dtype="float32")
    START_ASSISTANT = tok.encode("<|start|>assistant", allowed_special="all")

    class EachReply(ScriptedTokens):
        """Forces "Thinking N." then "Answer N." (+ `words` filler words) at every reply."""

        def __init__(self):
            super().__init__([])
            self.n = 0

        def __call__(self, context, logits):
            if self.step >= len(self.tokens) and context.tolist()[-2:] == START_ASSISTANT:
                self.n += 1
                text = (f"<|channel|>analysis<|message|>Thinking {self.n}.<|end|><|start|>assistant"
                        f"<|channel|>final<|message|>Answer {self.n}." + " word" * words + f" Done {self.n}.<|return|>")
                self.tokens, self.step = tok.encode(text, allowed_special="all"), 0
            if sleep:
                time.sleep(sleep)
            return super().__call__(context, logits)

    forced = SamplingConfig(seed=0, logits_processors=(EachReply(),))
    backend = Backend("tiny-chat", new_chat=lambda: mlx_oss.Chat(m, tok, sampling=forced),
                      open_chat=lambda data: mlx_oss.Chat.from_json(data, m, tok, sampling=forced))
    open(db + ".pid-" + str(os.getpid()), "w").close()
    app = ChatApp(lambda say: backend, model="tiny-chat", source=model_path, store=ChatStore(db))
    app.run()
    app.model_thread.join(timeout=5)
    '''
)


class Tmux:
    """A private tmux server (its own socket), killed at the end."""

    def __init__(self, tmp_path: Path) -> None:
        self.socket = str(Path(tempfile.gettempdir()) / f"mlxoss-tmux-{uuid.uuid4().hex[:8]}.sock")
        self.tmp = tmp_path

    def run(self, *args: str) -> str:
        r = subprocess.run(["tmux", "-S", self.socket, *args], capture_output=True, text=True, timeout=30)
        if r.returncode != 0:
            raise AssertionError(f"tmux {' '.join(args)}: {r.stderr.strip()}")
        return r.stdout

    def start(self, name: str, argv: list[str]) -> None:
        """Run argv in a 120x40 terminal; "EXITED <code>" is printed when it ends."""
        cmd = " ".join(_quote(a) for a in argv) + '; echo "EXITED $?"; sleep 600'
        env = f"MLX_OSS_DATA_DIR={_quote(os.environ.get('MLX_OSS_DATA_DIR', str(self.tmp)))} TERM=xterm-256color"
        self.run("new-session", "-d", "-s", name, "-x", "120", "-y", "40", f"cd {_quote(str(Path.cwd()))} && env {env} {cmd}")

    def screen(self, name: str) -> str:
        return self.run("capture-pane", "-p", "-t", name)

    def wait(self, name: str, *texts: str, timeout: float = 90.0) -> str:
        t0 = time.monotonic()
        while True:
            screen = self.screen(name)
            if all(t in screen for t in texts):
                return screen
            if time.monotonic() - t0 > timeout:
                raise AssertionError(f"timed out waiting for {texts!r}; the screen:\n{screen}")
            time.sleep(0.2)

    def wait_gone(self, name: str, text: str, timeout: float = 90.0) -> None:
        t0 = time.monotonic()
        while text in self.screen(name):
            if time.monotonic() - t0 > timeout:
                raise AssertionError(f"timed out waiting for {text!r} to go")
            time.sleep(0.2)

    def keys(self, name: str, *keys: str) -> None:
        self.run("send-keys", "-t", name, *keys)

    def type(self, name: str, text: str) -> None:
        self.run("send-keys", "-t", name, "-l", text)

    def close(self) -> None:
        subprocess.run(["tmux", "-S", self.socket, "kill-server"], capture_output=True, timeout=30)
        Path(self.socket).unlink(missing_ok=True)


def _quote(s: str) -> str:
    return "'" + s.replace("'", "'\\''") + "'"


@pytest.fixture
def tmux(tmp_path):
    t = Tmux(tmp_path)
    yield t
    t.close()


@pytest.fixture
def driver(tmp_path):
    path = tmp_path / "driver.py"
    path.write_text(DRIVER)
    return path


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "mlx_oss.cli.main", "chat", *args]


def pid_of(db: Path, before: set[Path] = frozenset()) -> int:
    t0 = time.monotonic()
    while time.monotonic() - t0 < 60:
        new = [p for p in db.parent.glob(db.name + ".pid-*") if p not in before]
        if new:
            return int(new[0].name.rsplit("-", 1)[1])
        time.sleep(0.1)
    raise AssertionError("the app did not start")


def test_two_chats_survive_a_restart_with_resume(tmux, driver, tiny_chat_converted, tmp_path):
    data = tmp_path / "data"
    db = data / "chats.sqlite3"
    data.mkdir()
    tmux.start("one", [sys.executable, str(driver), str(tiny_chat_converted), str(db), "0", "0"])
    tmux.wait("one", "Message · Enter sends")
    tmux.type("one", "first question")
    tmux.keys("one", "Enter")
    tmux.wait("one", "Answer 1.", "tokens ·")
    tmux.keys("one", "C-n")
    tmux.wait("one", "Chat with tiny-chat")
    tmux.type("one", "second question")
    tmux.keys("one", "Enter")
    tmux.wait("one", "Answer 2.", "tokens ·")
    tmux.keys("one", "C-q")
    tmux.wait("one", "EXITED 0")

    listed = subprocess.run(cli("--list", "--data-dir", str(data)), capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0 and "first question" in listed.stdout and "second question" in listed.stdout

    # The real command line, no --model: the chat's own model; the last chat; its cache prefilled.
    tmux.start("two", cli("--data-dir", str(data), "--resume"))
    screen = tmux.wait("two", "second question", "Answer 2.", "cache warm")
    assert "first question" not in screen
    tmux.keys("two", "C-b")
    tmux.wait("two", "Chats", "first question")
    tmux.keys("two", "Down", "Enter")
    screen = tmux.wait("two", "Answer 1.")
    assert "Reasoning (2 words)" in screen
    tmux.keys("two", "C-q")
    tmux.wait("two", "EXITED 0")
    with ChatStore(db) as s:
        assert s.integrity() == "ok" and len(s.list()) == 2


def test_killed_mid_reply_keeps_every_completed_message(tmux, driver, tiny_chat_converted, tmp_path):
    data = tmp_path / "data"
    db = data / "chats.sqlite3"
    data.mkdir()
    tmux.start("app", [sys.executable, str(driver), str(tiny_chat_converted), str(db), "0.02", "2000"])
    pid = pid_of(db)
    tmux.wait("app", "Message · Enter sends")
    tmux.type("app", "a long question")
    tmux.keys("app", "Enter")
    tmux.wait("app", "Answer 1. word word")  # the reasoning is complete, the answer streaming
    os.kill(pid, signal.SIGKILL)
    tmux.wait("app", "EXITED 137")

    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = conn.execute("SELECT role, channel, body FROM messages ORDER BY position").fetchall()
    finally:
        conn.close()
    assert [(r[0], r[1]) for r in rows] == [("user", None), ("assistant", "analysis")]
    assert '"a long question"' in rows[0][2] and "Thinking 1." in rows[1][2]

    tmux.start("again", cli("--data-dir", str(data), "--resume"))
    screen = tmux.wait("again", "a long question", "Reasoning (2 words)", "cache warm")
    assert "Traceback" not in screen
    tmux.keys("again", "C-q")
    tmux.wait("again", "EXITED 0")


def test_two_app_processes_on_one_database(tmux, driver, tiny_chat_converted, tmp_path):
    data = tmp_path / "data"
    db = data / "chats.sqlite3"
    data.mkdir()
    for name in ("a", "b"):
        before = set(data.glob("chats.sqlite3.pid-*"))
        tmux.start(name, [sys.executable, str(driver), str(tiny_chat_converted), str(db), "0.002", "60"])
        pid_of(db, before)
    for name in ("a", "b"):
        tmux.wait(name, "Message · Enter sends")
    for turn in range(2):
        for name in ("a", "b"):  # both reply at once, each message written by its own process
            tmux.type(name, f"{name} message {turn}")
            tmux.keys(name, "Enter")
        for name in ("a", "b"):
            tmux.wait(name, f"Done {turn + 1}.", f"{name} message {turn}")
            tmux.wait_gone(name, "generating…")
    for name in ("a", "b"):
        tmux.keys(name, "C-q")
        tmux.wait(name, "EXITED 0")
    with ChatStore(db) as s:
        assert s.integrity() == "ok"
        chats = {c.title: c for c in s.list()}
        assert set(chats) == {"a message 0", "b message 0"}
        for title, c in chats.items():
            users = [m["content"] for m in s.messages(c.id) if m["role"] == "user"]
            assert users == [f"{title[0]} message 0", f"{title[0]} message 1"]
            assert len(s.stats(c.id)) == 2
