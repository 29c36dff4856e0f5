"""Load this rank's slice of a converted (mlx-oss) folder: each tensor is read straight from its
safetensors shard with positioned reads / a read-only map of the needed rows, so no rank ever holds
another rank's weights, not even while loading."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterator

import mlx.core as mx
import numpy as np

from mlx_oss.convert.safetensors_io import NP_DTYPES, TensorInfo, read_header, read_tensor
from mlx_oss.backend import cpu
from mlx_oss.config import ModelArgs
from mlx_oss.distributed.layers import Comm, ShardedModel, build_sharded_model
from mlx_oss.distributed.plan import ShardPlan
from mlx_oss.errors import UserError
from mlx_oss.loader import _cast, _evaluated, _is_converted, check_converted, resolve_dtype


class CheckpointError(UserError):
    """The folder cannot be loaded in pieces (one line naming the file)."""


def manifest_digest(path: str | Path) -> str:
    """sha256 of the folder's manifest.json: equal on two hosts iff they hold the same converted files."""
    m = Path(path) / "manifest.json"
    try:
        return hashlib.sha256(m.read_bytes()).hexdigest()
    except OSError as e:
        raise CheckpointError(f"{m}: cannot read ({e.strerror or e}); distributed runs need a converted folder") from None


def _tensor_index(path: Path) -> dict[str, tuple[Path, TensorInfo]]:
    index = path / "model.safetensors.index.json"
    files = sorted(dict.fromkeys(json.loads(index.read_text())["weight_map"].values())) if index.is_file() else sorted(
        p.name for p in path.glob("*.safetensors")
    )
    out: dict[str, tuple[Path, TensorInfo]] = {}
    for f in files:
        infos, _ = read_header(path / f)
        out.update({n: (path / f, i) for n, i in infos.items()})
    return out


def read_slice(file: Path, info: TensorInfo, plan: ShardPlan) -> np.ndarray:
    """This rank's part of one stored tensor (bf16 as uint16 bits)."""
    shape = info.shape
    rr = plan.stored_ranges(info.name, shape)
    dt = NP_DTYPES[info.dtype]
    if rr is None:
        return read_tensor(file, info)
    axis, ranges = rr
    if not ranges:  # a bias added once, on rank 0
        return np.zeros(shape, dt)
    if axis == 0:
        return np.concatenate([read_tensor(file, info, rows=slice(s, e)) for s, e in ranges])
    mm = np.memmap(file, dtype=dt, mode="r", offset=info.start, shape=shape)
    try:
        idx = [slice(None)] * len(shape)
        parts = []
        for s, e in ranges:
            idx[axis] = slice(s, e)
            parts.append(np.array(mm[tuple(idx)]))
        return np.concatenate(parts, axis=axis)
    finally:
        del mm


def _weights(path: Path, plan: ShardPlan) -> Iterator[tuple[str, mx.array]]:
    for name, (file, info) in _tensor_index(path).items():
        a = mx.array(np.ascontiguousarray(read_slice(file, info, plan)))
        if info.dtype == "BF16":
            a = a.view(mx.bfloat16)
        yield name, a


def load_sharded(path: str | Path, comm: Comm, dtype: str | mx.Dtype | None = None) -> ShardedModel:
    """This rank's model for a converted folder (weights evaluated)."""
    path = Path(path).expanduser()
    if not _is_converted(path):
        raise CheckpointError(f"{path}: not an mlx-oss folder; distributed runs load converted folders (mlx-oss convert SRC DST)")
    check_converted(path)
    dt = resolve_dtype(dtype)
    plan = ShardPlan(ModelArgs.from_path(path), comm.rank, comm.size)
    model = build_sharded_model(plan, comm)
    cpu.prepare(model)
    weights = ((n, _cast(n, a, dt)) for n, a in cpu.adapt_weights(model, _weights(path, plan), dt))
    model.load_weights(_evaluated(weights), strict=True)
    model.eval()
    return model
