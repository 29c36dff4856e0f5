"""`--hosts HOSTFILE`: start ranks 1..N-1 (local ones as child processes, remote ones over ssh, as
`mlx.launch` does) and make this process rank 0, which keeps the terminal (the TUI needs it).

Every rank runs the same command line minus `--hosts`, with MLX_RANK and MLX_HOSTFILE set, exactly
what `mlx.launch --hostfile HOSTFILE -- mlx-oss ...` gives each rank; so both ways behave the same.
"""

from __future__ import annotations

import atexit
import json
import os
import shlex
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from mlx_oss.distributed.hosts import DEFAULT_PORT, ring_addresses, read_hostfile

_children: list[subprocess.Popen] = []
_ending = threading.Event()
_joined = threading.Event()  # the watchdog watches the ranks now (and reports a lost one itself)
_ring_files: list[str] = []  # the addresses this process wrote for its local ranks: removed once every rank read them


def strip_hosts(argv: list[str]) -> list[str]:
    """argv without `--hosts X` / `--hosts=X`."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--hosts":
            skip = True
        elif not a.startswith("--hosts="):
            out.append(a)
    return out


def _forward(rank: int, p: subprocess.Popen) -> None:
    """Copy a rank's stderr to ours; if it dies before the group is joined, so does this one (its
    own message was just forwarded), instead of waiting for the watchdog's connect timeout. Once
    joined, the watchdog reports a lost rank (after the front end's last words)."""
    for line in iter(p.stderr.readline, b""):
        sys.stderr.write(f"[rank {rank}] {line.decode(errors='replace')}")
        sys.stderr.flush()
    code = p.wait()
    if code and not _ending.is_set() and not _joined.is_set():
        print(f"mlx-oss: error: rank 0: rank {rank} exited with status {code}; stopping", file=sys.stderr, flush=True)
        os._exit(1)


def start_ranks(hostfile: str | Path, argv: list[str], base_port: int | None = None) -> None:
    """Start the other ranks of HOSTFILE running `mlx-oss <argv>`, and join as rank 0 (sets this
    process's MLX_RANK / MLX_HOSTFILE). Their stderr is forwarded, prefixed `[rank r]`."""
    hosts, backend = read_hostfile(hostfile)
    if backend != "ring":
        raise ValueError(f"{hostfile}: backend {backend!r}: start it with mlx.launch --hostfile {hostfile} -- mlx-oss ...")
    port = base_port or int(os.environ.get("MLX_OSS_BASE_PORT") or DEFAULT_PORT)
    ring = json.dumps(ring_addresses(hosts, port))
    fd, ring_file = tempfile.mkstemp(prefix="mlx-oss-ring-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        f.write(ring)
    _ring_files.append(ring_file)
    atexit.register(_remove_ring_files)  # a group that never joined
    args = [sys.executable, "-m", "mlx_oss.cli.main", *strip_hosts(argv)]
    for rank, h in enumerate(hosts[1:], start=1):
        if h.local:
            env = dict(os.environ, MLX_RANK=str(rank), MLX_HOSTFILE=ring_file)
            cmd = args
        else:
            env = None
            remote = (
                f"cd {shlex.quote(os.getcwd())} 2>/dev/null; f=$(mktemp); printf %s {shlex.quote(ring)} > $f; "
                f"MLX_RANK={rank} MLX_HOSTFILE=$f {shlex.join(args)}; s=$?; rm -f $f; exit $s"
            )
            cmd = ["ssh", "-o", "BatchMode=yes", h.ssh, remote]
        p = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        threading.Thread(target=_forward, args=(rank, p), daemon=True).start()
        _children.append(p)
    os.environ["MLX_RANK"] = "0"
    os.environ["MLX_HOSTFILE"] = ring_file


def joined() -> None:
    """The group is joined: from now on the watchdog, not the launcher, reports a rank that dies.
    Every rank has read the addresses by now, so their file goes."""
    _joined.set()
    _remove_ring_files()


def _remove_ring_files() -> None:
    while _ring_files:
        Path(_ring_files.pop()).unlink(missing_ok=True)


def wait_ranks(timeout: float = 30.0) -> None:
    """Wait for the ranks this process started (a normal end: they exit right after rank 0's EXIT)."""
    _ending.set()
    for p in _children:
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    _children.clear()
