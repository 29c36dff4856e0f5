"""Metal facts, in one place: GPU probe, default dtype, device info, chip name, wired limit. Each
function takes injectable answers so tests can fake an Apple GPU (or its absence) on any machine.

Why float32 on the CPU backend: MLX CPU `gather_qmm` in mxfp4 for 4 experts of 5760x2880 takes
16 ms with float32 activations, 260 ms with bfloat16 and 990 ms with float16 (measured, issue 3).
"""

from __future__ import annotations

import os
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


def memory_limit(info: dict | None = None) -> int:
    """Bytes the model may use: Metal's recommended working set on a Mac (`serve --max-batch auto` sizes the
    batch within it), else the machine's RAM (the CPU backend)."""
    limit = int(device_info(info=info).get("max_recommended_working_set_size", 0))
    return limit or os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


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
