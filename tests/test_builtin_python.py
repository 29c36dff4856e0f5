"""The built-in python tool: approval, a stateful kernel in its own process, timeouts, crashes,
bounded output, images and the chat's working folder; the docker backend through a stand-in `docker`."""

from __future__ import annotations

import json
import os
import queue
import stat
import subprocess
import sys
import tempfile
import textwrap
import time

import pytest

from mlx_oss.builtin.browser import SearchResult
from mlx_oss.builtin.python import DockerLimits, DockerSession, PythonTool, docker_available, python_namespace
from mlx_oss.builtin.python.kernel import Execution
from mlx_oss.builtin.registry import BuiltinTools
from mlx_oss.events import ToolCall
from mlx_oss.harmony import ToolNamespace

pytest.importorskip("ipykernel")

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 32


def code(text: str) -> ToolCall:
    text = textwrap.dedent(text).strip()
    return ToolCall("python", text, text, tool="python", recipient="python")


def yes(call: ToolCall) -> bool:
    return True


@pytest.fixture(scope="module")
def tool(tmp_path_factory):
    t = PythonTool(approve=yes, workdir=tmp_path_factory.mktemp("chat-a"), timeout_s=60)
    yield t
    t.close()
    assert not t.session.running


def test_refused_without_approval_and_nothing_starts(tmp_path):
    asked = []
    for approve in (None, lambda c: asked.append(c.raw) or False, lambda c: 1 / 0):
        t = PythonTool(approve=approve, workdir=tmp_path)
        a = t.call(code("open('pwned', 'w').write('x')"))
        assert a.refused and a.error and "did not approve" in a.text
        assert not t.session.running and not (tmp_path / "pwned").exists()
    assert asked == ["open('pwned', 'w').write('x')"]  # the callback saw the code


def test_state_persists_across_calls(tool):
    assert tool.call(code("x = 40\ndef f(y):\n    return x + y")).text == "[No output. Use print() to see values.]"
    a = tool.call(code("print(f(2))\nf(1)"))
    assert a.text == "42\n41" and not a.error
    assert tool.session.running and tool.session._km.has_kernel  # a separate process
    assert tool.session._km.provisioner.process.pid != os.getpid()


def test_exceptions_are_output_and_the_session_goes_on(tool):
    a = tool.call(code("1 / 0"))
    assert a.error and "ZeroDivisionError: division by zero" in a.text and "\x1b[" not in a.text
    assert tool.call(code("print('still here')")).text == "still here"


def test_huge_output_is_truncated(tool):
    a = tool.call(code("for i in range(200000):\n    print(f'line {i}')"))
    assert len(a.text) < tool.max_output_chars + 200
    assert a.text.startswith("line 0\n") and a.text.endswith("line 199999")
    assert "characters of output cut" in a.text


def test_working_folder_is_the_chats_and_images_are_saved(tool, tmp_path_factory):
    a = tool.call(code("""
        import os
        open('/mnt/data/notes.txt', 'w').write('hi')
        open('rel.txt', 'w').write('there')
        print(os.getcwd())
        from IPython.display import Image, display
        display(Image(data=%r, format='png'))
        open('/mnt/data/plot.png', 'wb').write(%r)
    """ % (PNG, PNG)))
    assert not a.error, a.text
    assert (tool.workdir / "notes.txt").read_text() == "hi" and (tool.workdir / "rel.txt").read_text() == "there"
    assert a.text.splitlines()[0] == "/mnt/data"  # the model sees the folder it was told about
    names = sorted(os.path.basename(p) for p in a.images)
    assert names == ["image-1.png", "plot.png"] and all(os.path.dirname(p) == str(tool.workdir) for p in a.images)
    assert (tool.workdir / "image-1.png").read_bytes() == PNG
    assert "[image saved: /mnt/data/image-1.png]" in a.text and "[image saved: /mnt/data/plot.png]" in a.text
    other = PythonTool(approve=yes, workdir=tmp_path_factory.mktemp("chat-b"))
    assert other.workdir != tool.workdir and not (other.workdir / "notes.txt").exists()


def test_secrets_are_not_in_the_kernel_environment(tool, monkeypatch):
    # The session started before this test; a fresh one sees the filtered environment of now.
    tool.session.close()
    monkeypatch.setenv("EXA_API_KEY", "exa-should-not-leak")
    monkeypatch.setenv("MY_TOKEN", "tok")
    tool.session._env = __import__("mlx_oss.builtin.python.kernel", fromlist=["safe_env"]).safe_env()
    a = tool.call(code("import os\nprint(sorted(k for k in os.environ if 'KEY' in k or 'TOKEN' in k))"))
    assert a.text == "[]"


def test_infinite_loop_times_out_and_the_session_restarts(tool):
    tool.call(code("kept = 1"))
    tool.timeout_s = 3
    start = time.monotonic()
    try:
        a = tool.call(code("while True:\n    pass"))
    finally:
        tool.timeout_s = 60
    assert time.monotonic() - start < 3 * 3  # stopped at its limit (a 10x deadline would take 30 s)
    assert a.timed_out and a.error and "timed out after 3 seconds" in a.text and "restarted" in a.text
    assert not tool.session.running
    b = tool.call(code("print('kept' in globals())"))
    assert b.text == "False" and not b.error  # fresh state


def test_kernel_crash_is_reported_and_recovered(tool):
    a = tool.call(code("import os\nos._exit(3)"))
    assert a.error and "The Python process died (exit code 3)" in a.text
    assert tool.call(code("print(6 * 7)")).text == "42"


def test_cancel_interrupts_a_long_run(tool):
    calls = iter(range(1000))
    a = tool.call(code("import time\ntime.sleep(30)"), should_stop=lambda: next(calls) > 3)
    assert "stopped by the user" in a.text and "KeyboardInterrupt" in a.text
    assert tool.call(code("print('alive')")).text == "alive"  # interrupt keeps the session


def test_descriptions_follow_the_backend(tmp_path):
    assert PythonTool(workdir=tmp_path).namespace() == ToolNamespace.python()  # trained text, exactly
    docker = PythonTool("docker", workdir=tmp_path, timeout_s=30).namespace().description
    assert "STATELESS" in docker and "not shared between calls" in docker and "Internet access for this session is disabled." in docker
    assert "time out after 30.0 seconds" in docker
    assert "out after 10.0 seconds" in python_namespace(timeout_s=10).description
    with pytest.raises(ValueError, match="python backend must be one of"):
        PythonTool("uv")


FAKE_DOCKER = """#!{python}
import os, re, subprocess, sys, time
args = sys.argv[1:]
open(os.environ["FAKE_DOCKER_LOG"], "a").write(" ".join(args) + "\\n")
if args[0] == "info":  # as docker's: flags and template fields are checked, the answer printed
    time.sleep(float(os.environ.get("FAKE_DOCKER_INFO_S", "0")))
    if args[1:] and (args[1] != "--format" or len(args) != 3):
        sys.exit("unknown flag: " + args[1])
    if args[1:] and set(re.findall(r"{{{{\\s*\\.(\\w+)\\s*}}}}", args[2])) - {{"ServerVersion"}}:
        sys.exit("template: can't evaluate field in type system.Info")
    if os.environ.get("FAKE_DOCKER_UP") != "1":
        sys.exit("Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?")
    print(args[2].replace("{{{{.ServerVersion}}}}", "27.3.1") if args[1:] else "Server Version: 27.3.1")
    sys.exit(0)
if args[0] == "kill":  # as docker's: the name of the container killed, on stdout
    time.sleep(float(os.environ.get("FAKE_DOCKER_KILL_S", "0")))
    print(args[1])
if args[0] == "run":
    mount = args[args.index("-v") + 1].split(":")[0]
    sys.exit(subprocess.call([sys.executable, "-"], cwd=mount))
"""


@pytest.fixture
def fake_docker(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exe = bin_dir / "docker"
    exe.write_text(FAKE_DOCKER.format(python=sys.executable))
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    log = tmp_path / "docker.log"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_DOCKER_LOG", str(log))
    monkeypatch.setenv("FAKE_DOCKER_UP", "1")
    return log


def test_docker_backend_runs_each_call_in_a_locked_down_container(fake_docker, tmp_path):
    t = PythonTool("docker", approve=yes, workdir=tmp_path / "work")
    a = t.call(code("x = 1\nprint('in container')\nopen('chart.png', 'wb').write(b'png')"))
    assert a.text.startswith("in container") and a.images == (str(tmp_path / "work" / "chart.png"),)
    run = next(line for line in fake_docker.read_text().splitlines() if line.startswith("run"))
    for flag in ("--network none", "--memory 1g", "--cpus 1", "--pids-limit 256", "--read-only", "--cap-drop ALL",
                 f"-v {(tmp_path / 'work').resolve()}:/mnt/data", "-w /mnt/data", "--rm"):  # fmt: skip
        assert flag in run
    b = t.call(code("print(x)"))  # stateless, as its description says
    assert b.error and "NameError" in b.text


def test_docker_backend_timeout_and_missing_daemon(fake_docker, tmp_path, monkeypatch):
    t = PythonTool("docker", approve=yes, workdir=tmp_path, timeout_s=2)
    a = t.call(code("while True:\n    pass"))
    assert a.timed_out and "container removed" in a.text
    assert any(line.startswith("kill mlx-oss-python-") for line in fake_docker.read_text().splitlines())
    monkeypatch.setenv("FAKE_DOCKER_UP", "0")
    down = t.call(code("print(1)"))
    assert down.error and down.text == "The python tool is unavailable: the docker daemon is not running (`docker info` failed)."


def test_a_stopped_docker_call_ends_soon_quietly_and_says_so(fake_docker, tmp_path, monkeypatch, capfd):
    """The user's stop is acted on within a poll (0.2 s; asserted within 1 s of asking) and the model is
    told the run was stopped; the container is killed without `docker kill` printing on the app's
    terminal, and a `docker kill` that hangs is given up on (its 30 s limit scaled down 100x here)."""
    asked = []

    def stop_after_0_4_s() -> bool:
        if time.monotonic() - start < 0.4:
            return False
        asked.append(time.monotonic())
        return True

    start = time.monotonic()
    ex = DockerSession(tmp_path).execute("import time\ntime.sleep(30)", 60, stop_after_0_4_s)
    assert ex.status == "cancelled" and asked[0] - start < 1.0
    assert any(line.startswith("kill mlx-oss-python-") for line in fake_docker.read_text().splitlines())
    t = PythonTool("docker", approve=yes, workdir=tmp_path)
    a = t.call(code("import time\ntime.sleep(30)"), should_stop=lambda: True)
    assert a.error and a.text.endswith("[Execution was stopped by the user.]") and not a.timed_out
    assert capfd.readouterr() == ("", "")
    real_run = subprocess.run
    monkeypatch.setattr(subprocess, "run", lambda *args, timeout=None, **kw: real_run(
        *args, timeout=None if timeout is None else timeout / 100, **kw))  # fmt: skip
    monkeypatch.setenv("FAKE_DOCKER_KILL_S", "10")
    start = time.monotonic()
    assert DockerSession(tmp_path).execute("import time\ntime.sleep(30)", 60, lambda: True).status == "cancelled"
    assert time.monotonic() - start < 5  # not the 10 s the kill takes


@pytest.mark.parametrize(
    "source, died",
    [
        ("import sys; sys.exit(137)", " (exit code 137)"),  # killed for memory (128 + SIGKILL)
        ("import sys; sys.exit(125)", " (exit code 125)"),  # docker itself failed
        ("import os, signal; os.kill(os.getppid(), signal.SIGKILL)", " (exit code -9)"),  # the client killed
        ("import sys; sys.exit(3)", None),
        ("1 / 0", None),
    ],
    ids=["137", "125", "-9", "exit-3", "exception"],
)
def test_a_container_that_dies_is_told_apart_from_code_that_fails(fake_docker, tmp_path, source, died):
    """A container killed (out of memory, docker failing, the client killed) is reported as a process
    that died, with its exit code; code that exits non-zero or raises is an error shown as its output."""
    a = PythonTool("docker", approve=yes, workdir=tmp_path).call(code(source))
    assert a.error
    if died:
        assert a.text.endswith(f"[The Python process died{died}. A new session will start on the next call; "
                               "earlier state is lost.]")  # fmt: skip
    else:
        assert "died" not in a.text and (source != "1 / 0" or "ZeroDivisionError" in a.text)
        assert DockerSession(tmp_path).execute(source, 30).status == "error"  # as a kernel reports it


def test_output_that_is_not_utf8_is_shown_with_replacement_characters(fake_docker, tmp_path):
    a = PythonTool("docker", approve=yes, workdir=tmp_path).call(code("import sys; sys.stdout.buffer.write(b'\\xff ok')"))
    assert not a.error and a.text == "\ufffd ok"


def test_docker_command_mounts_only_the_chat_folder(tmp_path):
    cmd = DockerSession(tmp_path).command("n")
    assert [a for a in cmd if ":/mnt/data" in a] == [f"{tmp_path.resolve()}:/mnt/data"]


def test_docker_command_is_the_whole_sandbox(tmp_path):
    """Every option of the container, and nothing else: removed after the call, the code on stdin, a
    name to kill it by, no network, memory without swap, the CPU and process limits, a read-only root
    with a writable /tmp, no privilege gain, no capabilities, only the chat's folder (mounted, and the
    working folder), three fixed variables, then the image's python reading the code from stdin."""
    folder = f"{tmp_path.resolve()}:/mnt/data"
    assert DockerSession(tmp_path).command("n") == [
        "docker", "run", "--rm", "-i", "--name", "n", "--network", "none", "--memory", "1g", "--memory-swap", "1g",
        "--cpus", "1", "--pids-limit", "256", "--read-only", "--tmpfs", "/tmp", "--security-opt", "no-new-privileges",
        "--cap-drop", "ALL", "-v", folder, "-w", "/mnt/data", "-e", "PYTHONUNBUFFERED=1", "-e", "MPLBACKEND=Agg",
        "-e", "HOME=/tmp", "python:3.12-slim", "python", "-",
    ]  # fmt: skip
    limits = DockerLimits(image="sandbox:1", memory="512m", cpus=0.5, pids=64)
    cmd = DockerSession(tmp_path, limits, docker="/opt/bin/podman").command("m")
    assert cmd[:2] == ["/opt/bin/podman", "run"] and cmd[-3:] == ["sandbox:1", "python", "-"]
    assert " --memory 512m --memory-swap 512m --cpus 0.5 --pids-limit 64 " in " ".join(cmd)


def test_its_own_folder_goes_on_close_unless_it_holds_the_users_files(fake_docker, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    unused = PythonTool("docker", approve=yes)
    saved = PythonTool("docker", approve=yes)
    served = PythonTool("docker", approve=yes, keep_files=False)
    for t in (unused, saved, served):
        assert t.workdir.parent == tmp_path / "tmp" and t.workdir.name.startswith("mlx-oss-python-")
    for t in (saved, served):
        assert t.call(code("open('chart.png', 'wb').write(b'png')")).images == (str(t.workdir / "chart.png"),)
    for t in (unused, saved, served):
        t.close()
    assert list((tmp_path / "tmp").iterdir()) == [saved.workdir]  # the chat's image stays where it was shown
    given = PythonTool("docker", approve=yes, workdir=tmp_path / "mine", keep_files=False)
    given.call(code("print(1)"))
    given.close()
    assert (tmp_path / "mine").is_dir()  # a folder the caller chose is never removed


def test_docker_missing_hanging_or_rejecting_its_flags_is_reported(fake_docker, tmp_path, monkeypatch, capfd):
    """What the model is told when docker cannot run its code: not installed, a `docker info` that does
    not answer (given up on: its 15 s limit is scaled down 100x here), or that fails. Checking prints
    nothing on the app's own terminal."""
    t = PythonTool("docker", approve=yes, workdir=tmp_path / "work")
    assert t.call(code("print(1)")).text.startswith("1") and docker_available() is None
    assert capfd.readouterr() == ("", "")  # `docker info`'s answer and warnings are not shown
    real_run = subprocess.run

    def quick(*args, timeout=None, **kw):
        return real_run(*args, timeout=None if timeout is None else timeout / 100, **kw)

    monkeypatch.setattr(subprocess, "run", quick)
    monkeypatch.setenv("FAKE_DOCKER_INFO_S", "10")
    start = time.monotonic()
    hung = t.call(code("print(1)"))
    assert hung.error and hung.text == "The python tool is unavailable: docker does not answer (TimeoutExpired)."
    assert time.monotonic() - start < 3  # not the 10 s the daemon takes
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    gone = t.call(code("print(1)"))
    assert gone.error and gone.text == "The python tool is unavailable: docker is not installed (no `docker` on PATH)."


def test_docker_session_makes_its_folder(fake_docker, tmp_path):
    """A DockerSession used on its own makes the chat's folder (parents too) before mounting it."""
    ex = DockerSession(tmp_path / "chats" / "one").execute("print('made')", 30)
    assert (ex.status, "".join(ex.text)) == ("ok", "made\n") and (tmp_path / "chats" / "one").is_dir()


class ScriptedSession:
    """Stands in for the kernel: each call gets the next Execution given (then plain output); records
    the code and how often it was closed."""

    stateful = True

    def __init__(self, *runs: Execution) -> None:
        self.runs = list(runs)
        self.ran: list[str] = []
        self.closed = 0

    def execute(self, code, timeout_s, should_stop=lambda: False) -> Execution:
        self.ran.append(code)
        return self.runs.pop(0) if self.runs else Execution(text=["ran\n"])

    def close(self) -> None:
        self.closed += 1


def test_saved_images_never_overwrite_files_in_the_folder(tmp_path):
    """Images the code displays are numbered on from what the folder holds: a user's image-1.png stays
    as it was, and each image (of one call or the next) gets the next free name; no temporary file stays."""
    (tmp_path / "image-1.png").write_bytes(b"the user's")
    t = PythonTool(approve=yes, workdir=tmp_path)
    t.session = ScriptedSession(Execution(images=[("png", PNG), ("svg", b"<svg/>")]), Execution(images=[("png", PNG)]))
    a = t.call(code("show()"))
    assert a.images == (str(tmp_path / "image-2.png"), str(tmp_path / "image-3.svg"))
    assert "[image saved: /mnt/data/image-2.png]\n[image saved: /mnt/data/image-3.svg]" in a.text
    assert t.call(code("show()")).images == (str(tmp_path / "image-4.png"),)
    assert (tmp_path / "image-1.png").read_bytes() == b"the user's" and (tmp_path / "image-2.png").read_bytes() == PNG
    assert sorted(p.name for p in tmp_path.iterdir()) == ["image-1.png", "image-2.png", "image-3.svg", "image-4.png"]


class _Provisioner:
    def __init__(self, **attrs) -> None:
        self.__dict__.update(attrs)


class _DyingKernel:
    """A kernel manager whose kernel dies during the call; `attrs` shape it as a jupyter_client version
    or provisioner would (no `provisioner` attribute, a remote provisioner without a local process...)."""

    def __init__(self, **attrs) -> None:
        self.__dict__.update(attrs)
        self._alive = [True]  # alive when the call starts, dead after

    def is_alive(self) -> bool:
        return self._alive.pop() if self._alive else False


class _SilentClient:
    def execute(self, code, **kw) -> str:
        return "msg-1"

    def get_iopub_msg(self, timeout):
        raise queue.Empty


@pytest.mark.parametrize(
    "kernel, note",
    [
        (_DyingKernel(provisioner=_Provisioner(process=_Provisioner(returncode=-9))), " (exit code -9)"),
        (_DyingKernel(), ""),  # a jupyter_client without provisioners
        (_DyingKernel(provisioner=None), ""),
        (_DyingKernel(provisioner=_Provisioner()), ""),  # a remote provisioner: no local process
        (_DyingKernel(provisioner=_Provisioner(process=_Provisioner())), ""),
        (_DyingKernel(provisioner=_Provisioner(process=_Provisioner(returncode="gone"))), ""),
    ],
    ids=["exit-code", "no-provisioner", "provisioner-none", "no-process", "no-returncode", "not-an-int"],
)
def test_a_dead_kernel_is_reported_with_its_exit_code_when_there_is_one(tmp_path, kernel, note):
    """However jupyter_client shows the kernel's process, a kernel that dies is reported as such (with
    its exit code when it has a number), never as a failure of the tool."""
    t = PythonTool(approve=yes, workdir=tmp_path)
    t.session._km, t.session._kc = kernel, _SilentClient()
    a = t.call(code("print(1)"))
    assert a.error and a.text == (f"[The Python process died{note}. A new session will start on the next call; "
                                  "earlier state is lost.]")  # fmt: skip


class OneResult:
    """A search backend with one fixed result (nothing leaves the machine)."""

    name = "one"

    def search(self, query, topn, client):
        return [SearchResult("A page", "https://a.example/")]


SEARCH = ToolCall("browser.search", {"query": "q"}, json.dumps({"query": "q"}), recipient="browser.search", tool="browser")


def no(call: ToolCall) -> bool:
    return False


def test_turning_tools_on_and_off_keeps_what_stays_and_closes_what_goes(tmp_path):
    """`Chat.builtin_tools = ...`: a tool that stays keeps its state (the browser's page stack, so cursors
    go on; the python session, not closed) and its approver, also one set on the PythonTool itself; a
    tool turned off is closed and answers that it is off; `reset` starts the pages and the session anew."""
    tools = BuiltinTools(("browser", "python"), browser=OneResult(), approve=yes, workdir=tmp_path)
    session = tools.python.session = ScriptedSession()
    assert tools.run(SEARCH).content.startswith("[0] q\n")
    both = tools.with_names(("python", "browser"))
    assert both.python is tools.python and both.run(SEARCH).content.startswith("[1] q\n")
    assert not both.run(code("print(1)")).error and session.ran == ["print(1)"] and session.closed == 0
    tools.python.approve = no  # on the tool itself, not through BuiltinTools
    assert both.with_names(("browser", "python")).run(code("print(2)")).refused
    tools.python.approve = yes
    browser_only = both.with_names("browser")
    assert session.closed == 1
    assert browser_only.run(code("print(3)")).content == "Error: the python tool is not enabled in this chat"
    assert browser_only.run(SEARCH).content.startswith("[2] q\n")
    browser_only.reset()
    assert browser_only.run(SEARCH).content.startswith("[0] q\n")
    both.reset()
    assert session.closed == 2


def test_turning_python_on_later_uses_the_chats_approver_and_folder(tmp_path):
    """A python tool turned on after the chat started gets the chat's approver and working folder."""
    tools = BuiltinTools("browser", browser=OneResult(), approve=yes, workdir=tmp_path)
    on = tools.with_names(("browser", "python"))
    assert on.python.workdir == tmp_path
    on.python.session = ScriptedSession()
    assert not on.run(code("print(1)")).refused


def _kernels_in(folder) -> list[int]:
    """The live processes of this user working in `folder` (a kernel runs in its chat's folder)."""
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as stat_file:
                state = stat_file.read().rsplit(")", 1)[1].split()[0]
            if os.readlink(f"/proc/{pid}/cwd") == str(folder) and state != "Z":
                pids.append(int(pid))
        except OSError:
            pass
    return pids


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_kernel_that_does_not_start_in_time_is_an_answer_and_leaves_nothing_running(tmp_path, monkeypatch):
    """jupyter_client's wait gives up (faked: a real kernel's start takes a second or two, and the wait
    polls in 1 s steps): the kernel it started is shut down, its sockets' folder removed, and the model
    reads why; the next call starts a kernel again."""
    from jupyter_client.blocking.client import BlockingKernelClient

    from mlx_oss.builtin.python.kernel import KernelSession

    def give_up(self, timeout=None):
        time.sleep(0.3)  # the channels' threads start meanwhile, as in a real wait
        raise RuntimeError(f"Kernel didn't respond in {timeout} seconds")

    monkeypatch.setattr(BlockingKernelClient, "wait_for_ready", give_up)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))  # where the sockets' folder goes
    (tmp_path / "tmp").mkdir()
    session = KernelSession(tmp_path / "a", startup_timeout_s=2.5)
    with pytest.raises(RuntimeError, match=r"^the Python kernel did not start within 2.5 s$"):
        session.execute("print(1)", 5.0)
    assert not session.running and _kernels_in(tmp_path / "a") == [] and list((tmp_path / "tmp").iterdir()) == []
    t = PythonTool(approve=yes, workdir=tmp_path / "b", startup_timeout_s=2.5)
    a = t.call(code("print(1)"))
    assert (a.error, a.text) == (True, "The python tool failed: RuntimeError: the Python kernel did not start within 2.5 s")
    assert _kernels_in(tmp_path / "b") == []
    monkeypatch.undo()
    assert t.call(code("print(1)")).text == "1" and _kernels_in(tmp_path / "b") != []
    t.close()
    assert _kernels_in(tmp_path / "b") == []


def test_close_leaves_a_folder_put_in_place_of_its_own(tmp_path, monkeypatch):
    """The code may replace the tool's temporary folder with a link to a folder of the user's: that one
    is not the tool's to remove, and closing says nothing (a chat is ending)."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    t = PythonTool(approve=yes, keep_files=False)
    made, theirs = t.workdir, tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("kept")
    made.rmdir()
    made.symlink_to(theirs)
    t.close()
    assert (theirs / "notes.txt").read_text() == "kept" and made.is_symlink()


def test_closing_a_session_removes_its_sockets_folder_at_once(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))  # where the kernel's sockets' folder goes
    (tmp_path / "tmp").mkdir()
    t = PythonTool(approve=yes, workdir=tmp_path / "chat")
    assert t.call(code("print(2)")).text == "2"
    assert [p.name for p in (tmp_path / "tmp").iterdir() if p.name.startswith("mlx-oss-kernel-")] != []
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t.close()
    assert list((tmp_path / "tmp").iterdir()) == [] and _kernels_in(tmp_path / "chat") == []
    assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == []  # removed, not left to the GC
