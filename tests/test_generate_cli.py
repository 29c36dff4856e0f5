"""`mlx-oss generate` on the tiny synthetic model: output routing, --json, stdin, exit codes."""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import time

import jsonschema
import numpy as np
import pytest

import mlx_oss.chat
import mlx_oss.loader
import mlx_oss.sampling
from mlx_oss.cli.main import main
from mlx_oss.sampling import SamplingConfig, ScriptedTokens


@pytest.fixture(scope="module")
def loaded(tiny_chat_converted):
    return mlx_oss.loader.load(tiny_chat_converted, dtype="float32")


@pytest.fixture
def fast_load(loaded, monkeypatch):
    """Reuse one loaded model across CLI runs (loading is tested once, in test_real_load)."""
    monkeypatch.setattr(mlx_oss.loader, "load", lambda path, dtype=None, **kv: loaded)


def script(monkeypatch, tok, text: str) -> None:
    """Make the random model 'say' `text` (harmony tokens) in the next CLI run."""
    tokens = tok.encode(text, allowed_special="all")
    monkeypatch.setattr(
        mlx_oss.sampling, "SamplingConfig",
        lambda **kw: SamplingConfig(**kw, logits_processors=(ScriptedTokens(tokens),)),
    )  # fmt: skip


HARMONY = "<|channel|>analysis<|message|>Think hard.<|end|><|start|>assistant<|channel|>final<|message|>Forty-two.<|return|>"


def run(capsys, *args: str) -> tuple[int, str, str]:
    rc = main(["generate", *args])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_answer_on_stdout_reasoning_on_stderr(tiny_chat_converted, loaded, fast_load, monkeypatch, capsys):
    script(monkeypatch, loaded[1], HARMONY)
    rc, out, err = run(capsys, "--model", str(tiny_chat_converted), "--show-reasoning", "What is it?")
    assert (rc, out) == (0, "Forty-two.\n")
    assert "Think hard." in err
    script(monkeypatch, loaded[1], HARMONY)
    rc, out, err = run(capsys, "--model", str(tiny_chat_converted), "What is it?")
    assert (rc, out) == (0, "Forty-two.\n") and "Think hard." not in err
    script(monkeypatch, loaded[1], HARMONY)
    rc, out, err = run(capsys, "--model", str(tiny_chat_converted), "--show-reasoning", "--reasoning-to", "stdout", "q")
    assert out == "Think hard.\nForty-two.\n"


def test_json_output(tiny_chat_converted, loaded, fast_load, monkeypatch, capsys):
    script(monkeypatch, loaded[1], HARMONY)
    rc, out, err = run(capsys, "--model", str(tiny_chat_converted), "--json", "--seed", "3", "-r", "high", "q")
    assert rc == 0
    data = json.loads(out)
    assert data["answer"] == "Forty-two." and data["reasoning"] == "Think hard." and data["tool_calls"] == []
    s = data["stats"]
    assert s["stop_reason"] == "stop" and s["prompt_tokens"] == s["prefilled_tokens"] > 0
    assert s["generated_tokens"] == len(loaded[1].encode(HARMONY, allowed_special="all"))


def test_prompt_from_stdin(tiny_chat_converted, loaded, fast_load, monkeypatch, capsys):
    lengths = []
    for source in ("arg", "stdin"):
        script(monkeypatch, loaded[1], HARMONY)
        args = ["--model", str(tiny_chat_converted), "--json", "--instructions", "Be terse."]
        if source == "stdin":
            monkeypatch.setattr(sys, "stdin", io.StringIO("the same question"))
        else:
            args.append("the same question")
        rc, out, _ = run(capsys, *args)
        assert rc == 0
        lengths.append(json.loads(out)["stats"]["prompt_tokens"])
    assert lengths[0] == lengths[1]


def test_tool_schemas_and_calls(tiny_chat_converted, loaded, fast_load, monkeypatch, capsys, tmp_path):
    tools = tmp_path / "tools.json"
    tools.write_text(json.dumps([{"name": "get_time", "description": "Current time.",
                                  "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}}}]))  # fmt: skip
    script(monkeypatch, loaded[1], '<|channel|>commentary to=functions.get_time <|constrain|>json<|message|>{"tz": "UTC"}<|call|>')
    rc, out, err = run(capsys, "--model", str(tiny_chat_converted), "--tools", str(tools), "--json", "time?")
    data = json.loads(out)
    assert rc == 0 and data["stats"]["stop_reason"] == "tool_call"
    assert data["tool_calls"][0]["name"] == "get_time" and data["tool_calls"][0]["arguments"] == {"tz": "UTC"}


class Recorder(ScriptedTokens):
    """Forces the reply and records the prompt the model was fed (the context at step 0)."""

    prompts: list[list[int]] = []

    def __call__(self, context, logits):
        if self.step == 0:
            Recorder.prompts.append(np.array(context).tolist())
        return super().__call__(context, logits)


def record(monkeypatch, tok, text: str) -> dict:
    """Force `text` and record the prompt fed to the model and the config the chat's sampler got."""
    seen: dict = {"configs": []}
    Recorder.prompts = seen["prompts"] = []
    tokens = tok.encode(text, allowed_special="all")
    monkeypatch.setattr(mlx_oss.sampling, "SamplingConfig",
                        lambda **kw: SamplingConfig(**kw, logits_processors=(Recorder(tokens),)))  # fmt: skip
    real = mlx_oss.chat.Sampler

    def spy(config):
        seen["configs"].append(config)
        return real(config)

    monkeypatch.setattr(mlx_oss.chat, "Sampler", spy)
    return seen


def test_options_reach_the_model(tiny_chat_converted, loaded, fast_load, monkeypatch, capsys):
    """-r, --instructions and every sampling flag change what the model is fed / how it is sampled."""
    tok = loaded[1]
    seen = record(monkeypatch, tok, HARMONY)
    rc, out, _ = run(capsys, "--model", str(tiny_chat_converted), "-r", "high", "-s", "Be terse.", "--temp", "0.5",
                     "--top-p", "0.9", "--top-k", "7", "--min-p", "0.05", "--seed", "11", "--max-context", "400",
                     "--json", "What is it?")  # fmt: skip
    assert rc == 0
    prompt = tok.decode(seen["prompts"][0])
    assert "Reasoning: high" in prompt and "# Instructions\n\nBe terse." in prompt and "What is it?" in prompt
    assert seen["configs"] == [SamplingConfig(temperature=0.5, top_p=0.9, top_k=7, min_p=0.05, seed=11)]
    assert json.loads(out)["stats"]["context_limit"] == 400
    seen = record(monkeypatch, tok, HARMONY)
    rc, out, _ = run(capsys, "--model", str(tiny_chat_converted), "--json", "--max-tokens", "3", "q")
    prompt = tok.decode(seen["prompts"][0])
    assert "Reasoning: medium" in prompt and "# Instructions" not in prompt
    assert seen["configs"] == [SamplingConfig()]
    stats = json.loads(out)["stats"]
    assert (stats["stop_reason"], stats["generated_tokens"]) == ("length", 3)
    assert stats["context_limit"] == loaded[0].args.max_position_embeddings


def test_tools_and_response_format_reach_the_prompt(tiny_chat_converted, loaded, fast_load, monkeypatch, capsys):
    tok = loaded[1]
    seen = record(monkeypatch, tok, HARMONY)
    tool = json.dumps({"name": "get_time", "description": "Current time.", "parameters": {"type": "object"}})
    fmt = json.dumps({"title": "answer", "type": "object", "properties": {"n": {"type": "integer"}}})
    rc, out, _ = run(capsys, "--model", str(tiny_chat_converted), "--json", "--tools", tool, "--response-format", fmt, "q")
    assert rc == 0
    prompt = tok.decode(seen["prompts"][0])
    assert "// Current time.\ntype get_time = " in prompt and "namespace functions" in prompt
    assert "# Response Formats" in prompt and "## answer" in prompt


@pytest.mark.parametrize(
    "args",
    [
        ["--temperature", "-1", "x"],
        ["--top-p", "0", "x"],
        ["--reasoning-effort", "extreme", "x"],
        ["--max-tokens", "0", "x"],
        ["--bogus", "x"],
    ],
)
def test_bad_arguments_exit_2(args, capsys):
    with pytest.raises(SystemExit) as e:
        main(["generate", *args])
    assert e.value.code == 2


def test_bad_values_after_parsing_exit_2(tiny_chat_converted, fast_load, monkeypatch, capsys, tmp_path):
    m = ["--model", str(tiny_chat_converted)]
    rc, out, err = run(capsys, *m, "--tools", str(tmp_path / "missing.json"), "x")
    assert rc == 2 and "no such file" in err and out == ""
    rc, out, err = run(capsys, *m, "--response-format", "{not json", "x")
    assert rc == 2 and "invalid JSON" in err
    rc, out, err = run(capsys, *m, "--tools", '[{"description": "no name"}]', "x")
    assert rc == 2 and "name" in err
    rc, out, err = run(capsys, *m, "--max-context", "999999", "x")
    assert rc == 2 and "131072" in err
    rc, out, err = run(capsys, *m, "   ")
    assert rc == 2 and "empty" in err

    monkeypatch.setattr(sys, "stdin", _Tty())
    rc, out, err = run(capsys, *m)
    assert rc == 2 and "no prompt" in err


def test_runtime_errors_exit_1_with_one_line(tiny_chat_converted, fast_load, monkeypatch, capsys, tmp_path):
    rc, out, err = run(capsys, "--model", str(tmp_path / "nowhere"), "x")
    assert rc == 1 and err.count("\n") == 1 and "no such file" in err
    rc, out, err = run(capsys, "--model", str(tiny_chat_converted), "--max-context", "30", "x")
    assert rc == 1 and err.count("\n") == 1 and "context limit is 30" in err

    def broken(context, logits):
        raise RuntimeError("device lost")

    monkeypatch.setattr(mlx_oss.sampling, "SamplingConfig", lambda **kw: SamplingConfig(**kw, logits_processors=(broken,)))
    rc, out, err = run(capsys, "--model", str(tiny_chat_converted), "x")
    assert rc == 1 and err.strip().splitlines()[-1] == "mlx-oss: error: RuntimeError: device lost"


def test_real_load_through_console_script(tiny_chat_converted):
    """The installed entry point end to end (loads the model from disk; random output, length stop)."""
    p = subprocess.run(
        [sys.executable, "-m", "mlx_oss.cli.main", "generate", "--model", str(tiny_chat_converted),
         "--max-tokens", "4", "--json", "--seed", "1", "--temperature", "0.7", "--top-k", "50", "hello"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    stats = json.loads(p.stdout)["stats"]
    assert stats["stop_reason"] == "length" and stats["generated_tokens"] == 4


def test_instructions_at_file_reads_it_in_generate_as_in_chat(tiny_chat_converted, loaded, fast_load, monkeypatch, capsys, tmp_path):
    """-s @FILE is the file's text (missing file: an argument error), -s @@x the literal @x; same parser as chat."""
    from mlx_oss.cli.main import build_parser

    f = tmp_path / "sys.txt"
    f.write_text("Answer in French.")
    m = ["--model", str(tiny_chat_converted)]
    assert build_parser().parse_args(["generate", "-s", f"@{f}", "x"]).instructions == "Answer in French."
    assert build_parser().parse_args(["chat", "-s", f"@{f}"]).instructions == "Answer in French."
    assert build_parser().parse_args(["generate", "-s", "@@handle", "x"]).instructions == "@handle"
    lengths = {}
    for how in ("literal", "file"):
        script(monkeypatch, loaded[1], HARMONY)
        rc, out, _ = run(capsys, *m, "--json", "-s", "Answer in French." if how == "literal" else f"@{f}", "q")
        lengths[how] = json.loads(out)["stats"]["prompt_tokens"]
    assert lengths["file"] == lengths["literal"]
    for cmd in (["generate", *m, "-s", f"@{tmp_path / 'missing.txt'}", "x"], ["chat", "-s", f"@{tmp_path / 'missing.txt'}"]):
        with pytest.raises(SystemExit) as e:
            main(cmd)
        assert e.value.code == 2 and "cannot read the instructions file" in capsys.readouterr().err
    assert "@FILE" in build_parser()._subparsers._group_actions[0].choices["generate"].format_help()


def test_json_mode_prints_an_error_object_on_stdout(tiny_chat_converted, fast_load, capsys):
    rc, out, err = run(capsys, "--model", str(tiny_chat_converted), "--json", "--max-context", "30", "x")
    assert rc == 1 and "context limit is 30" in err
    e = json.loads(out)["error"]
    assert e["type"] == "context_length_exceeded" and "context limit is 30" in e["message"]
    rc, out, err = run(capsys, "--model", str(tiny_chat_converted), "--json", "--max-context", "999999", "x")
    assert rc == 2 and json.loads(out)["error"]["type"] == "invalid_argument"


def _builtin_script(tok, calls, final):
    parts = ["<|channel|>analysis<|message|>Tools.<|end|>"]
    parts += [f"<|channel|>analysis to={r} code<|message|>{b}<|call|>" for r, b in calls]
    parts.append(f"<|channel|>final<|message|>{final}<|return|>")
    return "<|start|>assistant".join(parts)


def test_generate_with_browser_and_python(tiny_chat_converted, loaded, fast_load, monkeypatch, capsys, tmp_path):
    from tests.web_fixture import WebServer

    with WebServer() as web:
        text = _builtin_script(loaded[1], [("browser.search", '{"query": "mlx"}'), ("python", "print(6 * 7)")], "It is 42.")
        script(monkeypatch, loaded[1], text)
        rc, out, err = run(capsys, "--model", str(tiny_chat_converted), "--browser", "--search-backend", "searxng",
                           "--searxng-url", web.url("/searx"), "--python", "--approve-python", "always",
                           "--python-dir", str(tmp_path), "q")  # fmt: skip
    assert (rc, out) == (0, "It is 42.\n")
    assert "tool call: browser.search" in err and "tool result: browser.search: [0] mlx" in err
    assert "tool result: python: 42" in err


def test_generate_python_refused_without_a_terminal(tiny_chat_converted, loaded, fast_load, monkeypatch, capsys, tmp_path):
    import mlx_oss.cli.generate as generate_cli

    monkeypatch.setattr(generate_cli.TerminalApprover, "__init__",
                        lambda self, mode="ask", err=None, tty_path="": (setattr(self, "mode", mode), setattr(self, "err", err),
                                                                        setattr(self, "tty_path", str(tmp_path / "no-tty" / "x")))[0])  # fmt: skip
    script(monkeypatch, loaded[1], _builtin_script(loaded[1], [("python", "open('f', 'w')")], "Not run."))
    rc, out, err = run(capsys, "--model", str(tiny_chat_converted), "--python", "--python-dir", str(tmp_path), "--json", "q")
    data = json.loads(out)
    assert rc == 0 and data["answer"] == "Not run." and not (tmp_path / "f").exists()
    assert "no terminal to ask" in err


def test_terminal_approver_asks_run_skip_always():
    import os

    from mlx_oss.cli.generate import TerminalApprover
    from mlx_oss.events import ToolCall

    call = ToolCall("python", "  print(1)\n", "  print(1)\n", tool="python")
    master, slave = os.openpty()
    try:
        approver = TerminalApprover("ask", tty_path=os.ttyname(slave))
        for answer, expected in ((b"s\n", False), (b"r\n", True), (b"a\n", True)):
            os.write(master, answer)
            assert approver(call) is expected
        assert approver.mode == "always" and approver(call)  # no more questions
        question = "\n--- the model wants to run this Python code ---\n  print(1)\n--- [r]un / [s]kip / [a]lways for this chat? "
        assert question.replace("\n", "\r\n").encode() in os.read(master, 65536)  # the terminal's CR-LF
    finally:
        os.close(master)
        os.close(slave)
    assert TerminalApprover("never")(call) is False


def test_builtin_flag_errors_exit_2(tiny_chat_converted, fast_load, capsys, monkeypatch):
    monkeypatch.delenv("SEARXNG_URL", raising=False)
    rc, out, err = run(capsys, "--model", str(tiny_chat_converted), "--browser", "--search-backend", "searxng", "q")
    assert rc == 2 and "needs the instance URL" in err


def test_help_says_what_each_generate_option_does(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    with pytest.raises(SystemExit) as e:
        main(["generate", "--help"])
    assert e.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert out.startswith("usage: mlx-oss generate [-h] [--model MODEL]")
    for fragment in (
        "[prompt] Generate a reply to one prompt. The prompt is read from stdin when not given. positional arguments:",
        "prompt the user message (default: read stdin)",
        "--show-reasoning stream the chain of thought (to stderr unless --reasoning-to stdout)",
        "--reasoning-to {stderr,stdout} where --show-reasoning writes (stdout is refused with --json-schema)",
        "--tools FILE JSON file: a list of function tool schemas the model may call",
        "--max-reasoning-tokens N reasoning (analysis) tokens per reply: then the reasoning is closed and the answer "
        "begins (default: no limit; 0: answer at once)",
        "--json-schema FILE enforce the answer's format: a JSON schema, or OpenAI's {name, schema, strict} wrapper (a "
        "file, or inline JSON). stdout is exactly the JSON document and a newline, printed once it is complete; "
        "reasoning never goes to stdout; a reply that stops before the document is complete",  # (--max-tokens) wraps
        "prints nothing there and exits 1; a schema that cannot be enforced exits 2 naming the keyword.",
        "--response-format SCHEMA describe the answer's format to the model, not enforced: the same schema as "
        "--json-schema (inline JSON or a file); the answer streams as the model writes it",
        "--json print one JSON object: answer, reasoning, tool_calls, stats",
        "--stats print a statistics line to stderr",
        "--hosts HOSTFILE",
        "--python-dir DIR",
    ):
        assert fragment in out, fragment


class _Said:
    """A stand-in for `Chat` whose `send` yields fixed events: `_stream`'s output without a model."""

    def __init__(self, *events) -> None:
        self.events = events

    def send(self, prompt: str):
        yield from self.events


def _stream(monkeypatch, *events, times: list[float] | None = None, **flags) -> tuple[int, str, str]:
    """`_stream` over fixed events; the clock reads `times` in turn (default: always 0, so Silence never speaks)."""
    import time

    from mlx_oss.cli import generate

    clock = iter(times) if times is not None else None
    monkeypatch.setattr(time, "monotonic", (lambda: next(clock)) if clock is not None else (lambda: 0.0))
    a = argparse.Namespace(**{"json": False, "show_reasoning": False, "reasoning_to": "stderr", "stats": False,
                              "json_schema": None, **flags})  # fmt: skip
    out, err = io.StringIO(), io.StringIO()
    rc = generate._stream(a, _Said(*events), "q", out, err)
    return rc, out.getvalue(), err.getvalue()


def test_stream_writes_each_event_where_it_belongs(monkeypatch):
    from mlx_oss.events import (AnswerDelta, Citation, Done, Progress, ReasoningDelta, Reply, Stats, ToolCall,
                                ToolResult, UnparsedDelta)  # fmt: skip

    stats = Stats(stop_reason="length", generated_tokens=9, unparsed_tokens=2)
    cites = (Citation("【0†L0-L2】", 0, 1, 0, "http://127.0.0.1/a", "A", 0, 2), Citation("【1†】", 2, 3, 1, "http://127.0.0.1/b", "B"))
    events = (Progress(1, 5, 100, None, 0.0), UnparsedDelta("zz"), ReasoningDelta("think"), AnswerDelta("C", channel="commentary"),
              AnswerDelta("Ans"), ToolCall("f", {}, "{}", recipient="functions.f"),
              ToolResult("f", "\n first line\nsecond", error=True, images=("/tmp/a.png",)), ToolResult("g", "x" * 121),
              Done(stats, Reply(answer="Ans", citations=cites)))  # fmt: skip
    rc, out, err = _stream(monkeypatch, *events, show_reasoning=True)
    assert rc == 0 and out == "Ans\n"
    assert err == (
        "zz\nthinkC\ntool call: functions.f {}\ntool result (error): f: first line\nimage: /tmp/a.png\n"
        f"tool result: g: {'x' * 120}\n"
        "(2 of 9 generated tokens were not in harmony format: shown above as unparsed text, not taken as the answer)\n"
        "(stopped at --max-tokens)\nsources:\n  【0†L0-L2】 A <http://127.0.0.1/a> L0-L2\n  【1†】 B <http://127.0.0.1/b>\n"
    )
    # hidden reasoning: nothing of it is shown; shown on stdout with --reasoning-to stdout
    assert _stream(monkeypatch, *events[2:5], Done(Stats(), Reply(answer="Ans\n"))) == (0, "Ans", "")
    rc, out, err = _stream(monkeypatch, *events[2:5], Done(Stats(), Reply(answer="Ans\n")), show_reasoning=True, reasoning_to="stdout")
    assert (out, err) == ("thinkC\nAns", "")
    # unparsed text last: its line is ended
    assert _stream(monkeypatch, UnparsedDelta("zz"), Done(Stats(), Reply())) == (0, "", "zz\n")


def test_stream_stop_notes_stats_line_and_errors(monkeypatch):
    from mlx_oss.events import AnswerDelta, Done, Reply, Stats, ToolCall

    calls = (ToolCall("f", {}, "{}", recipient="functions.f"), ToolCall("f", {}, "{}", recipient="functions.f"),
             ToolCall("g", {}, "{}"))  # fmt: skip
    stop = Stats(stop_reason="tool_call")
    assert _stream(monkeypatch, Done(stop, Reply(tool_calls=calls)))[2] == (
        "(stopped at a tool call to functions.f, g: generate does not run tools; --json has the arguments)\n")
    assert _stream(monkeypatch, Done(stop, Reply()))[2] == (
        "(stopped: the model ended with <|call|> but wrote no complete tool call)\n")
    for reason, note in (("context", "(stopped: the context is full)\n"), ("cancelled", "(cancelled)\n"), ("stop", "")):
        assert _stream(monkeypatch, Done(Stats(stop_reason=reason), Reply())) == (0, "", note)
    s = Stats(stop_reason="stop", prompt_tokens=10, reused_tokens=4, prefilled_tokens=6, prefill_tps=123.45, ttft_s=0.5,
              generated_tokens=7, decode_tps=8.96, peak_memory_bytes=1_500_000_000)  # fmt: skip
    line = ("[stop] prompt 10 tok (4 cached, 6 prefilled at 123.5 tok/s), ttft 0.50 s, 7 generated at 9.0 tok/s, "
            "peak memory 1.50 GB\n")  # fmt: skip
    assert _stream(monkeypatch, AnswerDelta("A"), Done(s, Reply(answer="A")), stats=True) == (0, "A\n", line)
    # --json: one object on stdout, no notes (its stats say it); --stats still on stderr
    rc, out, err = _stream(monkeypatch, Done(Stats(stop_reason="length", unparsed_tokens=1), Reply(answer="A")), json=True, stats=True)
    assert rc == 0 and json.loads(out)["answer"] == "A" and out.count("\n") == 1 and err.startswith("[length] prompt 0 tok")
    assert _stream(monkeypatch, Done(Stats(stop_reason="error", error="boom"), Reply())) == (1, "", "mlx-oss: error: boom\n")


def test_json_errors_go_to_the_given_stdout_unescaped(tmp_path):
    from mlx_oss.cli import generate
    from mlx_oss.cli.main import build_parser

    missing = str(tmp_path / "outils-é.json")
    a = build_parser().parse_args(["generate", "--json", "--tools", missing, "x"])
    out, err = io.StringIO(), io.StringIO()
    assert generate.run(a, stdout=out, stderr=err, stdin=io.StringIO()) == 2
    message = f"--tools: no such file {missing!r}"
    assert out.getvalue() == json.dumps({"error": {"type": "invalid_argument", "message": message}}, ensure_ascii=False) + "\n"
    assert "é" in out.getvalue() and err.getvalue() == f"mlx-oss generate: error: {message}\n"


def test_stats_line_memory_in_gigabytes(monkeypatch):
    from mlx_oss.cli import generate
    from mlx_oss.events import Stats

    assert generate._stats_line(Stats(peak_memory_bytes=1_995_000_001)).endswith(", peak memory 2.00 GB")


# ------------------------------------------------------------------ what mutation testing found unchecked


def _gen_into(out: io.StringIO, argv: list[str], err: io.StringIO | None = None, stdin: io.StringIO | None = None) -> int:
    """`generate.run` with its own streams (not the process's); `out` stays readable when it raises."""
    from mlx_oss.cli import generate
    from mlx_oss.cli.main import build_parser

    a = build_parser().parse_args(["generate", *argv])
    return generate.run(a, stdout=out, stderr=err or io.StringIO(), stdin=stdin or io.StringIO())


def _gen(argv: list[str], stdin: io.StringIO | None = None) -> tuple[int, str, str]:
    """-> exit code, stdout, stderr of `_gen_into`."""
    out, err = io.StringIO(), io.StringIO()
    rc = _gen_into(out, argv, err, stdin)
    return rc, out.getvalue(), err.getvalue()


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_usage_errors_are_exact_lines(tiny_chat_converted, fast_load):
    m = ["--model", str(tiny_chat_converted)]
    assert _gen([*m, "--response-format", "[1]", "x"]) == (
        2, "", "mlx-oss generate: error: --response-format: expected a JSON schema object\n")
    rc, out, err = _gen([*m, "--response-format", "{bad", "x"])
    assert rc == 2 and err.startswith("mlx-oss generate: error: --response-format: invalid JSON (Expecting property name")
    assert _gen([*m, "   "]) == (2, "", "mlx-oss generate: error: the prompt is empty\n")
    assert _gen(m, stdin=_Tty()) == (2, "", "mlx-oss generate: error: no prompt: give it as an argument or pipe it on stdin\n")
    # inline JSON is recognised after leading blanks, and a list as well as an object (not taken for a file name):
    # both are parsed, so the run gets as far as the context check
    for flag, value in (("--response-format", '  {"type": "object"}'), ("--tools", '[{"name": "f", "parameters": {}}]')):
        rc, out, err = _gen([*m, flag, value, "--max-context", "999999", "x"])
        assert rc == 2 and "131072" in err and "no such file" not in err, (flag, err)


def test_the_model_is_resolved_and_loaded_as_asked(tiny_chat_converted, loaded, monkeypatch):
    """The name goes to the store (progress bars unless --json, its status lines on stderr) and the folder
    it gives, with --dtype, to the loader."""
    import mlx_oss.store

    seen = []

    def resolve(name, progress, status):
        seen.append(("resolve", name, progress))
        status("fetching the model")
        return tiny_chat_converted

    monkeypatch.setattr(mlx_oss.store, "resolve_model", resolve)
    monkeypatch.setattr(mlx_oss.loader, "load", lambda path, dtype=None, **kv: (seen.append(("load", path, dtype)), loaded)[1])
    for json_flag in ([], ["--json"]):
        script(monkeypatch, loaded[1], HARMONY)
        rc, out, err = _gen(["--model", "gpt-oss-20b", "--dtype", "float16", *json_flag, "q"])
        assert rc == 0 and err.startswith("fetching the model\n"), err
    assert seen == [("resolve", "gpt-oss-20b", True), ("load", tiny_chat_converted, "float16"),
                    ("resolve", "gpt-oss-20b", False), ("load", tiny_chat_converted, "float16")]  # fmt: skip


def test_a_vocabulary_problem_stops_before_generating(tiny_chat_converted, loaded, fast_load, monkeypatch, capsys):
    monkeypatch.setattr(mlx_oss.chat, "vocabulary_problem", lambda model, tok: "the tokenizer has 3 tokens, the model 9")
    script(monkeypatch, loaded[1], HARMONY)
    rc, out, err = run(capsys, "--model", str(tiny_chat_converted), "q")
    assert (rc, out) == (1, "") and err.splitlines()[-1].endswith("the tokenizer has 3 tokens, the model 9")


def test_errors_escaping_generate_reach_json_readers_only_with_json(tiny_chat_converted, monkeypatch):
    """An error from loading: with --json an {"error"} object on the stdout given (its first line, or the
    exception's name when it has no text), without --json nothing on stdout; the CLI prints the line."""

    def failing(message):
        def load(path, dtype=None, **kv):
            raise OSError(message)

        return load

    for message, shown in (("disk gone\nsecond line", "disk gone"), ("", "OSError")):
        monkeypatch.setattr(mlx_oss.loader, "load", failing(message))
        out = io.StringIO()
        with pytest.raises(OSError):
            _gen_into(out, ["--model", str(tiny_chat_converted), "--json", "q"])
        assert json.loads(out.getvalue()) == {"error": {"type": "error", "message": shown}}
        out = io.StringIO()
        with pytest.raises(OSError):
            _gen_into(out, ["--model", str(tiny_chat_converted), "q"])
        assert out.getvalue() == ""


def test_a_call_to_a_tool_not_given_stops_the_turn(tiny_chat_converted, loaded, fast_load, monkeypatch, capsys, tmp_path):
    """generate runs no function tools: a call to one it was not given ends the turn like any call (the
    chat is made with auto_tools off), it is not answered with an error for the model to go on."""
    tools = json.dumps([{"name": "get_time", "parameters": {"type": "object"}}])
    script(monkeypatch, loaded[1], "<|channel|>commentary to=functions.other <|constrain|>json<|message|>{}<|call|>")
    rc, out, err = run(capsys, "--model", str(tiny_chat_converted), "--tools", tools, "--max-tokens", "60", "--json", "q")
    data = json.loads(out)
    assert rc == 0 and data["stats"]["stop_reason"] == "tool_call" and [c["name"] for c in data["tool_calls"]] == ["other"]


def test_generate_in_a_group_follows_or_leads(tiny_chat_converted, loaded, monkeypatch):
    """Under --hosts / mlx.launch: a follower rank hands over to follow_rank_0 (model name and dtype); rank 0
    loads its slice through the group (status lines on stderr) and generates with a DistributedChat."""
    from contextlib import contextmanager
    from types import SimpleNamespace

    import mlx_oss.distributed.cli as dist
    import mlx_oss.distributed.engine as dist_engine

    seen = []
    session = SimpleNamespace(leader=False)

    @contextmanager
    def group(a):
        seen.append(("group", a.model))
        yield session

    class Leading(mlx_oss.chat.Chat):
        def __init__(self, *args, **kw):
            seen.append(("chat", kw["max_tokens"]))
            super().__init__(*args, **kw)

    def load(s, name, dtype, status, kv_bits=None, kv_group_size=64):
        seen.append(("load", s is session, name, dtype, kv_bits, kv_group_size))
        status("rank 0: slice loaded")
        return loaded

    monkeypatch.setattr(dist, "group", group)
    monkeypatch.setattr(dist, "follow_rank_0", lambda s, name, dtype, **kv: (seen.append(("follow", s is session, name, dtype, kv)), 7)[1])
    monkeypatch.setattr(dist, "load", load)
    monkeypatch.setattr(dist_engine, "DistributedChat", Leading)
    argv = ["--model", "gpt-oss-120b", "--dtype", "float16", "--max-tokens", "50", "--kv-bits", "8", "q"]
    assert _gen(argv) == (7, "", "")
    kv = {"kv_bits": 8, "kv_group_size": 64}  # its own flags, checked against rank 0's
    assert seen == [("group", "gpt-oss-120b"), ("follow", True, "gpt-oss-120b", "float16", kv)]
    seen.clear()
    session.leader = True
    script(monkeypatch, loaded[1], HARMONY)
    assert _gen(argv) == (0, "Forty-two.\n", "rank 0: slice loaded\n")
    assert seen == [("group", "gpt-oss-120b"), ("load", True, "gpt-oss-120b", "float16", 8, 64), ("chat", 50)]


def test_stream_says_on_stderr_when_nothing_shows_for_long(monkeypatch):
    from mlx_oss.events import Done, Progress, Reply, Stats

    events = (Progress(5, 20, 100, None, 0.0), Done(Stats(), Reply()))
    # created at t=0, the progress event at t=100, the end at t=100
    assert _stream(monkeypatch, *events, times=[0.0, 100.0, 100.0]) == (
        0, "", "… 5 tokens generated, nothing to show yet (the reasoning is hidden: --show-reasoning shows it)\n")
    assert _stream(monkeypatch, *events, times=[0.0, 100.0, 100.0], show_reasoning=True) == (
        0, "", "… 5 tokens generated, nothing to show yet\n")


def test_stream_edge_events(monkeypatch):
    from mlx_oss.events import Done, Reply, Stats, ToolResult

    assert _stream(monkeypatch, ToolResult("f", "  \n"), Done(Stats(), Reply()))[2] == "tool result: f: \n"
    rc, out, err = _stream(monkeypatch, Done(Stats(), Reply(answer="déjà")), json=True)
    assert '"answer": "déjà"' in out  # --json keeps the text readable (not \u escapes)


def test_silence_timing_on_a_terminal_and_elsewhere():
    from mlx_oss.cli.generate import Silence

    now = [100.0]
    plain = io.StringIO()
    q = Silence(plain)  # the defaults: no hint, quiet for 3 s, then a line every 10 s
    q.clock = lambda: now[0]
    q.last_output = 100.0
    for t, tokens in ((102.999, 1), (103.0, 2), (112.999, 3), (113.0, 4)):
        now[0] = t
        q.tick(tokens)
    assert plain.getvalue() == "… 2 tokens generated, nothing to show yet\n… 4 tokens generated, nothing to show yet\n"

    tty = _Tty()
    q = Silence(tty)
    q.clock = lambda: now[0]
    q.last_output = now[0] - 5
    q.tick(7)
    q.clear()
    q.clear()  # nothing drawn any more: nothing to erase
    assert tty.getvalue() == "\r\x1b[K… 7 tokens generated, nothing to show yet\r\x1b[K"

    class Bare:  # a stream without isatty: not a terminal
        def write(self, text: str) -> None: ...

        def flush(self) -> None: ...

    assert Silence(Bare()).tty is False and Silence(io.StringIO()).tty is False and Silence(_Tty()).tty is True


def _read_question(master: int) -> bytes:
    """What the terminal shows up to the end of one question: a pty hands the writer's bytes over
    asynchronously, so one `read` right after the call may return only part of them (a CI flake)."""
    import os
    import select

    seen, deadline = b"", time.monotonic() + 10
    while b"for this chat? " not in seen:
        assert time.monotonic() < deadline, seen
        if select.select([master], [], [], 0.1)[0]:
            seen += os.read(master, 65536)
    return seen


def test_terminal_approver_answers_and_modes():
    import os
    import select

    from mlx_oss.cli.generate import TerminalApprover
    from mlx_oss.events import ToolCall

    call = ToolCall("python", "print(1)", "print(1)", tool="python")
    default = TerminalApprover()
    assert (default.mode, default.tty_path, default.err) == ("ask", "/dev/tty", None)
    master, slave = os.openpty()
    try:
        name = os.ttyname(slave)
        for answer, expected in ((b"y\n", True), (b"YES\n", True), (b"Run\n", True), (b"no\n", False),
                                 (b"\xffr\n", False), (b"\n", False)):  # fmt: skip
            os.write(master, answer)
            assert TerminalApprover("ask", tty_path=name)(call) is expected, answer
            _read_question(master)
        always = TerminalApprover("ask", tty_path=name)
        os.write(master, b"always\n")
        assert always(call) is True and always.mode == "always"
        _read_question(master)
        os.write(master, b"r\n")  # typed ahead: never read, nothing asked
        for mode, expected in (("never", False), ("always", True)):
            assert TerminalApprover(mode, tty_path=name)(call) is expected
        echoed = os.read(master, 65536) if select.select([master], [], [], 0.2)[0] else b""
        assert b"wants to run" not in echoed  # no question was written (only the typed-ahead echo)
    finally:
        os.close(master)
        os.close(slave)
    err = io.StringIO()
    assert TerminalApprover("ask", err=err, tty_path="/nonexistent/tty")(call) is False
    assert err.getvalue() == "python call refused: no terminal to ask (use --approve-python always to allow)\n"


def test_terminal_approver_does_not_take_the_terminal():
    """The question's terminal is opened with O_NOCTTY: a process without a controlling terminal (a
    daemon, a server's worker) does not acquire the one it asks on."""
    from pathlib import Path

    import mlx_oss
    from mlx_oss.cli.generate import TerminalApprover

    assert TerminalApprover("never")(None) is False  # (also in this process, so mutmut maps this test here)
    code = (
        "import os\n"
        "from types import SimpleNamespace\n"
        "from mlx_oss.cli.generate import TerminalApprover\n"
        "os.setsid()\n"  # a new session: no controlling terminal
        "master, slave = os.openpty()\n"
        "os.write(master, b'r\\n')\n"
        "assert TerminalApprover('ask', tty_path=os.ttyname(slave))(SimpleNamespace(arguments='print(1)')) is True\n"
        "try:\n"
        "    os.close(os.open('/dev/tty', os.O_RDWR))\n"
        "    print('took the terminal')\n"
        "except OSError:\n"
        "    print('no controlling terminal')\n"
    )
    env = dict(__import__("os").environ, PYTHONPATH=str(Path(mlx_oss.__file__).resolve().parents[1]))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert (r.returncode, r.stdout) == (0, "no controlling terminal\n"), r.stderr


def test_the_command_list_says_what_generate_does(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "generate answer one prompt (stdout: the answer; --json for everything)" in " ".join(capsys.readouterr().out.split())


# ------------------------------------------------------------------ structured output (issue 27): --json-schema
# The tiny model has random weights and nothing is scripted unless a test says so: it never writes harmony by
# itself, so a document that validates can only come from the constraint. Every string of PET has a maxLength or
# an enum, its integer is bounded and its array has maxItems, so a random model's document always ends; a
# reasoning budget (--max-reasoning-tokens) makes its analysis end too.

from bounded_schemas import PET  # noqa: E402

SEEDS = ("1", "2", "3", "4", "5")


def _valid(text: str, schema: dict = PET) -> bool:
    try:
        jsonschema.validate(json.loads(text), schema)
        return True
    except (ValueError, jsonschema.ValidationError):
        return False


@pytest.fixture
def pet_file(tmp_path):
    """PET in OpenAI's wrapper, as `client.responses.parse` sends it."""
    f = tmp_path / "pet.json"
    f.write_text(json.dumps({"name": "pet", "strict": True, "schema": PET}))
    return str(f)


def test_json_schema_stdout_is_exactly_a_valid_document_on_every_seed(tiny_chat_converted, fast_load, capsys, pet_file):
    m = ["--model", str(tiny_chat_converted), "--max-reasoning-tokens", "4", "--max-tokens", "200"]
    reasoned = 0
    for seed in SEEDS:
        rc, out, err = run(capsys, *m, "--json-schema", pet_file, "--seed", seed, "--show-reasoning", "A pet?")
        assert rc == 0 and out.endswith("\n") and out.count("\n") == 1, (seed, out, err)
        assert _valid(out), (seed, out)  # stdout is the document alone: the reasoning went to stderr
        reasoned += bool(err.strip())
    assert reasoned  # some seeds did reason (on stderr), so "never on stdout" was put to the test
    # the same seeds, the schema only described: the random model writes nothing that validates
    for seed in SEEDS:
        rc, out, err = run(capsys, *m[:-1], "40", "--response-format", json.dumps(PET), "--seed", seed, "A pet?")
        assert rc == 0 and not _valid(out), (seed, out)


def test_json_schema_with_json_gives_the_document_as_parsed(tiny_chat_converted, fast_load, capsys):
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer", "minimum": 1, "maximum": 9}},
              "required": ["ok", "n"], "additionalProperties": False}  # fmt: skip
    rc, out, err = run(capsys, "--model", str(tiny_chat_converted), "--json-schema", json.dumps(schema),
                       "--max-reasoning-tokens", "2", "--seed", "3", "--json", "q")  # fmt: skip
    data = json.loads(out)
    assert rc == 0 and data["stats"]["stop_reason"] == "stop" and data["parsed"] == json.loads(data["answer"])
    jsonschema.validate(data["parsed"], schema)


def test_a_strict_reply_cut_off_prints_no_document_and_exits_1(tiny_chat_converted, fast_load, capsys, pet_file):
    m = ["--model", str(tiny_chat_converted), "--json-schema", pet_file, "--max-reasoning-tokens", "4", "--seed", "2"]
    rc, out, err = run(capsys, *m, "--max-tokens", "12", "q")
    assert (rc, out) == (1, "")
    assert err.splitlines()[-1] == ("mlx-oss: error: no JSON document: the reply reached --max-tokens before it was "
                                    "complete (raise --max-tokens, or bound the reasoning with --max-reasoning-tokens)")  # fmt: skip
    assert "(stopped at --max-tokens)" not in err  # one line says it
    # --json: the reply object (stopped at length, nothing parsed) and the same exit code and line
    rc, out, err = run(capsys, *m, "--max-tokens", "12", "--json", "q")
    data = json.loads(out)
    assert rc == 1 and data["parsed"] is None and data["stats"]["stop_reason"] == "length"
    assert err.splitlines()[-1].startswith("mlx-oss: error: no JSON document: the reply reached --max-tokens")


def test_a_schema_that_cannot_be_enforced_is_a_usage_error_naming_the_keyword(tiny_chat_converted, fast_load, capsys):
    m = ["--model", str(tiny_chat_converted)]
    rc, out, err = run(capsys, *m, "--json-schema", '{"type": "array", "uniqueItems": true}', "q")
    assert (rc, out) == (2, "") and err.count("\n") == 1, err
    assert err.startswith('mlx-oss generate: error: --json-schema cannot be enforced: keyword(s) ["uniqueItems"] not supported')
    rc, out, err = run(capsys, *m, "--json", "--json-schema", '{"type": "array", "uniqueItems": true}', "q")
    assert rc == 2 and json.loads(out)["error"]["type"] == "invalid_argument" and "uniqueItems" in json.loads(out)["error"]["message"]
    # only described, it is not compiled: nothing to refuse
    script_free = run(capsys, *m, "--response-format", '{"type": "array", "uniqueItems": true}', "--max-tokens", "2", "q")
    assert script_free[0] == 0
    # a strict tool's parameters are checked alike, named by --tools
    tool = json.dumps([{"name": "f", "strict": True, "parameters": {"type": "object", "properties": {"x": {"not": {}}}}}])
    rc, out, err = run(capsys, *m, "--tools", tool, "q")
    assert (rc, out) == (2, "") and err.startswith("mlx-oss generate: error: --tools: tool 'f'") and err.count("\n") == 1, err


def test_json_schema_and_response_format_are_read_alike_and_exclusive(tiny_chat_converted, fast_load, capsys, pet_file):
    m = ["--model", str(tiny_chat_converted)]
    for flag in ("--json-schema", "--response-format"):
        assert _gen([*m, flag, "[1]", "x"]) == (2, "", f"mlx-oss generate: error: {flag}: expected a JSON schema object\n")
        rc, out, err = _gen([*m, flag, "{bad", "x"])
        assert rc == 2 and err.startswith(f"mlx-oss generate: error: {flag}: invalid JSON (Expecting property name")
        rc, out, err = _gen([*m, flag, "/nowhere/schema.json", "x"])
        assert rc == 2 and err == f"mlx-oss generate: error: {flag}: no such file '/nowhere/schema.json'\n"
    # the wrapper's own "strict" must agree with the flag: neither is silently overridden
    described = json.dumps({"name": "pet", "strict": False, "schema": PET})
    assert _gen([*m, "--json-schema", described, "x"]) == (
        2, "", 'mlx-oss generate: error: --json-schema: the schema says "strict": false; use --response-format to only describe it\n')
    assert _gen([*m, "--response-format", pet_file, "x"]) == (
        2, "", 'mlx-oss generate: error: --response-format: the schema says "strict": true; use --json-schema to enforce it\n')
    assert _gen([*m, "--json-schema", pet_file, "--show-reasoning", "--reasoning-to", "stdout", "x"]) == (
        2, "", "mlx-oss generate: error: --reasoning-to stdout: with --json-schema stdout is only the JSON document\n")
    with pytest.raises(SystemExit) as e:
        main(["generate", *m, "--json-schema", pet_file, "--response-format", pet_file, "x"])
    assert e.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


def test_both_flags_describe_the_format_in_the_prompt_and_only_json_schema_enforces_it(
    tiny_chat_converted, loaded, fast_load, monkeypatch, capsys
):
    """The rendered prompt is the same for both flags (the constraint acts on sampling only, so the cache is
    reused alike); the sampler gets a constraint only with --json-schema."""
    from mlx_oss.constraint import ReplyConstraint

    tok = loaded[1]
    prompts, extras = {}, {}
    for flag in ("--json-schema", "--response-format"):
        seen = record(monkeypatch, tok, "<|channel|>final<|message|>{}<|return|>")
        real = mlx_oss.chat.Chat._round

        def spy(self, prompt, boundaries, sampler, *rest, _flag=flag, _real=real):
            result = yield from _real(self, prompt, boundaries, sampler, *rest)
            extras[_flag] = sampler.extra
            return result

        monkeypatch.setattr(mlx_oss.chat.Chat, "_round", spy)
        schema = json.dumps({"title": "answer", "type": "object"})
        rc, out, err = run(capsys, "--model", str(tiny_chat_converted), flag, schema, "--max-tokens", "30", "q")
        assert rc == 0 and out == "{}\n", (flag, out, err)
        prompts[flag] = seen["prompts"][0]
        monkeypatch.setattr(mlx_oss.chat.Chat, "_round", real)
    assert prompts["--json-schema"] == prompts["--response-format"]
    assert "# Response Formats" in tok.decode(prompts["--json-schema"]) and "## answer" in tok.decode(prompts["--json-schema"])
    assert [type(p) for p in extras["--json-schema"]] == [ReplyConstraint] and extras["--response-format"] == ()


def test_max_reasoning_tokens_bounds_the_reasoning(tiny_chat_converted, loaded, fast_load, monkeypatch, capsys, pet_file):
    m = ["--model", str(tiny_chat_converted), "--json"]
    # a model that reasons (scripted): the analysis is closed after the budget, then the answer follows
    for budget, reasoning in (("1", "Think"), ("0", "")):
        script(monkeypatch, loaded[1], HARMONY)
        rc, out, err = run(capsys, *m, "--max-reasoning-tokens", budget, "q")
        data = json.loads(out)
        assert rc == 0 and data["reasoning"] == reasoning and data["stats"]["reasoning_tokens"] == int(budget), data
    # with --json-schema on the random model (some seeds reason with a budget of 4: the first test), 0: none at all
    for seed in SEEDS[1:4]:
        rc, out, err = run(capsys, *m, "--json-schema", pet_file, "--max-reasoning-tokens", "0", "--seed", seed,
                           "--max-tokens", "200", "q")  # fmt: skip
        data = json.loads(out)
        assert rc == 0 and data["reasoning"] == "" and data["stats"]["reasoning_tokens"] == 0, (seed, data)
        assert _valid(data["answer"]), (seed, data)
    with pytest.raises(SystemExit) as e:
        main(["generate", "--max-reasoning-tokens", "-1", "x"])
    assert e.value.code == 2 and "argument --max-reasoning-tokens: must be at least 0, got -1" in capsys.readouterr().err


def test_max_reasoning_tokens_is_one_flag_that_reaches_the_chat_of_generate_and_of_chat(
    tiny_chat_converted, loaded, monkeypatch, tmp_path
):
    """The shared flag (mlx_oss/cli/args.py): generate's Chat and every Chat the TUI makes get it; without
    it the Chat's default (no limit) holds."""
    import mlx_oss.tui.app
    import mlx_oss.tui.cli
    from mlx_oss.cli.main import build_parser
    from mlx_oss.tui import session as door

    p = build_parser()
    assert p.parse_args(["generate", "--max-reasoning-tokens", "7", "x"]).max_reasoning_tokens == 7
    assert p.parse_args(["chat", "--max-reasoning-tokens", "7"]).max_reasoning_tokens == 7
    assert p.parse_args(["generate", "x"]).max_reasoning_tokens is None and p.parse_args(["chat"]).max_reasoning_tokens is None

    made = []

    class Spy(mlx_oss.chat.Chat):
        def __init__(self, *args, **kw):
            super().__init__(*args, **kw)
            made.append(self)

    monkeypatch.setattr(mlx_oss.chat, "Chat", Spy)
    monkeypatch.setattr(mlx_oss.loader, "load", lambda path, dtype=None, **kv: loaded)
    monkeypatch.setattr(mlx_oss.sampling, "SamplingConfig",
                        lambda **kw: SamplingConfig(**kw, logits_processors=(ScriptedTokens([200002]),)))  # fmt: skip
    assert _gen(["--model", str(tiny_chat_converted), "--max-reasoning-tokens", "7", "x"])[0] == 0
    assert made[-1].max_reasoning_tokens == 7

    options = []

    class App:
        return_code = 0

        def __init__(self, loader, **kw):
            self.model_thread = type("T", (), {"join": lambda self, timeout=None: True})()

        def run(self):
            pass

    monkeypatch.setattr(mlx_oss.tui.app, "ChatApp", App)
    monkeypatch.setattr(door, "model_loader", lambda model, o, group=None: options.append(o))
    monkeypatch.setattr(mlx_oss.tui.cli.sys.stdin, "isatty", lambda: True, raising=False)
    monkeypatch.setattr(mlx_oss.tui.cli.sys.stdout, "isatty", lambda: True, raising=False)
    for argv, expected in ((["--max-reasoning-tokens", "7"], 7), ([], None)):
        assert main(["chat", "--data-dir", str(tmp_path), *argv]) == 0
        chat = mlx_oss.chat.Chat(*loaded, **options[-1].chat_kwargs())
        assert chat.max_reasoning_tokens == expected
    assert "max_reasoning_tokens" not in options[-1].chat_kwargs()  # not given: not passed


def test_stream_with_json_schema_prints_the_document_whole_or_nothing(monkeypatch):
    """--json-schema without a model: the answer is held back until Done, then printed alone (reasoning on
    stderr); every stop short of a complete document is one error line and exit 1, stdout empty."""
    from mlx_oss.events import AnswerDelta, Done, ReasoningDelta, Reply, Stats, ToolCall

    doc = '{"a":1}'
    events = (ReasoningDelta("think"), AnswerDelta('{"a"'), AnswerDelta(":1}"))
    rc, out, err = _stream(monkeypatch, *events, Done(Stats(stop_reason="stop"), Reply(answer=doc)),
                           json_schema="f", show_reasoning=True)  # fmt: skip
    assert (rc, out, err) == (0, doc + "\n", "think\n")
    call = ToolCall("f", {}, "{}", recipient="functions.f")
    for stats, reply, why in (
        (Stats(stop_reason="length"), Reply(answer='{"a"'), "the reply reached --max-tokens before it was complete (raise "
         "--max-tokens, or bound the reasoning with --max-reasoning-tokens)"),
        (Stats(stop_reason="context"), Reply(answer='{"a"'), "the context filled up before it was complete"),
        (Stats(stop_reason="cancelled"), Reply(answer='{"a"'), "cancelled"),
        (Stats(stop_reason="tool_call"), Reply(tool_calls=(call,)),
         "stopped at a tool call to functions.f: generate does not run tools; --json has the arguments"),
        (Stats(stop_reason="stop"), Reply(answer=""), "the answer is not valid JSON"),
    ):  # fmt: skip
        assert _stream(monkeypatch, *events, Done(stats, reply), json_schema="f") == (
            1, "", f"mlx-oss: error: no JSON document: {why}\n"), stats.stop_reason
    # an error is reported as every error is; --json prints the reply object and still exits 1 when cut
    assert _stream(monkeypatch, Done(Stats(stop_reason="error", error="boom"), Reply()), json_schema="f") == (
        1, "", "mlx-oss: error: boom\n")
    rc, out, err = _stream(monkeypatch, Done(Stats(stop_reason="length"), Reply(answer="{")), json_schema="f", json=True)
    assert rc == 1 and json.loads(out)["answer"] == "{" and err.startswith("mlx-oss: error: no JSON document: the reply")
    rc, out, err = _stream(monkeypatch, Done(Stats(stop_reason="stop"), Reply(answer=doc)), json_schema="f", json=True)
    assert (rc, err) == (0, "") and json.loads(out)["answer"] == doc
