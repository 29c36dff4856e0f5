"""Tensor names and config fields of the two checkpoint layouts users download, and ours.

One table drives the synthetic generator (which writes both layouts), the reader (which maps them to
our names and validates shapes) and `mlx-oss info`, so the three can never disagree.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Iterator

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
            types = tuple("sliding_attention" if i % 2 == 0 else "full_attention" for i in range(self.num_hidden_layers))
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
class Spec:
    """One tensor of a layout: name, safetensors dtype tag, shape."""

    name: str
    dtype: str
    shape: tuple[int, ...]


def _layer_shapes(d: Dims) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Per-layer tensors in OUR naming (FORMAT.md), without the `layers.{i}.` prefix."""
    H, E, I, hd = d.hidden_size, d.num_experts, d.intermediate_size, d.head_dim
    nq, nkv = d.num_attention_heads, d.num_key_value_heads
    qkv = (nq + 2 * nkv) * hd
    return {
        "attn_norm.weight": ("BF16", (H,)),
        "attn.qkv.weight": ("BF16", (qkv, H)),
        "attn.qkv.bias": ("BF16", (qkv,)),
        "attn.sinks": ("BF16", (nq,)),
        "attn.out.weight": ("BF16", (H, nq * hd)),
        "attn.out.bias": ("BF16", (H,)),
        "mlp_norm.weight": ("BF16", (H,)),
        "mlp.router.weight": ("BF16", (E, H)),
        "mlp.router.bias": ("BF16", (E,)),
        "mlp.gate_up.weight": ("U32", (E, 2 * I, H // 8)),
        "mlp.gate_up.scales": ("U8", (E, 2 * I, H // 32)),
        "mlp.gate_up.bias": ("BF16", (E, 2 * I)),
        "mlp.down.weight": ("U32", (E, H, I // 8)),
        "mlp.down.scales": ("U8", (E, H, I // 32)),
        "mlp.down.bias": ("BF16", (E, H)),
    }


def our_specs(d: Dims) -> Iterator[Spec]:
    """Every tensor of a converted folder, in file order (embed, layers, norm, unembed)."""
    yield Spec("embed.weight", "BF16", (d.vocab_size, d.hidden_size))
    for i in range(d.num_hidden_layers):
        for k, (dt, shape) in _layer_shapes(d).items():
            yield Spec(f"layers.{i}.{k}", dt, shape)
    yield Spec("norm.weight", "BF16", (d.hidden_size,))
    yield Spec("unembed.weight", "BF16", (d.vocab_size, d.hidden_size))


# How each of our tensors is found in a source layout. Kinds:
#   copy       one source tensor, same bytes
#   concat     several source tensors concatenated on axis 0 (HF q/k/v -> our qkv)
#   mx_words   MXFP4 blocks [.., R, G, 16] -> uint32 words [.., R, G*4]
#   deint      rows (axis 1) de-interleaved: gate rows 0,2,4.. then up rows 1,3,5..
#   deint_words  both of the above
@dataclass(frozen=True)
class Source:
    names: tuple[str, ...]
    kind: str = "copy"


def source_map(layout: str, d: Dims) -> dict[str, Source]:
    """Our name -> where it lives in `layout` ("hf" or "original")."""
    m: dict[str, Source] = {}
    for i in range(d.num_hidden_layers):
        if layout == "hf":
            p = f"model.layers.{i}."
            a, e = p + "self_attn.", p + "mlp.experts."
            m.update({
                f"layers.{i}.attn_norm.weight": Source((p + "input_layernorm.weight",)),
                f"layers.{i}.attn.qkv.weight": Source(tuple(a + f"{x}_proj.weight" for x in "qkv"), "concat"),
                f"layers.{i}.attn.qkv.bias": Source(tuple(a + f"{x}_proj.bias" for x in "qkv"), "concat"),
                f"layers.{i}.attn.sinks": Source((a + "sinks",)),
                f"layers.{i}.attn.out.weight": Source((a + "o_proj.weight",)),
                f"layers.{i}.attn.out.bias": Source((a + "o_proj.bias",)),
                f"layers.{i}.mlp_norm.weight": Source((p + "post_attention_layernorm.weight",)),
                f"layers.{i}.mlp.router.weight": Source((p + "mlp.router.weight",)),
                f"layers.{i}.mlp.router.bias": Source((p + "mlp.router.bias",)),
                f"layers.{i}.mlp.gate_up.weight": Source((e + "gate_up_proj_blocks",), "deint_words"),
                f"layers.{i}.mlp.gate_up.scales": Source((e + "gate_up_proj_scales",), "deint"),
                f"layers.{i}.mlp.gate_up.bias": Source((e + "gate_up_proj_bias",), "deint"),
                f"layers.{i}.mlp.down.weight": Source((e + "down_proj_blocks",), "mx_words"),
                f"layers.{i}.mlp.down.scales": Source((e + "down_proj_scales",)),
                f"layers.{i}.mlp.down.bias": Source((e + "down_proj_bias",)),
            })  # fmt: skip
        elif layout == "original":
            p = f"block.{i}."
            m.update({
                f"layers.{i}.attn_norm.weight": Source((p + "attn.norm.scale",)),
                f"layers.{i}.attn.qkv.weight": Source((p + "attn.qkv.weight",)),
                f"layers.{i}.attn.qkv.bias": Source((p + "attn.qkv.bias",)),
                f"layers.{i}.attn.sinks": Source((p + "attn.sinks",)),
                f"layers.{i}.attn.out.weight": Source((p + "attn.out.weight",)),
                f"layers.{i}.attn.out.bias": Source((p + "attn.out.bias",)),
                f"layers.{i}.mlp_norm.weight": Source((p + "mlp.norm.scale",)),
                f"layers.{i}.mlp.router.weight": Source((p + "mlp.gate.weight",)),
                f"layers.{i}.mlp.router.bias": Source((p + "mlp.gate.bias",)),
                f"layers.{i}.mlp.gate_up.weight": Source((p + "mlp.mlp1_weight.blocks",), "deint_words"),
                f"layers.{i}.mlp.gate_up.scales": Source((p + "mlp.mlp1_weight.scales",), "deint"),
                f"layers.{i}.mlp.gate_up.bias": Source((p + "mlp.mlp1_bias",), "deint"),
                f"layers.{i}.mlp.down.weight": Source((p + "mlp.mlp2_weight.blocks",), "mx_words"),
                f"layers.{i}.mlp.down.scales": Source((p + "mlp.mlp2_weight.scales",)),
                f"layers.{i}.mlp.down.bias": Source((p + "mlp.mlp2_bias",)),
            })  # fmt: skip
        else:
            raise ValueError(layout)
    top = {
        "hf": {"embed.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight", "unembed.weight": "lm_head.weight"},
        "original": {"embed.weight": "embedding.weight", "norm.weight": "norm.scale", "unembed.weight": "unembedding.weight"},
    }[layout]  # fmt: skip
    m.update({k: Source((v,)) for k, v in top.items()})
    return m


def source_specs(layout: str, d: Dims) -> dict[str, Spec]:
    """Every tensor a `layout` checkpoint of dims `d` must contain, with dtype and shape."""
    ours = {s.name: s for s in our_specs(d)}
    out: dict[str, Spec] = {}
    nq, nkv, hd = d.num_attention_heads, d.num_key_value_heads, d.head_dim
    for our_name, src in source_map(layout, d).items():
        spec = ours[our_name]
        if src.kind == "concat":
            rows = [nq * hd, nkv * hd, nkv * hd]
            for n, r in zip(src.names, rows):
                out[n] = Spec(n, spec.dtype, (r, *spec.shape[1:]))
        elif src.kind in ("mx_words", "deint_words"):
            *lead, words = spec.shape
            out[src.names[0]] = Spec(src.names[0], "U8", (*lead, words // 4, 16))
        else:
            out[src.names[0]] = Spec(src.names[0], spec.dtype, spec.shape)
    return out
