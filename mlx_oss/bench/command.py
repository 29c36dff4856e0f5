"""`mlx-oss bench`: prefill and decode speed, TTFT, peak memory, a multi-turn chat and the bandwidth
roofline, optionally side by side with mlx-lm's own gpt_oss model on the same checkpoint.

    mlx-oss bench --model openai/gpt-oss-20b -p 512,2048 -g 128 -d 0,4096,32768 -r 3 --compare mlx-lm
    mlx-oss bench --model openai/gpt-oss-20b -d 0,4096,32768 --kv-bits 8   # quantized KV cache
    mlx-oss bench --model openai/gpt-oss-20b --batch 1,2,4,8 -g 32           # batched decode (BatchGenerator)

Modules: runners (what is timed, timing), multiturn (chat scenario), batch (batched decode), report
(roofline, table/JSON/CSV/plot), machine (machine info, bandwidth table). See docs/BENCH.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import mlx.core as mx

from mlx_oss.backend import cpu, device
from mlx_oss.bench import batch as bat
from mlx_oss.bench import machine as mach
from mlx_oss.bench import report as rep
from mlx_oss.bench import runners as run
from mlx_oss.cli.args import add_dtype, add_hosts, add_kv_cache, add_model, int_list, kv_cache_kwargs
from mlx_oss.errors import UsageError

REEXEC_ENV = "MLX_OSS_BENCH_REEXEC"
BATCH_WARMUP = 3  # --batch: untimed batched steps before the -g timed ones, per B
MLX_LM_UNQUANTIZED = ("--kv-bits does not apply: mlx-lm cannot quantize gpt_oss's sliding-window cache "
                      "(RotatingKVCache.to_quantized raises NotImplementedError)")  # fmt: skip


def register(sub) -> None:
    """Add the `bench` subcommand to the mlx-oss CLI."""
    b = sub.add_parser("bench", help="prefill/decode speed, TTFT, memory, multi-turn, roofline; --compare mlx-lm")
    add_model(b)
    b.add_argument("-p", "--prompt", type=int_list, default=[512], help="prefill sizes, e.g. 512,2048 (default 512)")
    b.add_argument("-g", "--gen", type=int, default=128, help="decode tokens per run (default 128)")
    b.add_argument("-d", "--depth", type=int_list, default=[0], help="context depths for decode, e.g. 0,4096,32768 (default 0)")
    b.add_argument("-r", "--reps", type=int, default=3, help="repetitions after one warm-up (default 3)")
    add_dtype(b, help="default: the device's")
    add_kv_cache(b)
    b.add_argument("--seed", type=int, default=0, help="seed of the random prompt tokens, the same for every engine (default 0)")
    b.add_argument("--compare", choices=["mlx-lm"], default=None, help="also run mlx-lm's gpt_oss model, same tokens")
    b.add_argument("--compare-model", default=None, help="checkpoint for mlx-lm (HF layout); default: the source of --model")
    b.add_argument("--compare-dtype", default=None, help="mlx-lm's dtype (default: float32 on the CPU backend, else bfloat16)")
    b.add_argument("--turns", type=int, default=10, help="multi-turn scenario: chat turns (default 10; 0: skip)")
    b.add_argument("--turn-tokens", type=int_list, default=[32, 16, 16], metavar="USER,REASONING,ANSWER",
                   help="tokens per turn: user message, reasoning, answer (default 32,16,16)")  # fmt: skip
    b.add_argument("--effort-tokens", type=int, default=0, help="per-reasoning-effort run: max tokens per effort (default 0: skip)")
    b.add_argument("--batch", type=int_list, default=None, metavar="B,B,...",
                   help="batched decode: B sequences decoded together by BatchGenerator (mlx-lm's BatchGenerator with "
                        "--compare), aggregate and per-sequence tok/s and peak memory for each B, e.g. 1,2,4,8; "
                        f"-g steps after {BATCH_WARMUP} warm-up steps, prompts of 16 + 3 i random tokens, not -p "
                        "(default none: skip)")  # fmt: skip
    b.add_argument("--no-graph", action="store_true", help="skip counting graph nodes per decode step")
    b.add_argument("--bandwidth", type=float, default=None, metavar="GB/S", help="memory bandwidth for the roofline (default: table on Apple, else measured)")
    b.add_argument("--blas", choices=["auto", "openblas", "reference"], default=os.environ.get("MLX_OSS_BLAS", "auto"),
                   help="CPU backend: 'openblas' restarts the run with the system OpenBLAS preloaded (Debian: apt-get install "
                        "libopenblas0-pthread); 'auto' uses whatever is loaded. Env: MLX_OSS_BLAS")  # fmt: skip
    b.add_argument("--json", action="store_true", help="print JSON instead of the table")
    b.add_argument("--csv", metavar="FILE", default=None, help="also write the rows as CSV ('-' for stdout)")
    b.add_argument("--plot", metavar="FILE.png", default=None, help="decode tokens/s against context depth, both engines")
    b.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    add_hosts(b)
    b.set_defaults(func=cmd_bench)


def _maybe_reexec_with_openblas(blas: str, argv: list[str] | None = None) -> None:
    """OpenBLAS must be loaded before MLX, so `--blas openblas` restarts the process with LD_PRELOAD.
    Nothing on the user's system changes; without the library the run stops with how to install it."""
    if blas != "openblas" or cpu.fast_blas() == "openblas" or device.metal_available():
        return
    if os.environ.get(REEXEC_ENV):
        raise RuntimeError("--blas openblas: preloading OpenBLAS did not take effect")
    lib = cpu.find_openblas()
    if lib is None:
        raise RuntimeError("--blas openblas: no system OpenBLAS found (Debian/Ubuntu: apt-get install libopenblas0-pthread)")
    env = dict(os.environ)
    env["LD_PRELOAD"] = ":".join(x for x in (lib, env.get("LD_PRELOAD")) if x)
    env[REEXEC_ENV] = "1"
    args = sys.argv[1:] if argv is None else argv
    os.execve(sys.executable, [sys.executable, "-m", "mlx_oss.cli.main", *args], env)


def _progress(quiet: bool):
    t0 = time.perf_counter()

    def say(msg: str) -> None:
        if not quiet:
            print(f"[{time.perf_counter() - t0:7.1f}s] {msg}", file=sys.stderr, flush=True)

    return say


def _compare_source(model_arg: str, converted: Path, explicit: str | None) -> Path:
    if explicit:
        from mlx_oss.convert.hub import download, is_repo_id

        return Path(download(explicit)) if is_repo_id(explicit) else Path(explicit).expanduser()
    src = run.mlx_lm_source(converted)
    if src is None:
        from mlx_oss.convert.hub import download, is_repo_id

        if is_repo_id(model_arg):
            return Path(download(model_arg))
        raise RuntimeError(f"--compare mlx-lm: cannot tell which HF-layout checkpoint {converted} came from; pass --compare-model")
    return src


def run_bench(a: argparse.Namespace, say) -> dict:
    """Everything the command measures, as one JSON-able dict."""
    from mlx_oss.config import ModelArgs, check_kv_quant
    from mlx_oss.info import describe
    from mlx_oss.store import resolve_model

    path = resolve_model(a.model, status=say)
    args = ModelArgs.from_path(path)
    try:
        check_kv_quant(a.kv_bits, a.kv_group_size, args.head_dim)
    except ValueError as e:
        raise UsageError(str(e)) from None
    info = describe(path)
    metal = device.metal_available()
    dtype = a.dtype or device.default_dtype(metal)
    machine = mach.machine_info(metal=metal)
    if a.bandwidth:
        machine["bandwidth_gbs"], machine["bandwidth_source"] = a.bandwidth, "given"
    elif not machine.get("bandwidth_gbs"):
        say("measuring memory bandwidth")
        machine["bandwidth_gbs"], machine["bandwidth_source"] = mach.measure_bandwidth_gbs(), "measured (1 core, numpy read)"
    result: dict = {
        "machine": machine,
        "model": {"path": str(path), "layers": args.num_hidden_layers, "dtype": dtype, "vocab": args.vocab_size},
        "settings": {"prompt": a.prompt, "gen": a.gen, "depth": a.depth, "reps": a.reps, "seed": a.seed,
                     "turns": a.turns, "turn_tokens": a.turn_tokens, "effort_tokens": a.effort_tokens,
                     "batch": a.batch, "batch_warmup": BATCH_WARMUP if a.batch else None, **kv_cache_kwargs(a)},  # fmt: skip
        "engines": {},
    }

    def finish(eng, r: dict, peak: int, dtype: str) -> None:
        """Traffic and roofline per decode depth; the KV cache measured after each depth's prefill
        against the formula for exactly its positions, as the engine's caches really are."""
        kv_dtype = "float32" if dtype == "float32" else "bfloat16"
        kind = r["kv_cache"]
        t = rep.traffic(eng.named_bytes(), args.experts_per_token, args.num_experts, args.vocab_size)
        r["traffic"] = {**t.__dict__, "bytes_per_token_d0": t.per_token(0)}
        for d in r.get("decode", []):
            b = t.per_token(rep.kv_cache_bytes(info.dims, d["depth"], kv_dtype, kind["bits"], kind["group_size"], kind["window_bits"]))
            d["bytes_per_token"] = b
            d["roofline_tps"] = rep.roofline_tps(machine["bandwidth_gbs"], b)
            d["roofline_share"] = d["tps"]["mean"] / d["roofline_tps"]
            c = d.get("kv_cache")
            if c:
                c["formula_bytes"] = rep.kv_cache_bytes(info.dims, c["positions"], kv_dtype, c["bits"], c["group_size"], c["window_bits"])
                c["ratio"] = c["bytes"] / c["formula_bytes"]
        r["peak_memory_bytes"] = peak

    mx.reset_peak_memory()
    say(f"loading {path} ({dtype})")
    blas_threads = cpu.openblas_threads()  # OpenBLAS's own default, for mlx-lm's run
    t0 = time.perf_counter()
    ours = run.OursRunner(path, dtype, **kv_cache_kwargs(a))
    r = {"load_s": time.perf_counter() - t0, "blas_threads": cpu.openblas_threads()}
    r["kv_cache"] = run.cache_kind(ours.make_cache())
    r.update(run.measure_runner(ours, a.prompt, a.depth, a.gen, a.reps, args.vocab_size, a.seed, say))
    if not a.no_graph:
        twin = run.MetalTwin(args, **kv_cache_kwargs(a))  # the Metal layout
        r["graph_nodes"] = run.count_graph_nodes(twin, vocab=twin.model.args.vocab_size)
    peak = mx.get_peak_memory()
    if a.batch:  # resets the peak per B: read the runs' peak first
        r["batch"] = bat.measure_batch(ours.model, a.batch, a.gen, BATCH_WARMUP, say, seed=a.seed)
        peak = max([peak] + [x["peak_memory_bytes"] for x in r["batch"]])
    turns = None
    from mlx_oss.chat import vocabulary_problem

    cannot_chat = vocabulary_problem(ours.model, ours.tokenizer)
    chat_parts = [flag for flag, on in (("--turns", a.turns), ("--effort-tokens", a.effort_tokens)) if on]
    if cannot_chat and chat_parts:  # the speed runs use ids below the vocabulary; chats need harmony's
        result["skipped"] = {"parts": chat_parts, "reason": cannot_chat}
        say(f"skipping the chat parts ({', '.join(chat_parts)}): {cannot_chat}")
    if a.turns and not cannot_chat:
        from mlx_oss.bench import multiturn as mt

        u, an, f = (a.turn_tokens + [16, 16, 16])[:3]
        script = mt.script(ours.tokenizer, a.turns, u, an, f)
        turns = mt.run_ours(ours.model, ours.tokenizer, script, say)
        peak = max([peak] + [t["peak"] for t in turns])
        r["multiturn"] = mt.strip_tokens(turns)
    if a.effort_tokens and not cannot_chat:
        from mlx_oss.bench import multiturn as mt

        r["efforts"] = mt.run_efforts(ours.model, ours.tokenizer, "Why is the sky blue?", a.effort_tokens, say)
        peak = max(peak, mx.get_peak_memory())
    finish(ours, r, peak, dtype)
    result["engines"]["mlx-oss"] = r
    del ours
    run.release()

    if a.compare == "mlx-lm":
        src = _compare_source(a.model, path, a.compare_model)
        cdtype = a.compare_dtype or ("float32" if not metal else "bfloat16")
        mx.reset_peak_memory()
        say(f"loading mlx-lm's gpt_oss from {src} ({cdtype})")
        t0 = time.perf_counter()
        cpu.openblas_threads(blas_threads)  # mlx-lm runs one stream: it gets OpenBLAS's threads
        peer = run.MlxLmRunner(src, cdtype)
        r = {"load_s": time.perf_counter() - t0, "dtype": cdtype, "blas_threads": cpu.openblas_threads()}
        r["kv_cache"] = run.cache_kind(peer.make_cache())
        if a.kv_bits is not None and not r["kv_cache"]["bits"]:
            r["kv_cache"]["note"] = MLX_LM_UNQUANTIZED
            say(f"mlx-lm runs unquantized: {MLX_LM_UNQUANTIZED}")
        r.update(run.measure_runner(peer, a.prompt, a.depth, a.gen, a.reps, args.vocab_size, a.seed, say))
        if not a.no_graph:
            r["graph_nodes"] = run.count_graph_nodes(peer, vocab=args.vocab_size)
        if turns:
            from mlx_oss.bench import multiturn as mt

            r["multiturn"] = mt.run_mlx_lm(peer.model, turns, say)
        peak = mx.get_peak_memory()
        if a.batch:  # the model already loaded, not a second copy
            r["batch"] = bat.measure_batch(peer.model, a.batch, a.gen, BATCH_WARMUP, say, peer=True, seed=a.seed)
            peak = max([peak] + [x["peak_memory_bytes"] for x in r["batch"]])
        finish(peer, r, peak, cdtype)
        result["engines"]["mlx-lm"] = r
        del peer
        run.release()
    return result


def cmd_bench(a: argparse.Namespace) -> int:
    _maybe_reexec_with_openblas(a.blas)
    if a.reps < 1 or a.gen < 1 or any(x < 1 for x in a.prompt) or any(x < 0 for x in a.depth):
        raise ValueError("-r and -g must be >= 1, -p sizes >= 1, -d depths >= 0")
    say = _progress(a.quiet)
    from mlx_oss.distributed import cli as dist

    if a.batch is not None and any(x < 1 for x in a.batch):
        raise UsageError(f"--batch: every batch size must be >= 1, got {','.join(map(str, a.batch))}")
    if a.kv_bits is not None and a.hosts:
        raise UsageError("--kv-bits: the tensor-parallel bench (--hosts) runs unquantized caches only")
    if a.batch and a.hosts:
        raise UsageError("--batch: the tensor-parallel bench (--hosts) does not batch")
    with dist.group(a) as session:
        if session is not None:
            if a.kv_bits is not None:
                raise UsageError("--kv-bits: the tensor-parallel bench runs unquantized caches only")
            if a.batch:
                raise UsageError("--batch: the tensor-parallel bench does not batch")
            from mlx_oss.bench.distributed import cmd

            return cmd(session, a, say)
    result = run_bench(a, say)
    if a.plot:
        how = rep.write_plot(result, a.plot)
        say(f"plot written to {a.plot} ({how}" + (": a minimal chart; pip install 'mlx-oss[plot]' for matplotlib's)" if how == "builtin" else ")"))
    if a.csv:
        text = rep.to_csv(result)
        if a.csv == "-":
            sys.stdout.write(text)
        else:
            Path(a.csv).write_text(text)
    if a.json:
        print(rep.to_json(result))
    elif a.csv != "-":
        print(rep.format_table(result))
    return 0
