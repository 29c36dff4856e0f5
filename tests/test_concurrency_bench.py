"""benchmarks/concurrency_bench.py's figures on synthetic timings (no server): percentiles, aggregate
tokens/s over the rounds' wall time, TTFT and inter-token latency, and the table's ratio to N = 1."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("concurrency_bench", ROOT / "benchmarks" / "concurrency_bench.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_percentile_interpolates_between_order_statistics(bench):
    xs = [5.0, 1.0, 4.0, 2.0, 3.0]  # unsorted on purpose
    assert bench.percentile(xs, 50) == 3.0
    assert bench.percentile(xs, 0) == 1.0 and bench.percentile(xs, 100) == 5.0
    assert bench.percentile(xs, 95) == pytest.approx(4.8)  # (5-1)*0.95 = 3.8 -> 4 + 0.8*(5-4)
    assert bench.percentile([1.0, 2.0], 50) == pytest.approx(1.5)
    assert bench.percentile([7.0], 95) == 7.0
    assert bench.percentile([], 50) is None


def req(t0: float, first: float, gaps: list[float], completion: int | None, tail: float = 0.01) -> dict:
    times = [first]
    for g in gaps:
        times.append(times[-1] + g)
    return {"t0": t0, "times": times, "end": times[-1] + tail, "completion": completion}


def test_summarize_aggregate_ttft_and_itl(bench):
    # round 1: two clients sent at 10.0; A's first token at 10.1, B's at 10.3 (it waited); the round ends at 11.0
    a = req(10.0, 10.1, [0.1, 0.1, 0.1], 4)
    b = req(10.0, 10.3, [0.2, 0.2, 0.29], 4)  # ends 10.99 + 0.01 = 11.0
    # round 2: sent at 20.0 and 20.5; one stream reports no usage: its 3 deltas count
    c = req(20.0, 20.2, [0.1, 0.1], None)  # ends 20.41
    d = req(20.5, 20.6, [0.4], 2, tail=0.0)  # ends 21.0 -> round wall 1.0
    s = bench.summarize([[a, b], [c, d]])
    assert s["requests"] == 4 and s["tokens"] == 4 + 4 + 3 + 2
    assert s["wall_s"] == pytest.approx(1.0 + 1.0)
    assert s["aggregate_tps"] == pytest.approx(13 / 2.0)
    ttft = sorted([0.1, 0.3, 0.2, 0.1])
    assert s["ttft_p50"] == pytest.approx(0.15) and s["ttft_max"] == pytest.approx(0.3)
    assert s["ttft_p95"] == pytest.approx(ttft[2] + 0.85 * (ttft[3] - ttft[2]))
    gaps = sorted([0.1, 0.1, 0.1, 0.2, 0.2, 0.29, 0.1, 0.1, 0.4])
    assert s["itl_p50"] == pytest.approx(gaps[4])
    assert s["itl_p95"] == pytest.approx(gaps[7] + 0.6 * (gaps[8] - gaps[7]))  # pos 8*0.95 = 7.6
    assert (s["completion_min"], s["completion_max"]) == (2, 4)


def row(bench, server: str, n: int, m: int | None, rule: str | None, tps: float) -> dict:
    s = bench.summarize([[req(0.0, 0.5, [0.25] * 3, 4)] * n])
    return {**s, "server": server, "clients": n, "max_batch": m, "max_batch_rule": rule, "peak_rss": 300 * 2**20,
            "aggregate_tps": tps}  # fmt: skip


def test_table_puts_ours_beside_mlx_lm_with_the_ratio_to_one_client(bench):
    rows = [row(bench, "mlx-oss", 1, 1, "1", 50.0), row(bench, "mlx-oss", 1, 1, "N", 50.0), row(bench, "mlx-lm", 1, None, None, 30.0),
            row(bench, "mlx-oss", 4, 1, "1", 60.0), row(bench, "mlx-oss", 4, 4, "N", 100.0), row(bench, "mlx-lm", 4, None, None, 45.0)]  # fmt: skip
    lines = bench.table(rows).splitlines()
    body = [line.split("|")[1:-1] for line in lines[2:]]
    cells = [[c.strip() for c in r] for r in body]
    # N=1 shown once (both rules gave the same server), mlx-lm after ours at each N
    assert [(c[0], c[1], c[2]) for c in cells] == [("1", "mlx-oss", "1"), ("1", "mlx-lm", "(default)"),
                                                  ("4", "mlx-oss", "1"), ("4", "mlx-oss", "4"), ("4", "mlx-lm", "(default)")]  # fmt: skip
    assert [c[3] for c in cells] == ["50.0", "30.0", "60.0", "100.0", "45.0"]
    assert [c[4] for c in cells] == ["1.00x", "", "1.20x", "2.00x", ""]
    assert cells[0][5] == "500.0" and cells[0][9] == "300" and cells[0][10] == "4"  # TTFT ms, MiB, tokens
    assert cells[0][7] == "250.00"  # ITL p50 ms
