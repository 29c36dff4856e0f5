#!/usr/bin/env python
"""What enforcing a JSON schema costs (issue 27): per-token decode overhead, and schema compile latency.

    python benchmarks/structured_bench.py                      # tiny-chat and the 20b slice
    python benchmarks/structured_bench.py --models tiny-chat --tokens 96 --repeats 5

**Decode overhead.** The same `Chat`, prompt, seeds and number of generated tokens, twice: with the answer
format only described (`strict=False`, no reasoning budget: the sampler has no logits processor at all, the
unconstrained path) and enforced (`strict=True`, `max_reasoning_tokens=0`: the header is forced, then every
content token is masked by the grammar). The schema (`RECORDS`) makes a document far longer than `--tokens`,
so both runs stop at `max_tokens` after exactly `--tokens` tokens, and all but the header's three are
constrained. Per-token decode time is `Stats.decode_s / (generated - 1)`; runs alternate between the two
modes (shared hosts drift) and the table gives the median over seeds x repeats. The wall time spent
inside `ReplyConstraint.__call__` per token is measured too, and within it `ContentMatcher.allowed`
(llguidance's mask, unpacked to a bool per token); the rest of the call is reading the last token, the
bias array and queueing the masking ops. The engine queues the forward pass of token t before the
sampler runs, so whatever of the constraint's host work does not wait for that pass overlaps it.

**Compile latency** (first token of the first strict reply): llguidance's one-off view of the o200k
vocabulary (once per `Grammars`, i.e. per `Chat`, or per server), then each schema's compile on first use
and its cache hit (`Grammars.json_schema`, keyed by the schema's hash), a fresh matcher and its first mask;
end to end, the time from `send()` to the first token for a described-only reply, the first strict reply
of a new `Chat` and the next (cached) one.

Models: `tiny-chat` (the test preset: tiny layers, full vocabulary; a converted folder with --tiny-chat, else
built in a temporary folder) and `20b-slice` (4 real-size gpt-oss-20b layers and the full vocabulary,
random weights built in memory as in benchmarks/model_speed.py).
"""

from __future__ import annotations

import argparse
import atexit
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import mlx.core as mx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import mlx_oss  # noqa: E402
from mlx_oss import constraint as constraint_mod  # noqa: E402
from mlx_oss import tokenizer as tk  # noqa: E402
from mlx_oss.chat import Chat  # noqa: E402
from mlx_oss.constraint import reply_constraint  # noqa: E402
from mlx_oss.grammar import ContentMatcher, Grammars  # noqa: E402
from mlx_oss.sampling import SamplingConfig  # noqa: E402

PROMPT = "List the records."
# Far longer than any --tokens: both modes stop at max_tokens with the same count. Strings (the costlier
# masks: almost every token is allowed) and bounded integers, as a real extraction schema has.
RECORDS = {
    "type": "object",
    "properties": {
        "records": {
            "type": "array",
            "minItems": 64,
            "maxItems": 64,
            "items": {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "minLength": 24, "maxLength": 40},
                    "kind": {"enum": ["person", "place", "thing"]},
                    "count": {"type": "integer", "minimum": 0, "maximum": 1000},
                },
                "required": ["name", "kind", "count"],
                "additionalProperties": False,
            },
        }
    },
    "required": ["records"],
    "additionalProperties": False,
}
SMALL = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 12}, "age": {"type": "integer", "minimum": 0, "maximum": 120}},
    "required": ["name", "age"],
    "additionalProperties": False,
}
WIDE = {  # 40 properties of every kind: a big form
    "type": "object",
    "properties": {
        **{f"s{i}": {"type": "string", "maxLength": 64} for i in range(10)},
        **{f"n{i}": {"type": "integer", "minimum": -5, "maximum": 5000} for i in range(10)},
        **{f"e{i}": {"enum": ["alpha", "beta", "gamma", "delta"]} for i in range(10)},
        **{f"a{i}": {"type": "array", "items": {"type": "number"}, "maxItems": 8} for i in range(5)},
        **{f"o{i}": {"type": "object", "properties": {"x": {"type": "boolean"}, "y": {"type": ["string", "null"]}},
                     "required": ["x", "y"], "additionalProperties": False} for i in range(5)},
    },
    "additionalProperties": False,
}
SCHEMAS = {"small (2 fields)": SMALL, "records (array of objects)": RECORDS, "wide (40 fields, nested)": WIDE}


def say(message: str) -> None:
    print(f"  {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ models


def tiny_chat(path: str | None):
    if path:
        return mlx_oss.load(path, "float32")
    from mlx_oss.convert.convert import convert_checkpoint
    from mlx_oss.convert.synthetic import preset, write_checkpoint

    root = Path(tempfile.mkdtemp(prefix="structured-bench-"))
    atexit.register(shutil.rmtree, root, True)
    say(f"building tiny-chat in {root} (removed at exit)")
    src = write_checkpoint(root / "src", preset("tiny-chat"), "hf", seed=0)
    return mlx_oss.load(convert_checkpoint(src, root / "converted", progress=False).dst, "float32")


def slice_20b():
    from model_speed import random_model

    from mlx_oss.tokenizer import load_tokenizer

    say("building the 20b slice in memory (4 layers, float32)")
    return random_model(4), load_tokenizer(None)


MODELS = ("tiny-chat", "20b-slice")


# ------------------------------------------------------------------ measurements


class Timed:
    """Wraps `cls.attr` (a method) to add up its wall time and calls while in the `with` block."""

    def __init__(self, cls: type, attr: str) -> None:
        self.cls, self.attr, self.real = cls, attr, getattr(cls, attr)
        self.seconds, self.calls = 0.0, 0

    def __enter__(self) -> Timed:
        real, timer = self.real, self

        def timed(this, *args, **kw):
            t = time.perf_counter()
            try:
                return real(this, *args, **kw)
            finally:
                timer.seconds += time.perf_counter() - t
                timer.calls += 1

        setattr(self.cls, self.attr, timed)
        return self

    def __exit__(self, *exc) -> None:
        setattr(self.cls, self.attr, self.real)

    @property
    def ms(self) -> float:
        return 1e3 * self.seconds / max(1, self.calls)


def decode_overhead(name: str, model, enc, tokens: int, seeds: list[int], repeats: int) -> dict:
    chats = {
        "described": Chat(model, enc, response_format=RECORDS, strict=False, max_tokens=tokens),
        "enforced": Chat(model, enc, response_format=RECORDS, strict=True, max_reasoning_tokens=0, max_tokens=tokens),
    }
    for chat in chats.values():  # warm-up: the compile, llguidance's vocabulary, MLX's kernels
        chat.max_tokens = 4
        chat.ask(PROMPT)
        chat.reset()
        chat.max_tokens = tokens
    per_token = {mode: [] for mode in chats}
    live = Timed(constraint_mod.ReplyConstraint, "__call__")
    counts, runs = set(), []
    for r in range(repeats):
        for seed in seeds:
            order = list(chats) if (r + seed) % 2 == 0 else list(chats)[::-1]
            for mode in order:
                chat = chats[mode]
                chat.reset()
                chat.sampling = SamplingConfig(seed=seed)
                if mode == "enforced":
                    with live:
                        reply = chat.ask(PROMPT)
                    tokens_now = list(chat.engine.tokens)
                    runs.append((tokens_now[: reply.stats.prompt_tokens], tokens_now[reply.stats.prompt_tokens :]))
                else:
                    reply = chat.ask(PROMPT)
                s = reply.stats
                counts.add((mode, s.generated_tokens, s.stop_reason))
                per_token[mode].append(s.decode_s / max(1, s.generated_tokens - 1))
            say(f"{name}: repeat {r + 1}/{repeats}, seed {seed}: described {1e3 * per_token['described'][-1]:.2f} ms, "
                f"enforced {1e3 * per_token['enforced'][-1]:.2f} ms per token")  # fmt: skip
    uneven = sorted(c for c in counts if c[1] != tokens)
    if uneven:
        say(f"{name}: runs that did not generate {tokens} tokens (mode, tokens, stop): {uneven}")
    free = statistics.median(per_token["described"])
    strict = statistics.median(per_token["enforced"])
    host_ms, mask_ms, ops_ms = replay(chats["enforced"].grammars, model.args.vocab_size, runs)
    return {"model": name, "tokens": tokens, "runs": len(per_token["enforced"]), "free_ms": 1e3 * free,
            "strict_ms": 1e3 * strict, "overhead": strict / free - 1, "live_ms": live.ms, "host_ms": host_ms,
            "mask_ms": mask_ms, "ops_ms": ops_ms, "uneven": uneven}  # fmt: skip


def replay(grammars: Grammars, vocab: int, runs: list[tuple[list[int], list[int]]]) -> tuple[float, float, float]:
    """The constraint's own cost, without a model: a fresh `ReplyConstraint` (as the enforced runs had) is
    called once per token of those runs with the context the engine gave it, and its output evaluated.
    -> ms per call: (the host's part: the call itself, llguidance's mask (`ContentMatcher.allowed`) within
    it, evaluating the masking ops it queued)."""
    grammar = grammars.json_schema(RECORDS)
    logits = mx.zeros((1, vocab))
    mx.eval(logits)
    mask = Timed(ContentMatcher, "allowed")
    host = ops = 0.0
    calls = 0
    with mask:
        for prompt, generated in runs:
            c = reply_constraint(grammars.encoding, answer=grammar, grammars=grammars, reasoning_budget=0)
            for i in range(len(generated)):  # call i sampled token i, after prompt + generated[:i]
                context = mx.array(prompt + generated[:i], dtype=mx.int32)
                mx.eval(context)
                t0 = time.perf_counter()
                out = c(context, logits)
                t1 = time.perf_counter()
                mx.eval(out)
                host, ops, calls = host + t1 - t0, ops + time.perf_counter() - t1, calls + 1
            if c.matcher is not None and c.matcher.error:  # the replay must follow the grammar as the run did
                raise RuntimeError(f"replay: the constraint refused a token of its own run: {c.matcher.error}")
    n = max(1, calls)
    return 1e3 * host / n, 1e3 * mask.seconds / n, 1e3 * ops / n


def compile_latency(enc) -> list[tuple[str, float]]:
    rows = []
    g = Grammars(enc)
    t = time.perf_counter()
    g.tokenizer
    rows.append(("llguidance vocabulary (once per Grammars: per Chat, per server)", time.perf_counter() - t))
    for label, schema in SCHEMAS.items():
        t = time.perf_counter()
        grammar = g.json_schema(schema)
        miss = time.perf_counter() - t
        t = time.perf_counter()
        g.json_schema(dict(schema))  # an equal schema (a new dict): found by hash
        hit = time.perf_counter() - t
        t = time.perf_counter()
        m = g.matcher(grammar, tk.RETURN)
        m.allowed(enc.n_vocab)
        first = time.perf_counter() - t
        rows += [(f"{label}: compile (first use)", miss), (f"{label}: cached (same schema again)", hit),
                 (f"{label}: fresh matcher + first mask", first)]  # fmt: skip
    return rows


def first_token(model, enc) -> list[tuple[str, float, float]]:
    """(reply, seconds in send(): where a strict schema is compiled, the engine's TTFT) on one Chat whose
    prompt is cached (each reply reuses it alike: the prompt is the same strict or not)."""
    chat = Chat(model, enc, response_format=RECORDS, strict=False, max_tokens=1)
    chat.ask(PROMPT)  # MLX warm-up; the prompt is cached from here on
    rows = []
    for label, strict in (("described only (no constraint)", False),
                          ("enforced, first strict reply of the Chat (vocabulary + compile)", True),
                          ("enforced, next reply (schema cached)", True)):  # fmt: skip
        chat.reset()
        t = time.perf_counter()
        stream = chat.send(PROMPT, strict=strict)
        in_send = time.perf_counter() - t
        rows.append((label, in_send, list(stream)[-1].stats.ttft_s))
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="tiny-chat,20b-slice", help="comma-separated: tiny-chat, 20b-slice")
    ap.add_argument("--tiny-chat", default=None, metavar="DIR", help="a converted tiny-chat folder (default: build one)")
    ap.add_argument("--tokens", type=int, default=64, help="generated tokens per run (default 64)")
    ap.add_argument("--seeds", default="1,2,3", help="sampling seeds (default 1,2,3)")
    ap.add_argument("--repeats", type=int, default=2, help="repeats of every seed (default 2)")
    ap.add_argument("--slice-tokens", type=int, default=24, help="--tokens for the 20b slice (slow on CPU; default 24)")
    ap.add_argument("--slice-repeats", type=int, default=1, help="--repeats for the 20b slice (default 1)")
    a = ap.parse_args(argv)
    seeds = [int(s) for s in a.seeds.split(",") if s.strip()]
    names = [n.strip() for n in a.models.split(",") if n.strip()]
    for n in names:
        if n not in MODELS:
            ap.error(f"unknown model {n!r}; choose from {', '.join(MODELS)}")
    import llguidance

    print(f"mlx {mx.__version__}, device {mx.default_device()}, llguidance {getattr(llguidance, '__version__', '?')}, "
          f"float32", flush=True)  # fmt: skip
    results, latency, ttfts = [], None, {}
    for n in names:
        model, enc = tiny_chat(a.tiny_chat) if n == "tiny-chat" else slice_20b()
        if latency is None:
            latency = compile_latency(enc)
        ttfts[n] = first_token(model, enc)
        big = n != "tiny-chat"
        results.append(decode_overhead(n, model, enc, a.slice_tokens if big else a.tokens, seeds,
                                       a.slice_repeats if big else a.repeats))  # fmt: skip
        del model
        mx.clear_cache()

    print("\n## Decode time per token, schema described vs enforced (same seeds, same token count; medians)\n")
    print("| model | tokens/run | runs/mode | described ms/token | enforced ms/token | difference |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for r in results:
        print(f"| {r['model']} | {r['tokens']} | {r['runs']} | {r['free_ms']:.2f} | {r['strict_ms']:.2f} | "
              f"{100 * r['overhead']:+.1f}% |")  # fmt: skip
    print("\n## The constraint's own cost per token (replayed over the enforced runs' tokens, no model)\n")
    print("| model | host ms/token | of which llguidance's mask | masking ops ms/token | total, share of the "
          "described decode time | live time in ReplyConstraint.__call__ (incl. waiting) |")  # fmt: skip
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for r in results:
        total = r["host_ms"] + r["ops_ms"]
        print(f"| {r['model']} | {r['host_ms']:.2f} | {r['mask_ms']:.2f} | {r['ops_ms']:.2f} | {total:.2f} ms, "
              f"{100 * total / r['free_ms']:.1f}% | {r['live_ms']:.2f} |")  # fmt: skip
    print("\n## Compile latency (seconds)\n")
    print("| step | s |")
    print("| --- | ---: |")
    for label, s in latency or []:
        print(f"| {label} | {s:.4f} |")
    for n, rows in ttfts.items():
        print(f"\n## First token, {n}: send() (the compile) + the engine's TTFT, prompt cached (seconds)\n")
        print("| reply | in send() | engine TTFT | first token |")
        print("| --- | ---: | ---: | ---: |")
        for label, in_send, ttft in rows:
            print(f"| {label} | {in_send:.3f} | {ttft:.3f} | {in_send + ttft:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
