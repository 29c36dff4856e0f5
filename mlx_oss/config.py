"""Model hyper-parameters, read from our config.json or from an original / Hugging Face one.

Field names are OpenAI's (`gpt_oss/torch/model.py: ModelConfig`) so the model code reads like the
reference. Parsing of the two source layouts is delegated to `convert.layouts.Dims`, the one table
the converter and `mlx-oss info` also use, so loader and converter can never disagree on a field.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from convert.layouts import Dims

SLIDING = "sliding_attention"
FULL = "full_attention"


@dataclass(frozen=True)
class DenseQuant:
    """Affine quantization of the big dense matrices (`mlx-oss convert --dense-bits`).

    `per_module` holds exact module paths with their own (bits, group_size): an mlx-lm folder can
    quantize each module differently (e.g. 8-bit attention and router, float embedding).
    """

    bits: int = 8
    group_size: int = 64
    modules: tuple[str, ...] = ("attn.qkv", "attn.out", "embed", "unembed")
    per_module: tuple[tuple[str, int, int], ...] = ()

    def applies_to(self, path: str) -> bool:
        """`path` is an MLX module path such as `layers.3.attn.qkv` or `embed`."""
        return self.params_for(path) is not None

    def params_for(self, path: str) -> dict | None:
        """{"bits", "group_size"} for module `path`, or None if it is not quantized."""
        for p, bits, group in self.per_module:
            if p == path:
                return {"bits": bits, "group_size": group}
        if any(path == m or path.endswith("." + m) for m in self.modules):
            return {"bits": self.bits, "group_size": self.group_size}
        return None


@dataclass(frozen=True)
class ModelArgs(Dims):
    """Everything the MLX model needs to build itself (defaults: gpt-oss-20b).

    The hyper-parameters are `convert.layouts.Dims` (one definition for converter, info and model);
    this adds what only the model needs.
    """

    swiglu_alpha: float = 1.702  # hard-coded in the reference's swiglu()
    expert_group_size: int = 32  # MXFP4: one e8m0 scale per 32 values
    dense_quant: DenseQuant | None = None

    def __post_init__(self) -> None:
        super().__post_init__()  # layer_types: the reference slides on even layers
        object.__setattr__(self, "layer_types", tuple(self.layer_types))
        if len(self.layer_types) != self.num_hidden_layers:
            raise ValueError(f"layer_types has {len(self.layer_types)} entries for {self.num_hidden_layers} layers")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError("num_attention_heads must be a multiple of num_key_value_heads")

    # ------------------------------------------------------------------ derived

    def is_sliding(self, layer: int) -> bool:
        return self.layer_types[layer] == SLIDING

    @property
    def sm_scale(self) -> float:
        return 1.0 / math.sqrt(self.head_dim)

    @property
    def qkv_dim(self) -> int:
        return (self.num_attention_heads + 2 * self.num_key_value_heads) * self.head_dim

    # ------------------------------------------------------------------ constructors

    @classmethod
    def from_dims(cls, dims: Any, dense_quant: DenseQuant | None = None) -> "ModelArgs":
        """From `convert.layouts.Dims` (or anything with the same attributes)."""
        vals = {f.name: getattr(dims, f.name) for f in fields(Dims) if hasattr(dims, f.name)}
        return cls(**vals, dense_quant=dense_quant)

    @classmethod
    def from_dict(cls, cfg: dict, where: str = "config.json") -> "ModelArgs":
        """Any of the three config.json flavours: ours, OpenAI's original, Hugging Face."""
        if cfg.get("format") == "mlx-oss":
            dims = Dims.from_ours(cfg, where)
            dense = ((cfg.get("quantization") or {}).get("dense")) or None
            if (cfg.get("quantization") or {}).get("experts", {}).get("mode", "mxfp4") != "mxfp4":
                raise ValueError(f"{where}: only mxfp4 experts are supported")
            dq = None
            if dense:
                per = dense.get("per_module") or {}
                dq = DenseQuant(
                    bits=int(dense.get("bits", 8)),
                    group_size=int(dense.get("group_size", 64)),
                    modules=tuple(dense.get("modules", DenseQuant.modules)),
                    per_module=tuple((p, int(v["bits"]), int(v.get("group_size", 64))) for p, v in per.items()),
                )
            return cls.from_dims(dims, dq)
        if cfg.get("model_type") == "gpt_oss":
            return cls.from_dims(Dims.from_hf(cfg, where))
        return cls.from_dims(Dims.from_original(cfg, where))

    @classmethod
    def from_path(cls, path: str | Path) -> "ModelArgs":
        """A folder holding config.json (or the config.json itself)."""
        p = Path(path)
        if p.is_dir():
            p = p / "config.json"
        return cls.from_dict(json.loads(p.read_text()), str(p))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["layer_types"] = list(self.layer_types)
        return d
