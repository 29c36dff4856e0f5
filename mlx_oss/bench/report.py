"""Roofline arithmetic and the outputs of `mlx-oss bench`: table, JSON, CSV, PNG plot.

Roofline: a decode step reads every dense weight once (in the format it is held: float32 or
bfloat16 or affine-quantized), the MXFP4 experts of the k routed experts only (k/E of them), one
embedding row, and the KV cache at that depth (full-attention layers: every token; sliding layers:
at most the window; `kv_cache_bytes`, quantized when the run's cache is). tokens/s can not exceed
bandwidth / those bytes.
"""

from __future__ import annotations

import csv
import io
import json
import math
import struct
import zlib
from dataclasses import dataclass
from typing import Iterable


@dataclass(frozen=True)
class Traffic:
    """Weight bytes a decode step reads, split by how much of each it reads."""

    dense: int  # read whole every token (attention, router, norms, lm_head)
    experts: int  # all experts' bytes; a token reads active_fraction of them
    embedding: int  # the table; a token reads one row
    vocab: int
    active_fraction: float

    def per_token(self, kv_bytes: int = 0) -> float:
        return self.dense + self.experts * self.active_fraction + self.embedding / self.vocab + kv_bytes


def _is_embedding(name: str) -> bool:
    return (name.startswith("embed.") or ".embed_tokens." in name or name.startswith("embed_tokens.")) and "unembed" not in name


def _is_expert(name: str) -> bool:
    return ".mlp.gate_up." in name or ".mlp.down." in name or ".mlp.experts." in name


def traffic(named_bytes: Iterable[tuple[str, int]], experts_per_token: int, num_experts: int, vocab: int) -> Traffic:
    """Classify a loaded model's parameters (ours or mlx-lm's names) by how a decode step reads them."""
    dense = experts = emb = 0
    for name, n in named_bytes:
        if _is_embedding(name):
            emb += n
        elif _is_expert(name):
            experts += n
        else:
            dense += n
    return Traffic(dense, experts, emb, vocab, experts_per_token / num_experts)


def roofline_tps(bandwidth_gbs: float, bytes_per_token: float) -> float:
    """The tokens/s a decode step could reach if it only moved bytes at `bandwidth_gbs`."""
    return bandwidth_gbs * 1e9 / bytes_per_token


def kv_cache_bytes(dims, positions: int, dtype: str = "bfloat16", bits: int | None = None, group_size: int | None = 64,
                   window_bits: int | None = None) -> int:  # fmt: skip
    """The KV cache's bytes at `positions` tokens, the formula measured bytes are held to:
    `mlx_oss.info.ModelInfo.kv_bytes` (full-attention layers every position, `bits`-quantized when
    set; sliding layers their whole `sliding_window`-slot ring, in `dtype`, as `make_cache` keeps it).
    `window_bits`: a ring quantized too (`make_cache(quantize_window=True)`). `dims`: a `Dims`/`ModelArgs`."""
    from mlx_oss.info import ModelInfo

    info, g = ModelInfo(dims, "dims"), group_size or 64
    n = info.kv_bytes(positions, dtype, bits, g)
    if window_bits is not None and positions > 0:
        n += info.sliding_layers * dims.sliding_window * (info.slot_bytes(dtype, window_bits, g) - info.slot_bytes(dtype))
    return n


def paper_traffic(dims) -> Traffic:
    """A decode step's weight bytes for a model of these dimensions as a converted folder holds it (bf16
    dense, MXFP4 experts: the Metal layout), without any weights: a roofline on paper."""
    from mlx_oss.convert.layouts import our_specs
    from mlx_oss.convert.safetensors_io import nbytes_of

    named = [(s.name, nbytes_of(s.dtype, s.shape)) for s in our_specs(dims)]
    return traffic(named, dims.experts_per_token, dims.num_experts, dims.vocab_size)


def score_bytes(dims, depth: int, dtype: str = "bfloat16", passes: int = 6) -> int:
    """Memory traffic of the attention scores a decode step writes and reads outside a fused kernel:
    `passes` trips over [n_heads x depth] values in each full-attention layer, the layers whose cache
    `--kv-bits` quantizes. A quantized cache is attended unfused (`nn.attention.quantized_attention`:
    quantized_matmul writes the scores, the sink concatenation and the softmax read and write them,
    the second quantized_matmul reads them: 6 passes, 8 if the sliced probabilities are copied);
    MLX's fused `scaled_dot_product_attention` (an unquantized cache, the sliding window) keeps them
    on chip: 0."""
    from mlx_oss.info import DTYPE_BYTES

    full = sum(t == "full_attention" for t in dims.layer_types)
    return passes * dims.num_attention_heads * full * depth * DTYPE_BYTES[dtype]


def paper_roofline(dims, bandwidth_gbs: float, depths: Iterable[int], kv_bits: Iterable[int | None] = (None, 8, 4),
                   group_size: int = 64, dtype: str = "bfloat16", score_passes: int = 0) -> list[dict]:  # fmt: skip
    """Decode tokens/s a bandwidth-bound step could reach at each depth and cache setting:
    bandwidth / (weights read per token + the whole KV cache at that depth [+ for a quantized cache,
    `score_bytes` with `score_passes`]). -> rows of {depth, kv_bits, weight_bytes, kv_bytes,
    score_bytes, bytes_per_token, roofline_tps}."""
    t = paper_traffic(dims)
    out = []
    for d in depths:
        for bits in kv_bits:
            kv = kv_cache_bytes(dims, d, dtype, bits, group_size)
            sc = score_bytes(dims, d, dtype, score_passes) if bits else 0
            b = t.per_token(kv + sc)
            out.append({"depth": d, "kv_bits": bits, "weight_bytes": t.per_token(0), "kv_bytes": kv, "score_bytes": sc,
                        "bytes_per_token": b, "roofline_tps": roofline_tps(bandwidth_gbs, b)})  # fmt: skip
    return out


def format_paper_roofline(rows_: list[dict], bandwidth_gbs: float) -> str:
    """`paper_roofline`'s rows as a markdown table (x: against the unquantized row at that depth)."""
    scores = any(r["score_bytes"] for r in rows_)
    lines = ["| depth | KV cache | weights read / token | cache read / token | " + ("scores / token | " if scores else "")
             + f"roofline at {bandwidth_gbs:g} GB/s |", "| ---: | --- | ---: | ---: | " + ("---: | " if scores else "") + "---: |"]  # fmt: skip
    base = {r["depth"]: r["roofline_tps"] for r in rows_ if not r["kv_bits"]}
    for r in rows_:
        kind = f"{r['kv_bits']}-bit" if r["kv_bits"] else "unquantized"
        x = f" ({r['roofline_tps'] / base[r['depth']]:.2f}x)" if r["kv_bits"] and r["depth"] in base else ""
        sc = f"{_size(r['score_bytes'])} | " if scores else ""
        lines.append(f"| {r['depth']} | {kind} | {_size(r['weight_bytes'])} | {_size(r['kv_bytes'])} | {sc}{r['roofline_tps']:.1f} tok/s{x} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------- formatting


def _fmt_stat(s: dict | None, digits: int = 2) -> str:
    if not s:
        return "-"
    return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}"


def _ratio(a: float | None, b: float | None, higher_is_better: bool = True) -> str:
    if not a or not b or math.isnan(a) or math.isnan(b):
        return "-"
    r = a / b if higher_is_better else b / a
    return f"{r:.2f}x"


def rows(result: dict) -> list[dict]:
    """Flat rows (test, metric, unit, engine, mean, std): the CSV, and the table's source."""
    out = []
    for eng, r in result["engines"].items():
        for p in r.get("prefill", []):
            out.append(dict(engine=eng, test=f"pp{p['tokens']}", metric="prefill", unit="tok/s", **_ms(p["tps"])))
            out.append(dict(engine=eng, test=f"pp{p['tokens']}", metric="ttft", unit="s", **_ms(p["ttft_s"])))
        for d in r.get("decode", []):
            out.append(dict(engine=eng, test=f"tg{d['tokens']}@d{d['depth']}", metric="decode", unit="tok/s", **_ms(d["tps"])))
            if d.get("roofline_share") is not None:
                out.append(dict(engine=eng, test=f"tg{d['tokens']}@d{d['depth']}", metric="roofline_share", unit="%",
                                mean=100 * d["roofline_share"], std=100 * d["roofline_share"] * _cv(d["tps"])))  # fmt: skip
        for d in r.get("decode", []):
            c = d.get("kv_cache") or {}
            for metric, key in (("kv_cache", "bytes"), ("kv_cache_formula", "formula_bytes")):
                if c.get(key) is not None:
                    out.append({"engine": eng, "test": f"kv@{c['positions']}", "metric": metric, "unit": "bytes", "mean": float(c[key]), "std": 0.0})
        if r.get("peak_memory_bytes"):
            out.append(dict(engine=eng, test="all", metric="peak_memory", unit="GiB", mean=r["peak_memory_bytes"] / 2**30, std=0.0))
        if r.get("graph_nodes"):
            out.append(dict(engine=eng, test="decode step", metric="graph_nodes", unit="ops", mean=float(r["graph_nodes"]["total"]), std=0.0))
        for t in r.get("multiturn", []):
            out.append(dict(engine=eng, test=f"turn{t['turn']}", metric="ttft", unit="s", mean=t["ttft_s"], std=0.0))
        for b in r.get("batch", []):
            for metric, unit, v in (("batch_aggregate", "tok/s", b["aggregate_tps"]),
                                    ("batch_per_sequence", "tok/s", b["per_sequence_tps"]),
                                    ("batch_peak_memory", "GiB", b["peak_memory_bytes"] / 2**30)):  # fmt: skip
                out.append(dict(engine=eng, test=f"batch{b['B']}x{b['steps']}", metric=metric, unit=unit, mean=float(v), std=0.0))
    return out


def _ms(s: dict) -> dict:
    return {"mean": s["mean"], "std": s["std"]}


def _cv(s: dict) -> float:
    return s["std"] / s["mean"] if s.get("mean") else 0.0


def to_csv(result: dict) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["engine", "test", "metric", "unit", "mean", "std"], lineterminator="\n")
    w.writeheader()
    for r in rows(result):
        w.writerow({**r, "mean": f"{r['mean']:.6g}", "std": f"{r['std']:.6g}"})
    return buf.getvalue()


def to_json(result: dict) -> str:
    return json.dumps(result, indent=2, default=str)


def _gib(n: float | None) -> str:
    return "-" if not n else f"{n / 2**30:.2f} GiB"


def _size(n: float) -> str:
    """Binary units, the largest that keeps the number >= 1 (KV caches of the tiny model are KiB)."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f} B"


def kv_kind(c: dict | None) -> str:
    """How an engine's KV cache is held, in words."""
    if not c or not c.get("bits"):
        return "unquantized"
    window = f"{c['window_bits']}-bit" if c.get("window_bits") else "unquantized"
    return f"{c['bits']}-bit, groups of {c['group_size']} (full-attention layers; sliding window {window})"


def _kv_cell(c: dict | None) -> str:
    if not c or c.get("bytes") is None:
        return "-"
    if c.get("formula_bytes"):
        return f"{_size(c['bytes'])} / {_size(c['formula_bytes'])} ({c['bytes'] / c['formula_bytes']:.2f}x)"
    return _size(c["bytes"])


def format_table(result: dict) -> str:
    """The readable report: machine, model, then ours vs mlx-lm side by side with ratios."""
    m, mo = result["machine"], result["model"]
    engines = list(result["engines"])
    lines = []
    bw = m.get("bandwidth_gbs")
    lines.append(f"machine   {m.get('chip')}  ({m.get('backend')} backend" + (f", {m['gpu_cores']} GPU cores" if m.get("gpu_cores") else "")
                 + (f", {m['cpu_cores']} CPU cores" if m.get("cpu_cores") else "") + f"), {_gib(m.get('memory_bytes'))} memory")  # fmt: skip
    threads = [f"{e} {result['engines'][e]['blas_threads']}" for e in engines if result["engines"][e].get("blas_threads")]
    lines.append(f"          {m.get('os')}, MLX {m.get('mlx')}" + (f", BLAS {m['blas']}" if m.get("blas") else "")
                 + (f" (threads: {', '.join(threads)})" if threads else ""))  # fmt: skip
    if bw:
        lines.append(f"bandwidth {bw:.1f} GB/s ({m.get('bandwidth_source')})")
    lines.append(f"model     {mo['path']}  ({mo['layers']} layers, {mo['dtype']})")
    for eng in engines:
        t = result["engines"][eng].get("traffic")
        if t:
            lines.append(f"          {eng}: {t['dense'] / 2**30:.2f} GiB dense + {t['experts'] / 2**30:.2f} GiB experts "
                         f"(x{t['active_fraction']:.3f} per token) + embedding; {t['bytes_per_token_d0'] / 2**30:.3f} GiB read per decode token")  # fmt: skip
    kv = {e: result["engines"][e]["kv_cache"] for e in engines if result["engines"][e].get("kv_cache")}
    if kv:
        lines.append("kv cache  " + "; ".join(f"{e}: {kv_kind(c)}" + (f" ({c['note']})" if c.get("note") else "") for e, c in kv.items()))
    lines.append("")
    head = ["test", *engines] + (["ratio"] if len(engines) == 2 else [])
    table = []

    def add(label: str, vals: list[str], ratio: str = "") -> None:
        table.append([label, *vals] + ([ratio] if len(engines) == 2 else []))

    def get(eng: str, kind: str, key: str, val):
        for x in result["engines"][eng].get(kind, []):
            if x[key] == val:
                return x
        return None

    first = result["engines"][engines[0]]
    for p in [x["tokens"] for x in first.get("prefill", [])]:
        xs = [get(e, "prefill", "tokens", p) for e in engines]
        add(f"pp{p} (tok/s)", [_fmt_stat(x and x["tps"]) for x in xs], _ratio(*(x and x["tps"]["mean"] for x in xs)) if len(xs) == 2 else "")
        add(f"  TTFT pp{p} (s)", [_fmt_stat(x and x["ttft_s"]) for x in xs],
            _ratio(*(x and x["ttft_s"]["mean"] for x in xs), higher_is_better=False) if len(xs) == 2 else "")  # fmt: skip
    for d in [x["depth"] for x in first.get("decode", [])]:
        xs = [get(e, "decode", "depth", d) for e in engines]
        g = xs[0]["tokens"]
        add(f"tg{g} @ d{d} (tok/s)", [_fmt_stat(x and x["tps"]) for x in xs], _ratio(*(x and x["tps"]["mean"] for x in xs)) if len(xs) == 2 else "")
        if any(x and x.get("roofline_share") is not None for x in xs):
            add("  roofline share", [f"{100 * x['roofline_share']:.1f}% of {x['roofline_tps']:.2f} tok/s" if x and x.get("roofline_share") is not None else "-" for x in xs])
        cs = [x and x.get("kv_cache") for x in xs]
        if any(c and c.get("bytes") is not None for c in cs):
            n = next(c["positions"] for c in cs if c and c.get("positions") is not None)
            add(f"  KV cache @ {n} (measured / formula)", [_kv_cell(c) for c in cs],
                _ratio(*(c and c.get("bytes") for c in cs), higher_is_better=False) if len(cs) == 2 else "")  # fmt: skip
    mem = [result["engines"][e].get("peak_memory_bytes") for e in engines]
    add("peak memory", [_gib(x) for x in mem], _ratio(*mem, higher_is_better=False) if len(mem) == 2 else "")
    nodes = [(result["engines"][e].get("graph_nodes") or {}).get("total") for e in engines]
    if any(nodes):
        add("graph nodes / decode step", [str(x) if x else "-" for x in nodes], _ratio(*nodes, higher_is_better=False) if len(nodes) == 2 else "")
    widths = [max(len(str(r[i])) for r in [head, *table]) for i in range(len(head))]
    fmt = lambda r: "| " + " | ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(r, widths))) + " |"  # noqa: E731
    lines.append(fmt(head))
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    lines += [fmt(r) for r in table]
    mt = {e: result["engines"][e].get("multiturn") for e in engines if result["engines"][e].get("multiturn")}
    if mt:
        lines.append("")
        lines.append("multi-turn (TTFT per turn, seconds; prefilled / prompt tokens)")
        n = max(len(v) for v in mt.values())
        lines.append("| turn | " + " | ".join(f"{e} TTFT | {e} prefilled" for e in mt) + " |")
        lines.append("|---:|" + "---:|---:|" * len(mt))
        for i in range(n):
            cells = []
            for e, v in mt.items():
                t = v[i] if i < len(v) else None
                cells += [f"{t['ttft_s']:.2f}", f"{t['prefilled']} / {t['prompt']}"] if t else ["-", "-"]
            lines.append(f"| {i + 1} | " + " | ".join(cells) + " |")
        for e, v in mt.items():
            if len(v) >= 2:
                lines.append(f"{e}: TTFT turn {len(v)} / turn 2 = {v[-1]['ttft_s'] / v[1]['ttft_s']:.2f}x")
    eff = {e: result["engines"][e].get("efforts") for e in engines if result["engines"][e].get("efforts")}
    for e, v in eff.items():
        lines.append("")
        lines.append(f"{e} reasoning effort (greedy, at most {result['settings'].get('effort_tokens')} tokens)")
        lines.append("| effort | prompt | generated | reasoning | answer | stop |")
        lines.append("|---|---:|---:|---:|---:|---|")
        for r in v:
            lines.append(f"| {r['effort']} | {r['prompt']} | {r['generated']} | {r['reasoning']} | {r['answer']} | {r['stop']} |")
    lines += format_batch(result)
    skipped = result.get("skipped")
    if skipped:
        lines += ["", f"skipped {' and '.join(skipped['parts'])}: {skipped['reason']}"]
    return "\n".join(lines)


def format_batch(result: dict) -> list[str]:
    """`--batch`: one row per B, ours (the first engine) and, compared, mlx-lm's BatchGenerator beside it."""
    engines = [e for e in result["engines"] if result["engines"][e].get("batch")]
    if not engines:
        return []
    first = result["engines"][engines[0]]["batch"]
    steps, warmup = first[0]["steps"], first[0]["warmup"]
    lines = ["", f"batched decode ({steps} steps after {warmup} warm-up, greedy, B prompts of 16 + 3 i tokens; "
             "aggregate = tokens of all B sequences / s)"]  # fmt: skip
    head = ["B"]
    for i, e in enumerate(engines):
        head += [f"{e} aggregate tok/s", "per-sequence tok/s", "ms/step", "x B=1", "peak memory"] if i == 0 else \
            [f"{e} aggregate tok/s", "x B=1", "peak memory"]  # fmt: skip
    if len(engines) == 2:
        head.append("ratio")
    by = [{x["B"]: x for x in result["engines"][e]["batch"]} for e in engines]
    table = []
    x1 = lambda x: f"{x['x_b1']:.2f}x" if x and x.get("x_b1") else "-"  # noqa: E731
    for B in [x["B"] for x in first]:
        row = [str(B)]
        for i, rs in enumerate(by):
            x = rs.get(B)
            agg = f"{x['aggregate_tps']:.2f}" if x else "-"
            mem = _size(x["peak_memory_bytes"]) if x else "-"
            row += [agg, f"{x['per_sequence_tps']:.2f}", f"{x['ms_per_step']:.1f}", x1(x), mem] if i == 0 else [agg, x1(x), mem]
        if len(by) == 2:
            a, b = (rs.get(B) for rs in by)
            row.append(_ratio(a and a["aggregate_tps"], b and b["aggregate_tps"]))
        table.append(row)
    widths = [max(len(r[i]) for r in [head, *table]) for i in range(len(head))]
    lines.append("| " + " | ".join(c.rjust(w) for c, w in zip(head, widths)) + " |")
    lines.append("|" + "|".join("-" * (w + 1) + ":" for w in widths) + "|")
    lines += ["| " + " | ".join(c.rjust(w) for c, w in zip(r, widths)) + " |" for r in table]
    return lines


# --------------------------------------------------------------------------------- plot

COLORS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40)]


def plot_series(result: dict) -> dict[str, list[tuple[float, float]]]:
    """{engine: [(context depth, decode tokens/s), ...]} — what the plot draws."""
    return {e: [(float(d["depth"]), d["tps"]["mean"]) for d in r.get("decode", [])] for e, r in result["engines"].items()}


def write_plot(result: dict, path: str) -> str:
    """Decode tokens/s against context depth, one line per engine. matplotlib when installed
    (`pip install mlx-oss[plot]`), else a dependency-free PNG with the same title, axis names and legend
    in a small pixel font. -> which writer was used."""
    series = plot_series(result)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        write_png(path, series, _plot_title(result))
        return "builtin"
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for e, pts in series.items():
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=e)
    ax.set_xlabel("context depth (tokens already in the cache)")
    ax.set_ylabel("decode tokens/s")
    ax.set_title(_plot_title(result), fontsize=9)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return "matplotlib"


def _plot_title(result: dict) -> str:
    m = result["machine"]
    return f"{result['model']['path']} on {m.get('chip')} ({m.get('backend')}), MLX {m.get('mlx')}"


# 3x5 glyphs, rows top to bottom, 3 bits each: digits, letters (lower case drawn as upper case), punctuation
_GLYPHS = {
    "0": "111101101101111", "1": "010110010010111", "2": "111001111100111", "3": "111001111001111",
    "4": "101101111001001", "5": "111100111001111", "6": "111100111101111", "7": "111001001001001",
    "8": "111101111101111", "9": "111101111001111", ".": "000000000000010", "k": "100101110101101",
    "A": "010101111101101", "B": "110101110101110", "C": "011100100100011", "D": "110101101101110",
    "E": "111100110100111", "F": "111100110100100", "G": "011100101101011", "H": "101101111101101",
    "I": "111010010010111", "J": "001001001101010", "K": "101101110101101", "L": "100100100100111",
    "M": "101111111101101", "N": "110101101101101", "O": "010101101101010", "P": "110101110100100",
    "Q": "010101101110011", "R": "110101110101101", "S": "011100010001110", "T": "111010010010010",
    "U": "101101101101111", "V": "101101101101010", "W": "101101111111101", "X": "101101010101101",
    "Y": "101101010010010", "Z": "111001010100111", "/": "001001010100100", "-": "000000111000000",
    ":": "000010000010000", "(": "010100100100010", ")": "010001001001010", ",": "000000000010100",
    "%": "101001010100101", "+": "000010111010000", "_": "000000000000111", "=": "000111000111000",
}  # fmt: skip


def _png_bytes(img: list[bytearray], width: int, height: int, text: dict[str, str]) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    raw = b"".join(b"\x00" + bytes(row) for row in img)
    out = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    for k, v in text.items():
        out += chunk(b"tEXt", k.encode("latin-1") + b"\x00" + v.encode("latin-1", "replace"))
    return out + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


def write_png(path: str, series: dict[str, list[tuple[float, float]]], title: str, width: int = 640, height: int = 400) -> None:
    """A line chart as a PNG with no dependencies: white background, a title, axes with tick values and
    names, one colored line with square markers per series and a legend (3x5 pixel font; the same
    texts also go into the PNG's text chunks). matplotlib (`mlx-oss[plot]`) draws a finer one."""
    img = [bytearray(b"\xff" * (3 * width)) for _ in range(height)]
    L, R, T, B = 60, 20, 34, 54

    def px(x: int, y: int, c: tuple[int, int, int]) -> None:
        if 0 <= x < width and 0 <= y < height:
            img[y][3 * x : 3 * x + 3] = bytes(c)

    def line(x0: int, y0: int, x1: int, y1: int, c: tuple[int, int, int]) -> None:
        n = max(abs(x1 - x0), abs(y1 - y0), 1)
        for i in range(n + 1):
            for dx in (0, 1):
                px(round(x0 + (x1 - x0) * i / n) + dx, round(y0 + (y1 - y0) * i / n), c)

    def text(s: str, x: int, y: int, scale: int = 2, c: tuple[int, int, int] = (0, 0, 0)) -> None:
        for ch in s:
            g = _GLYPHS.get(ch) or _GLYPHS.get(ch.upper())
            if g:
                for i, bit in enumerate(g):
                    if bit == "1":
                        for a in range(scale):
                            for b in range(scale):
                                px(x + (i % 3) * scale + a, y + (i // 3) * scale + b, c)
            x += 4 * scale

    def fit(s: str, scale: int, room: int) -> str:
        n = room // (4 * scale)
        return s if len(s) <= n else "..." + s[-(n - 3) :]

    pts = [p for s in series.values() for p in s]
    xmax = max([p[0] for p in pts] + [1.0])
    ymax = max([p[1] for p in pts] + [1e-9]) * 1.1
    X = lambda v: L + int((width - L - R) * v / xmax)  # noqa: E731
    Y = lambda v: height - B - int((height - T - B) * v / ymax)  # noqa: E731
    black = (0, 0, 0)
    line(L, T, L, height - B, black)
    line(L, height - B, width - R, height - B, black)
    for i in range(5):
        v = ymax * i / 4
        line(L - 4, Y(v), L, Y(v), black)
        text(f"{v:.3g}" if v < 1000 else f"{v / 1000:.3g}k", 4, Y(v) - 5)
        xv = xmax * i / 4
        line(X(xv), height - B, X(xv), height - B + 4, black)
        text(f"{xv:.3g}" if xv < 1000 else f"{xv / 1000:.3g}k", X(xv) - 10, height - B + 8)
    text(fit(title, 1, width - 8), 4, 4, scale=1)
    text("decode tokens/s", 4, 16)
    xlabel = "context depth (tokens in the cache)"
    text(xlabel, (width - 8 * len(xlabel)) // 2, height - 18)
    legend = []
    for k, (name, s) in enumerate(series.items()):
        c = COLORS[k % len(COLORS)]
        legend.append(f"{name}: rgb{c}")
        s = sorted(s)
        for (x0, y0), (x1, y1) in zip(s, s[1:]):
            line(X(x0), Y(y0), X(x1), Y(y1), c)
        for x, y in s:
            for a in range(-3, 4):
                for b in range(-3, 4):
                    px(X(x) + a, Y(y) + b, c)
        for a in range(12):  # legend swatch and name, top right
            for b in range(8):
                px(width - R - 12 + a, T + 4 + 14 * k + b, c)
        text(name, width - R - 16 - 8 * len(name), T + 3 + 14 * k, c=c)
    meta = {"Title": title, "Description": "decode tokens/s (y) against context depth in tokens (x); " + "; ".join(legend)}
    with open(path, "wb") as f:
        f.write(_png_bytes(img, width, height, meta))
