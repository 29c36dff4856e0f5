"""Tensor parallelism over mx.distributed: the shard plan's math, and real 2-rank runs (ring backend
on 127.0.0.1, as mlx.launch starts them) compared with one process."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from mlx_oss.config import ModelArgs
from mlx_oss.convert.safetensors_io import read_header, read_tensor
from mlx_oss.distributed.hosts import HostfileError, control_address, read_hostfile, ring_addresses
from mlx_oss.distributed.load import read_slice
from mlx_oss.distributed.plan import ShardError, ShardPlan

WORKER = Path(__file__).with_name("dist_worker.py")
ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------- plan (no processes)


def _tensors(folder: Path):
    for f in sorted(folder.glob("*.safetensors")):
        infos, _ = read_header(f)
        for info in infos.values():
            yield f, info


def test_slices_of_all_ranks_rebuild_every_tensor(tiny_converted):
    """Concatenating the ranks' slices (in the plan's order) gives back each tensor exactly; biases
    added once live on rank 0 only; replicated tensors are whole on every rank."""
    args = ModelArgs.from_path(tiny_converted)
    plans = [ShardPlan(args, r, 2) for r in range(2)]
    seen = set()
    for f, info in _tensors(tiny_converted):
        full = read_tensor(f, info)
        parts = [read_slice(f, info, p) for p in plans]
        rr = plans[1].stored_ranges(info.name, info.shape)
        kind = plans[0].cut(info.name)[1]
        seen.add(kind)
        if rr is None:
            assert all(np.array_equal(p, full) for p in parts), info.name
        elif not rr[1]:
            assert np.array_equal(parts[0], full) and not parts[1].any(), info.name
        else:
            axis = rr[0]
            assert parts[0].shape[axis] == parts[1].shape[axis] == full.shape[axis] // 2, info.name
            # rebuild: per rank the pieces are [range1, range2, ...]; interleave them back
            sizes = [e - s for s, e in plans[0].stored_ranges(info.name, info.shape)[1]]
            pieces = [np.split(p, np.cumsum(sizes)[:-1], axis=axis) for p in parts]
            rebuilt = np.concatenate([pieces[r][k] for k in range(len(pieces[0])) for r in range(2)], axis=axis)
            assert np.array_equal(rebuilt, full), info.name
    assert {"q_k_v", "heads", "cols", "gate_up", "inter", "vocab", "bias0", None} <= seen


def test_120b_per_rank_dimensions():
    from mlx_oss.convert.synthetic import PRESETS

    args = ModelArgs.from_dims(PRESETS["120b"])
    p = ShardPlan(args, 1, 2)
    assert (p.heads, p.kv_heads, p.intermediate, p.vocab) == (32, 4, 1440, 100544)
    la = p.local_args()
    assert la.qkv_dim == (32 + 8) * 64 and la.num_attention_heads // la.num_key_value_heads == 8  # GQA groups whole
    assert p.ranges("layers.0.attn.qkv.weight") == (0, [(2048, 4096), (4096 + 256, 4096 + 512), (4608 + 256, 4608 + 512)])
    assert p.stored_ranges("layers.0.mlp.down.weight", (128, 2880, 360)) == (2, [(180, 360)])  # MXFP4 words
    assert p.stored_ranges("layers.0.mlp.down.scales", (128, 2880, 90)) == (2, [(45, 90)])


def test_unsplittable_sizes_are_refused_in_one_line():
    from mlx_oss.convert.synthetic import PRESETS

    with pytest.raises(ShardError, match=r"^num_key_value_heads = 8 does not split evenly over 3 ranks$"):
        ShardPlan(ModelArgs.from_dims(PRESETS["120b"]), 0, 3)
    with pytest.raises(ShardError, match=r"^num_key_value_heads = 2 does not split evenly over 4 ranks$"):
        ShardPlan(ModelArgs.from_dims(PRESETS["tiny"]), 0, 4)
    with pytest.raises(ShardError, match=r"^intermediate_size / expert_group_size = 2 is fewer than the 4 ranks"):
        ShardPlan(ModelArgs.from_dims(replace(PRESETS["tiny"], num_key_value_heads=4)), 0, 4)


def test_120b_over_four_ranks_splits_the_experts_in_whole_groups():
    """90 MXFP4 groups of intermediate units over 4 ranks: 23, 23, 22, 22, contiguous, covering all."""
    from mlx_oss.convert.synthetic import PRESETS

    args = ModelArgs.from_dims(PRESETS["120b"])
    plans = [ShardPlan(args, r, 4) for r in range(4)]
    ranges = [p.intermediate_range() for p in plans]
    assert [(e - s) // 32 for s, e in ranges] == [23, 23, 22, 22]
    assert ranges[0][0] == 0 and ranges[-1][1] == 2880 and all(ranges[i][1] == ranges[i + 1][0] for i in range(3))
    assert plans[3].stored_ranges("layers.0.mlp.down.weight", (128, 2880, 1440)) == (2, [(2176 // 2, 2880 // 2)])
    assert plans[1].local_args().intermediate_size == 23 * 32 and plans[1].heads == 16 and plans[1].kv_heads == 2


def test_hostfile(tmp_path):
    f = tmp_path / "h.json"
    f.write_text(json.dumps({"backend": "ring", "hosts": [{"ssh": "mac1", "ips": ["10.0.0.1"]}, {"ssh": "127.0.0.1"}]}))
    hosts, backend = read_hostfile(f)
    assert backend == "ring" and [h.ip for h in hosts] == ["10.0.0.1", "127.0.0.1"] and hosts[1].local
    ring = ring_addresses(hosts, 5000)
    assert ring == [["10.0.0.1:5000"], ["127.0.0.1:5001"]] and control_address(ring) == ("10.0.0.1", 5002)
    f.write_text(json.dumps([{"ssh": "mac1.local"}]))
    with pytest.raises(HostfileError, match=r"hosts\[0\] needs \"ips\""):
        read_hostfile(f)
    f.write_text("{")
    with pytest.raises(HostfileError, match="not JSON"):
        read_hostfile(f)


# ---------------------------------------------------------------------------------- 2 processes


def _free_base_port(n: int = 3) -> int:
    """A base port with the `n` ports from it (the ring ranks + the watchdog) free now."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + n > 65535:
            continue
        try:
            for p in range(base, base + n):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
    raise RuntimeError("no free ports")


def _start(tmp_path: Path, mode: str, folders: list[Path], out: Path, env_extra: dict | None = None,
           extra: tuple[str, ...] = ()) -> list[subprocess.Popen]:
    n = max(2, len(folders))
    base = _free_base_port(n + 1)
    ring = tmp_path / f"ring-{base}.json"
    ring.write_text(json.dumps([[f"127.0.0.1:{base + r}"] for r in range(n)]))
    procs = []
    for r, folder in enumerate(folders):
        env = dict(os.environ, MLX_RANK=str(r), MLX_HOSTFILE=str(ring), MLX_OSS_HOME=str(tmp_path / "home"),
                   MLX_OSS_CPU_STREAMS="1", PYTHONPATH=str(ROOT), **(env_extra or {}))  # fmt: skip
        procs.append(subprocess.Popen(
            [sys.executable, str(WORKER), mode, str(folder), str(out), *extra], env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        ))  # fmt: skip
    return procs


def _finish(procs, timeout: float = 240) -> list[tuple[int, str, str]]:
    res = []
    for p in procs:
        try:
            o, e = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        res.append((p.returncode, o, e))
    return res


def _single_process(folder: Path):
    """Logits and the two turns of dist_worker.py, in one process."""
    sys.path.insert(0, str(WORKER.parent))
    import dist_worker

    from mlx_oss.engine import Engine
    from mlx_oss.loader import load

    model, _ = load(folder, "float32")
    logits = np.array(model(mx.array([dist_worker.TOKENS], dtype=mx.int32)))
    return logits, dist_worker.turns(Engine(model)), mx.get_peak_memory()


@pytest.mark.slow
def test_two_ranks_equal_one_process(tiny_converted, tmp_path):
    """float32 logits within 1e-5, greedy tokens identical, the second turn reuses the same prefix."""
    out = tmp_path / "r0"
    res = _finish(_start(tmp_path, "exact", [tiny_converted] * 2, out))
    for code, _, err in res:
        assert code == 0, err
    got = np.load(str(out) + ".npy")
    dist = json.loads(Path(str(out) + ".json").read_text())
    ref, ref_turns, _ = _single_process(tiny_converted)
    rel = np.abs(got - ref).max() / np.abs(ref).max()
    assert rel <= 1e-5, rel
    assert dist["turns"] == ref_turns
    assert dist["turns"][1]["reused"] > 0  # cross-turn reuse happened, identically


@pytest.mark.slow
def test_four_ranks_equal_one_process(tmp_path):
    """4 ranks of a tiny model with 4 kv heads and 5 MXFP4 groups of intermediate units (2, 1, 1, 1 per
    rank: an uneven expert split): logits within 1e-5, the same greedy turns and cache reuse."""
    from mlx_oss.convert.convert import convert_checkpoint
    from mlx_oss.convert.synthetic import preset, write_checkpoint

    src = write_checkpoint(tmp_path / "src", preset("tiny", num_key_value_heads=4, intermediate_size=160), "hf")
    folder = convert_checkpoint(src, tmp_path / "conv", progress=False).dst
    out = tmp_path / "r0"
    for code, _, err in _finish(_start(tmp_path, "exact", [folder] * 4, out)):
        assert code == 0, err
    got = np.load(str(out) + ".npy")
    ref, ref_turns, _ = _single_process(folder)
    assert np.abs(got - ref).max() / np.abs(ref).max() <= 1e-5
    assert json.loads(Path(str(out) + ".json").read_text())["turns"] == ref_turns


@pytest.mark.slow
@pytest.mark.parametrize("watchdog_delay", [None, "0.8"], ids=["watchdog-first", "mlx-first"])
def test_a_dead_rank_stops_the_other_with_one_line(tiny_converted, tmp_path, watchdog_delay):
    """Rank 0 names the lost rank on its last line, also when MLX's ring reports the loss in the main
    thread first (the error leaving the group then waits for the watchdog's report)."""
    procs = _start(tmp_path, "loop", [tiny_converted] * 2, tmp_path / "x", extra=(watchdog_delay,) if watchdog_delay else ())
    try:
        for p in procs:  # both loaded and running
            assert p.stdout.readline().strip() == "ready"
        procs[1].send_signal(signal.SIGKILL)
        procs[0].wait(timeout=60)
        err = procs[0].stderr.read()
    finally:
        for p in procs:
            p.kill()
            p.wait()
    assert procs[0].returncode == 1
    assert err.splitlines()[-1] == "mlx-oss: error: rank 0: lost rank 1 (its process exited or the link dropped); stopping", err
    assert "Traceback" not in err, err


@pytest.mark.slow
def test_a_rank_that_never_starts_is_reported(tiny_converted, tmp_path):
    procs = _start(tmp_path, "load", [tiny_converted], tmp_path / "x", {"MLX_OSS_CONNECT_TIMEOUT": "3"})
    (code, _, err), = _finish(procs, timeout=60)
    assert code == 1 and "rank(s) 1 did not connect" in err.splitlines()[-1], err


@pytest.mark.slow
def test_different_checkpoints_are_refused(tiny_converted, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(tiny_converted, other)
    m = json.loads((other / "manifest.json").read_text())
    m["note"] = "another conversion"
    (other / "manifest.json").write_text(json.dumps(m))
    res = _finish(_start(tmp_path, "load", [tiny_converted, other], tmp_path / "x"), timeout=120)
    for code, _, err in res:
        assert code == 1
        assert "checkpoint differs from rank 0's (manifest.json sha256" in err.strip().splitlines()[-1], err


@pytest.mark.slow
def test_two_rank_chats_equal_one_process(tiny_chat_converted, tmp_path):
    """The TUI's loader and model thread over two ranks: two chats (two engines on every rank), a
    reopened + warmed chat, greedy turns: the same text, prompt/reused/prefilled counts and cached
    tokens as one process, so cross-turn cache reuse is identical."""
    sys.path.insert(0, str(WORKER.parent))
    import dist_worker

    from mlx_oss.sampling import SamplingConfig
    from mlx_oss.tui import session as door

    out = tmp_path / "chat"
    procs = _start(tmp_path, "chat", [tiny_chat_converted] * 2, out)
    for code, _, err in _finish(procs):
        assert code == 0, err
    got = json.loads(Path(str(out) + ".json").read_text())
    opts = door.ChatOptions(sampling=SamplingConfig(temperature=0), max_tokens=6, dtype="float32")
    ref = json.loads(json.dumps(dist_worker.chat_turns(door.model_loader(str(tiny_chat_converted), opts)(lambda m: None))))
    assert got == ref
    assert len(ref["turns"]) == 6 and ref["warm"] > 0
    assert all(t[1] > 0 for t in ref["turns"][2:])  # every later turn reused the cache


def _cli(args: list[str], tmp_path: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    (tmp_path / "tmp").mkdir(exist_ok=True)  # the run's temporary files, to see that none is left
    env = dict(os.environ, MLX_OSS_HOME=str(tmp_path / "home"), MLX_OSS_BASE_PORT=str(_free_base_port()),
               MLX_OSS_CPU_STREAMS="1", PYTHONPATH=str(ROOT), TMPDIR=str(tmp_path / "tmp"))  # fmt: skip
    return subprocess.run([sys.executable, "-m", "mlx_oss.cli.main", *args], env=env, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)  # fmt: skip


def _local_hostfile(tmp_path: Path) -> Path:
    f = tmp_path / "hosts.json"
    f.write_text(json.dumps({"backend": "ring", "hosts": [{"ssh": "127.0.0.1"}, {"ssh": "127.0.0.1"}]}))
    return f


@pytest.mark.slow
def test_generate_with_hosts_matches_one_machine(tiny_chat_converted, tmp_path):
    """`mlx-oss generate --hosts` (rank 1 started by rank 0) prints what one process prints (greedy)."""
    cmd = ["generate", "hello", "-m", str(tiny_chat_converted), "--temperature", "0", "--max-tokens", "6", "--json"]
    one = _cli(cmd, tmp_path)
    two = _cli(cmd + ["--hosts", str(_local_hostfile(tmp_path))], tmp_path)
    assert one.returncode == 0 and two.returncode == 0, two.stderr
    assert not list((tmp_path / "tmp").glob("mlx-oss-ring-*"))  # rank 1's addresses went once it joined
    a, b = json.loads(one.stdout), json.loads(two.stdout)
    for k in ("answer", "reasoning", "tool_calls"):
        assert a[k] == b[k]
    for k in ("prompt_tokens", "generated_tokens", "context_used", "stop_reason"):
        assert a["stats"][k] == b["stats"][k]


@pytest.mark.slow
def test_generate_with_hosts_and_kv_bits_matches_one_machine(tiny_chat_hd64_converted, tmp_path):
    """`--kv-bits 4 --kv-group-size 32 --hosts`: rank 1 quantizes its caches too, so the reply is one
    machine's quantized reply, which an unquantized cache changes (4-bit: 8-bit with the window in full
    precision gives the unquantized greedy tokens here)."""
    cmd = ["generate", "hello", "-m", str(tiny_chat_hd64_converted), "--temperature", "0", "--max-tokens", "12", "--json"]
    kv = ["--kv-bits", "4", "--kv-group-size", "32"]
    plain, one = _cli(cmd, tmp_path), _cli(cmd + kv, tmp_path)
    two = _cli(cmd + kv + ["--hosts", str(_local_hostfile(tmp_path))], tmp_path)
    assert plain.returncode == one.returncode == two.returncode == 0, two.stderr
    p, a, b = (json.loads(r.stdout) for r in (plain, one, two))
    assert a["unparsed"] == b["unparsed"] and a["stats"]["generated_tokens"] == b["stats"]["generated_tokens"] == 12
    assert p["unparsed"] != a["unparsed"]


@pytest.mark.slow
def test_bench_with_hosts_reports_every_rank(tiny_converted, tmp_path):
    r = _cli(["bench", "-m", str(tiny_converted), "-p", "16", "-g", "4", "-r", "1", "--quiet", "--json",
              "--hosts", str(_local_hostfile(tmp_path))], tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["ranks"] == 2 and [x["rank"] for x in rep["per_rank"]] == [0, 1]
    for x in rep["per_rank"]:
        assert x["peak_memory_bytes"] > 0 and x["all_sum_us"] > 0 and 0 <= x["comm_share"][0] <= 1
    assert rep["decode"][0]["tps"]["mean"] > 0 and rep["collectives_per_token"] == {"all_sum": 9, "all_gather": 1}


# ---------------------------------------------------------------------------------- serve --hosts

SERVE_WORKER = Path(__file__).with_name("serve_worker.py")


class _Server:
    """`mlx-oss serve` (tests/serve_worker.py: the CLI plus the scripted-header hook) on 127.0.0.1,
    alone or as rank 0 of `--hosts` (rank 1 started by it); output in files, so a full pipe never blocks it."""

    def __init__(self, tmp_path: Path, folder: Path, hosts: bool) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.err_path = tmp_path / f"serve-{self.port}.err"
        cmd = [sys.executable, str(SERVE_WORKER), "serve", "--model", str(folder), "--port", str(self.port),
               "--dtype", "float32", "--temperature", "0"]  # fmt: skip
        if hosts:
            cmd += ["--hosts", str(_local_hostfile(tmp_path))]
        env = dict(os.environ, MLX_OSS_HOME=str(tmp_path / "home"), MLX_OSS_BASE_PORT=str(_free_base_port()),
                   MLX_OSS_CPU_STREAMS="1", PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")  # fmt: skip
        env.pop("MLX_OSS_API_KEY", None)
        with open(self.err_path, "w") as err:
            self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err, stdin=subprocess.DEVNULL)
        self.base = f"http://127.0.0.1:{self.port}"
        import httpx

        deadline = time.monotonic() + 240
        while True:
            assert self.proc.poll() is None, self.stderr()
            assert time.monotonic() < deadline, "server did not come up: " + self.stderr()
            try:
                httpx.get(self.base + "/health", timeout=5)
                return
            except httpx.HTTPError:
                time.sleep(0.2)

    def stderr(self) -> str:
        return self.err_path.read_text()

    def client(self):
        from openai import OpenAI

        return OpenAI(base_url=self.base + "/v1", api_key="unused", max_retries=0, timeout=240)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(120)
        finally:
            self.kill()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)


def _three_requests(srv: _Server, model: str) -> list:
    """A conversation, its next turn (the cache moves on), and a new conversation sharing the system
    prompt (the pool forks the state): content and usage of each."""
    c = srv.client()
    system = {"role": "system", "content": "You answer questions about the weather on small islands. " * 4}
    out, first = [], None
    for messages in (
        [system, {"role": "user", "content": "first question"}],
        None,
        [system, {"role": "user", "content": "another conversation"}],
    ):
        if messages is None:  # the follow-up turn of the first conversation
            messages = [system, {"role": "user", "content": "first question"},
                        {"role": "assistant", "content": first}, {"role": "user", "content": "and then?"}]  # fmt: skip
        r = c.chat.completions.create(model=model, messages=messages, max_tokens=8, temperature=0)
        u = r.usage
        first = first if first is not None else r.choices[0].message.content
        out.append([r.choices[0].message.content, u.prompt_tokens, u.prompt_tokens_details.cached_tokens,
                    u.completion_tokens])  # fmt: skip
    return out


@pytest.mark.slow
def test_serve_with_hosts_equals_one_process(tiny_chat_converted, tmp_path):
    """`mlx-oss serve --hosts` driven by the openai SDK: answers and cached_tokens (the prompt-cache
    pool's moves and forks, mirrored on rank 1) equal a one-process server's; SIGTERM ends both ranks, 0."""
    results = []
    for hosts in (False, True):
        srv = _Server(tmp_path, tiny_chat_converted, hosts)
        try:
            results.append(_three_requests(srv, tiny_chat_converted.name))
        finally:
            code = srv.stop()
        assert code == 0, srv.stderr()
    one, two = results
    assert two == one
    assert one[1][2] > 0 and one[2][2] > 0 and one[0][0]  # both later requests reused the cache; text came


@pytest.mark.slow
def test_serve_with_hosts_a_dead_rank_fails_the_request_and_exits(tiny_chat_converted, tmp_path):
    """Rank 1 killed mid-stream: the in-flight request ends with an OpenAI error naming the lost rank,
    then rank 0 exits 1 with a one-line error (no hang, no traceback)."""
    import httpx
    import psutil

    srv = _Server(tmp_path, tiny_chat_converted, hosts=True)
    try:
        rank1 = [p for p in psutil.Process(srv.proc.pid).children() if "serve" in " ".join(p.cmdline())]
        assert len(rank1) == 1
        body = {"model": tiny_chat_converted.name, "messages": [{"role": "user", "content": "hi"}], "stream": True,
                "max_tokens": 100000}  # fmt: skip
        with httpx.stream("POST", srv.base + "/v1/chat/completions", json=body, timeout=120) as r:
            assert r.status_code == 200
            lines = r.iter_lines()
            assert next(lines).startswith("data: ")
            deadline = time.monotonic() + 120
            while not httpx.get(srv.base + "/health", timeout=5).json()["busy"]:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            rank1[0].kill()
            rest = [ln for ln in lines if ln]
        err = json.loads(rest[-2][6:])["error"]
        assert rest[-1] == "data: [DONE]" and err["type"] == "server_error" and "lost rank 1" in err["message"], rest[-3:]
        assert srv.proc.wait(60) == 1
    finally:
        srv.kill()
    lines = [l for l in srv.stderr().splitlines() if l.strip()]
    assert lines[-1].startswith("mlx-oss: error: rank 0: lost rank 1"), srv.stderr()
    assert "Traceback" not in srv.stderr()


# ---------------------------------------------------------------------------------- chat --hosts


def _rank_1_of(marker: str):
    """The rank-1 process whose command line contains `marker` (started by rank 0's --hosts)."""
    import psutil

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        for p in psutil.process_iter(["cmdline"]):
            try:
                if marker in " ".join(p.info["cmdline"] or ()) and p.environ().get("MLX_RANK") == "1":
                    return p
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        time.sleep(0.2)
    raise AssertionError("rank 1 did not start")


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (apt-get install tmux)")
def test_chat_with_hosts_in_a_terminal(tiny_chat_converted, tmp_path, monkeypatch):
    """`mlx-oss chat --hosts` in a real terminal (tmux): a reply over two ranks, Ctrl+Q ends both (exit
    0); then a reply streaming when rank 1 is killed: the terminal is given back, one line names the
    lost rank, exit 1."""
    from test_tui_tmux import Tmux

    monkeypatch.setenv("MLX_OSS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MLX_OSS_CPU_STREAMS", "1")
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    hosts = _local_hostfile(tmp_path)
    tmux = Tmux(tmp_path)
    try:
        for run, max_tokens in (("quit", "6"), ("kill", "100000")):
            monkeypatch.setenv("MLX_OSS_BASE_PORT", str(_free_base_port()))
            data = tmp_path / f"data-{run}"
            tmux.start(run, [sys.executable, "-m", "mlx_oss.cli.main", "chat", "-m", str(tiny_chat_converted),
                             "--hosts", str(hosts), "--data-dir", str(data), "--max-tokens", max_tokens])  # fmt: skip
            rank1 = _rank_1_of(str(data))
            tmux.wait(run, "Message · Enter sends", timeout=240)
            tmux.type(run, "hello")
            tmux.keys(run, "Enter")
            if run == "quit":
                tmux.wait(run, "tokens ·", timeout=120)
                tmux.keys(run, "C-q")
                screen = tmux.wait(run, "EXITED 0", timeout=120)
                rank1.wait(60)  # gone after rank 0's EXIT, with nothing on its stderr (forwarded as "[rank 1] ...")
                assert "[rank 1]" not in screen and "Traceback" not in screen, screen
            else:
                tmux.wait(run, "generating…", timeout=120)
                rank1.kill()
                screen = tmux.wait(run, "EXITED 1", timeout=60)
                lines = [l for l in screen.splitlines() if l.strip()]
                assert lines[lines.index("EXITED 1") - 1].startswith("mlx-oss: error: rank 0: lost rank 1"), screen
    finally:
        tmux.close()
