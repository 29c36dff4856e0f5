"""`mlx-oss chat` wiring (options, --tools files) and the Markdown/JSON export, without a terminal."""

from __future__ import annotations

import io
import subprocess
import sys
import threading
from contextlib import contextmanager
from datetime import datetime

import pytest

from mlx_oss.errors import UserError
from mlx_oss.cli.main import build_parser, main
from mlx_oss.harmony import Message
from mlx_oss.tui.cli import load_tools_file
from mlx_oss.tui.export import conversation_markdown, read_conversation, turns

WAIT = 60  # seconds, for threads; generous, never a timing assert


def test_chat_subcommand_is_registered_with_its_options():
    a = build_parser().parse_args(["chat"])
    assert a.model is None and a.reasoning_effort == "medium" and not a.hide_reasoning  # None: the default or the resumed chat's
    assert (a.list, a.resume, a.new, a.data_dir) == (False, None, False, None)
    assert build_parser().parse_args(["chat", "--resume"]).resume == "last"
    assert build_parser().parse_args(["chat", "--resume", "7", "--data-dir", "/d"]).resume == "7"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["chat", "--resume", "--new"])
    a = build_parser().parse_args(["chat", "-m", "/m", "-r", "high", "--system", "be brief", "--hide-reasoning",
                                   "--temp", "0", "--top-p", "0.9", "--seed", "3", "--max-context", "4096"])  # fmt: skip
    assert (a.model, a.reasoning_effort, a.instructions, a.hide_reasoning) == ("/m", "high", "be brief", True)
    assert (a.temperature, a.top_p, a.seed, a.max_context) == (0.0, 0.9, 3, 4096)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["chat", "--reasoning-effort", "extreme"])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--temperature", "-1"], "--temperature/--temp: must be in [0, 100], got -1"),
        (["--max-context", "0"], "--max-context: must be at least 2, got 0"),
        (["--max-tokens", "-1"], "--max-tokens: must be at least 1, got -1"),
        (["--tools", "/does/not/exist.py"], "no such file"),
        (["--instructions", "@/does/not/exist.txt"], "cannot read the instructions file"),
    ],
)
def test_bad_options_fail_before_the_app_starts_with_generates_exit_code(argv, message, capsys):
    """Argument errors exit 2 with argparse's `usage` + one error line, in chat as in generate."""
    try:
        rc = main(["chat", "--model", "/nowhere", *argv])
    except SystemExit as e:  # argparse's own type errors
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 2 and message in err.strip().splitlines()[-1] and "Traceback" not in err


SHARED_FLAG_ERRORS = [
    (["--temperature", "-1"], "--temperature/--temp: must be in [0, 100], got -1"),
    (["--top-p", "0"], "--top-p: must be in (0, 1], got 0"),
    (["--top-k", "-2"], "--top-k: must be at least 0, got -2"),
    (["--max-context", "1"], "--max-context: must be at least 2, got 1"),
    (["--reasoning-effort", "max"], "invalid choice: 'max' (choose from"),
    (["--dtype", "int8"], "--dtype: invalid choice"),
    (["--kv-bits", "3"], "--kv-bits: invalid choice: 3 (choose from 8, 4)"),
    (["--kv-group-size", "48"], "--kv-group-size: invalid choice: 48 (choose from 32, 64, 128)"),
]


@pytest.mark.parametrize(
    ("command", "argv", "message"),
    [(c, argv, m) for c in ("chat", "generate") for argv, m in SHARED_FLAG_ERRORS]
    + [("bench", argv, m) for argv, m in SHARED_FLAG_ERRORS if argv[0] in ("--dtype", "--kv-bits", "--kv-group-size")]
    + [("serve", argv, m) for argv, m in SHARED_FLAG_ERRORS if argv[0] in ("--dtype", "--kv-bits", "--kv-group-size")],
)
def test_shared_flags_are_validated_alike_by_every_command(command, argv, message, capsys):
    """One definition of the shared flags (mlx_oss/cli/args.py): the same bad value is the same
    argparse error (exit 2, one line) in generate and chat (bench shares --model/--dtype only)."""
    with pytest.raises(SystemExit) as e:
        main([command, *argv])
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and f"mlx-oss {command}: error:" in err


def test_chat_without_a_terminal_exits_at_once_with_one_line(tmp_path):
    """Textual spins at 100% CPU on a missing terminal; chat must refuse before loading anything."""
    r = subprocess.run([sys.executable, "-m", "mlx_oss.cli.main", "chat", "--model", str(tmp_path / "none")],
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and "needs a terminal" in r.stderr and "mlx-oss generate" in r.stderr


@pytest.mark.parametrize("tty", ["stdin", "stdout"])
def test_chat_refuses_unless_both_stdin_and_stdout_are_a_terminal(tty, tmp_path, monkeypatch, capsys):
    """In process (the subprocess test above cannot see a change of the check): one of the two
    being a terminal is not enough, and the refusal names the way out."""
    for stream in ("stdin", "stdout"):
        monkeypatch.setattr(getattr(sys, stream), "isatty", lambda s=stream: s == tty, raising=False)
    assert main(["chat", "--model", str(tmp_path / "none")]) == 1
    err = capsys.readouterr().err
    assert err.strip().endswith("mlx-oss chat needs a terminal (stdin and stdout are not one); "
                                "for a prompt from a script or a pipe use `mlx-oss generate`")  # fmt: skip


def test_tools_file_public_functions_become_tools(tmp_path):
    f = tmp_path / "mytools.py"
    f.write_text(
        "import json\nfrom os.path import join\n\n"
        "def get_weather(city: str) -> str:\n    '''Weather in a city.'''\n    return 'sunny'\n\n"
        "def _helper():\n    pass\n\nclass NotATool:\n    pass\n"
    )
    fns = load_tools_file(f)
    assert [fn.__name__ for fn in fns] == ["get_weather"] and fns[0]("Paris") == "sunny"
    from mlx_oss.tools import as_tools

    (tool,) = as_tools(fns)
    assert tool.name == "get_weather" and tool.description.parameters["properties"]["city"]["type"] == "string"

    f.write_text("__all__ = ['a']\ndef a():\n    return 1\ndef b():\n    return 2\n")
    assert [fn.__name__ for fn in load_tools_file(f)] == ["a"]
    f.write_text("raise RuntimeError('broken')\n")
    with pytest.raises(UserError, match="failed to import.*broken"):
        load_tools_file(f)
    f.write_text("X = 1\n")
    with pytest.raises(UserError, match="no public functions"):
        load_tools_file(f)


def test_markdown_transcript_from_harmony_messages():
    msgs = [
        Message.system(reasoning_effort="high"),
        Message.developer("Be brief."),
        Message.user("Weather?"),
        Message.assistant("Need a tool.", channel="analysis"),
        Message.tool_call("functions.get_weather", {"city": "Paris"}),
        Message.tool_result("functions.get_weather", "sunny"),
        Message.assistant("It is sunny.\n\n```sh\necho hi\n```"),
        Message.user("Thanks"),
        Message.assistant("You're welcome."),
    ]
    kinds = [k for k, _ in turns(msgs)]
    assert kinds == ["instructions", "user", "reasoning", "tool_call", "tool_result", "answer", "user", "answer"]
    md = conversation_markdown(msgs, model="gpt-oss-20b", effort="high", saved_at=datetime(2025, 1, 2, 3, 4))
    assert md.startswith("# Chat with gpt-oss-20b\n\n_Saved 2025-01-02 03:04 · reasoning effort high_")
    assert "## Instructions\n\nBe brief." in md
    assert "<details><summary>Reasoning</summary>\n\nNeed a tool.\n\n</details>" in md
    assert '**Tool call** `get_weather`\n\n```json\n{"city": "Paris"}\n```' in md
    assert "**Tool result** `get_weather`\n\n```\nsunny\n```" in md
    assert "It is sunny.\n\n```sh\necho hi\n```" in md
    assert md.count("## gpt-oss-20b") == 2  # one heading per assistant turn


def test_read_conversation_errors_are_one_line(tmp_path):
    (tmp_path / "x.json").write_text("[1, 2")
    with pytest.raises(ValueError, match="not a saved conversation"):
        read_conversation(tmp_path / "x.json")
    with pytest.raises(ValueError, match="no such file"):
        read_conversation(tmp_path / "missing.json")


def test_chat_options_reach_the_chat_and_its_prompt(tiny_chat_converted, monkeypatch, tmp_path):
    """`mlx-oss chat` flags end up in the Chat the app makes: the rendered prompt (effort,
    instructions, tools) and the sampler/limit settings; the app gets the display options."""
    import mlx_oss
    import mlx_oss.tui.app
    from mlx_oss.sampling import SamplingConfig

    loads, apps = [], []
    real_load = mlx_oss.load
    monkeypatch.setattr(mlx_oss, "load", lambda path, dtype=None, **kv: loads.append(dtype) or real_load(path, dtype="float32"))

    class FakeApp:
        return_code = 0

        def __init__(self, loader, **kw):
            self.kw = kw
            self.backend = loader(lambda msg: None)
            apps.append(self)

            class Thread:
                def join(self, timeout=None):
                    pass

            self.engine = self.model_thread = Thread()

        def run(self):
            pass

    monkeypatch.setattr(mlx_oss.tui.app, "ChatApp", FakeApp)
    for stream in ("stdin", "stdout"):
        monkeypatch.setattr(getattr(sys, stream), "isatty", lambda: True, raising=False)
    (tmp_path / "t.py").write_text("def ping(host: str) -> str:\n    \"\"\"Ping a host.\"\"\"\n    return host\n")
    (tmp_path / "i.txt").write_text("Answer in haiku.")
    argv = ["chat", "--model", str(tiny_chat_converted), "-r", "low", "-s", f"@{tmp_path / 'i.txt'}",
            "--tools", str(tmp_path / "t.py"), "--temp", "0.25", "--top-p", "0.5", "--top-k", "3", "--min-p", "0.2",
            "--seed", "5", "--max-tokens", "9", "--max-context", "333", "--dtype", "float16", "--hide-reasoning",
            "--chats-dir", str(tmp_path / "chats")]  # fmt: skip
    assert main(argv) == 0
    app = apps[0]
    assert loads == ["float16"] and app.kw["hide_reasoning"] is True and app.kw["chats_dir"] == tmp_path / "chats"
    assert app.backend.context_limit == 333
    chat = app.backend.new_chat()
    assert chat.sampling == SamplingConfig(temperature=0.25, top_p=0.5, top_k=3, min_p=0.2, seed=5)
    assert (chat.max_tokens, chat.max_context) == (9, 333)
    prompt = chat.tokenizer.decode(chat.prompt_tokens([Message.user("hi")]))
    assert "Reasoning: low" in prompt and "# Instructions\n\nAnswer in haiku." in prompt
    assert "// Ping a host.\ntype ping = " in prompt
    assert chat.tools[0].fn("x") == "x"  # callable: the chat runs it
    reopened = app.backend.open_chat(chat.to_json())
    assert reopened.tools[0].fn is not None  # --tools replace the saved schemas


# ----------------------------------------------------------------------------- run_chat without the app
# What `mlx-oss chat` hands the app, the store and the `--hosts` hooks, with the app replaced by a
# recorder (the real app on these options: test_chat_options_reach_the_chat_and_its_prompt above,
# tests/test_tui_chats.py, tests/test_tui_tmux.py).


class RecordingApp:
    """Stands in for `ChatApp`: records its arguments; `run()` runs `during_run(app)` if set."""

    made: list = []
    during_run = None
    return_code = None
    join_result = True

    def __init__(self, loader, **kw):
        self.loader, self.kw, self.calls, self.joins = loader, kw, [], []
        RecordingApp.made.append(self)
        app = self

        class Thread:
            def join(self, timeout=None):
                app.joins.append(timeout)
                return RecordingApp.join_result

        self.model_thread = Thread()

    def exit(self, code):
        self.calls.append(("exit", code))

    def call_from_thread(self, fn, *args):
        self.calls.append(("call_from_thread", fn, args))

    def run(self):
        self.calls.append("run")
        if RecordingApp.during_run is not None:
            RecordingApp.during_run(self)


class Terminal:
    """`sys` for tui/cli.py as in a terminal (pytest's capture swaps sys.stdout between phases)."""

    class _Tty:
        def __init__(self, name):
            self.name = name

        def isatty(self):
            return True

        def __getattr__(self, attr):
            return getattr(getattr(sys, self.name), attr)

    stdin, stdout = _Tty("stdin"), _Tty("stdout")

    def __getattr__(self, attr):
        return getattr(sys, attr)


@pytest.fixture
def recorded(monkeypatch, tmp_path):
    """`mlx-oss chat` with a terminal, the app and the model loader replaced by recorders."""
    import mlx_oss.tui.app
    import mlx_oss.tui.cli
    from mlx_oss.tui import session as door

    loaders = []
    monkeypatch.setattr(RecordingApp, "made", [])
    monkeypatch.setattr(mlx_oss.tui.app, "ChatApp", RecordingApp)
    monkeypatch.setattr(door, "model_loader", lambda model, options, group=None: loaders.append((model, options, group))
                        or ("loader", model))  # fmt: skip
    monkeypatch.setattr(mlx_oss.tui.cli, "sys", Terminal())
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    return loaders, tmp_path / "data"


def _store(data):
    from mlx_oss.tui.storage import ChatStore

    return ChatStore(data / "chats.sqlite3")


def test_run_chat_hands_the_app_its_options_and_closes_the_store(recorded, capsys):
    from mlx_oss.tui.session import ChatOptions

    loaders, data = recorded
    (data.parent / "home" / "t.py").write_text("def ping(host: str) -> str:\n    return host\n")
    argv = ["chat", "--data-dir", str(data), "-m", "org/some-model", "--tools", "~/t.py", "--chats-dir", "~/saved",
            "--approve-python", "never", "-r", "high", "--max-tokens", "8", "--max-context", "99", "--dtype", "float16",
            "--kv-bits", "8", "--kv-group-size", "32"]  # fmt: skip
    assert main(argv) == 0
    (app,) = RecordingApp.made
    assert app.calls == ["run"] and app.joins == [5]  # the model is freed on its own thread before exiting
    kw = dict(app.kw)
    store = kw.pop("store")
    assert kw == {"model": "some-model", "source": "org/some-model", "hide_reasoning": False,
                  "chats_dir": data.parent / "home" / "saved", "resume": None,
                  "tools_file": str(data.parent / "home" / "t.py"), "approve_python": "never"}  # fmt: skip
    assert store.path == data / "chats.sqlite3"
    with pytest.raises(Exception, match="closed"):
        store.list()  # closed once the app is done
    ((model, options, group),) = loaders
    assert app.loader == ("loader", "org/some-model") and group is None
    assert isinstance(options, ChatOptions) and options.builtin_kwargs() == {}  # no built-in tool flag
    assert (options.reasoning_effort, options.max_tokens, options.max_context, options.dtype) == ("high", 8, 99, "float16")
    assert (options.kv_bits, options.kv_group_size) == (8, 32)
    assert [f.__name__ for f in options.tools] == ["ping"] and options.sampling is not None
    assert capsys.readouterr().err == ""

    assert main(["chat", "--data-dir", str(data), "--python", "--approve-python", "always"]) == 0
    app = RecordingApp.made[-1]
    assert app.kw["chats_dir"] is None and app.kw["tools_file"] is None and app.kw["approve_python"] == "always"
    assert app.kw["model"] == "gpt-oss-20b" and app.kw["source"] == "openai/gpt-oss-20b"  # the default model
    assert loaders[-1][1].tools is None and loaders[-1][1].builtin_kwargs()["builtin_tools"] == ("python",)

    RecordingApp.return_code = 3
    try:
        assert main(["chat", "--data-dir", str(data)]) == 3  # the app's own exit code
    finally:
        RecordingApp.return_code = None


def test_resume_opens_the_stored_chat_with_its_model(recorded):
    loaders, data = recorded
    with _store(data) as s:
        first = s.create(model="org/first-model", title="first")
        second = s.create(model="", title="second")  # a chat built in Python: no model to reopen it with
    assert main(["chat", "--data-dir", str(data), "--resume", str(first)]) == 0
    app = RecordingApp.made[-1]
    assert app.kw["resume"] == first and app.kw["model"] == "first-model" and loaders[-1][0] == "org/first-model"
    assert main(["chat", "--data-dir", str(data), "--resume", str(first), "-m", "/my/other"]) == 0
    assert RecordingApp.made[-1].kw["resume"] == first and loaders[-1][0] == "/my/other"  # --model wins
    assert main(["chat", "--data-dir", str(data), "--resume"]) == 0  # the last one
    assert RecordingApp.made[-1].kw["resume"] == second and loaders[-1][0] == "openai/gpt-oss-20b"


def test_resume_target_errors_name_the_value():
    from mlx_oss.tui.cli import resume_target
    from mlx_oss.tui.storage import ChatStoreError

    class Store:
        path = "/d/chats.sqlite3"
        chats = {4: "chat 4"}

        def last(self):
            return None

        def get(self, chat_id):
            return self.chats[chat_id]

    assert resume_target(Store(), None) is None
    assert resume_target(Store(), "4") == "chat 4"
    with pytest.raises(ChatStoreError) as e:
        resume_target(Store(), "last")
    assert str(e.value) == "--resume: no chats to resume yet in /d/chats.sqlite3"
    with pytest.raises(ChatStoreError) as e:
        resume_target(Store(), "four")
    assert str(e.value) == "--resume expects a chat id (a number from `mlx-oss chat --list`), got 'four'"
    Store.last = lambda self: "the last"
    assert resume_target(Store(), "last") == "the last"


def test_list_prints_one_line_per_chat_and_never_starts_the_app(recorded, capsys):
    from mlx_oss.tui.cli import list_chats
    from mlx_oss.tui.storage import ChatInfo

    _, data = recorded
    assert main(["chat", "--data-dir", str(data), "--list"]) == 0
    assert capsys.readouterr().out == f"No chats yet in {data / 'chats.sqlite3'}\n"
    assert RecordingApp.made == []

    when = datetime(2026, 1, 5, 9, 30).timestamp()

    class Store:
        path = "/d/chats.sqlite3"
        chats = [ChatInfo(12, "Weather", when, when, messages=3), ChatInfo(7, "", when, when, messages=1000)]

        def list(self):
            return self.chats

    list_chats(Store())
    assert capsys.readouterr().out == (
        "   ID  UPDATED           MSGS  TITLE\n"
        "   12  2026-01-05 09:30     3  Weather\n"
        "    7  2026-01-05 09:30  1000  (untitled)\n"
        "2 chats in /d/chats.sqlite3; resume one with: mlx-oss chat --resume ID\n"
    )
    Store.chats = Store.chats[:1]
    list_chats(Store())
    assert capsys.readouterr().out.splitlines()[-1] == "1 chat in /d/chats.sqlite3; resume one with: mlx-oss chat --resume ID"
    buf = io.StringIO()  # a stream given: every line goes there, none to stdout
    list_chats(Store(), out=buf)
    assert buf.getvalue().count("\n") == 3 and "Weather" in buf.getvalue() and capsys.readouterr().out == ""
    Store.chats, buf = [], io.StringIO()
    list_chats(Store(), out=buf)
    assert buf.getvalue() == "No chats yet in /d/chats.sqlite3\n" and capsys.readouterr().out == ""

    with _store(data) as s:
        s.create(model="m", title="kept")
    assert main(["chat", "--data-dir", str(data), "--list"]) == 0
    assert "kept" in capsys.readouterr().out and RecordingApp.made == []


def test_an_unreadable_database_is_a_warning_before_the_app(recorded, capsys):
    _, data = recorded
    data.mkdir()
    (data / "chats.sqlite3").write_bytes(b"\x00garbage" * 1000)
    assert main(["chat", "--data-dir", str(data)]) == 0
    err = capsys.readouterr().err
    assert err.startswith("mlx-oss: warning: ") and "moved it to chats.sqlite3.unreadable-" in err and err.count("\n") == 1
    assert len(RecordingApp.made) == 1


def test_bad_tools_file_is_a_usage_error_naming_the_flag(recorded, capsys):
    _, data = recorded
    assert main(["chat", "--data-dir", str(data), "--tools", "/does/not/exist.py"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.endswith("--tools: /does/not/exist.py: no such file (--tools expects a Python file defining functions)")
    assert RecordingApp.made == [] and not data.exists()  # nothing opened before the flags are checked


def test_a_follower_rank_runs_rank_0s_commands_without_a_ui_or_store(recorded, monkeypatch):
    from mlx_oss.tui import session as door

    _, data = recorded
    calls = []

    @contextmanager
    def join_group(a):
        calls.append(("join", a.data_dir))
        yield "grp"
        calls.append("left")

    monkeypatch.setattr(door, "is_follower", lambda: True)
    monkeypatch.setattr(door, "join_group", join_group)
    monkeypatch.setattr(door, "follow", lambda group, dtype: calls.append(("follow", group, dtype)) or 4)
    assert main(["chat", "--data-dir", str(data), "--dtype", "bfloat16"]) == 4
    assert calls == [("join", str(data)), ("follow", "grp", "bfloat16"), "left"]
    assert RecordingApp.made == [] and not data.exists()


class RecordingEvent(threading.Event):
    log: list = []

    def set(self):
        RecordingEvent.log.append("set")
        super().set()

    def wait(self, timeout=None):
        RecordingEvent.log.append(("wait", timeout))
        return super().wait(timeout)


def test_in_a_group_a_lost_rank_gives_the_terminal_back_first(recorded, monkeypatch, capsys):
    from mlx_oss.tui import session as door

    loaders, data = recorded
    group = object()
    stops, calls, joined = [], [], []

    @contextmanager
    def join_group(a):  # the group is made from the command's own options (--hosts)
        joined.append(a.data_dir)
        yield group

    monkeypatch.setattr(door, "is_follower", lambda: False)
    monkeypatch.setattr(door, "join_group", join_group)
    monkeypatch.setattr(door, "agree_model", lambda g, model: calls.append((g, model)) or "agreed/model")
    monkeypatch.setattr(door, "on_lost_peer", lambda g, stop: stops.append((g, stop)))
    asked = threading.Event()  # made before Event is patched: only the app's `restored` is recorded
    watchdog = [threading.Thread(target=lambda: stops[0][1]("rank 1 lost"))]
    monkeypatch.setattr(threading, "Event", RecordingEvent)
    monkeypatch.setattr(RecordingEvent, "log", [])

    def lose_a_rank(app):  # the watchdog's thread calls stop(message) while the app runs
        ((g, stop),) = stops
        assert g is group
        app.call_from_thread = lambda fn, *args: app.calls.append(("call_from_thread", fn, args)) or asked.set()
        watchdog[0].start()
        assert asked.wait(WAIT)
        assert app.calls[-1] == ("call_from_thread", app.exit, (1,))  # the app is told to exit with 1
        assert RecordingEvent.log == [("wait", 5)]  # and the stop waits for the terminal to be given back

    monkeypatch.setattr(RecordingApp, "during_run", lose_a_rank)
    assert main(["chat", "--data-dir", str(data), "-m", "org/typed"]) == 0
    watchdog[0].join(WAIT)
    assert not watchdog[0].is_alive()
    assert calls == [(group, "org/typed")] and loaders[-1] == ("agreed/model", loaders[-1][1], group)
    assert joined == [str(data)]
    app = RecordingApp.made[-1]
    assert app.kw["model"] == "typed" and app.kw["source"] == "org/typed"  # what the user typed, not the agreed name
    ((_, stop),) = stops
    assert RecordingEvent.log == [("wait", 5), "set"]  # set once the app has ended
    monkeypatch.setattr(RecordingApp, "during_run", None)

    def refuse(fn, *args):
        raise RuntimeError("App is not running")

    app.call_from_thread = refuse
    RecordingEvent.log.clear()
    stop("rank 1 lost")  # an app that is not running (yet, or any more): no error, still waits
    assert RecordingEvent.log == [("wait", 5)]

    monkeypatch.setattr(RecordingApp, "join_result", False)
    assert main(["chat", "--data-dir", str(data)]) == 1
    assert capsys.readouterr().err.strip() == (
        "mlx-oss: error: the model thread did not finish within 5 s of quitting; stopping every rank")


def test_without_a_group_a_busy_model_thread_does_not_fail_the_exit(recorded, monkeypatch):
    from mlx_oss.tui import session as door

    _, data = recorded
    registered = []
    real = door.on_lost_peer
    monkeypatch.setattr(door, "on_lost_peer", lambda g, stop: registered.append(g) or real(g, stop))
    monkeypatch.setattr(RecordingApp, "join_result", False)
    assert main(["chat", "--data-dir", str(data)]) == 0
    assert registered == [None] and RecordingApp.made[-1].joins == [5]


def test_chat_help_lists_the_keys_and_every_option(capsys):
    with pytest.raises(SystemExit):
        main(["chat", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for text in ["Chat with gpt-oss in the terminal. Keys: Enter send, Esc stop, ctrl+t effort, ctrl+r reasoning, "
                 "ctrl+n new, ctrl+g instructions, ctrl+s save, ctrl+o open, ctrl+l copy, ctrl+b chats, ↑ select "
                 "messages (copy, edit, regenerate, delete), ctrl+p commands, ctrl+q quit. Chats are kept in the data "
                 "folder (--data-dir). See docs/TUI.md.",
                 "Hub id, checkpoint folder or converted folder, converted once (default openai/gpt-oss-20b, or the "
                 "resumed chat's own model)",
                 "initial reasoning effort (ctrl+t switches it in the chat)",
                 "--tools FILE.py Python file whose public functions become tools the model can call",
                 "--hide-reasoning do not show the reasoning (analysis channel)",
                 "context limit in tokens (default: the model's, 131072); lower it to bound memory",
                 "--list list the stored chats (id, last change, title) and exit",
                 "--resume [ID] reopen a stored chat (no ID: the last one), its cache prefilled in the background",
                 "--new start with a new chat (the default)",
                 "--data-dir DIR where chats are kept (chats.sqlite3; default $MLX_OSS_DATA_DIR or the OS data folder, "
                 "e.g. ~/Library/Application Support/mlx-oss)",
                 "--chats-dir DIR where ctrl+s saves conversations (default $MLX_OSS_CHATS or ~/mlx-oss-chats)"]:  # fmt: skip
        assert f" {text} " in f" {out} ", text  # whole words: nothing added before or after
    with pytest.raises(SystemExit):
        main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "chat terminal chat with gpt-oss (streaming answer, live reasoning, tools)" in out


def test_tools_file_refusals_are_one_line_naming_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    f = tmp_path / "t.py"
    txt = tmp_path / "tools.txt"
    txt.write_text("def a():\n    return 1\n")
    cases = [  # (source written to t.py or None, path given, the exact error)
        ("__all__ = ['a', 'N']\ndef a():\n    return 1\nN = 3\n", "~/t.py",  # ~ is the home folder
         f"{f}: __all__ names something that is not a function: N"),
        ("__all__ = ['a', 'missing']\ndef a():\n    return 1\n", f,
         f"{f}: __all__ names something that is not a function: missing"),
        ("raise RuntimeError()\n", f, f"{f}: failed to import (RuntimeError: )"),
        ("raise ValueError('first line\\nsecond line')\n", f, f"{f}: failed to import (ValueError: first line)"),
        (None, txt, f"{txt}: not a Python file"),
        (None, tmp_path, f"{tmp_path}: no such file (--tools expects a Python file defining functions)"),
        ("def _hidden():\n    pass\n", f, f"{f}: defines no public functions to use as tools"),
    ]  # fmt: skip
    for source, path, message in cases:
        if source is not None:
            f.write_text(source)
        with pytest.raises(UserError) as e:
            load_tools_file(path)
        assert str(e.value) == message


def test_two_tools_files_with_the_same_function_names_stay_apart(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "tools.py").write_text("def which():\n    return 'a'\n")
    (tmp_path / "b" / "tools.py").write_text("def which():\n    return 'b'\n")
    (fa,) = load_tools_file(tmp_path / "a" / "tools.py")
    (fb,) = load_tools_file(tmp_path / "b" / "tools.py")
    assert (fa(), fb()) == ("a", "b") and fa.__module__ != fb.__module__
    assert fa.__module__.startswith("mlx_oss_tools_")
