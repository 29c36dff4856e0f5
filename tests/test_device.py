"""Device helpers with faked answers: a Mac with a Metal GPU, and the CPU backend."""

from __future__ import annotations

from mlx_oss.backend import device

MAC = {"device_name": "Apple M3 Max", "max_recommended_working_set_size": 100 * 2**30, "memory_size": 128 * 2**30}


def test_metal_probe_and_default_dtype(monkeypatch):
    import mlx.core as mx

    assert device.metal_available(lambda: 1) is True and device.metal_available(lambda: []) is False
    monkeypatch.setattr(mx.metal, "is_available", lambda: True)
    assert device.metal_available() is True and device.default_dtype() == "bfloat16"

    def no_metal():
        raise RuntimeError("this MLX build has no Metal")

    monkeypatch.setattr(mx.metal, "is_available", no_metal)
    assert device.metal_available() is False and device.default_dtype() == "float32"
    assert device.default_dtype(metal=True) == "bfloat16"
    assert device.default_dtype(metal=False) == "float32"
    assert device.default_dtype() == device.default_dtype(device.metal_available())


def test_chip_name():
    assert device.chip_name(info=MAC) == "Apple M3 Max"
    assert device.chip_name(info={}, sysctl=lambda: "Apple M2\n") == "Apple M2"
    assert device.chip_name(info={}, sysctl=lambda: "") != ""


def test_wired_limit_only_on_metal():
    calls = []
    prev, warn = device.set_wired_limit(10 * 2**30, metal=True, info=MAC, setter=lambda n: calls.append(n) or 0)
    assert calls == [100 * 2**30] and prev == 0 and warn is None
    _, warn = device.set_wired_limit(99 * 2**30, metal=True, info=MAC, setter=lambda n: 0)
    assert warn and "recommended working set" in warn
    calls.clear()
    assert device.set_wired_limit(10 * 2**30, metal=False, setter=calls.append) == (None, None)
    assert calls == []
    assert device.device_info(metal=False) == {}
