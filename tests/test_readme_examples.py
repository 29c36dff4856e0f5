"""The README's `## Python API` examples, run as written on the tiny synthetic model.

`mlx_oss.load` is pointed at the tiny model, and since random weights never speak harmony, a scripted
"brain" plays gpt-oss: at the start of every assistant turn it reads the prompt and forces a fitting
harmony reply (a tool call when tools are offered, JSON when a response format is set, else reasoning
and an answer). Everything else (rendering, cache reuse, parsing, tool loop) is the real code.
"""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

import mlx_oss
import mlx_oss.chat
import mlx_oss.loader
from mlx_oss import tokenizer as tk
from mlx_oss.sampling import Sampler, SamplingConfig, ScriptedTokens

README = Path(__file__).resolve().parents[1] / "README.md"


def python_examples() -> list[str]:
    text = README.read_text(encoding="utf-8")
    m = re.search(r"^## Python API\n(.*?)(?=^## )", text, re.S | re.M)
    assert m, "README.md has no '## Python API' section"
    return re.findall(r"^```python\n(.*?)^```", m.group(1), re.S | re.M)


class Brain(ScriptedTokens):
    """Decides a reply from the prompt when a turn starts, then forces it token by token."""

    def __init__(self, tok) -> None:
        super().__init__([])
        self.tok = tok
        self.assistant = tok.encode("assistant")

    def __call__(self, context, logits):
        if self.step >= len(self.tokens):
            ids = context.tolist()
            started = ids[-1 - len(self.assistant) :] == [tk.START, *self.assistant]
            text = self.reply_for(self.tok.decode(ids)) if started else "<|return|>"
            self.tokens, self.step = self.tok.encode(text, allowed_special="all"), 0
        return super().__call__(context, logits)

    @staticmethod
    def reply_for(prompt: str) -> str:
        turn = prompt[prompt.rindex("<|start|>user") :]
        tool = re.search(r"type (\w+) = \(_: \{\n(?://.*\n)*(\w+)", prompt)
        if tool and "<|start|>functions." not in turn:
            args = '{"%s": "Paris"}' % tool.group(2)
            return f"<|channel|>commentary to=functions.{tool.group(1)} <|constrain|>json<|message|>{args}<|call|>"
        if "# Response Formats" in prompt:
            return '<|channel|>final<|message|>{"name": "Paris", "country": "France"}<|return|>'
        return ("<|channel|>analysis<|message|>Rayleigh scattering.<|end|>"
                "<|start|>assistant<|channel|>final<|message|>Short wavelengths scatter more.<|return|>")  # fmt: skip


def test_python_api_examples_run(tiny_chat_converted, monkeypatch):
    model, tok = mlx_oss.loader.load(tiny_chat_converted, dtype="float32")
    loads = []
    monkeypatch.setattr(mlx_oss.loader, "load", lambda path, dtype=None, **kv: loads.append(path) or (model, tok))

    class BrainSampler(Sampler):
        def __init__(self, config: SamplingConfig) -> None:
            procs = tuple(config.logits_processors) + (Brain(tok),)
            super().__init__(SamplingConfig(**config.to_dict(), logits_processors=procs))

    monkeypatch.setattr(mlx_oss.chat, "Sampler", BrainSampler)

    blocks = python_examples()
    assert len(blocks) >= 4
    namespace: dict = {"__name__": "readme"}
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        for i, code in enumerate(blocks):
            try:
                exec(compile(code, f"README.md python example {i + 1}", "exec"), namespace)
            except Exception as e:  # pragma: no cover - the message names the failing example
                pytest.fail(f"README example {i + 1} failed: {type(e).__name__}: {e}")
    printed = out.getvalue()
    assert loads == ["~/models/gpt-oss-20b"]
    assert "Short wavelengths scatter more." in printed and "[stop]" in printed
    assert "tokens from the cache" in printed
    reused = int(re.search(r"(\d+) tokens from the cache", printed).group(1))
    assert reused > 0
    assert "-> get_weather({'city': 'Paris'})" in printed and "<- Paris: 21 °C, clear" in printed
    assert "{'name': 'Paris', 'country': 'France'}" in printed
    assert "context limit" in printed
    assert namespace["chat"].history  # the reopened chat holds the saved conversation


def test_synthetic_walkthrough_runs_as_written_and_always_limits_tokens(tmp_path):
    """The README's shell walkthrough on a synthetic model: every generate/chat/bench passes a token
    limit (random weights never stop), and each command but the TUI runs to completion."""
    import shlex
    import subprocess
    import sys

    text = README.read_text(encoding="utf-8")
    m = re.search(r"Trying the whole product on a synthetic model.*?```sh\n(.*?)```", text, re.S)
    assert m, "README.md has no synthetic-model walkthrough"
    lines = [ln for ln in m.group(1).splitlines() if ln.strip()]
    for ln in lines:
        if re.match(r"mlx-oss (generate|chat)\b", ln):
            assert "--max-tokens" in ln, ln
        if ln.startswith("mlx-oss bench"):
            assert " -g " in ln and "--turn-tokens" in ln, ln
    for ln in lines:
        if ln.startswith("mlx-oss chat"):
            continue  # needs a terminal (tests/test_tui_cli.py runs it in a pty-less check)
        argv = shlex.split(ln.replace("/tmp/", f"{tmp_path}/"))
        argv = [sys.executable, "-m", "mlx_oss.cli.main", *argv[1:]] if argv[0] == "mlx-oss" else [sys.executable, *argv[1:]]
        r = subprocess.run(argv, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, (ln, r.stderr[-2000:])
