"""Token ids the model has no embedding row for never reach MLX (an out-of-range gather reads
arbitrary memory: a segfault on the CPU backend), and a model whose vocabulary cannot hold the
harmony tokenizer's ids is refused with one line (Chat, generate) or skipped with a reason (bench)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import mlx_oss
from mlx_oss.engine import Engine
from mlx_oss.sampling import Sampler, SamplingConfig


@pytest.fixture(scope="module")
def small(tiny_converted):
    return mlx_oss.load(tiny_converted, dtype="float32")  # 512-token vocabulary


@pytest.mark.parametrize("bad", [512, 200006, -1])
def test_engine_refuses_ids_outside_the_vocabulary_before_any_compute(small, bad):
    model, _ = small
    eng = Engine(model)
    with pytest.raises(ValueError, match=rf"token id {bad} \(position 2\) is outside the model's vocabulary of 512"):
        eng.generate([1, 2, bad, 3], Sampler(SamplingConfig()))
    with pytest.raises(ValueError, match="outside the model's vocabulary"):
        eng.prefill([bad, 1])
    assert eng.tokens == []
    assert list(eng.generate([1, 2, 511], Sampler(SamplingConfig(temperature=0.0)), max_tokens=2))  # in range: fine


def test_chat_refuses_a_model_that_cannot_hold_harmony_ids(small, tiny_converted):
    model, tok = small
    with pytest.raises(ValueError) as e:
        mlx_oss.Chat(model, tok)
    msg = str(e.value)
    assert "\n" not in msg and str(tiny_converted) in msg and "512" in msg and "201088" in msg and "tiny-chat" in msg
    saved = {"version": 1, "settings": {}, "messages": [{"role": "user", "content": "hi"}]}
    with pytest.raises(ValueError, match="cannot chat"):  # reopening a saved chat goes through the same check
        mlx_oss.Chat.from_json(saved, model, tok)


def test_generate_on_a_small_vocabulary_model_is_one_line_not_a_crash(tiny_converted):
    for extra in ([], ["--json"]):
        p = subprocess.run(
            [sys.executable, "-m", "mlx_oss.cli.main", "generate", "-m", str(tiny_converted), "--max-tokens", "4", *extra, "hi"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert p.returncode == 1, (p.returncode, p.stderr)  # was -11 (SIGSEGV)
        assert p.stderr.count("\n") == 1 and "cannot chat" in p.stderr and str(tiny_converted) in p.stderr
        if extra:
            assert "cannot chat" in json.loads(p.stdout)["error"]["message"]


def test_bench_skips_the_chat_parts_and_says_why(tiny_converted, capsys):
    from mlx_oss.cli.main import main

    rc = main(["bench", "--model", str(tiny_converted), "-p", "8", "-g", "2", "-r", "1", "--no-graph",
               "--turns", "3", "--effort-tokens", "2", "--json"])  # fmt: skip
    cap = capsys.readouterr()
    assert rc == 0
    result = json.loads(cap.out)
    assert result["skipped"]["parts"] == ["--turns", "--effort-tokens"] and "cannot chat" in result["skipped"]["reason"]
    ours = result["engines"]["mlx-oss"]
    assert ours["decode"] and "multiturn" not in ours and "efforts" not in ours
    assert "skipping the chat parts" in cap.err
    from mlx_oss.bench import report as rep

    assert "skipped --turns and --effort-tokens: " in rep.format_table(result)
