"""benchmarks/structured_bench.py on the tiny chat model, so the benchmark docs/ENGINE.md quotes keeps
running: both modes generate the same number of tokens, the replay follows the grammar, every table is
printed. Its timings are not asserted (timing belongs to the benchmark)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("structured_bench", ROOT / "benchmarks" / "structured_bench.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_structured_bench_runs_on_tiny_chat_and_prints_every_table(tiny_chat_converted, capsys, monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))  # the benchmark puts benchmarks/ on it
    bench = _bench()
    assert bench.main(["--models", "tiny-chat", "--tiny-chat", str(tiny_chat_converted), "--tokens", "12",
                       "--seeds", "1,2", "--repeats", "1"]) == 0  # fmt: skip
    cap = capsys.readouterr()
    out = cap.out
    for heading in ("## Decode time per token, schema described vs enforced", "## The constraint's own cost per token",
                    "## Compile latency (seconds)", "## First token, tiny-chat"):  # fmt: skip
        assert heading in out, heading
    row = next(line for line in out.splitlines() if line.startswith("| tiny-chat | 12 | 2 |"))
    assert row.count("|") == 7
    assert "did not generate" not in cap.err  # both modes stopped at max_tokens with the same count
    assert "| enforced, next reply (schema cached) |" in out and "| wide (40 fields, nested): compile (first use) |" in out
