"""Everything Metal-specific, in one place. Each function takes injectable answers so tests can fake
an Apple GPU (or its absence) on any machine.

Why float32 on the CPU backend: MLX CPU `gather_qmm` in mxfp4 for 4 experts of 5760x2880 takes
16 ms with float32 activations, 260 ms with bfloat16 and 990 ms with float16 (measured, issue 3).
"""

from __future__ import annotations

import platform
import subprocess
from typing import Callable

import mlx.core as mx


def metal_available(probe: Callable[[], bool] | None = None) -> bool:
    """True when MLX can run on an Apple GPU."""
    if probe is not None:
        return bool(probe())
    try:
        return bool(mx.metal.is_available())
    except Exception:  # an MLX build without the metal module
        return False


def default_dtype(metal: bool | None = None) -> str:
    """Compute dtype: "bfloat16" on a Metal GPU, "float32" on the CPU backend."""
    if metal is None:
        metal = metal_available()
    return "bfloat16" if metal else "float32"


def device_info(metal: bool | None = None, info: dict | None = None) -> dict:
    """MLX's Metal device info, or {} without a GPU."""
    if info is not None:
        return dict(info)
    if metal is None:
        metal = metal_available()
    if not metal:
        return {}
    try:
        return dict(mx.device_info())
    except AttributeError:
        return dict(mx.metal.device_info())


def chip_name(info: dict | None = None, sysctl: Callable[[], str] | None = None) -> str:
    """"Apple M3 Max" on a Mac (from Metal, else sysctl), else the CPU architecture."""
    info = device_info(info=info)
    name = info.get("device_name") or info.get("name")
    if name:
        return str(name)
    if sysctl is None and platform.system() == "Darwin":

        def sysctl() -> str:
            return subprocess.run(
                ["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True, timeout=5
            ).stdout

    if sysctl is not None:
        try:
            out = sysctl().strip()
            if out:
                return out
        except (OSError, subprocess.SubprocessError):
            pass
    return platform.machine() or "unknown"


def wired_limit_for(model_bytes: int, info: dict) -> tuple[int, str | None]:
    """-> (bytes to wire, warning or None). Wire up to Metal's recommended working set.

    Wiring keeps the weights resident so macOS does not page them out between decode steps; a
    model bigger than the recommended working set will be slow, which we say instead of failing.
    """
    limit = int(info.get("max_recommended_working_set_size", 0))
    if not limit:
        return 0, None
    warn = None
    if model_bytes > 0.9 * limit:
        warn = (
            f"model needs {model_bytes / 2**30:.1f} GiB, close to or above the GPU's recommended working set "
            f"of {limit / 2**30:.1f} GiB; generation may be slow (raise it with `sudo sysctl iogpu.wired_limit_mb=...`)"
        )
    return limit, warn


def set_wired_limit(
    model_bytes: int,
    metal: bool | None = None,
    info: dict | None = None,
    setter: Callable[[int], int] | None = None,
) -> tuple[int | None, str | None]:
    """Wire memory for a model on Metal. -> (previous limit or None when nothing was done, warning).

    No-op on the CPU backend. `setter` defaults to `mx.set_wired_limit`.
    """
    if metal is None:
        metal = metal_available()
    if not metal:
        return None, None
    limit, warn = wired_limit_for(model_bytes, device_info(metal=True, info=info))
    if not limit:
        return None, warn
    setter = setter or mx.set_wired_limit
    return setter(limit), warn


# ---------------------------------------------------------------------------------- benchmarking

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


def fast_blas(maps: str | None = None) -> str | None:
    """The optimized BLAS loaded in this process (openblas, mkl, blis), or None for the reference
    BLAS bundled with MLX's Linux wheel. Read from /proc/self/maps; `maps` injects its text."""
    if maps is None:
        try:
            with open("/proc/self/maps") as f:
                maps = f.read()
        except OSError:
            return None
    # "libopenblas", not "openblas": numpy's bundled libscipy_openblas64_ uses suffixed symbols and
    # never serves MLX's cblas calls.
    for lib, name in (("/libopenblas", "openblas"), ("/libmkl_rt", "mkl"), ("/libblis", "blis")):
        if lib in maps:
            return name
    return None


OPENBLAS_CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/x86_64-linux-gnu/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/libopenblas.so.0",
    "/usr/lib64/libopenblas.so.0",
)


def find_openblas(exists: Callable[[str], bool] | None = None) -> str | None:
    """Path of a system OpenBLAS (Debian: `apt-get install libopenblas0-pthread`), or None."""
    import os

    exists = exists or os.path.exists
    return next((p for p in OPENBLAS_CANDIDATES if exists(p)), None)


def openblas_threads(n: int | None = None, lib=None) -> int | None:
    """Threads of the OpenBLAS serving this process (set to `n` if given; -> the count before),
    None if there is none. OpenBLAS's own threads and our per-core MLX streams would fight over the
    same cores, so a model split over streams runs OpenBLAS single-threaded (mlx_oss/backend/cpu.py)."""
    if lib is None:
        import ctypes

        lib = ctypes.CDLL(None)  # the global namespace: an LD_PRELOADed OpenBLAS lands there
    get = getattr(lib, "openblas_get_num_threads", None)
    if get is None:
        return None
    before = int(get())
    if n is not None and n != before:
        lib.openblas_set_num_threads(int(n))
    return before


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
