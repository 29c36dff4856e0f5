"""`mlx-oss bench --batch` (issue 28): batched decode tok/s and peak memory per B, ours and mlx-lm's
`BatchGenerator`, through the real command on the tiny model (mlx_oss/bench/batch.py)."""

from __future__ import annotations

import contextlib
import csv
import io
import json

import pytest

from mlx_oss.bench import report as rep
from mlx_oss.cli.main import main

BATCHES = [1, 2, 4]


@pytest.fixture(scope="module")
def bench_result(tiny_converted) -> dict:
    """The real command once for the module (both engines), its --json output read back."""
    argv = ["bench", "--model", str(tiny_converted), "-p", "8", "-g", "4", "-r", "1", "--turns", "0", "--no-graph",
            "--bandwidth", "100", "--batch", ",".join(map(str, BATCHES)), "--compare", "mlx-lm", "--json", "--quiet"]  # fmt: skip
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):  # capsys is per test
        assert main(argv) == 0
    return json.loads(buf.getvalue())


def test_rows_for_every_batch_size_both_engines(bench_result):
    r = bench_result
    assert r["settings"]["batch"] == BATCHES and r["settings"]["batch_warmup"] == 3
    for name in ("mlx-oss", "mlx-lm"):
        rows = r["engines"][name]["batch"]
        assert [x["B"] for x in rows] == BATCHES, name
        for x in rows:
            assert x["steps"] == 4 and x["seconds"] > 0 and x["peak_memory_bytes"] > 0
            assert x["aggregate_tps"] > 0 and x["per_sequence_tps"] > 0 and x["ms_per_step"] > 0
            # aggregate counts the tokens the batch reported: B x per-sequence only if B sequences decoded
            assert x["aggregate_tps"] == pytest.approx(x["B"] * x["per_sequence_tps"], rel=1e-9)
            assert x["ms_per_step"] == pytest.approx(1e3 / x["per_sequence_tps"], rel=1e-9)
        assert rows[0]["x_b1"] == 1.0 and all(x["x_b1"] > 0 for x in rows)
        # the whole run's peak covers each batch run's
        assert r["engines"][name]["peak_memory_bytes"] >= max(x["peak_memory_bytes"] for x in rows)


def test_the_batch_really_is_b_sequences(tiny_converted):
    """Every timed step advanced B distinct sequences, one token each (a batch that dropped or merged
    sequences, or ran fewer steps, fails here); the peak memory grows with B's caches."""
    import mlx_oss
    from mlx_oss.bench.batch import measure_batch, prompts

    model = mlx_oss.load(tiny_converted, "float32")[0]
    rows = measure_batch(model, [1, 3, 8], steps=2, warmup=1)
    for x in rows:
        assert x["sequences"] == x["B"] and x["tokens"] == 2 * x["B"] and x["tokens_per_step"] == x["B"]
    assert rows[-1]["peak_memory_bytes"] > rows[0]["peak_memory_bytes"]
    ps = prompts(4, model.args.vocab_size)
    assert [len(p) for p in ps] == [16, 19, 22, 25] and len({tuple(p) for p in ps}) == 4
    with pytest.raises(ValueError):
        measure_batch(model, [0], steps=1)


def test_table_json_csv_show_the_batch(bench_result):
    r = bench_result
    table = rep.format_table(r)
    lines = table.splitlines()
    i = next(k for k, line in enumerate(lines) if line.startswith("batched decode"))
    head = [c.strip() for c in lines[i + 1].strip("|").split("|")]
    assert head[:6] == ["B", "mlx-oss aggregate tok/s", "per-sequence tok/s", "ms/step", "x B=1", "peak memory"]
    assert "mlx-lm aggregate tok/s" in head and head[-1] == "ratio"
    body = [[c.strip() for c in line.strip("|").split("|")] for line in lines[i + 3 : i + 3 + len(BATCHES)]]
    ours = r["engines"]["mlx-oss"]["batch"]
    for cells, x in zip(body, ours):
        assert cells[0] == str(x["B"]) and cells[1] == f"{x['aggregate_tps']:.2f}" and cells[2] == f"{x['per_sequence_tps']:.2f}"
        assert cells[5].endswith("iB") and cells[-1].endswith("x")
    assert json.loads(rep.to_json(r))["engines"]["mlx-oss"]["batch"] == ours
    got = {(x["engine"], x["test"], x["metric"]): float(x["mean"]) for x in csv.DictReader(io.StringIO(rep.to_csv(r)))}
    for name in ("mlx-oss", "mlx-lm"):
        for x in r["engines"][name]["batch"]:
            assert got[(name, f"batch{x['B']}x4", "batch_aggregate")] == pytest.approx(x["aggregate_tps"], rel=1e-5)
            assert got[(name, f"batch{x['B']}x4", "batch_per_sequence")] == pytest.approx(x["per_sequence_tps"], rel=1e-5)


def test_no_batch_no_batch_table(tiny_converted, capsys):
    argv = ["bench", "--model", str(tiny_converted), "-p", "8", "-g", "2", "-r", "1", "--turns", "0", "--no-graph",
            "--bandwidth", "100", "--quiet"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "batched decode" not in out and "| test" in out


@pytest.mark.parametrize("extra, words", [
    (["--batch", "0"], "--batch: every batch size must be >= 1"),
    (["--batch", "2,-1"], "--batch: every batch size must be >= 1"),
    (["--batch", "2", "--hosts", "h.json"], "--batch: the tensor-parallel bench (--hosts) does not batch"),
])  # fmt: skip
def test_bad_batch_is_refused_in_one_line(tiny_converted, capsys, extra, words):
    assert main(["bench", "--model", str(tiny_converted), "--quiet", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and len(err.splitlines()) == 1


def test_help_says_what_batch_runs():
    from mlx_oss.cli.main import build_parser

    sub = build_parser()._subparsers._group_actions[0].choices["bench"]
    text = " ".join(sub.format_help().split())
    assert "--batch B,B,..." in text and "16 + 3 i" in text and "(default none: skip)" in text
