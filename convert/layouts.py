"""Tensor names and config fields of the two checkpoint layouts users download, and ours.

One table drives the synthetic generator (which writes both layouts), the reader (which maps them to
our names and validates shapes) and `mlx-oss info`, so the three can never disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

from mlx_oss.config import Dims


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
