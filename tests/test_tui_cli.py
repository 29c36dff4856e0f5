"""`mlx-oss chat` wiring (options, --tools files) and the Markdown/JSON export, without a terminal."""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime

import pytest

from mlx_oss.errors import UserError
from mlx_oss.cli.main import build_parser, main
from mlx_oss.harmony import Message
from mlx_oss.tui.cli import load_tools_file
from mlx_oss.tui.export import conversation_markdown, read_conversation, turns


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
]


@pytest.mark.parametrize(
    ("command", "argv", "message"),
    [(c, argv, m) for c in ("chat", "generate") for argv, m in SHARED_FLAG_ERRORS]
    + [("bench", argv, m) for argv, m in SHARED_FLAG_ERRORS if argv[0] == "--dtype"],
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
    monkeypatch.setattr(mlx_oss, "load", lambda path, dtype=None: loads.append(dtype) or real_load(path, dtype="float32"))

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
