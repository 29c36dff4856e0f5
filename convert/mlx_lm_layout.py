"""The mlx-lm / mlx-community layout of gpt-oss: module table, `quantization` block, tensor specs.

mlx-lm stores gpt-oss as its `models/gpt_oss.py` holds it after `sanitize`: q/k/v separate; experts
split into `gate_proj` / `up_proj` / `down_proj` (MXFP4 `.weight` uint32 + `.scales` uint8, gate/up
de-interleaved with `::2` / `1::2`); dense modules float or affine-quantized (`.weight` uint32,
`.scales`, `.biases`); config.json with a `quantization` block: global `group_size`/`bits`/`mode`
plus per-module entries (a dict, or true/false). `resolve` decides each module's quantization exactly
as mlx-lm's `load_model` does (the module's entry, else inferred from its `.scales`, else none), so we
load what mlx-lm would load. `MODULES` maps their modules onto ours; the reader (mlx-lm -> ours) and
the exporter (ours -> mlx-lm) both use it, so the two directions cannot disagree.

Our gate_up halves [gate rows; up rows] are exactly mlx-lm's `gate_proj` then `up_proj` (both come
from the same `::2` / `1::2` split), so mapping is concatenation or slicing of whole rows: no tensor is
ever dequantized.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mlx_oss.errors import ConvertError
from mlx_oss.config import Dims
from mlx_oss.convert.layouts import Source, Spec

# mlx-lm's `quantize_model.defaults_for_mode`: (group_size, bits) when an entry leaves them out.
MODE_DEFAULTS = {"affine": (64, 4), "mxfp4": (32, 4), "nvfp4": (16, 4), "mxfp8": (32, 8)}
AFFINE_BITS = (2, 3, 4, 5, 6, 8)  # what mx.quantize(mode="affine") accepts
AFFINE_GROUPS = (32, 64, 128)
ENTRY_KEYS = {"group_size", "bits", "mode"}
FLOAT_DTYPES = ("BF16", "F16", "F32")


@dataclass(frozen=True)
class Quant:
    """How one module's weight is stored."""

    mode: str
    bits: int
    group_size: int

    def entry(self) -> dict:
        """The per-module entry mlx-lm writes in config.json."""
        return {"group_size": self.group_size, "bits": self.bits, "mode": self.mode}

    def __str__(self) -> str:
        return f"{self.mode} {self.bits}-bit group {self.group_size}"


EXPERTS = Quant("mxfp4", 4, 32)


@dataclass(frozen=True)
class Module:
    """One of our modules and the mlx-lm modules it is made of (concatenated along `axis`).

    kind: "linear" (weight [+ bias], may be affine-quantized), "embedding" (weight, may be quantized),
    "experts" (MXFP4 stacks + bias, rows on axis 1), "tensor" (a lone float tensor: norms, sinks).
    `rows` are the output rows of each part, `k` the input dimension.
    """

    ours: str
    theirs: tuple[str, ...]
    kind: str
    rows: tuple[int, ...]
    k: int
    bias: bool = False
    experts: int = 0

    @property
    def axis(self) -> int:
        return 1 if self.kind == "experts" else 0


def modules(d: Dims) -> list[Module]:
    """Every module of a gpt-oss model of dims `d`, in our file order."""
    H, E, I, hd = d.hidden_size, d.num_experts, d.intermediate_size, d.head_dim
    nq, nkv = d.num_attention_heads, d.num_key_value_heads
    out = [Module("embed", ("model.embed_tokens",), "embedding", (d.vocab_size,), H)]
    for i in range(d.num_hidden_layers):
        p, o = f"model.layers.{i}.", f"layers.{i}."
        a, x = p + "self_attn.", p + "mlp.experts."
        out += [
            Module(o + "attn_norm.weight", (p + "input_layernorm.weight",), "tensor", (H,), 0),
            Module(o + "attn.qkv", tuple(a + f"{n}_proj" for n in "qkv"), "linear", (nq * hd, nkv * hd, nkv * hd), H, True),
            Module(o + "attn.sinks", (a + "sinks",), "tensor", (nq,), 0),
            Module(o + "attn.out", (a + "o_proj",), "linear", (H,), nq * hd, True),
            Module(o + "mlp_norm.weight", (p + "post_attention_layernorm.weight",), "tensor", (H,), 0),
            Module(o + "mlp.router", (p + "mlp.router",), "linear", (E,), H, True),
            Module(o + "mlp.gate_up", (x + "gate_proj", x + "up_proj"), "experts", (I, I), H, True, E),
            Module(o + "mlp.down", (x + "down_proj",), "experts", (H,), I, True, E),
        ]  # fmt: skip
    out += [
        Module("norm.weight", ("model.norm.weight",), "tensor", (d.hidden_size,), 0),
        Module("unembed", ("lm_head",), "linear", (d.vocab_size,), H),
    ]
    return out


def weight_specs(name: str, lead: tuple[int, ...], rows: int, k: int, q: Quant | None, fdt: str) -> dict[str, Spec]:
    """`name`.weight (+ .scales, .biases) as stored for quantization `q` (None: float `fdt`)."""
    if q is None:
        return {"weight": Spec(name + ".weight", fdt, (*lead, rows, k))}
    out = {
        "weight": Spec(name + ".weight", "U32", (*lead, rows, k * q.bits // 32)),
        "scales": Spec(name + ".scales", "U8" if q.mode != "affine" else fdt, (*lead, rows, k // q.group_size)),
    }
    if q.mode == "affine":
        out["biases"] = Spec(name + ".biases", fdt, (*lead, rows, k // q.group_size))
    return out


# ---------------------------------------------------------------------------------------------
# The `quantization` block, resolved per module as mlx-lm's load_model does
# ---------------------------------------------------------------------------------------------


def _entry(value, where: str, default: Quant | None) -> Quant | None:
    """One `quantization` value (global block or a module's entry) -> Quant (None = not quantized)."""
    if value is False:
        return None
    if value is True:
        if default is None:
            raise ConvertError(f"{where} is true but the quantization block has no global bits/group_size/mode")
        return default
    if not isinstance(value, dict):
        raise ConvertError(f"{where} is {value!r}, expected an object with group_size/bits/mode, or true/false")
    unknown = sorted(k for k in value if k not in ENTRY_KEYS)
    if unknown:
        raise ConvertError(f"{where}: unknown setting {unknown[0]!r} (expected group_size, bits, mode)")
    mode = value.get("mode", "affine")
    if mode not in MODE_DEFAULTS:
        raise ConvertError(f"{where}: mode {mode!r} is unknown (mlx-lm modes: {', '.join(MODE_DEFAULTS)})")
    g0, b0 = MODE_DEFAULTS[mode]
    g, b = value.get("group_size") or g0, value.get("bits") or b0
    for key, v in (("group_size", g), ("bits", b)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise ConvertError(f"{where}: {key} is {v!r}, expected an integer")
    if mode == "affine" and (b not in AFFINE_BITS or g not in AFFINE_GROUPS):
        raise ConvertError(f"{where}: affine bits {b} group_size {g} is not valid (bits {AFFINE_BITS}, group_size {AFFINE_GROUPS})")
    if mode != "affine" and (g, b) != (g0, b0):
        raise ConvertError(f"{where}: mode {mode} needs group_size {g0} and bits {b0}, not {g} and {b}")
    return Quant(mode, b, g)


def _inferred(path: str, m: Module, files: dict[str, tuple[Path, object]]) -> Quant | None:
    """mlx-lm's `infer_quant_config`: a module absent from the block is quantized iff it has .scales."""
    scales = files.get(path + ".scales")
    weight = files.get(path + ".weight")
    if scales is None or weight is None or not scales[1].shape or not weight[1].shape:
        return None
    group = m.k // max(1, scales[1].shape[-1])
    bits = weight[1].shape[-1] * 32 // m.k
    if scales[1].dtype != "U8":
        return Quant("affine", bits, group)
    for mode, (g, b) in MODE_DEFAULTS.items():
        if mode != "affine" and (g, b) == (group, bits):
            return Quant(mode, bits, group)
    raise ConvertError(f"{scales[0]}: cannot infer the quantization of {path}: {bits} bits with group size {group}")


def resolve(cfg: dict, cfg_path: Path, d: Dims, files: dict) -> dict[str, Quant | None]:
    """mlx-lm module path -> its quantization, validated against what mlx-oss can run.

    Raises ConvertError naming the module and the setting for unknown settings, modes we cannot run
    (experts must be MXFP4; dense modules affine or unquantized) and q/k/v quantized differently
    (we run them as one fused matrix).
    """
    block = cfg.get("quantization", cfg.get("quantization_config"))
    where = f"{cfg_path}: quantization"
    if block is None:
        block = {}
    if not isinstance(block, dict):
        raise ConvertError(f"{where} is {block!r}, expected an object")
    if "quant_method" in block:  # a Hugging Face quantization_config (no mlx-lm block)
        if block["quant_method"] != "mxfp4":
            raise ConvertError(f"{where}: quant_method {block['quant_method']!r} is not supported (only mxfp4 experts)")
        block = EXPERTS.entry()
    glob = None
    if any(k in block for k in ENTRY_KEYS):
        glob = _entry({k: block[k] for k in ENTRY_KEYS if k in block}, where, None)
    mods = modules(d)
    known = {t for m in mods if m.kind != "tensor" for t in m.theirs}
    for key, value in block.items():
        if key in ENTRY_KEYS:
            continue
        if key not in known:
            if isinstance(value, (dict, bool)):
                raise ConvertError(f"{where}[{key!r}]: no such module in a gpt-oss model with this config")
            raise ConvertError(f"{where}: unknown setting {key!r} = {value!r}")
    out: dict[str, Quant | None] = {}
    for m in mods:
        if m.kind == "tensor":
            continue
        for t in m.theirs:
            if t in block:
                q = _entry(block[t], f"{where}[{t!r}]", glob)
            else:
                q = _inferred(t, m, files)
            if m.kind == "experts" and q != EXPERTS:
                raise ConvertError(
                    f"{where}: {t} is {'unquantized' if q is None else q}; mlx-oss runs experts only as MXFP4 "
                    "(group 32, 4 bits), as OpenAI ships them (use an MXFP4 build, e.g. mlx-community's *-MXFP4-Q8)"
                )
            if m.kind != "experts" and q is not None and q.mode != "affine":
                raise ConvertError(f"{where}: {t} is {q}; mlx-oss supports dense modules unquantized or affine")
            out[t] = q
        qs = {out[t] for t in m.theirs}
        if len(qs) > 1:
            detail = ", ".join(f"{t.rsplit('.', 1)[-1]} {out[t] or 'unquantized'}" for t in m.theirs)
            raise ConvertError(f"{where}: {m.ours} is one matrix in mlx-oss but its parts are quantized differently ({detail})")
    return out


# ---------------------------------------------------------------------------------------------
# mlx-lm folder -> our tensors
# ---------------------------------------------------------------------------------------------


@dataclass
class Plan:
    """What the reader needs: our specs in order, how to build each, and the dense quantization."""

    specs: list[Spec]
    sources: dict[str, Source]
    expected: dict[str, Spec]  # every mlx-lm tensor the folder must hold
    dense: dict[str, Quant]  # our module path -> affine quantization (quantized dense modules only)
    quant: dict[str, Quant | None]  # mlx-lm module path -> quantization


def plan(cfg: dict, cfg_path: Path, d: Dims, files: dict) -> Plan:
    """Resolve the quantization and lay out every tensor; the reader validates the files against it."""
    quant = resolve(cfg, cfg_path, d, files)
    first_float = next((i.dtype for _, i in files.values() if i.dtype in FLOAT_DTYPES), "BF16")
    specs: list[Spec] = []
    sources: dict[str, Source] = {}
    expected: dict[str, Spec] = {}
    dense: dict[str, Quant] = {}

    def fdt(name: str) -> str:
        """Float tensors keep the dtype they were saved in (mlx-lm may save bf16, f16 or f32)."""
        info = files.get(name)
        return info[1].dtype if info and info[1].dtype in FLOAT_DTYPES else first_float

    def add(ours: Spec, theirs: list[Spec], kind: str) -> None:
        specs.append(ours)
        sources[ours.name] = Source(tuple(s.name for s in theirs), kind)
        expected.update({s.name: s for s in theirs})

    for m in modules(d):
        if m.kind == "tensor":
            t = m.theirs[0]
            add(Spec(m.ours, fdt(t), m.rows), [Spec(t, fdt(t), m.rows)], "copy")
            continue
        q = quant[m.theirs[0]]
        if q is not None and m.kind != "experts":
            dense[m.ours] = q
        lead = (m.experts,) if m.kind == "experts" else ()
        parts = [weight_specs(t, lead, r, m.k, q, fdt(t + ".weight")) for t, r in zip(m.theirs, m.rows)]
        kind = "halves" if len(m.theirs) > 1 and m.axis == 1 else "concat" if len(m.theirs) > 1 else "copy"
        for key in parts[0]:
            ps = [p[key] for p in parts]
            shape = list(ps[0].shape)
            shape[m.axis] = sum(p.shape[m.axis] for p in ps)
            dts = {p.dtype for p in ps}
            if len(dts) > 1:
                raise ConvertError(f"{cfg_path.parent}: tensors {', '.join(p.name for p in ps)} have different dtypes {sorted(dts)}")
            add(Spec(f"{m.ours}.{key}", ps[0].dtype, tuple(shape)), ps, kind)
        if m.bias:
            bs = [Spec(t + ".bias", fdt(t + ".bias"), (*lead, r)) for t, r in zip(m.theirs, m.rows)]
            add(Spec(f"{m.ours}.bias", bs[0].dtype, (*lead, sum(m.rows))), bs, kind)
    return Plan(specs, sources, expected, dense, quant)


def quantization_block(dense: dict[str, Quant], d: Dims) -> dict:
    """The config.json `quantization` block for a folder whose dense modules are quantized as `dense`
    (our module path -> Quant): global MXFP4 (the experts, found by their .scales) plus one explicit
    entry per quantized dense module, which is what mlx-lm's own `quantize_model` writes."""
    block: dict = EXPERTS.entry()
    for m in modules(d):
        if m.ours in dense:
            for t in m.theirs:
                block[t] = dense[m.ours].entry()
    return block
