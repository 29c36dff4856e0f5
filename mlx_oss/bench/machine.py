"""The machine a benchmark ran on: chip, GPU cores, memory, OS, MLX, BLAS, and memory bandwidth
(Apple's published figures, else measured) for the roofline. Every probe is injectable so tests
fake an M1..M5 on any machine.
"""

from __future__ import annotations

import platform
import subprocess
from typing import Callable

import mlx.core as mx

from mlx_oss.backend.cpu import fast_blas
from mlx_oss.backend.device import chip_name, device_info, metal_available

# Unified-memory bandwidth in GB/s (Apple's published figures). Where a chip's binned variants differ,
# the entry maps GPU core count -> bandwidth (M3 Max 30-core 300, 40-core 400; M4 Max 32/40; M5 Max).
# M5 Ultra is not announced: None (the bench then measures instead of looking up).
BANDWIDTH_GBS: dict[str, float | dict[int, float] | None] = {
    "M1": 68.25, "M1 Pro": 200, "M1 Max": 400, "M1 Ultra": 800,
    "M2": 100, "M2 Pro": 200, "M2 Max": 400, "M2 Ultra": 800,
    "M3": 100, "M3 Pro": 150, "M3 Max": {30: 300, 40: 400}, "M3 Ultra": 819,
    "M4": 120, "M4 Pro": 273, "M4 Max": {32: 410, 40: 546}, "M4 Ultra": None,
    "M5": 153, "M5 Pro": 307, "M5 Max": {32: 460, 40: 614}, "M5 Ultra": None,
}  # fmt: skip


def apple_chip(name: str) -> str | None:
    """"Apple M3 Max" -> "M3 Max"; None for anything that is not an Apple M-series chip."""
    import re

    m = re.search(r"\b(M[1-9])(?:\s+(Pro|Max|Ultra))?\b", name or "")
    if not m or "apple" not in name.lower():
        return None
    return m.group(1) + (f" {m.group(2)}" if m.group(2) else "")


def chip_bandwidth_gbs(name: str, gpu_cores: int | None = None) -> float | None:
    """Published memory bandwidth of an Apple chip (GB/s), or None if unknown."""
    chip = apple_chip(name)
    entry = BANDWIDTH_GBS.get(chip) if chip else None
    if isinstance(entry, dict):
        if gpu_cores in entry:
            return float(entry[gpu_cores])
        return float(max(entry.values()) if gpu_cores is None or gpu_cores >= max(entry) else min(entry.values()))
    return None if entry is None else float(entry)


def gpu_core_count(run: Callable[[], str] | None = None) -> int | None:
    """GPU cores from `system_profiler SPDisplaysDataType` on a Mac, else None."""
    import re

    if run is None:
        if platform.system() != "Darwin":
            return None

        def run() -> str:
            return subprocess.run(
                ["system_profiler", "SPDisplaysDataType"], capture_output=True, text=True, timeout=20
            ).stdout

    try:
        m = re.search(r"Total Number of Cores:\s*(\d+)", run())
    except (OSError, subprocess.SubprocessError):
        return None
    return int(m.group(1)) if m else None


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def machine_info(
    metal: bool | None = None,
    info: dict | None = None,
    sysctl: Callable[[], str] | None = None,
    gpu_cores: Callable[[], str] | None = None,
    cpuinfo: str | None = None,
    meminfo: str | None = None,
) -> dict:
    """Chip, GPU cores, unified memory, OS, MLX version and the published bandwidth (Apple) of this
    machine, for benchmark reports. Every probe is injectable, so tests fake an M1..M5."""
    import os
    import re

    if metal is None:
        metal = metal_available()
    dinfo = device_info(metal=metal, info=info)
    name = chip_name(info=dinfo, sysctl=sysctl)
    out: dict = {"chip": name, "backend": "metal" if metal else "cpu", "os": platform.platform(), "mlx": mx.__version__}
    if metal or apple_chip(name):
        cores = gpu_core_count(gpu_cores) if (gpu_cores or platform.system() == "Darwin") else None
        out["gpu_cores"] = cores
        out["memory_bytes"] = int(dinfo.get("memory_size", 0)) or None
        out["bandwidth_gbs"] = chip_bandwidth_gbs(name, cores)
        out["bandwidth_source"] = "published" if out["bandwidth_gbs"] else None
    else:
        cpuinfo = _read("/proc/cpuinfo") if cpuinfo is None else cpuinfo
        meminfo = _read("/proc/meminfo") if meminfo is None else meminfo
        m = re.search(r"model name\s*:\s*(.+)", cpuinfo)
        if m:
            out["chip"] = m.group(1).strip()
        out["cpu_cores"] = len(re.findall(r"^processor\s*:", cpuinfo, re.M)) or os.cpu_count()
        m = re.search(r"MemTotal:\s*(\d+) kB", meminfo)
        out["memory_bytes"] = int(m.group(1)) * 1024 if m else None
        out["bandwidth_gbs"] = None
        out["bandwidth_source"] = None
        out["blas"] = fast_blas() or "reference"
    return out


def measure_bandwidth_gbs(nbytes: int = 1 << 30, repeats: int = 4) -> float:
    """Read bandwidth of one core (GB/s, best of `repeats`): numpy's SIMD max over `nbytes` of
    float32, the access pattern of a decode step (every weight read once, little arithmetic).
    MLX's own CPU reductions are compute-bound here (mx.max 2.8 GB/s vs numpy 18 GB/s), so they
    would understate the roofline."""
    import time

    import numpy as np

    a = np.ones(nbytes // 4, dtype=np.float32)
    best = float("inf")
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        a.max()
        best = min(best, time.perf_counter() - t0)
    return a.nbytes / best / 1e9
