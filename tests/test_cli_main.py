"""`mlx-oss`'s exit-code contract (mlx_oss/cli/main.py) for every kind of failure a subcommand raises, on a
stub subcommand: one line on stderr, never a traceback (unless MLX_OSS_DEBUG), and the documented code."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import pytest

from mlx_oss.cli import info, main as cli_main
from mlx_oss.errors import ConvertError, UsageError


def _run_raising(monkeypatch, exc: BaseException | None, argv=("info", "x")) -> int:
    def fake(a: argparse.Namespace) -> int:
        if exc is not None:
            raise exc
        return 7

    monkeypatch.setattr(info, "_cmd_info", fake)  # `register` hands it to argparse as the command's func
    return cli_main.main(list(argv))


@pytest.mark.parametrize(
    "exc, code, line",
    [
        (None, 7, ""),
        (UsageError("--x: bad"), 2, "mlx-oss info: error: --x: bad\n"),
        (ConvertError("no such folder"), 1, "mlx-oss: error: no such folder\n"),
        (KeyboardInterrupt(), 130, "mlx-oss: interrupted\n"),
        (RuntimeError("  first line\nsecond line"), 1, "mlx-oss: error: RuntimeError: first line\n"),
        (ValueError(""), 1, "mlx-oss: error: ValueError: \n"),
    ],
)
def test_each_failure_is_one_line_and_its_exit_code(exc, code, line, monkeypatch, capsys):
    monkeypatch.delenv("MLX_OSS_DEBUG", raising=False)
    assert _run_raising(monkeypatch, exc) == code
    out, err = capsys.readouterr()
    assert (out, err) == ("", line)


def test_debug_shows_the_traceback(monkeypatch):
    monkeypatch.setenv("MLX_OSS_DEBUG", "1")
    with pytest.raises(RuntimeError, match="boom"):
        _run_raising(monkeypatch, RuntimeError("boom"))


def test_broken_pipe_is_quiet_and_141(monkeypatch, capsys):
    silenced = []
    monkeypatch.setattr(cli_main, "_silence_stdout", lambda: silenced.append(True))
    assert _run_raising(monkeypatch, BrokenPipeError()) == 141
    assert silenced == [True] and capsys.readouterr() == ("", "")


def test_every_subcommand_is_registered_in_help_order():
    sub = next(a for a in cli_main.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert list(sub.choices) == ["convert", "info", "generate", "chat", "bench", "serve"]
    assert sub.required
    with pytest.raises(SystemExit) as e:
        cli_main.main([])
    assert e.value.code == 2


def test_silence_stdout_points_it_at_devnull(tmp_path, monkeypatch):
    import io

    f = open(tmp_path / "out", "w")
    monkeypatch.setattr(sys, "stdout", f)
    cli_main._silence_stdout()
    f.write("lost")
    f.close()  # the final flush goes to /dev/null, without an error
    assert (tmp_path / "out").read_text() == ""
    monkeypatch.setattr(sys, "stdout", io.StringIO())  # no file descriptor: nothing to do, nothing raised
    cli_main._silence_stdout()


def _help(capsys, monkeypatch, argv: list[str]) -> str:
    """What `mlx-oss ARGV --help` prints, with whitespace collapsed (argparse wraps to the terminal width)."""
    monkeypatch.setenv("COLUMNS", "100")
    with pytest.raises(SystemExit) as e:
        cli_main.main(argv)
    assert e.value.code == 0
    out, err = capsys.readouterr()
    assert err == ""
    return " ".join(out.split())


def test_help_lists_the_subcommands_with_their_descriptions(capsys, monkeypatch):
    out = _help(capsys, monkeypatch, ["--help"])
    assert out.startswith("usage: mlx-oss [-h] COMMAND ... gpt-oss on Apple Silicon with MLX positional arguments: COMMAND convert ")
    for line in (
        "convert convert a checkpoint (HF or original layout, local or Hub id) to an mlx-oss folder",
        "info parameters, weight bytes, KV cache and memory needed for a model",
        "generate answer one prompt (stdout: the answer; --json for everything)",
        "chat terminal chat with gpt-oss (streaming answer, live reasoning, tools)",
        "bench prefill/decode speed, TTFT, memory, multi-turn, roofline; --compare mlx-lm",
        "serve OpenAI-compatible server (/v1/responses, /v1/chat/completions) for Codex, Open WebUI, SDKs",
    ):
        assert line in out


@pytest.mark.parametrize("command", ["convert", "info", "generate", "chat", "bench", "serve"])
def test_each_subcommand_help_is_named_after_mlx_oss(command, capsys, monkeypatch):
    assert _help(capsys, monkeypatch, [command, "--help"]).startswith(f"usage: mlx-oss {command} [-h]")


def test_a_missing_subcommand_names_the_command_metavar(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    with pytest.raises(SystemExit) as e:
        cli_main.main([])
    assert e.value.code == 2
    assert capsys.readouterr().err == (
        "usage: mlx-oss [-h] COMMAND ...\nmlx-oss: error: the following arguments are required: COMMAND\n"
    )


# The packages of the optional extras (pyproject's `serve` and `plot`): a plain `pip install mlx-oss` has none.
EXTRAS_ONLY = ("starlette", "uvicorn", "httptools", "uvloop", "jsonschema", "matplotlib")
_WITHOUT_EXTRAS = f"""
import sys
class _Absent:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {EXTRAS_ONLY!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
sys.meta_path.insert(0, _Absent())
from mlx_oss.cli.main import main
raise SystemExit(main(sys.argv[1:]))
"""


def _mlx_oss_without_extras(*argv: str):
    return subprocess.run([sys.executable, "-c", _WITHOUT_EXTRAS, *argv], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "COLUMNS": "100"})  # fmt: skip


def test_every_command_but_serve_works_without_the_extras(tiny_chat_converted):
    """A new user's `pip install -e ".[hub]"` has no web framework: `mlx-oss` must still start (it once
    crashed with a traceback on every command, because registering `serve` imported Starlette)."""
    r = _mlx_oss_without_extras("--help")
    assert (r.returncode, r.stderr) == (0, "") and "serve" in r.stdout and "chat" in r.stdout
    r = _mlx_oss_without_extras("info", str(tiny_chat_converted))
    assert (r.returncode, r.stderr) == (0, "") and "parameters" in r.stdout.lower()
    r = _mlx_oss_without_extras("generate", "--model", str(tiny_chat_converted), "--max-tokens", "3", "--json", "hi")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["stats"]["generated_tokens"] == 3


def test_serve_without_the_extra_says_which_one_in_one_line(tiny_chat_converted):
    r = _mlx_oss_without_extras("serve", "--model", str(tiny_chat_converted))
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr == ("mlx-oss: error: mlx-oss serve needs the 'serve' extra (uvicorn is missing): "
                        "pip install 'mlx-oss[serve]'\n")  # fmt: skip
