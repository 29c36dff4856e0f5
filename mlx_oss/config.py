"""Model hyper-parameters, read from our config.json or from an original / Hugging Face one.

Field names are OpenAI's (`gpt_oss/torch/model.py: ModelConfig`) so the model code reads like the
reference. `Dims` parses the three config.json flavours and is the one table the converter, `mlx-oss info`
and the model share, so loader and converter can never disagree on a field; `ModelArgs` adds what only
the model needs. The converter imports this module, never the reverse.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

SLIDING = "sliding_attention"
FULL = "full_attention"

# Fields of OpenAI's original/config.json, exactly (gpt_oss/torch/model.py ModelConfig).
ORIGINAL_CONFIG_FIELDS = (
    "num_hidden_layers", "num_experts", "experts_per_token", "vocab_size", "hidden_size",
    "intermediate_size", "swiglu_limit", "head_dim", "num_attention_heads", "num_key_value_heads",
    "sliding_window", "initial_context_length", "rope_theta", "rope_scaling_factor",
    "rope_ntk_alpha", "rope_ntk_beta",
)  # fmt: skip


@dataclass(frozen=True)
class Dims:
    """Model hyper-parameters, named as in OpenAI's ModelConfig (defaults: gpt-oss-20b)."""

    num_hidden_layers: int = 24
    num_experts: int = 32
    experts_per_token: int = 4
    vocab_size: int = 201088
    hidden_size: int = 2880
    intermediate_size: int = 2880
    swiglu_limit: float = 7.0
    head_dim: int = 64
    num_attention_heads: int = 64
    num_key_value_heads: int = 8
    sliding_window: int = 128
    initial_context_length: int = 4096
    rope_theta: float = 150000.0
    rope_scaling_factor: float = 32.0
    rope_ntk_alpha: float = 1.0
    rope_ntk_beta: float = 32.0
    rms_norm_eps: float = 1e-5
    max_position_embeddings: int = 131072
    layer_types: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if not self.layer_types:
            types = tuple(SLIDING if i % 2 == 0 else FULL for i in range(self.num_hidden_layers))
            object.__setattr__(self, "layer_types", types)

    def original_config(self) -> dict:
        d = asdict(self)
        return {k: d[k] for k in ORIGINAL_CONFIG_FIELDS}

    def hf_config(self) -> dict:
        """config.json as the Hub's openai/gpt-oss-* repositories ship it."""
        return {
            "architectures": ["GptOssForCausalLM"],
            "attention_bias": True,
            "attention_dropout": 0.0,
            "eos_token_id": 200002,
            "experts_per_token": self.experts_per_token,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "hidden_size": self.hidden_size,
            "initial_context_length": self.initial_context_length,
            "initializer_range": 0.02,
            "intermediate_size": self.intermediate_size,
            "layer_types": list(self.layer_types),
            "max_position_embeddings": self.max_position_embeddings,
            "model_type": "gpt_oss",
            "num_attention_heads": self.num_attention_heads,
            "num_experts_per_tok": self.experts_per_token,
            "num_hidden_layers": self.num_hidden_layers,
            "num_key_value_heads": self.num_key_value_heads,
            "num_local_experts": self.num_experts,
            "output_router_logits": False,
            "pad_token_id": 199999,
            "quantization_config": {
                "modules_to_not_convert": [
                    "model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head",
                ],
                "quant_method": "mxfp4",
            },
            "rms_norm_eps": self.rms_norm_eps,
            "rope_scaling": {
                "beta_fast": self.rope_ntk_beta,
                "beta_slow": self.rope_ntk_alpha,
                "factor": self.rope_scaling_factor,
                "original_max_position_embeddings": self.initial_context_length,
                "rope_type": "yarn",
                "truncate": False,
            },
            "rope_theta": self.rope_theta,
            "router_aux_loss_coef": 0.9,
            "sliding_window": self.sliding_window,
            "swiglu_limit": self.swiglu_limit,
            "tie_word_embeddings": False,
            "transformers_version": "4.55.0.dev0",
            "use_cache": True,
            "vocab_size": self.vocab_size,
        }

    def ours(self) -> dict:
        d = asdict(self)
        d["layer_types"] = list(self.layer_types)
        return d

    @classmethod
    def from_original(cls, cfg: dict, where: str) -> "Dims":
        missing = [k for k in ORIGINAL_CONFIG_FIELDS if k not in cfg]
        if missing:
            raise KeyError(f"{where}: field {missing[0]} missing (expected OpenAI's original config fields)")
        return cls(**{k: _num(cfg, k, where) for k in ORIGINAL_CONFIG_FIELDS})

    @classmethod
    def from_hf(cls, cfg: dict, where: str) -> "Dims":
        rope = cfg.get("rope_scaling") or {}
        if cfg.get("model_type") != "gpt_oss":
            raise KeyError(f"{where}: field model_type is {cfg.get('model_type')!r}, expected 'gpt_oss'")
        src = {
            "num_hidden_layers": "num_hidden_layers", "num_experts": "num_local_experts",
            "experts_per_token": "num_experts_per_tok", "vocab_size": "vocab_size", "hidden_size": "hidden_size",
            "intermediate_size": "intermediate_size", "swiglu_limit": "swiglu_limit", "head_dim": "head_dim",
            "num_attention_heads": "num_attention_heads", "num_key_value_heads": "num_key_value_heads",
            "sliding_window": "sliding_window", "rope_theta": "rope_theta",
        }  # fmt: skip
        vals = {ours: _num(cfg, theirs, where) for ours, theirs in src.items()}
        vals["initial_context_length"] = int(rope.get("original_max_position_embeddings", 4096))
        vals["rope_scaling_factor"] = float(rope.get("factor", 32.0))
        vals["rope_ntk_alpha"] = float(rope.get("beta_slow", 1.0))
        vals["rope_ntk_beta"] = float(rope.get("beta_fast", 32.0))
        vals["rms_norm_eps"] = float(cfg.get("rms_norm_eps", 1e-5))
        vals["max_position_embeddings"] = int(cfg.get("max_position_embeddings", 131072))
        if "layer_types" in cfg:
            vals["layer_types"] = tuple(cfg["layer_types"])
        return cls(**vals)

    @classmethod
    def from_ours(cls, cfg: dict, where: str) -> "Dims":
        names = {f.name for f in fields(cls)}
        vals = {k: v for k, v in cfg.items() if k in names}
        if "layer_types" in vals:
            vals["layer_types"] = tuple(vals["layer_types"])
        missing = [k for k in ORIGINAL_CONFIG_FIELDS if k not in vals]
        if missing:
            raise KeyError(f"{where}: field {missing[0]} missing")
        return cls(**vals)


def _num(cfg: dict, key: str, where: str):
    if key not in cfg:
        raise KeyError(f"{where}: field {key} missing")
    v = cfg[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise KeyError(f"{where}: field {key} is {v!r}, expected a number")
    return v


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

    The hyper-parameters are `Dims` (one definition for converter, info and model);
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
        """From `Dims` (or anything with the same attributes)."""
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
