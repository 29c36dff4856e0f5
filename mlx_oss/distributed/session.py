"""Joining a group: started by `mlx.launch` (MLX_RANK + MLX_HOSTFILE in the environment) or by our
own `--hosts HOSTFILE` (launch.py, which sets the same variables), then `mx.distributed.init` under
the watchdog, then the checkpoint check."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx

from mlx_oss.errors import UserError
from mlx_oss.distributed.hosts import HostfileError, control_address, ring_from_env
from mlx_oss.distributed.layers import Comm
from mlx_oss.distributed.watchdog import Watchdog


class PeerMismatch(UserError):
    """The ranks disagree on something that must be equal (the checkpoint, the KV cache setting)."""


@dataclass
class Session:
    comm: Comm
    watchdog: Watchdog
    ready: bool = False  # this rank loaded its slice: the followers are (or will be) in `follow()`

    @property
    def rank(self) -> int:
        return self.comm.rank

    @property
    def size(self) -> int:
        return self.comm.size

    @property
    def leader(self) -> bool:
        return self.comm.rank == 0

    def close(self) -> None:
        self.watchdog.close()


def in_group(env: dict | None = None) -> bool:
    """True when this process was started as one rank of a group."""
    env = os.environ if env is None else env
    return "MLX_RANK" in env and ("MLX_HOSTFILE" in env or "MLX_JACCL_COORDINATOR" in env)


def is_follower(env: dict | None = None) -> bool:
    """True for a rank other than 0 of a group: it runs no user interface, only rank 0's commands."""
    env = os.environ if env is None else env
    return in_group(env) and env.get("MLX_RANK") != "0"


def join(env: dict | None = None) -> Session:
    """Connect to the other ranks (watchdog first, so a missing peer fails in seconds), then init MLX."""
    env = os.environ if env is None else env
    rank = int(env["MLX_RANK"])
    if "MLX_JACCL_COORDINATOR" in env:
        import json

        ip, port = env["MLX_JACCL_COORDINATOR"].rsplit(":", 1)
        size = len(json.loads(Path(env["MLX_IBV_DEVICES"]).read_text()))
        address, backend = (ip, int(port) + 1), "jaccl"
    else:
        ring = ring_from_env(env)
        if ring is None:
            raise HostfileError("MLX_HOSTFILE is not set")
        size, address, backend = len(ring), control_address(ring), "ring"
    dog = Watchdog(rank, size, address).start()
    with dog.guard(f"joining the {backend} group (mx.distributed.init)"):
        group = mx.distributed.init(backend=backend, strict=True)
    if group.size() != size or group.rank() != rank:
        raise HostfileError(f"mx.distributed.init gave rank {group.rank()} of {group.size()}, expected {rank} of {size}")
    return Session(Comm(group), dog)


def broadcast_ints(comm: Comm, values: list[int] | None, n: int) -> list[int]:
    """Rank 0's `n` int32 values on every rank (all_sum of rank 0's values and zeros elsewhere)."""
    x = mx.array(values if comm.rank == 0 else [0] * n, dtype=mx.int32)
    return mx.distributed.all_sum(x, group=comm.group).tolist() if comm.size > 1 else x.tolist()


def check_same_checkpoint(comm: Comm, digest: str) -> None:
    """Refuse to run when the ranks loaded different converted folders (manifest sha256 differs)."""
    mine = [int(digest[i : i + 6], 16) for i in range(0, 60, 6)]  # 10 x 24 bits: exact in int32
    rank0 = broadcast_ints(comm, mine, len(mine))
    bad = broadcast_ints_sum(comm, int(rank0 != mine))
    if bad:
        who = "this rank's" if rank0 != mine else f"{bad} other rank(s)'"
        first = "".join(f"{v:06x}" for v in rank0)[:12]
        raise PeerMismatch(
            f"{who} checkpoint differs from rank 0's (manifest.json sha256 {digest[:12]} vs {first}); "
            f"give every host the same converted folder"
        )


def kv_cache_label(bits: int | None, group_size: int) -> str:
    """A KV cache setting as the command line gives it."""
    return f"--kv-bits {bits} --kv-group-size {group_size}" if bits else "unquantized"


def agree_kv_cache(comm: Comm, bits: int | None, group_size: int, own: bool = True) -> tuple[int | None, int]:
    """Rank 0's KV cache setting (kv_bits, kv_group_size) on every rank. A rank that has a setting of
    its own (`own`: its --kv-bits / --kv-group-size) must have rank 0's: otherwise every rank raises
    PeerMismatch (one line), none is left waiting. A rank without one (`own=False`) takes rank 0's.
    The group size of an unquantized cache means nothing and is not compared."""
    rank0 = broadcast_ints(comm, [bits or 0, group_size], 2)
    differs = own and (rank0[0] or None, rank0[1] if rank0[0] else 0) != (bits, group_size if bits else 0)
    bad = broadcast_ints_sum(comm, int(differs))
    if bad:
        mine = kv_cache_label(bits, group_size)
        who = f"this rank's KV cache ({mine})" if differs else f"{bad} other rank(s)' KV cache"
        raise PeerMismatch(
            f"{who} differs from rank 0's ({kv_cache_label(rank0[0], rank0[1])}); "
            f"run every rank with the same --kv-bits and --kv-group-size"
        )
    return rank0[0] or None, rank0[1]


def broadcast_ints_sum(comm: Comm, value: int) -> int:
    """The sum over ranks of one int."""
    x = mx.array([value], dtype=mx.int32)
    return int(mx.distributed.all_sum(x, group=comm.group).item()) if comm.size > 1 else value


def broadcast_text(comm: Comm, text: str | None) -> str:
    """Rank 0's `text` on every rank (others pass None), e.g. the model a chat resumed from rank 0's
    own store names."""
    data = list((text or "").encode()) if comm.rank == 0 else None
    n = broadcast_ints(comm, [len(data)] if data is not None else None, 1)[0]
    return bytes(broadcast_ints(comm, data, n)).decode() if n else ""
