"""`mlx-oss bench`: machine/bandwidth tables with faked devices, roofline arithmetic, outputs, the
compare path on the tiny model, graph-node counting, and the CPU speedups it relies on (exact)."""

from __future__ import annotations

import csv
import io
import json
import struct
import zlib

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

from mlx_oss.backend import cpu, device
from mlx_oss.bench import machine
from mlx_oss.bench import report as rep
from mlx_oss.nn.attention import Attention
from mlx_oss.nn.moe import MoE

# ------------------------------------------------------------------------------ device fakes

CHIPS = {
    # name, GPU cores -> published GB/s
    ("Apple M1", 8): 68.25, ("Apple M1 Pro", 16): 200, ("Apple M1 Max", 32): 400, ("Apple M1 Ultra", 64): 800,
    ("Apple M2", 10): 100, ("Apple M2 Pro", 19): 200, ("Apple M2 Max", 38): 400, ("Apple M2 Ultra", 76): 800,
    ("Apple M3", 10): 100, ("Apple M3 Pro", 18): 150, ("Apple M3 Max", 30): 300, ("Apple M3 Max", 40): 400,
    ("Apple M3 Ultra", 80): 819, ("Apple M4", 10): 120, ("Apple M4 Pro", 20): 273, ("Apple M4 Max", 32): 410,
    ("Apple M4 Max", 40): 546, ("Apple M5", 10): 153, ("Apple M5 Pro", 20): 307, ("Apple M5 Max", 40): 614,
}  # fmt: skip


@pytest.mark.parametrize("chip,cores", list(CHIPS))
def test_machine_info_on_faked_macs(chip, cores):
    profiler = f"Graphics/Displays:\n  {chip}:\n    Chipset Model: {chip}\n    Total Number of Cores: {cores}\n"
    info = {"device_name": chip, "memory_size": 64 * 2**30}
    m = machine.machine_info(metal=True, info=info, gpu_cores=lambda: profiler)
    assert m["chip"] == chip and m["backend"] == "metal" and m["gpu_cores"] == cores
    assert m["memory_bytes"] == 64 * 2**30 and m["mlx"] == mx.__version__
    assert m["bandwidth_gbs"] == CHIPS[(chip, cores)] and m["bandwidth_source"] == "published"


def test_chip_table_edges():
    assert machine.apple_chip("Apple M3 Max") == "M3 Max" and machine.apple_chip("Apple M4") == "M4"
    assert machine.apple_chip("AMD EPYC 7B13") is None and machine.apple_chip("") is None
    assert machine.chip_bandwidth_gbs("Apple M5 Ultra") is None  # not announced: measured instead
    assert machine.chip_bandwidth_gbs("Apple M3 Max") == 400  # cores unknown: the full chip
    assert machine.chip_bandwidth_gbs("Apple M4 Max", 30) == 410  # below the table: the binned chip
    for base in ("M1", "M2", "M3", "M4", "M5"):
        for tier in ("", " Pro", " Max", " Ultra"):
            assert base + tier in machine.BANDWIDTH_GBS


def test_machine_info_on_linux_and_blas_detection():
    cpuinfo = "processor\t: 0\nmodel name\t: AMD EPYC 7B13\nprocessor\t: 1\nmodel name\t: AMD EPYC 7B13\n"
    m = machine.machine_info(metal=False, info={}, sysctl=lambda: "", cpuinfo=cpuinfo, meminfo="MemTotal: 1024 kB\n")
    assert m["chip"] == "AMD EPYC 7B13" and m["cpu_cores"] == 2 and m["memory_bytes"] == 1024 * 1024
    assert m["backend"] == "cpu" and m["bandwidth_gbs"] is None and m["blas"] in ("reference", "openblas", "mkl", "blis")
    numpy_only = "7f00 r-xp /venv/numpy.libs/libscipy_openblas64_-ff651d7f.so\n"
    assert cpu.fast_blas(numpy_only) is None  # numpy's copy never serves MLX
    assert cpu.fast_blas(numpy_only + "7f01 r-xp /usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0\n") == "openblas"
    assert cpu.fast_blas("7f r-xp /opt/intel/lib/libmkl_rt.so.2\n") == "mkl"
    assert cpu.find_openblas(lambda p: p.endswith("aarch64-linux-gnu/libopenblas.so.0")).startswith("/usr/lib/aarch64")
    assert cpu.find_openblas(lambda p: False) is None
    assert machine.gpu_core_count(lambda: "no cores here") is None


def test_openblas_threads_and_prepare_single_threads_it(tiny_converted, monkeypatch):
    """With OpenBLAS serving MLX and the model split over streams, OpenBLAS runs one thread
    (its threads and our streams would fight over the cores); without OpenBLAS nothing is touched."""
    from mlx_oss.config import ModelArgs
    from mlx_oss.nn.model import build_model

    class FakeOpenBLAS:
        n = 2

        def openblas_get_num_threads(self):
            return self.n

        def openblas_set_num_threads(self, n):
            self.n = n

    lib = FakeOpenBLAS()
    assert cpu.openblas_threads(1, lib=lib) == 2 and lib.n == 1
    assert cpu.openblas_threads(lib=lib) == 1
    assert cpu.openblas_threads(1, lib=object()) is None
    if cpu.fast_blas() is None:
        assert cpu.openblas_threads() is None  # numpy's suffixed copy is not found
    calls = []
    monkeypatch.setattr(cpu, "openblas_threads", lambda n=None, lib=None: calls.append(n) or 2)
    applied = cpu.prepare(build_model(ModelArgs.from_path(tiny_converted)), metal=False, blas="openblas", streams=2)
    assert applied["blas_threads"] == 1 and calls == [1]
    calls.clear()
    applied = cpu.prepare(build_model(ModelArgs.from_path(tiny_converted)), metal=False, blas="openblas", streams=1)
    assert "blas_threads" not in applied and calls == []
    applied = cpu.prepare(build_model(ModelArgs.from_path(tiny_converted)), metal=False, blas=None, streams=2)
    assert "blas_threads" not in applied and calls == []  # the reference BLAS has no threads to set


def test_measured_bandwidth_is_bytes_over_the_best_time(monkeypatch):
    import time

    clock = iter([0.0, 0.004, 1.0, 1.002, 2.0, 2.003])  # three timed reads: 4, 2 and 3 ms
    monkeypatch.setattr(time, "perf_counter", lambda: next(clock))
    assert machine.measure_bandwidth_gbs(nbytes=1 << 24, repeats=2) == pytest.approx((1 << 24) / 0.002 / 1e9)


# ------------------------------------------------------------------------------ roofline


def test_traffic_classifies_both_engines_names():
    ours = [("embed.weight", 1000), ("unembed.weight", 1000), ("layers.0.attn.qkv.weight", 300),
            ("layers.0.mlp.gate_up.weight", 800), ("layers.0.mlp.gate_up.scales", 100), ("layers.0.mlp.down.bias", 100),
            ("layers.0.mlp.router.weight", 40), ("norm.weight", 4)]  # fmt: skip
    t = rep.traffic(ours, experts_per_token=4, num_experts=32, vocab=10)
    assert (t.dense, t.experts, t.embedding) == (1000 + 300 + 40 + 4, 1000, 1000)
    assert t.per_token() == pytest.approx(1344 + 1000 * 4 / 32 + 1000 / 10)
    assert t.per_token(kv_bytes=56) == pytest.approx(t.per_token() + 56)
    peer = [("model.embed_tokens.weight", 1000), ("lm_head.weight", 1000), ("model.layers.0.mlp.experts.gate_proj.weight", 500),
            ("model.layers.0.mlp.experts.up_proj.scales", 500), ("model.layers.0.self_attn.q_proj.weight", 300)]  # fmt: skip
    p = rep.traffic(peer, 4, 32, 10)
    assert (p.dense, p.experts, p.embedding) == (1300, 1000, 1000)
    assert rep.roofline_tps(100.0, 1e9) == pytest.approx(100.0)


def test_roofline_bytes_of_the_loaded_model_match_mlx_oss_info(tiny_converted):
    """The roofline's bytes are the model's actual formats: what `mlx-oss info` says it holds."""
    from mlx_oss.bench.runners import OursRunner
    from mlx_oss.info import describe

    eng = OursRunner(tiny_converted, "float32")
    info, a = describe(tiny_converted), eng.model.args
    t = rep.traffic(eng.named_bytes(), a.experts_per_token, a.num_experts, a.vocab_size)
    assert t.dense + t.experts + t.embedding == info.weight_bytes_at("float32")
    assert t.experts == info.bytes["mxfp4 experts"] + _expert_bias_bytes(a)
    assert t.embedding == a.vocab_size * a.hidden_size * 4


def _expert_bias_bytes(a) -> int:
    return a.num_hidden_layers * a.num_experts * (2 * a.intermediate_size + a.hidden_size) * 4


# ------------------------------------------------------------------------------ outputs


def _result(two: bool = True) -> dict:
    def eng(scale: float) -> dict:
        return {
            "prefill": [{"tokens": 512, "tps": {"mean": 10 * scale, "std": 1.0, "runs": []}, "ttft_s": {"mean": 50 / scale, "std": 0.5, "runs": []}}],
            "decode": [{"depth": d, "tokens": 32, "tps": {"mean": scale * 4 / (1 + d / 4096), "std": 0.1, "runs": []},
                        "roofline_tps": 8.0, "roofline_share": scale * 0.5} for d in (0, 4096, 32768)],  # fmt: skip
            "peak_memory_bytes": int(6e9 * scale),
            "graph_nodes": {"total": int(600 * scale), "by_op": {}},
            "multiturn": [{"turn": i + 1, "prompt": 60 + 20 * i, "reused": 0, "prefilled": 20, "ttft_s": 1.0 + 0.01 * i} for i in range(10)],
            "traffic": {"dense": 2**30, "experts": 2**30, "embedding": 2**29, "vocab": 10, "active_fraction": 0.125, "bytes_per_token_d0": 2**30},
        }

    engines = {"mlx-oss": eng(2.0)}
    if two:
        engines["mlx-lm"] = eng(1.0)
    return {
        "machine": {"chip": "Apple M3 Max", "backend": "metal", "gpu_cores": 40, "memory_bytes": 2**37, "os": "macOS-15", "mlx": "0.32.4",
                    "bandwidth_gbs": 400.0, "bandwidth_source": "published"},  # fmt: skip
        "model": {"path": "/m", "layers": 4, "dtype": "bfloat16", "vocab": 10},
        "settings": {"effort_tokens": 0},
        "engines": engines,
    }


def test_table_json_csv():
    r = _result()
    table = rep.format_table(r)
    assert "Apple M3 Max" in table and "40 GPU cores" in table and "400.0 GB/s" in table
    line = next(x for x in table.splitlines() if x.startswith("| pp512"))
    assert "20.00 ± 1.00" in line and "10.00 ± 1.00" in line and line.rstrip(" |").endswith("2.00x")
    assert "tg32 @ d32768" in table and "100.0% of 8.00 tok/s" in table
    assert next(x for x in table.splitlines() if x.startswith("| peak memory")).rstrip(" |").endswith("0.50x")
    assert "graph nodes / decode step" in table and "TTFT turn 10 / turn 2 = 1.08x" in table
    assert json.loads(rep.to_json(r))["engines"]["mlx-lm"]["peak_memory_bytes"] == int(6e9)
    rows = list(csv.DictReader(io.StringIO(rep.to_csv(r))))
    assert {"engine", "test", "metric", "unit", "mean", "std"} == set(rows[0])
    pp = [x for x in rows if x["test"] == "pp512" and x["metric"] == "prefill"]
    assert sorted(float(x["mean"]) for x in pp) == [10.0, 20.0]
    assert any(x["metric"] == "roofline_share" and float(x["mean"]) == 100.0 for x in rows)
    assert len([x for x in rows if x["metric"] == "ttft" and x["test"].startswith("turn")]) == 20
    single = rep.format_table(_result(two=False))
    assert "ratio" not in single and "mlx-lm" not in single


def _png_pixels(data: bytes) -> tuple[int, int, bytes]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat = 8, b""
    w = h = 0
    text = {}
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + n]
        assert struct.unpack(">I", data[pos + 8 + n : pos + 12 + n])[0] == zlib.crc32(kind + body) & 0xFFFFFFFF
        if kind == b"IHDR":
            w, h = struct.unpack(">II", body[:8])
        elif kind == b"IDAT":
            idat += body
        elif kind == b"tEXt":
            k, v = body.split(b"\x00", 1)
            text[k.decode()] = v.decode("latin-1")
        pos += 12 + n
    raw = zlib.decompress(idat)
    assert len(raw) == h * (1 + 3 * w) and "context depth" in text["Description"]
    return w, h, raw


def test_builtin_png_plot(tmp_path):
    r = _result()
    f = tmp_path / "p.png"
    rep.write_png(str(f), rep.plot_series(r), "title")
    w, h, raw = _png_pixels(f.read_bytes())
    assert (w, h) == (640, 400)
    for color in rep.COLORS[:2]:  # both engines drawn
        assert bytes(color) in raw
    assert rep.plot_series(r)["mlx-oss"][0] == (0.0, 8.0)
    rows = [raw[y * (1 + 3 * w) + 1 : (y + 1) * (1 + 3 * w)] for y in range(h)]

    def inked(y0: int, y1: int, x0: int, x1: int, color=(0, 0, 0)) -> int:
        return sum(rows[y][3 * x : 3 * x + 3] == bytes(color) for y in range(y0, y1) for x in range(x0, x1))

    assert inked(4, 9, 4, 40) > 10  # the title ("title")
    assert inked(16, 26, 4, 124) > 40  # y axis name ("decode tokens/s")
    assert inked(h - 18, h - 8, 150, 490) > 80  # x axis name
    assert inked(36, 46, 500, 600, rep.COLORS[0]) > 20  # legend: "mlx-oss" in its line's color
    out = tmp_path / "q.png"
    assert rep.write_plot(r, str(out)) in ("builtin", "matplotlib") and out.stat().st_size > 1000


# ------------------------------------------------------------------------------ CPU speedups (exact)


def test_dequantize_mxfp4_is_bit_identical_to_mlx():
    from mlx_oss.nn.moe import dequantize_mxfp4

    rng = np.random.default_rng(0)
    w = mx.array(rng.integers(0, 2**32, size=(64, 16), dtype=np.uint32))  # every nibble value occurs
    s = mx.array(rng.integers(0, 255, size=(64, 4), dtype=np.uint8))  # every finite e8m0 scale
    ref = mx.dequantize(w, s, group_size=32, bits=4, mode="mxfp4").astype(mx.float32)
    assert mx.array_equal(dequantize_mxfp4(w, s), ref).item()


def _plain_model(path):
    """The converted tiny model in the plain (Metal) layout: no CPU stream splitting."""
    from mlx_oss.config import ModelArgs
    from mlx_oss.loader import _converted_weights
    from mlx_oss.nn.model import build_model

    m = build_model(ModelArgs.from_path(path))
    assert cpu.prepare(m, metal=True) == {}
    m.load_weights([(n, a.astype(mx.float32) if mx.issubdtype(a.dtype, mx.floating) else a) for n, a in _converted_weights(path)])
    return m


def _rel(a, b) -> float:
    return (mx.abs(a - b).max() / mx.abs(b).max()).item()


def test_cpu_speedups_match_the_plain_layout(tiny_converted, monkeypatch):
    """The CPU layout (column-blocked linears and experts shared over streams) computes the same
    logits as the plain one, for decode and for sorted and dense prefill, with 1..3 streams."""
    from mlx_oss.loader import load_model

    plain = _plain_model(tiny_converted)
    a = plain.args
    toks = mx.array(np.random.default_rng(1).integers(0, a.vocab_size, (2, 70)), dtype=mx.int32)
    ref = plain(toks)
    ref_cache = plain.make_cache()
    ref_steps = [plain(toks[:, :9], ref_cache)] + [plain(toks[:, i : i + 1], ref_cache) for i in range(9, 12)]
    for n in (1, 2, 3):
        monkeypatch.setenv("MLX_OSS_CPU_STREAMS", str(n))
        m = load_model(tiny_converted, "float32")
        assert isinstance(m.unembed, cpu.SplitLinear) and m.unembed.streams.n == n
        assert m.unembed.weight.ndim == 3 and m.unembed.weight.shape[0] % n == 0
        assert m.layers[0].mlp.streams is m.unembed.streams
        assert all(type(layer.attn) is cpu.CPUAttention and layer.attn.streams is m.unembed.streams for layer in m.layers)
        assert _rel(m(toks), ref) <= 1e-5  # 140 (token, expert) pairs: the sorted path, rows shared
        cache = m.make_cache()
        steps = [m(toks[:, :9], cache)] + [m(toks[:, i : i + 1], cache) for i in range(9, 12)]
        assert all(_rel(s, r) <= 1e-5 for s, r in zip(steps, ref_steps))  # decode: experts shared
    for layer in m.layers:
        layer.mlp.dense_min_pairs = 8  # force the dense-prefill path
    assert _rel(m(toks), ref) <= 1e-5
    m.load_weights([("unembed.weight", plain.unembed.weight)], strict=False)  # the usual layout, set later
    assert _rel(m(toks), ref) <= 1e-5


@pytest.mark.parametrize("B,nq,nkv,T,S", [(1, 16, 2, 70, 300), (2, 8, 8, 5, 5), (1, 16, 4, 1, 40), (1, 4, 1, 6, 20)])
def test_cpu_attention_is_mlx_attention_with_sinks(B, nq, nkv, T, S):
    """`attention_with_sinks` (K^T made contiguous) and CPUAttention's kv heads shared over 1..3
    streams give MLX's own result, for every mask the model passes: none (decode), "causal" over a
    cached prefix, the sliding band, an additive mask; queries read kv head h // (nq / nkv)."""
    from mlx_oss.backend.cpu import CPUAttention, CPUStreams, attention_with_sinks
    from mlx_oss.config import ModelArgs
    from mlx_oss.nn.attention import sliding_mask
    from mlx_oss.nn.rope import YarnRoPE

    rng = np.random.default_rng(B * 1000 + nq + nkv + T + S)
    q, k, v = (mx.array(rng.standard_normal(s), dtype=mx.float32) for s in ((B, nq, T, 16), (B, nkv, S, 16), (B, nkv, S, 16)))
    sinks = mx.array(rng.standard_normal(nq) * 2, dtype=mx.float32)
    masks = [None, "causal", sliding_mask(T, S - T, 8), mx.array(rng.standard_normal((T, S)), dtype=mx.float32)]
    args = ModelArgs(num_attention_heads=nq, num_key_value_heads=nkv, head_dim=16, num_hidden_layers=1)
    for mask in masks:
        ref = mx.fast.scaled_dot_product_attention(q, k, v, scale=0.3, mask=mask, sinks=sinks)
        assert _rel(attention_with_sinks(q, k, v, 0.3, mask, sinks), ref) <= 1e-6
        for n in (1, 2, 3):
            attn = CPUAttention(args, YarnRoPE(16, 150000.0), CPUStreams(n))
            attn.sinks, attn._scale = sinks, 0.3
            assert _rel(attn.attend(q, k, v, mask), ref) <= 1e-6


def test_split_linear_padding_and_bias():
    """Output sizes that do not divide into the blocks: zero padding never reaches the output."""
    from mlx_oss.backend.cpu import SplitLinear
    from mlx_oss.backend.cpu import CPUStreams

    rng = np.random.default_rng(0)
    for out_dims, streams, block in ((1030, 2, 256), (5120, 3, 1024), (7, 2, 4)):
        w = mx.array(rng.standard_normal((out_dims, 48)), dtype=mx.float32)
        b = mx.array(rng.standard_normal(out_dims), dtype=mx.float32)
        lin = SplitLinear(48, out_dims, True, CPUStreams(streams), block=block)
        lin.weight = SplitLinear.blocked(w, lin.weight.shape[0], mx.float32, block_bytes=1000)  # several pieces
        lin.bias = b
        assert lin.weight.shape[0] % streams == 0 and lin.weight.shape[0] * lin.weight.shape[2] >= out_dims
        x = mx.array(rng.standard_normal((3, 5, 48)), dtype=mx.float32)
        y = lin(x)
        assert y.shape == (3, 5, out_dims)
        assert _rel(y, x @ w.T + b) <= 1e-6


def test_cpu_streams_are_per_thread(tiny_converted):
    """MLX streams cannot cross threads: a worker thread gets its own (the TUI decodes on one)."""
    import threading

    from mlx_oss.loader import load_model

    m = load_model(tiny_converted, "float32")
    toks = mx.array([[5, 6, 7, 8]], dtype=mx.int32)
    ref = m(toks)
    mx.eval(ref)
    main_streams = m.unembed.streams.get()
    out: dict = {}

    def work():
        try:
            out["streams"] = m.unembed.streams.get()
            y = m(toks)
            mx.eval(y)
            out["y"] = np.array(y)
        except Exception as e:  # noqa: BLE001 - reported below
            out["error"] = e
        finally:
            mx.clear_streams()

    t = threading.Thread(target=work)
    t.start()
    t.join()
    assert "error" not in out, out.get("error")
    assert out["streams"] != main_streams
    assert np.allclose(out["y"], np.array(ref), rtol=1e-6, atol=1e-6)


def test_prepare_is_backend_specific(tiny_converted):
    from mlx_oss.config import ModelArgs
    from mlx_oss.nn.model import build_model

    def fresh():
        return build_model(ModelArgs.from_path(tiny_converted))

    on_metal = fresh()
    assert cpu.prepare(on_metal, metal=True) == {}
    assert type(on_metal.unembed) is nn.Linear and all(type(layer.mlp) is MoE for layer in on_metal.layers)
    assert all(type(layer.attn) is Attention for layer in on_metal.layers)
    cpu_ref_blas = fresh()
    assert cpu.prepare(cpu_ref_blas, metal=False, blas=None, streams=2) == {"cpu_streams": 2}
    assert all(type(layer.mlp) is cpu.CPUMoE and layer.mlp.dense_min_pairs is None for layer in cpu_ref_blas.layers)
    assert all(type(layer.attn) is cpu.CPUAttention for layer in cpu_ref_blas.layers)
    small = [layer.mlp.router for layer in cpu_ref_blas.layers]
    assert all(type(r) is nn.Linear for r in small)  # 32 outputs: not worth splitting
    cpu_openblas = fresh()
    assert cpu.prepare(cpu_openblas, metal=False, blas="openblas", streams=2)["dense_prefill"] == "openblas"
    assert all(layer.mlp.dense_min_pairs for layer in cpu_openblas.layers)


def test_graph_nodes_of_the_metal_layout_do_not_depend_on_sizes(tiny_converted):
    from mlx_oss.bench.runners import MetalTwin, OursRunner, count_graph_nodes
    from mlx_oss.config import ModelArgs

    real = OursRunner.__new__(OursRunner)
    real.model = _plain_model(tiny_converted)
    args = ModelArgs.from_path(tiny_converted)
    assert count_graph_nodes(MetalTwin(args), depth=4, vocab=512) == count_graph_nodes(real, depth=4, vocab=args.vocab_size)


def test_blas_reexec_guard(monkeypatch):
    from mlx_oss.bench import command as bench

    monkeypatch.setattr(device, "metal_available", lambda probe=None: False)
    monkeypatch.setattr(cpu, "fast_blas", lambda maps=None: None)
    monkeypatch.setattr(cpu, "find_openblas", lambda exists=None: None)
    monkeypatch.delenv(bench.REEXEC_ENV, raising=False)
    bench._maybe_reexec_with_openblas("auto")  # nothing to do
    bench._maybe_reexec_with_openblas("reference")
    with pytest.raises(RuntimeError, match="libopenblas0-pthread"):
        bench._maybe_reexec_with_openblas("openblas")
    calls = []
    monkeypatch.setattr(cpu, "find_openblas", lambda exists=None: "/lib/libopenblas.so.0")
    monkeypatch.setattr(bench.os, "execve", lambda exe, argv, env: calls.append((argv, env)))
    bench._maybe_reexec_with_openblas("openblas", ["bench", "--model", "x"])
    (argv, env), = calls
    assert argv[-3:] == ["bench", "--model", "x"] and env["LD_PRELOAD"].startswith("/lib/libopenblas.so.0")
    assert env[bench.REEXEC_ENV] == "1"


# ------------------------------------------------------------------------------ the command


def test_graph_nodes_counted(tiny_converted):
    from mlx_oss.bench.runners import OursRunner, count_graph_nodes

    eng = OursRunner(tiny_converted, "float32")
    g = count_graph_nodes(eng, depth=4, vocab=eng.model.args.vocab_size)
    assert g["total"] > 50 and sum(g["by_op"].values()) == g["total"]
    assert "GatherQMM" in g["by_op"] or any("Gather" in k for k in g["by_op"])


def test_bench_command_with_compare(tiny_chat_converted, tmp_path, capsys):
    """End to end on the tiny model: both engines, the multi-turn scenario, every output."""
    from mlx_oss.cli.main import main

    png, csv_path = tmp_path / "b.png", tmp_path / "b.csv"
    argv = ["bench", "--model", str(tiny_chat_converted), "-p", "8,16", "-g", "3", "-d", "0,8", "-r", "2",
            "--compare", "mlx-lm", "--turns", "3", "--turn-tokens", "4,2,2", "--effort-tokens", "3",
            "--bandwidth", "100", "--blas", "auto", "--json", "--quiet", "--plot", str(png), "--csv", str(csv_path)]  # fmt: skip
    assert main(argv) == 0
    r = json.loads(capsys.readouterr().out)
    assert set(r["engines"]) == {"mlx-oss", "mlx-lm"} and r["machine"]["bandwidth_gbs"] == 100
    for name, e in r["engines"].items():
        assert [p["tokens"] for p in e["prefill"]] == [8, 16] and len(e["prefill"][0]["tps"]["runs"]) == 2
        assert [d["depth"] for d in e["decode"]] == [0, 8] and all(d["tps"]["mean"] > 0 for d in e["decode"])
        assert all(0 < d["roofline_share"] for d in e["decode"]) and e["peak_memory_bytes"] > 0
        assert e["graph_nodes"]["total"] > 0 and len(e["multiturn"]) == 3
    ours, peer = r["engines"]["mlx-oss"], r["engines"]["mlx-lm"]
    # the same prompts: identical token counts per turn; ours reuses the cache, mlx-lm re-prefills
    assert [t["prompt"] for t in ours["multiturn"]] == [t["prompt"] for t in peer["multiturn"]]
    assert ours["multiturn"][2]["prefilled"] < ours["multiturn"][2]["prompt"]
    assert [e["effort"] for e in ours["efforts"]] == ["low", "medium", "high"]
    assert ours["graph_nodes"]["total"] < peer["graph_nodes"]["total"]
    assert png.read_bytes()[:4] == b"\x89PNG" and "mlx-lm" in csv_path.read_text()


def test_bench_help_states_every_default():
    from mlx_oss.cli.main import build_parser

    sub = build_parser()._subparsers._group_actions[0].choices["bench"]
    text = " ".join(sub.format_help().split())
    for flag, default in (("--model", "(default openai/gpt-oss-20b)"), ("--turns", "(default 10; 0: skip)"),
                          ("--effort-tokens", "(default 0: skip)"), ("--depth", "(default 0)"), ("--seed", "(default 0)")):  # fmt: skip
        assert default in text, flag


def test_bench_rejects_bad_arguments(tiny_converted):
    from mlx_oss.cli.main import main

    assert main(["bench", "--model", str(tiny_converted), "-r", "0", "--quiet"]) == 1
    with pytest.raises(SystemExit):
        main(["bench", "-p", "a,b"])


# ------------------------------------------------------------------------------ quantized KV cache (issue 30)


@pytest.fixture(scope="module")
def tiny_hd64(tmp_path_factory):
    """The tiny preset at gpt-oss's head_dim 64 and 128-slot window (head_dim 16 cannot be grouped),
    HF layout converted, so `--compare mlx-lm` finds its source."""
    from mlx_oss.convert.convert import convert_checkpoint
    from mlx_oss.convert.synthetic import preset, write_checkpoint

    root = tmp_path_factory.mktemp("kvbench")
    src = write_checkpoint(root / "hf", preset("tiny", head_dim=64, sliding_window=128), "hf", seed=0)
    return convert_checkpoint(src, root / "mlx", progress=False).dst


def _bench_json(capsys, model, *extra: str) -> dict:
    from mlx_oss.cli.main import main

    argv = ["bench", "--model", str(model), "-p", "8", "-g", "2", "-d", "0,300", "-r", "1", "--turns", "0",
            "--bandwidth", "100", "--json", "--quiet", *extra]  # fmt: skip
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_bench_kv_bits_reports_cache_bytes_against_the_formula(tiny_hd64, capsys):
    """`--kv-bits 8`: each decode depth reports the cache's allocated bytes after its prefill next to
    the formula for exactly those positions; mlx-lm's row runs unquantized and says why."""
    from mlx_oss.bench.runners import cache_bytes_at
    from mlx_oss.config import ModelArgs

    q = _bench_json(capsys, tiny_hd64, "--kv-bits", "8", "--compare", "mlx-lm")
    plain = _bench_json(capsys, tiny_hd64, "--no-graph")
    assert (q["settings"]["kv_bits"], q["settings"]["kv_group_size"]) == (8, 64)
    assert (plain["settings"]["kv_bits"], plain["settings"]["kv_group_size"]) == (None, 64)
    ours, peer = q["engines"]["mlx-oss"], q["engines"]["mlx-lm"]
    assert ours["kv_cache"] == {"bits": 8, "group_size": 64, "window_bits": None}  # the window stays unquantized
    assert peer["kv_cache"]["bits"] is None and "NotImplementedError" in peer["kv_cache"]["note"]
    # by hand: 4 layers, 2 full (300 positions, quantized) + 2 sliding (a 128-slot ring, allocated whole,
    # unquantized); 2 kv heads x head_dim 64, float32 (4 bytes)
    q_slot = 2 * 2 * (64 * 8 // 8 + 2 * 4 * (64 // 64))  # K and V: 8-bit codes + a float32 scale and bias per 64 values
    f_slot = 2 * 2 * 64 * 4
    ring = 2 * 128 * f_slot
    c = ours["decode"][1]["kv_cache"]
    assert (c["positions"], c["bits"], c["group_size"], c["window_bits"]) == (300, 8, 64, None)
    assert c["formula_bytes"] == 2 * 300 * q_slot + ring == 434944
    assert c["formula_bytes"] <= c["bytes"] <= 2 * c["formula_bytes"] and c["ratio"] == c["bytes"] / c["formula_bytes"]
    p = plain["engines"]["mlx-oss"]["decode"][1]["kv_cache"]
    assert p["formula_bytes"] == 2 * 300 * f_slot + ring and p["formula_bytes"] <= p["bytes"] <= 2 * p["formula_bytes"]
    assert c["bytes"] < p["bytes"] and q_slot / f_slot == 0.28125  # per full-layer slot; float32 scales: not bf16's 0.53
    assert c["formula_bytes"] / p["formula_bytes"] == pytest.approx(0.4962, abs=1e-4)  # with the ring unquantized
    assert peer["decode"][1]["kv_cache"]["formula_bytes"] == p["formula_bytes"] and peer["decode"][1]["kv_cache"]["bits"] is None
    assert ours["decode"][0]["kv_cache"]["positions"] == 1  # depth 0: the one token prefilled
    # the model-free fill (what docs/BENCH.md uses at 32k) allocates exactly what the bench measured
    dims = ModelArgs.from_path(tiny_hd64)
    assert cache_bytes_at(dims, 300, "float32", 8) == c["bytes"] and cache_bytes_at(dims, 300, "float32") == p["bytes"]
    assert cache_bytes_at(dims, 1, "float32", 8) == ours["decode"][0]["kv_cache"]["bytes"]
    # the roofline reads the quantized cache at that depth
    d = ours["decode"][1]
    assert d["bytes_per_token"] == pytest.approx(ours["traffic"]["bytes_per_token_d0"] + 2 * 300 * q_slot + ring)
    assert ours["graph_nodes"]["total"] > 0  # the Metal twin with a quantized cache
    table = rep.format_table(q)
    kv_line = next(x for x in table.splitlines() if x.startswith("kv cache  "))
    assert "mlx-oss: 8-bit, groups of 64 (full-attention layers; sliding window unquantized)" in kv_line
    assert "mlx-lm: unquantized (--kv-bits does not apply" in kv_line
    line = next(x for x in table.splitlines() if "KV cache @ 300" in x)
    assert "424.75 KiB (" in line and "856.00 KiB (" in line
    rows = list(csv.DictReader(io.StringIO(rep.to_csv(q))))
    assert {float(x["mean"]) for x in rows if x["metric"] == "kv_cache_formula" and x["test"] == "kv@300"} == {434944.0, 876544.0}


def test_cache_kind_and_formula_follow_a_quantized_window():
    """`make_cache(quantize_window=True)` (not what `load` makes): the report names the ring's bits and
    the formula counts it quantized, still equal to what a prefill allocates."""
    from mlx_oss.bench.runners import cache_bytes_at, cache_kind
    from mlx_oss.convert.synthetic import preset
    from mlx_oss.nn.cache import make_cache

    dims = preset("tiny", head_dim=64, sliding_window=128).dims
    assert cache_kind(make_cache(dims.layer_types, 128, 4, 32, quantize_window=True)) == {"bits": 4, "group_size": 32, "window_bits": 4}
    assert cache_kind(make_cache(dims.layer_types, 128)) == {"bits": None, "group_size": None, "window_bits": None}
    assert cache_kind([]) == {"bits": None, "group_size": None, "window_bits": None}
    for n in (256, 512):  # multiples of the full layers' 256-slot steps: allocated == formula
        for window in (False, True):
            got = cache_bytes_at(dims, n, "float32", 4, 32, quantize_window=window)
            assert got == rep.kv_cache_bytes(dims, n, "float32", 4, 32, window_bits=4 if window else None)


def test_bench_kv_flags_rejected(tiny_converted, tiny_hd64, capsys):
    from mlx_oss.cli.main import main

    with pytest.raises(SystemExit) as e:
        main(["bench", "--model", str(tiny_hd64), "--kv-bits", "3"])
    assert e.value.code == 2
    capsys.readouterr()
    assert main(["bench", "--model", str(tiny_converted), "--kv-bits", "8", "--quiet"]) == 2  # head_dim 16
    assert "kv_group_size 64 does not divide the model's head_dim 16" in capsys.readouterr().err
    assert main(["bench", "--model", str(tiny_hd64), "--kv-bits", "4", "--kv-group-size", "128", "--quiet"]) == 2
    assert main(["bench", "--model", str(tiny_hd64), "--kv-bits", "8", "--hosts", "h.json", "--quiet"]) == 2
    assert "tensor-parallel" in capsys.readouterr().err


def test_paper_roofline_20b(tiny_converted):
    """The roofline on paper: weights as a converted folder holds them plus the cache at that depth."""
    from mlx_oss.config import ModelArgs
    from mlx_oss.convert.synthetic import PRESETS
    from mlx_oss.info import describe

    tiny = ModelArgs.from_path(tiny_converted)
    t = rep.paper_traffic(tiny)
    assert t.dense + t.experts + t.embedding == describe(tiny_converted).weight_bytes
    d20 = PRESETS["20b"]
    rows = rep.paper_roofline(d20, 400.0, [131072], kv_bits=(None, 8))
    ring = 12 * 128 * 2 * 8 * 64 * 2  # 12 sliding layers: a 128-slot bf16 ring each, never quantized
    assert [r["kv_bytes"] for r in rows] == [12 * 131072 * 2 * 8 * 64 * 2 + ring, 12 * 131072 * 2 * 8 * (64 + 2 * 2) + ring]
    for r in rows:
        assert r["roofline_tps"] == pytest.approx(400e9 / (rep.paper_traffic(d20).per_token(0) + r["kv_bytes"]))
    assert rows[1]["roofline_tps"] > rows[0]["roofline_tps"]
    assert "| 131072 | 8-bit |" in rep.format_paper_roofline(rows, 400.0)
    # the unfused attention of a quantized cache: 6 passes over [64 heads x keys] bf16 scores per layer
    unfused = rep.paper_roofline(d20, 400.0, [131072], kv_bits=(None, 8), score_passes=6)
    assert [r["score_bytes"] for r in unfused] == [0, 6 * 64 * 12 * 131072 * 2]  # full layers only
    assert unfused[0] == rows[0] and unfused[1]["roofline_tps"] < rows[1]["roofline_tps"]
    assert "scores / token" in rep.format_paper_roofline(unfused, 400.0)
    assert rep.kv_cache_bytes(d20, 0, "bfloat16") == 0
