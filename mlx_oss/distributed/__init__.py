"""Tensor-parallel gpt-oss over `mx.distributed` (ring over TCP/Thunderbolt, JACCL): docs/DISTRIBUTED.md.

plan.py (which slice each rank holds), layers.py (sharded blocks + their collectives), load.py (read
only this rank's slices), session.py (join a group, checkpoint check), watchdog.py (dead peers end
the run in seconds), launch.py (`--hosts HOSTFILE`), engine.py (rank 0 leads, the others follow), cli.py (what
`--hosts` adds to a command). The bench for a group is mlx_oss/bench/distributed.py (a front end).
"""

from mlx_oss.distributed.engine import DistributedChat, LeaderEngine, follow
from mlx_oss.distributed.layers import Comm, ShardedModel
from mlx_oss.distributed.load import load_sharded, manifest_digest
from mlx_oss.distributed.plan import ShardError, ShardPlan
from mlx_oss.distributed.session import Session, check_same_checkpoint, in_group, join

__all__ = [
    "Comm", "DistributedChat", "LeaderEngine", "Session", "ShardError", "ShardPlan", "ShardedModel",
    "check_same_checkpoint", "follow", "in_group", "join", "load_sharded", "manifest_digest",
]  # fmt: skip
