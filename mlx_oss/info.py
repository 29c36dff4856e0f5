"""What a model costs before you load it: parameters, bytes per weight format, KV cache, memory.

Works on a converted folder, a Hugging Face or original checkpoint, or a bare config.json, so a user
can check whether gpt-oss-120b fits their Mac before downloading 65 GB.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mlx_oss.config import Dims, read_json_object
from mlx_oss.convert.layouts import Spec, our_specs
from mlx_oss.convert.manifest import check_folder
from mlx_oss.convert.reader import detect_layout, dims_for, open_source
from mlx_oss.convert.safetensors_io import nbytes_of
from mlx_oss.errors import ConvertError

DTYPE_BYTES = {"bfloat16": 2, "float32": 4}


@dataclass
class ModelInfo:
    dims: Dims
    layout: str
    params: dict[str, int] = field(default_factory=dict)  # weight format -> parameter count
    bytes: dict[str, int] = field(default_factory=dict)  # weight format -> bytes on disk / in memory
    integrity: str | None = None  # what was checked against manifest.json (mlx-oss folders)

    @property
    def total_params(self) -> int:
        return sum(self.params.values())

    @property
    def weight_bytes(self) -> int:
        return sum(self.bytes.values())

    def weight_bytes_at(self, dtype: str) -> int:
        """Bytes in memory when dense bf16 weights are held in `dtype` (float32 on the CPU backend)."""
        dense = self.bytes.get("bf16 dense", 0)
        return self.weight_bytes - dense + dense * DTYPE_BYTES[dtype] // 2

    @property
    def full_layers(self) -> int:
        return sum(t == "full_attention" for t in self.dims.layer_types)

    @property
    def sliding_layers(self) -> int:
        return self.dims.num_hidden_layers - self.full_layers

    def kv_bytes_per_token(self, dtype: str = "bfloat16") -> int:
        """Growing cost: full-attention layers keep K and V for every token."""
        d = self.dims
        return self.full_layers * 2 * d.num_key_value_heads * d.head_dim * DTYPE_BYTES[dtype]

    def kv_bytes(self, context: int, dtype: str = "bfloat16") -> int:
        """Sliding layers hold at most `sliding_window` tokens; full layers hold all of them."""
        d = self.dims
        per_layer_token = 2 * d.num_key_value_heads * d.head_dim * DTYPE_BYTES[dtype]
        sliding = self.sliding_layers * min(context, d.sliding_window) * per_layer_token
        return self.kv_bytes_per_token(dtype) * context + sliding


def _classify(spec: Spec, by_name: dict[str, Spec], dense: dict[str, Spec]) -> tuple[str, int]:
    """-> (weight format, parameter count) of one stored tensor."""
    n = 1
    for s in spec.shape:
        n *= s
    if spec.name.endswith((".gate_up.weight", ".down.weight")) and spec.dtype == "U32":
        return "mxfp4 experts", n * 8
    if spec.name.endswith((".gate_up.scales", ".down.scales")) and spec.dtype == "U8":
        return "mxfp4 experts", 0
    if spec.dtype == "U32":  # affine-quantized dense weight: as many values as its unquantized shape
        full = dense[spec.name].shape
        return "affine dense", full[0] * full[1]
    if spec.name.endswith((".scales", ".biases")) and spec.name.rsplit(".", 1)[0] + ".weight" in by_name:
        return "affine dense", 0
    return "bf16 dense" if spec.dtype == "BF16" else f"{spec.dtype.lower()} dense", n


def describe(path: str | Path) -> ModelInfo:
    """Inspect a folder (any layout) or a config.json; tensors are read from headers only. An mlx-oss
    folder is also held to its manifest (sizes, headers): a damaged one raises ConvertError."""
    path = Path(path).expanduser()
    specs: list[Spec]
    integrity = None
    if path.is_file() and path.name.endswith(".json"):
        cfg = read_json_object(path)  # a bad file is named in one line
        layout = "mlx-oss" if cfg.get("format") == "mlx-oss" else "hf" if cfg.get("model_type") == "gpt_oss" else "original"
        dims = dims_for(layout, cfg, path)
        specs = list(our_specs(dims))
    else:
        try:
            layout, root = detect_layout(path)
        except ConvertError:
            if (path / "config.json").is_file() and not any(path.glob("*.safetensors")):
                return describe(path / "config.json")  # a config on its own: sizes before downloading
            raise
        if layout == "mlx-oss":
            check_folder(root)  # before the headers: the error then names the manifest's view and the fix
            integrity = "sizes and headers match manifest.json"
        src = open_source(path)  # every shard's header read and checked against the config
        dims, layout, specs = src.dims, src.layout, src.specs()
    info = ModelInfo(dims, layout, integrity=integrity)
    by_name = {s.name: s for s in specs}
    dense = {s.name: s for s in our_specs(dims)}  # unquantized shapes, whatever the group size/bits
    for s in specs:
        fmt, n = _classify(s, by_name, dense)
        info.params[fmt] = info.params.get(fmt, 0) + n
        info.bytes[fmt] = info.bytes.get(fmt, 0) + nbytes_of(s.dtype, s.shape)
    return info


def _gib(n: int) -> str:
    """Binary units, as memory is counted (GiB for models, MiB/KiB for the tiny test ones)."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n / 2**10:.2f} KiB"


def _count(n: int) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return str(n)


def format_info(info: ModelInfo, contexts: list[int]) -> str:
    d = info.dims
    lines = [
        f"layout            {info.layout}",
        f"layers            {d.num_hidden_layers} ({info.sliding_layers} sliding-window {d.sliding_window}, {info.full_layers} full)",
        f"experts           {d.num_experts} (top {d.experts_per_token}), hidden {d.hidden_size}, vocab {d.vocab_size}",
        f"parameters        {_count(info.total_params)}",
    ]
    for fmt in sorted(info.bytes):
        lines.append(f"  {fmt:<16}{_count(info.params.get(fmt, 0)):>9} params  {_gib(info.bytes[fmt]):>12}")
    lines.append(f"weights           {_gib(info.weight_bytes)} as stored (bf16 dense: Metal)")
    lines.append(f"                  {_gib(info.weight_bytes_at('float32'))} with dense weights in float32 (CPU backend)")
    lines.append(
        f"KV cache          {info.kv_bytes_per_token('bfloat16') / 1024:.1f} KiB/token bf16, "
        f"{info.kv_bytes_per_token('float32') / 1024:.1f} KiB/token float32 (full layers only; "
        f"sliding layers fixed at {d.sliding_window} tokens)"
    )
    lines.append("memory needed     context      bf16 (Metal)   float32 (CPU)")
    for c in contexts:
        b = info.weight_bytes + info.kv_bytes(c, "bfloat16")
        f = info.weight_bytes_at("float32") + info.kv_bytes(c, "float32")
        lines.append(f"                  {c:>7}  {_gib(b):>14}  {_gib(f):>14}")
    if info.integrity:
        lines.append(f"integrity         {info.integrity}")
    return "\n".join(lines)


def info_json(info: ModelInfo, contexts: list[int]) -> dict:
    return {
        "layout": info.layout,
        "integrity": info.integrity,
        "dims": info.dims.ours(),
        "parameters": info.params,
        "bytes": info.bytes,
        "weight_bytes": info.weight_bytes,
        "weight_bytes_float32_dense": info.weight_bytes_at("float32"),
        "kv_bytes_per_token": {k: info.kv_bytes_per_token(k) for k in DTYPE_BYTES},
        "memory_bytes": {str(c): {k: info.weight_bytes_at(k) + info.kv_bytes(c, k) for k in DTYPE_BYTES} for c in contexts},
    }


__all__ = ["ModelInfo", "describe", "format_info", "info_json", "detect_layout"]
