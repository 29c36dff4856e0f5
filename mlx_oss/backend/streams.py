"""Per-thread CPU streams: one MLX CPU stream runs on one core, so independent shares of a step's
work go to one stream each (mlx_oss/backend/cpu.py). MLX streams cannot be used outside the thread that
made them, hence one set per thread, made on first use."""

from __future__ import annotations

import os
import threading
from typing import Callable

import mlx.core as mx


def cpu_cores() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def split_points(n: int, parts: int) -> list[int]:
    """Boundaries of `parts` near-equal consecutive shares of range(n)."""
    return [i * n // parts for i in range(parts + 1)]


def per_stream(streams: tuple[mx.Stream, ...], size: int, part: Callable[[int, int], mx.array]) -> list[mx.array]:
    """part(a, b) for each of len(streams) consecutive near-equal shares [a, b) of range(size), each
    built on its own stream."""
    cuts = split_points(size, len(streams))
    out = []
    for s, a, b in zip(streams, cuts, cuts[1:]):
        with mx.stream(s):
            out.append(part(a, b))
    return out


class CPUStreams:
    """`n` CPU streams for the calling thread, made on first use."""

    def __init__(self, n: int) -> None:
        self.n = n
        self._local = threading.local()

    def get(self) -> tuple[mx.Stream, ...]:
        s = getattr(self._local, "streams", None)
        if s is None:
            s = self._local.streams = tuple(mx.new_stream(mx.cpu) for _ in range(self.n))
        return s
