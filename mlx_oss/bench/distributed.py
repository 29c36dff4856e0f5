"""`mlx-oss bench --hosts HOSTFILE`: the single-machine prefill/decode measurements, run in lockstep on
every rank (greedy argmax of the gathered logits is identical everywhere, so no token broadcast is
needed), plus what only a group has: per-rank peak memory, the share of a decode step spent in
communication, and the latency of one per-layer `all_sum`.

Communication share: the same decode run again with the collectives turned into no-ops
(`Comm.suspended`: same compute, wrong numbers); share = 1 - t(no comm) / t(with comm).
"""

from __future__ import annotations

import json
import time

import mlx.core as mx

from mlx_oss.bench import runners as run
from mlx_oss.distributed.session import Session


class ShardedRunner(run.OursRunner):
    name = "mlx-oss (tensor parallel)"

    def __init__(self, model, tokenizer) -> None:
        self.model, self.tokenizer = model, tokenizer


def all_sum_latency_us(session: Session, hidden: int, n: int = 100) -> float:
    """One [1, 1, hidden] all_sum, evaluated alone (the per-layer decode collective), in microseconds."""
    x = mx.ones((1, 1, hidden), dtype=mx.float32)
    mx.eval(session.comm.all_sum(x))
    t0 = time.perf_counter()
    for _ in range(n):
        mx.eval(session.comm.all_sum(x))
    return (time.perf_counter() - t0) / n * 1e6


def measure(session: Session, model, tokenizer, a, say) -> dict:
    """Every rank runs this; -> the report (complete on rank 0)."""
    eng = ShardedRunner(model, tokenizer)
    args = model.plan.args
    mx.reset_peak_memory()
    r = run.measure_runner(eng, a.prompt, a.depth, a.gen, a.reps, args.vocab_size, a.seed, say)
    peak = mx.get_peak_memory()
    local = []
    with model.comm.suspended():  # no collectives inside: each rank times its own compute alone
        for d in a.depth:
            t = min(run.time_decode(eng, run.random_tokens(max(d, 1), args.vocab_size, a.seed), a.gen) for _ in range(a.reps))
            local.append(a.gen / t)
    lat = all_sum_latency_us(session, args.hidden_size)
    mine = [peak / 1e6, lat] + local + [d["tps"]["mean"] for d in r["decode"]]
    every = mx.distributed.all_gather(mx.array([mine], dtype=mx.float32), group=session.comm.group).tolist()
    ranks = []
    for rank, row in enumerate(every):
        k = len(a.depth)
        nocomm, withcomm = row[2 : 2 + k], row[2 + k :]
        ranks.append({
            "rank": rank, "peak_memory_bytes": int(row[0] * 1e6), "all_sum_us": row[1],
            "decode_tps_no_comm": nocomm,
            "comm_share": [max(0.0, 1 - w / n) if n else None for w, n in zip(withcomm, nocomm)],
        })  # fmt: skip
    layers = args.num_hidden_layers
    return {
        "ranks": session.size, "model": str(getattr(model, "source", "")), "layers": layers,
        "collectives_per_token": {"all_sum": 2 * layers + 1, "all_gather": 1},
        "prefill": r["prefill"], "decode": r["decode"], "per_rank": ranks,
    }  # fmt: skip


def format_report(rep: dict) -> str:
    lines = [f"mlx-oss bench, tensor parallel over {rep['ranks']} ranks: {rep['model']}"]
    for p in rep["prefill"]:
        lines.append(f"  prefill {p['tokens']:>6} tok: {p['tps']['mean']:8.2f} tok/s   TTFT {p['ttft_s']['mean']:.3f} s")
    for i, d in enumerate(rep["decode"]):
        shares = ", ".join(f"rank {x['rank']} {x['comm_share'][i] * 100:.0f}%" for x in rep["per_rank"])
        lines.append(f"  decode  depth {d['depth']:>6}: {d['tps']['mean']:8.2f} tok/s   time in communication: {shares}")
    for x in rep["per_rank"]:
        lines.append(f"  rank {x['rank']}: peak memory {x['peak_memory_bytes'] / 1e6:.1f} MB, one all_sum of a hidden "
                     f"vector {x['all_sum_us']:.0f} us")  # fmt: skip
    c = rep["collectives_per_token"]
    lines.append(f"  per decode step: {c['all_sum']} all_sum + {c['all_gather']} all_gather ({rep['layers']} layers)")
    return "\n".join(lines)


def cmd(session: Session, a, say) -> int:
    from mlx_oss.distributed import cli as dist

    kv = {"kv_bits": getattr(a, "kv_bits", None), "kv_group_size": getattr(a, "kv_group_size", 64)}  # --kv-bits
    model, tok = dist.load(session, a.model, a.dtype, status=say if session.leader else (lambda m: None), **kv)
    if session.leader and (a.turns or a.effort_tokens or a.compare):
        say("tensor parallel bench: multi-turn, effort and --compare runs are single-machine only; skipped")
    rep = measure(session, model, tok, a, say if session.leader else (lambda m: None))
    session.ready = False  # lockstep run: nobody is in follow(), no EXIT to send
    if session.leader:
        print(json.dumps(rep, indent=2) if a.json else format_report(rep))
    return 0
