"""Model hyper-parameters, read from our config.json or from an original / Hugging Face one.

Field names are OpenAI's (`gpt_oss/torch/model.py: ModelConfig`) so the model code reads like the
reference. `Dims` parses the three config.json flavours and is the one table the converter, `mlx-oss info`
and the model share, so loader and converter can never disagree on a field; `ModelArgs` adds what only
the model needs. The converter imports this module, never the reverse.

Every value is checked here, once, whichever flavour it comes from (`check_values`: type, range, and
agreement between fields such as heads and key/value heads or YaRN's correction range), so convert and
load both refuse an impossible config in one line naming the file and the field, instead of converting
it and failing (or generating garbage) later.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from mlx_oss.errors import ConvertError

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
        """OpenAI's original/config.json (every field required)."""
        _require(cfg, ORIGINAL_CONFIG_FIELDS, where)
        return cls.checked({k: cfg[k] for k in ORIGINAL_CONFIG_FIELDS}, where)

    @classmethod
    def from_hf(cls, cfg: dict, where: str) -> "Dims":
        """A Hugging Face (or mlx-lm) config.json: its own names, YaRN under `rope_scaling`."""
        if cfg.get("model_type") != "gpt_oss":
            raise ConvertError(f"{where}: field model_type is {cfg.get('model_type')!r}, expected 'gpt_oss'")
        _require(cfg, HF_NAMES.values(), where)
        rope = _rope_scaling(cfg, where)
        vals = {ours: cfg[theirs] for ours, theirs in HF_NAMES.items()}
        for ours, (key, default) in HF_ROPE_SCALING.items():
            vals[ours] = rope.get(key, default)
        vals["rms_norm_eps"] = cfg.get("rms_norm_eps", 1e-5)
        vals["max_position_embeddings"] = cfg.get("max_position_embeddings", 131072)
        if "layer_types" in cfg:
            vals["layer_types"] = cfg["layer_types"]
        return cls.checked(vals, where, HF_FIELD_NAMES)

    @classmethod
    def from_ours(cls, cfg: dict, where: str) -> "Dims":
        """Our converted config.json: Dims' own field names."""
        _require(cfg, ORIGINAL_CONFIG_FIELDS, where)
        names = {f.name for f in fields(cls)}
        return cls.checked({k: v for k, v in cfg.items() if k in names}, where)

    @classmethod
    def checked(cls, vals: dict[str, Any], where: str, names: Mapping[str, str] | None = None) -> "Dims":
        """Dims from config values, each checked first (`check_values`); floats given as ints become floats."""
        check_values(vals, where, names or {})
        vals = {k: float(v) if k in FLOAT_FIELDS else v for k, v in vals.items()}
        if "layer_types" in vals:
            vals["layer_types"] = tuple(vals["layer_types"])
        return cls(**vals)


# ------------------------------------------------------------------ what a config value may be

MAX_LAYERS = 4096  # far above gpt-oss (24, 36): a corrupt count is refused here, not while listing its layers
MAX_DIM = 2**31 - 1  # MLX array dimensions are int32


@dataclass(frozen=True)
class IntField:
    """A whole number from `multiple` to `maximum` (JSON true/false and 4.0 are not whole numbers here)."""

    multiple: int = 1
    maximum: int = MAX_DIM

    def requirement(self) -> str:
        kind = {1: "an integer", 2: "an even integer"}.get(self.multiple, f"a multiple of {self.multiple}")
        return f"{kind} from {self.multiple} to {self.maximum}"

    def accepts(self, v: Any) -> bool:
        return type(v) is int and self.multiple <= v <= self.maximum and v % self.multiple == 0


@dataclass(frozen=True)
class FloatField:
    """A finite number above `above` (an int is fine: the Hub writes rope_theta as 150000)."""

    above: float = 0.0

    def requirement(self) -> str:
        return f"a finite number > {self.above:g}"

    def accepts(self, v: Any) -> bool:
        return type(v) in (int, float) and math.isfinite(v) and v > self.above


# The one table every config value is checked against, in Dims' names (each flavour names its own).
FIELD_RULES: dict[str, IntField | FloatField] = {
    "num_hidden_layers": IntField(maximum=MAX_LAYERS),
    "num_experts": IntField(),
    "experts_per_token": IntField(),
    "vocab_size": IntField(),
    "hidden_size": IntField(multiple=32),  # the MXFP4 block: experts are packed 32 values per scale
    "intermediate_size": IntField(multiple=32),
    "head_dim": IntField(multiple=2),  # RoPE rotates halves
    "num_attention_heads": IntField(),
    "num_key_value_heads": IntField(),
    "sliding_window": IntField(),
    "initial_context_length": IntField(),
    "max_position_embeddings": IntField(),
    "swiglu_limit": FloatField(),
    "rope_theta": FloatField(above=1.0),  # YaRN divides by log(rope_theta)
    "rope_scaling_factor": FloatField(),
    "rope_ntk_alpha": FloatField(),
    "rope_ntk_beta": FloatField(),
    "rms_norm_eps": FloatField(),
}
FLOAT_FIELDS = frozenset(k for k, r in FIELD_RULES.items() if isinstance(r, FloatField))

# Hugging Face names of the Dims fields (the rest are named alike).
HF_NAMES = {
    "num_hidden_layers": "num_hidden_layers", "num_experts": "num_local_experts",
    "experts_per_token": "num_experts_per_tok", "vocab_size": "vocab_size", "hidden_size": "hidden_size",
    "intermediate_size": "intermediate_size", "swiglu_limit": "swiglu_limit", "head_dim": "head_dim",
    "num_attention_heads": "num_attention_heads", "num_key_value_heads": "num_key_value_heads",
    "sliding_window": "sliding_window", "rope_theta": "rope_theta",
}  # fmt: skip
HF_ROPE_SCALING = {  # Dims field -> (key in rope_scaling, default)
    "initial_context_length": ("original_max_position_embeddings", 4096), "rope_scaling_factor": ("factor", 32.0),
    "rope_ntk_alpha": ("beta_slow", 1.0), "rope_ntk_beta": ("beta_fast", 32.0),
}  # fmt: skip
HF_FIELD_NAMES = {**HF_NAMES, **{k: f"rope_scaling.{key}" for k, (key, _) in HF_ROPE_SCALING.items()}}


def _shown(v: Any) -> str:
    """A value as JSON wrote it (NaN, Infinity, true, "text"), cut to 40 characters."""
    try:
        text = json.dumps(v)
    except (TypeError, ValueError):
        text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


def _require(cfg: dict, keys, where: str) -> None:
    missing = [k for k in keys if k not in cfg]
    if missing:
        raise ConvertError(f"{where}: field {missing[0]} missing")


def _rope_scaling(cfg: dict, where: str) -> dict:
    rope = cfg.get("rope_scaling")
    if rope is None:
        return {}
    if not isinstance(rope, dict):
        raise ConvertError(f"{where}: rope_scaling must be an object, got {_shown(rope)}")
    kind = rope.get("rope_type", rope.get("type", "yarn"))
    if kind != "yarn":
        key = "rope_type" if "rope_type" in rope else "type"
        raise ConvertError(f"{where}: rope_scaling.{key} must be \"yarn\" (gpt-oss uses YaRN), got {_shown(kind)}")
    return rope


def yarn_correction_range(head_dim: int, base: float, initial_context_length: int, ntk_alpha: float, ntk_beta: float) -> tuple[float, float]:
    """(low, high) dimensions of YaRN's NTK-by-parts ramp, as the reference computes them; the model
    needs 0 < low < high < head_dim/2 - 1 (else its ramp divides by zero or inverts)."""
    d_half = head_dim / 2
    low = d_half * math.log(initial_context_length / (ntk_beta * 2 * math.pi)) / math.log(base)
    high = d_half * math.log(initial_context_length / (ntk_alpha * 2 * math.pi)) / math.log(base)
    return low, high


def check_values(vals: Mapping[str, Any], where: str, names: Mapping[str, str] | None = None) -> None:
    """Refuse, in one line naming `where` and the field as the file names it (`names`: Dims field ->
    that name), the first value no gpt-oss model can have: the wrong type, out of range, or at odds
    with another field. Python's json reads NaN and Infinity, so finiteness is checked here."""
    names = names or {}

    def bad(key: str, requirement: str) -> ConvertError:
        return ConvertError(f"{where}: {names.get(key, key)} must be {requirement}, got {_shown(vals[key])}")

    for key, rule in FIELD_RULES.items():
        if key in vals and not rule.accepts(vals[key]):
            raise bad(key, rule.requirement())
    get = lambda k: vals.get(k, getattr(Dims, k))  # noqa: E731  (the defaults, for fields a flavour leaves out)
    if get("experts_per_token") > get("num_experts"):
        raise bad("experts_per_token", f"at most {names.get('num_experts', 'num_experts')} ({get('num_experts')})")
    if get("num_attention_heads") % get("num_key_value_heads"):
        raise bad("num_attention_heads", f"a multiple of {names.get('num_key_value_heads', 'num_key_value_heads')} "
                                         f"({get('num_key_value_heads')})")  # fmt: skip
    if "layer_types" in vals:
        types = vals["layer_types"]
        n = get("num_hidden_layers")
        if not isinstance(types, (list, tuple)) or len(types) != n or any(t not in (SLIDING, FULL) for t in types):
            raise bad("layer_types", f'a list of {n} (num_hidden_layers) entries, each "{SLIDING}" or "{FULL}"')
    _check_yarn(get, where, names)


def _check_yarn(get, where: str, names: Mapping[str, str]) -> None:
    if get("rope_scaling_factor") <= 1.0:
        return  # no YaRN: plain RoPE
    low, high = yarn_correction_range(get("head_dim"), get("rope_theta"), get("initial_context_length"),
                                      get("rope_ntk_alpha"), get("rope_ntk_beta"))  # fmt: skip
    limit = get("head_dim") / 2 - 1
    if not 0 < low < high < limit:
        fields_ = ("rope_ntk_alpha", "rope_ntk_beta", "initial_context_length", "head_dim", "rope_theta")
        given = ", ".join(f"{names.get(k, k)} {_shown(get(k))}" for k in fields_)
        raise ConvertError(f"{where}: {given} give a YaRN correction range {low:.3f}..{high:.3f}, "
                           f"which must lie inside (0, {limit:g})")  # fmt: skip


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


AFFINE_BITS = (2, 3, 4, 5, 6, 8)  # what MLX's affine quantization packs
AFFINE_GROUPS = (32, 64, 128)


def _dense_quant(cfg: dict, where: str) -> DenseQuant | None:
    """Our config.json's `quantization` block -> the dense modules' affine quantization (None: float).
    Experts must be MXFP4; every bits / group size one MLX packs."""
    q = cfg.get("quantization") or {}
    if not isinstance(q, dict):
        raise ConvertError(f"{where}: quantization must be an object, got {_shown(q)}")
    experts = q.get("experts") or {}
    if not isinstance(experts, dict):
        raise ConvertError(f"{where}: quantization.experts must be an object, got {_shown(experts)}")
    if experts.get("mode", "mxfp4") != "mxfp4":
        raise ConvertError(f"{where}: quantization.experts.mode must be \"mxfp4\" (the only expert format), got {_shown(experts['mode'])}")
    dense = q.get("dense")
    if dense in (None, {}):
        return None
    if not isinstance(dense, dict):
        raise ConvertError(f"{where}: quantization.dense must be an object or null, got {_shown(dense)}")
    if dense.get("mode", "affine") != "affine":
        raise ConvertError(f"{where}: quantization.dense.mode must be \"affine\", got {_shown(dense['mode'])}")
    bits = _affine(dense, "bits", 8, AFFINE_BITS, where, "quantization.dense")
    group = _affine(dense, "group_size", 64, AFFINE_GROUPS, where, "quantization.dense")
    modules, per = dense.get("modules", list(DenseQuant.modules)), dense.get("per_module") or {}
    if not isinstance(modules, list) or not all(isinstance(m, str) for m in modules):
        raise ConvertError(f"{where}: quantization.dense.modules must be a list of module names, got {_shown(modules)}")
    if not isinstance(per, dict) or not all(isinstance(v, dict) for v in per.values()):
        raise ConvertError(f"{where}: quantization.dense.per_module must map module paths to {{bits, group_size}}, got {_shown(per)}")
    per_module = tuple(
        (path, _affine(v, "bits", None, AFFINE_BITS, where, f"quantization.dense.per_module.{path}"),
         _affine(v, "group_size", 64, AFFINE_GROUPS, where, f"quantization.dense.per_module.{path}"))
        for path, v in per.items()
    )  # fmt: skip
    return DenseQuant(bits=bits, group_size=group, modules=tuple(modules), per_module=per_module)


def _affine(block: dict, key: str, default: int | None, allowed: tuple[int, ...], where: str, at: str) -> int:
    v = block.get(key, default)
    if type(v) is not int or v not in allowed:
        raise ConvertError(f"{where}: {at}.{key} must be one of {', '.join(map(str, allowed))}, got {_shown(v)}")
    return v


def read_json_object(path: Path) -> dict:
    """A JSON object from `path`; ConvertError naming the file if it cannot be read, is not JSON, is
    nested deeper than Python's parser goes (RecursionError), or is not an object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConvertError(f"{path}: cannot read ({e.strerror or e})") from None
    except RecursionError:
        raise ConvertError(f"{path}: not valid JSON (nested too deeply)") from None
    except (UnicodeDecodeError, ValueError) as e:
        raise ConvertError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ConvertError(f"{path}: expected a JSON object")
    return data


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
        """Any of the three config.json flavours: ours, OpenAI's original, Hugging Face; every value
        checked (ConvertError naming `where` and the field)."""
        if cfg.get("format") == "mlx-oss":
            return cls.from_dims(Dims.from_ours(cfg, where), _dense_quant(cfg, where))
        if cfg.get("model_type") == "gpt_oss":
            return cls.from_dims(Dims.from_hf(cfg, where))
        return cls.from_dims(Dims.from_original(cfg, where))

    @classmethod
    def from_path(cls, path: str | Path) -> "ModelArgs":
        """A folder holding config.json (or the config.json itself)."""
        p = Path(path)
        if p.is_dir():
            p = p / "config.json"
        return cls.from_dict(read_json_object(p), str(p))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["layer_types"] = list(self.layer_types)
        return d


# ---------------------------------------------------------------- quantized KV cache (docs/MODEL.md)
# Here, not in mlx_oss.nn.cache, so that the CLI's flags and `mlx-oss info` need no MLX import.

KV_BITS = (4, 8)
KV_GROUP_SIZES = (32, 64, 128)  # what mx.quantize supports
# Bytes of float32 scores one block of queries may build in `mlx_oss.nn.attention.quantized_attention`: a
# 2048-token prefill chunk over a 32k-token quantized cache would otherwise build 64 heads x 2048 x 32768
# scores (16 GiB in float32) at once, more than the cache saves; in blocks, each evaluated before the next,
# the transient stays ~3x this (scores, their masked copy, the softmax's float32) at any depth (measured:
# tests/test_kv_quant.py; `mlx-oss info` counts it).
SCORE_BLOCK_BYTES = 64 << 20


def check_kv_quant(bits: int | None, group_size: int, head_dim: int | None = None) -> None:
    """Raise ValueError (one line) unless `bits`/`group_size` can quantize a cache with this head_dim."""
    if bits is None:
        return
    if isinstance(bits, bool) or not isinstance(bits, int) or bits not in KV_BITS:
        raise ValueError(f"kv_bits must be 4 or 8 (None: an unquantized cache), got {bits!r}")
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size not in KV_GROUP_SIZES:
        raise ValueError(f"kv_group_size must be 32, 64 or 128, got {group_size!r}")
    if head_dim is not None and head_dim % group_size:
        raise ValueError(f"kv_group_size {group_size} does not divide the model's head_dim {head_dim}")


def slot_bytes(n_kv_heads: int, head_dim: int, dtype_size: int, bits: int | None = None, group_size: int = 64) -> int:
    """Bytes of one cache slot (one position's key and value) in one layer: 2 x n_kv_heads x head_dim x s
    unquantized, s the compute dtype's bytes; quantized, 2 x n_kv_heads x (head_dim x bits / 8 codes +
    2 x s x head_dim / group_size for the scales and biases)."""
    if bits is None:
        return 2 * n_kv_heads * head_dim * dtype_size
    return 2 * n_kv_heads * (head_dim * bits // 8 + 2 * dtype_size * (head_dim // group_size))
