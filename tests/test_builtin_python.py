"""The built-in python tool: approval, a stateful kernel in its own process, timeouts, crashes,
bounded output, images and the chat's working folder; the docker backend through a stand-in `docker`."""

from __future__ import annotations

import os
import stat
import sys
import tempfile
import textwrap

import pytest

from mlx_oss.builtin.python import DockerSession, PythonTool, python_namespace
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
    try:
        a = tool.call(code("while True:\n    pass"))
    finally:
        tool.timeout_s = 60
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
import os, subprocess, sys
args = sys.argv[1:]
open(os.environ["FAKE_DOCKER_LOG"], "a").write(" ".join(args) + "\\n")
if args[0] == "info":
    sys.exit(0 if os.environ.get("FAKE_DOCKER_UP") == "1" else 1)
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
    assert down.error and "docker daemon is not running" in down.text


def test_docker_command_mounts_only_the_chat_folder(tmp_path):
    cmd = DockerSession(tmp_path).command("n")
    assert [a for a in cmd if ":/mnt/data" in a] == [f"{tmp_path.resolve()}:/mnt/data"]


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
