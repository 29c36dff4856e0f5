#!/usr/bin/env python
"""N clients at once: `mlx-oss serve --max-batch M` vs `mlx_lm.server` on the same checkpoint, in one run (issue 28).

    python -m mlx_oss.convert.synthetic /tmp/cb/src --preset tiny-chat --layout hf     # once
    mlx-oss convert /tmp/cb/src /tmp/cb/ours                                             # once
    mlx-oss convert /tmp/cb/src /tmp/cb/peer --to mlx-lm                                 # once
    python benchmarks/concurrency_bench.py --ours /tmp/cb/ours --peer /tmp/cb/peer --clients 1,2,4,8 --max-batch 1,N

(`--preset tiny-chat` or `--preset 20b-slice` instead of --ours/--peer writes and converts those folders
under --workdir first, once.)

For each N of --clients and each M of --max-batch (`N` = as many as there are clients), a fresh
server process is started (so its peak memory is this configuration's), warmed up with one request,
then `--rounds` rounds run: N client threads, each on its own kept-alive connection, are released
together and each sends one streamed Chat Completions request (its own prompt of --prompt tokens,
`max_tokens` = --max-tokens, temperature 1, its own `seed`). The next round starts when all N are done.

- ours: `mlx-oss serve --max-batch M` as the CLI runs it (tests/serve_worker.py: the CLI plus the
  test hook that forces the `<|channel|>final<|message|>` header, since random weights never write
  harmony; then the model writes freely, sampled with the request's seed, every forward pass run).
- mlx-lm: `python -m mlx_lm.server` with its defaults (decode concurrency 32, prompt concurrency 8:
  it batches every request here). It batches only requests *without* a `seed` (mlx_lm/server.py
  `_is_batchable`), so it is sent the same requests minus `seed`; it is run once per N (it has no M).
- aggregate tok/s: completion tokens of all requests of a round (usage, else the deltas counted) over
  the round's wall time (first request sent -> last stream ended), summed over the rounds.
- TTFT: request sent -> first token delta; p50/p95 over every request of every round (linear
  interpolation between order statistics, as numpy's default percentile).
- ITL: the gaps between consecutive token deltas of each request, pooled; p50/p95.
- peak memory: the server process's peak RSS (Linux /proc/PID/status VmHWM; elsewhere the
  largest RSS psutil saw, polled every 50 ms).
- "vs N=1": our aggregate at N over our aggregate at N = 1 (same M rule).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from serve_bench import free_port, start_peer, stream_request, wait_up  # noqa: E402  (adds ROOT, tests/ to sys.path)
from mlx_oss.bench.multiturn import text_of  # noqa: E402


# ----------------------------------------------------------------------------- statistics (tests/test_concurrency_bench.py)


def percentile(xs: list[float], q: float) -> float | None:
    """The q-th percentile (0..100) with linear interpolation between order statistics (numpy's default)."""
    if not xs:
        return None
    s = sorted(xs)
    pos = (len(s) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def summarize(rounds: list[list[dict]]) -> dict:
    """Figures of one configuration from its rounds; each request: `t0` (sent), `times` (arrival of each
    token delta), `end` (stream ended), `completion` (tokens, from usage; None -> the deltas counted)."""
    tokens = wall = 0.0
    ttft, itl, counts = [], [], []
    for reqs in rounds:
        start, end = min(r["t0"] for r in reqs), max(r["end"] for r in reqs)
        wall += end - start
        for r in reqs:
            n = r["completion"] if r.get("completion") is not None else len(r["times"])
            tokens += n
            counts.append(n)
            if r["times"]:
                ttft.append(r["times"][0] - r["t0"])
                itl += [b - a for a, b in zip(r["times"], r["times"][1:])]
    return {"requests": sum(len(r) for r in rounds), "tokens": int(tokens), "wall_s": wall,
            "aggregate_tps": tokens / wall if wall > 0 else None,
            "ttft_p50": percentile(ttft, 50), "ttft_p95": percentile(ttft, 95), "ttft_max": max(ttft, default=None),
            "itl_p50": percentile(itl, 50), "itl_p95": percentile(itl, 95),
            "completion_min": min(counts, default=None), "completion_max": max(counts, default=None)}  # fmt: skip


def _f(x: float | None, scale: float = 1.0, digits: int = 1) -> str:
    return "-" if x is None else f"{x * scale:.{digits}f}"


def table(results: list[dict]) -> str:
    """Markdown table: for each N, our rows (one per M) beside mlx-lm's, and our aggregate over ours at N = 1."""
    base = {r["max_batch_rule"]: r["aggregate_tps"] for r in results if r["server"] == "mlx-oss" and r["clients"] == 1}
    head = ("| N | server | max batch | aggregate tok/s | vs N=1 | TTFT p50 ms | TTFT p95 ms | ITL p50 ms | ITL p95 ms "
            "| peak RSS MiB | tokens/request |")  # fmt: skip
    out = [head, "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    shown, seen = [], set()
    for r in results:  # one row per distinct (server, N, M), the ratio from the first --max-batch rule that gave it
        key = (r["server"], r["clients"], r["max_batch"])
        if key not in seen:
            seen.add(key)
            shown.append(r)
    for r in sorted(shown, key=lambda r: (r["clients"], r["server"] != "mlx-oss", r["max_batch"] or 0)):
        b = base.get(r.get("max_batch_rule"))
        vs = f"{r['aggregate_tps'] / b:.2f}x" if r["server"] == "mlx-oss" and b and r["aggregate_tps"] else ""
        mb = r["max_batch"] if r["server"] == "mlx-oss" else f"({r['max_batch'] or 'default'})"
        toks = f"{r['completion_min']}" if r["completion_min"] == r["completion_max"] else f"{r['completion_min']}-{r['completion_max']}"
        out.append(f"| {r['clients']} | {r['server']} | {mb} | {_f(r['aggregate_tps'])} | {vs} | {_f(r['ttft_p50'], 1e3)} "
                   f"| {_f(r['ttft_p95'], 1e3)} | {_f(r['itl_p50'], 1e3, 2)} | {_f(r['itl_p95'], 1e3, 2)} "
                   f"| {_f(r['peak_rss'], 1 / 2**20, 0)} | {toks} |")  # fmt: skip
    return "\n".join(out)


# ----------------------------------------------------------------------------- servers


class PeakRSS:
    """The peak resident memory of a process: VmHWM where /proc has it, else psutil's RSS polled."""

    def __init__(self, pid: int) -> None:
        self.pid, self.seen, self._stop = pid, 0, threading.Event()
        self._t = None
        if not Path(f"/proc/{pid}/status").exists():
            self._t = threading.Thread(target=self._poll, daemon=True)
            self._t.start()

    def _poll(self) -> None:
        try:
            import psutil

            p = psutil.Process(self.pid)
            while not self._stop.wait(0.05):
                self.seen = max(self.seen, p.memory_info().rss)
        except Exception:  # noqa: BLE001  (psutil missing or the process gone: keep what was seen)
            pass

    def peak(self) -> int | None:
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        self._stop.set()
        return self.seen or None


def start_ours(folder: str, port: int, max_batch: int, max_queue: int) -> subprocess.Popen:
    """`mlx-oss serve` as the CLI runs it, with the test hook that forces the final-channel header."""
    p = subprocess.Popen([sys.executable, str(ROOT / "tests" / "serve_worker.py"), "serve", "--model", folder,
                          "--host", "127.0.0.1", "--port", str(port), "--max-batch", str(max_batch),
                          "--max-queue", str(max_queue), "--log-level", "warning"],
                         cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    return wait_up(p, port, f"mlx-oss serve on {folder}")


def body(enc, model: str, k: int, prompt: int, max_tokens: int, seed: int | None) -> dict:
    b = {"model": model, "stream": True, "max_tokens": max_tokens, "temperature": 1.0,
         "stream_options": {"include_usage": True},
         "messages": [{"role": "user", "content": f"Client {k}: " + text_of(enc, prompt, 7000 + k)}]}  # fmt: skip
    if seed is not None:
        b["seed"] = seed
    return b


def run_config(url: str, model: str, enc, clients: int, rounds: int, prompt: int, max_tokens: int, seeded: bool) -> list[list[dict]]:
    """`rounds` rounds of `clients` simultaneous streamed requests (each client its own connection and
    prompt; a new prompt every round, so no request finds another's prefix cached)."""
    conns = [httpx.Client(base_url=url + "/", timeout=3600) for _ in range(clients)]
    out = []
    try:
        for rnd in range(rounds):
            go = threading.Barrier(clients)
            rows: list[dict | BaseException | None] = [None] * clients

            def client(k: int) -> None:
                b = body(enc, model, 100 * (rnd + 1) + k, prompt, max_tokens, 1000 * (rnd + 1) + k if seeded else None)
                go.wait()
                try:
                    rows[k] = stream_request(conns[k], b, keep_times=True)
                except BaseException as e:  # noqa: BLE001  (SystemExit from a non-200 answer included)
                    rows[k] = e

            ts = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
            for t in ts:
                t.start()
            for t in ts:
                t.join()
            for r in rows:
                if isinstance(r, BaseException):
                    raise SystemExit(f"a request failed: {r}")
            out.append(rows)
    finally:
        for c in conns:
            c.close()
    return out


def measure(kind: str, folder: str, enc, n: int, max_batch: int | None, a) -> dict:
    port = free_port()
    if kind == "mlx-oss":
        p = start_ours(folder, port, max_batch, max_queue=max(16, n))
    else:
        p = start_peer(folder, port)
    rss = PeakRSS(p.pid)
    try:
        url = f"http://127.0.0.1:{port}/v1"
        run_config(url, folder, enc, 1, 1, a.prompt, a.max_tokens, kind == "mlx-oss")  # warm-up: compiles, allocates
        t0 = time.perf_counter()
        rounds = run_config(url, folder, enc, n, a.rounds, a.prompt, a.max_tokens, kind == "mlx-oss")
        took = time.perf_counter() - t0
        peak = rss.peak()
    finally:
        p.terminate()
        try:
            p.wait(60)
        except subprocess.TimeoutExpired:
            p.kill()
    s = summarize(rounds)
    print(f"  {kind:8} N={n} M={max_batch or '-'}: {s['aggregate_tps']:.1f} tok/s, TTFT p50 {s['ttft_p50'] * 1e3:.0f} ms "
          f"p95 {s['ttft_p95'] * 1e3:.0f} ms, ITL p95 {s['itl_p95'] * 1e3:.1f} ms, peak {peak / 2**20 if peak else 0:.0f} MiB "
          f"({took:.1f} s)", flush=True)  # fmt: skip
    return {"server": kind, "clients": n, "max_batch": max_batch, "peak_rss": peak, **s,
            "requests_raw": [[{k: r[k] for k in ("t0", "times", "end", "completion", "prompt")} for r in rnd] for rnd in rounds]}  # fmt: skip


def prepare(preset_name: str, workdir: Path) -> tuple[str, str]:
    """Write the synthetic checkpoint `preset_name` and convert it for both servers (once per workdir)."""
    src, ours, peer = workdir / preset_name / "src", workdir / preset_name / "ours", workdir / preset_name / "peer"
    if not (ours / "config.json").exists() or not (peer / "config.json").exists():
        from mlx_oss.convert.convert import convert_checkpoint
        from mlx_oss.convert.export_mlx_lm import export_mlx_lm
        from mlx_oss.convert.synthetic import preset, write_checkpoint

        print(f"writing {preset_name} under {workdir} ...", flush=True)
        write_checkpoint(src, preset(preset_name), "hf", seed=0)
        convert_checkpoint(src, ours, progress=False)
        export_mlx_lm(src, peer, progress=False)
    return str(ours), str(peer)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ours", help="mlx-oss folder (or --preset)")
    ap.add_argument("--peer", help="mlx-lm folder of the same checkpoint (mlx-oss convert --to mlx-lm); omit to skip mlx-lm")
    ap.add_argument("--preset", help="synthetic checkpoint to write and convert under --workdir (tiny-chat, 20b-slice)")
    ap.add_argument("--workdir", default="/tmp/concurrency_bench")
    ap.add_argument("--clients", default="1,2,4,8", help="numbers of simultaneous clients")
    ap.add_argument("--max-batch", default="1,N", help="our --max-batch values; N = as many as there are clients")
    ap.add_argument("--max-tokens", type=int, default=64, help="tokens generated per request")
    ap.add_argument("--prompt", type=int, default=64, help="prompt tokens of each user message")
    ap.add_argument("--rounds", type=int, default=2, help="rounds of N simultaneous requests per configuration")
    ap.add_argument("--json", help="also write the results here")
    a = ap.parse_args(argv)
    if a.preset:
        a.ours, peer = prepare(a.preset, Path(a.workdir))
        a.peer = a.peer or peer
    if not a.ours:
        ap.error("--ours or --preset is needed")
    clients = [int(x) for x in a.clients.split(",")]
    rules = [x.strip() for x in a.max_batch.split(",")]
    if any(n < 1 for n in clients) or any(r != "N" and not r.isdigit() for r in rules):
        ap.error("--clients: positive integers; --max-batch: positive integers or N")

    from mlx_oss.tokenizer import load_tokenizer

    enc = load_tokenizer(None)
    load = os.getloadavg()
    print(f"load at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (1/5/15 min), {os.cpu_count()} CPUs", flush=True)
    results = []
    for n in clients:
        done: dict[int, dict] = {}
        for rule in rules:
            m = n if rule == "N" else int(rule)
            if m not in done:
                done[m] = measure("mlx-oss", a.ours, enc, n, m, a)
            results.append({**done[m], "max_batch_rule": rule})
        if a.peer:
            results.append({**measure("mlx-lm", a.peer, enc, n, None, a), "max_batch_rule": None})
    load = os.getloadavg()
    print(f"load at end:   {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"\n{a.max_tokens} tokens per request, {a.prompt}-token prompts, {a.rounds} round(s) per configuration; "
          f"ours per --max-batch rule {','.join(rules)}; mlx-lm with its defaults (batches up to 32)\n")  # fmt: skip
    print(table(results))
    if a.json:
        tmp = Path(a.json + ".tmp")
        tmp.write_text(json.dumps({"args": vars(a), "results": results}, indent=1))
        tmp.replace(a.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
