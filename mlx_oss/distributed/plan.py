"""Which slice of every tensor a rank holds (tensor parallelism over `size` ranks), as pure index math.

- Attention: rank r owns query heads [r nq/N, (r+1) nq/N), the kv heads they read (GQA groups stay
  whole: query head h reads kv head h // (nq/nkv)), their sinks, and the matching input columns of
  `attn.out`. The out-projection's partial sums are added with one `all_sum`; its bias is added once.
- MoE: every rank holds every expert, with a slice of the intermediate dimension (gate and up rows,
  `down` input columns) in whole MXFP4 groups of 32 units, as even as they go ([r I/N, (r+1) I/N) when
  N divides the groups; 120b's 90 groups over 4 ranks: 23, 23, 22, 22): the clamped SwiGLU is
  elementwise per intermediate unit, so each rank's share is exact, every token's 4 experts cost each
  rank about the same, and one `all_sum` adds the partial down-projections. The router is replicated
  (top-4 needs all 128 logits).
- Embedding and unembedding: split by vocabulary rows. The lookup zeroes tokens outside the rank's
  rows and one `all_sum` joins them; the lm_head's logits are joined with one `all_gather`.

docs/DISTRIBUTED.md has the traffic and memory numbers behind these choices.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from mlx_oss.config import ModelArgs
from mlx_oss.errors import UserError

# name suffix -> how the logical tensor is cut: (axis, kind)
#   "q_k_v": rows of the fused qkv, "heads": one entry per query head, "cols": the attention input
#   columns of attn.out, "gate_up": gate rows and up rows, "inter": down's input columns,
#   "vocab": rows of the vocabulary, "bias0": whole on rank 0 and zero elsewhere, None: replicated.
_CUTS: tuple[tuple[str, int, str | None], ...] = (
    ("attn.qkv", 0, "q_k_v"),
    ("attn.sinks", 0, "heads"),
    ("attn.out.bias", 0, "bias0"),
    ("attn.out", 1, "cols"),
    ("mlp.gate_up", 1, "gate_up"),
    ("mlp.down.bias", 0, "bias0"),
    ("mlp.down", 2, "inter"),
    ("embed", 0, "vocab"),
    ("unembed", 0, "vocab"),
)


class ShardError(UserError):
    """The model cannot be split over this many ranks (one line naming the dimension)."""


@dataclass(frozen=True)
class ShardPlan:
    """Rank `rank` of `size`: the per-rank dimensions and each tensor's slices."""

    args: ModelArgs
    rank: int
    size: int

    def __post_init__(self) -> None:
        a, n = self.args, self.size
        if not 0 <= self.rank < n:
            raise ShardError(f"rank {self.rank} is outside a group of {n}")
        checks = (
            ("num_key_value_heads", a.num_key_value_heads, n),
            ("num_attention_heads", a.num_attention_heads, n),
            ("vocab_size", a.vocab_size, n),
        )
        for field, value, parts in checks:
            if value % parts:
                raise ShardError(f"{field} = {value} does not split evenly over {parts} ranks")
        if a.intermediate_size % a.expert_group_size:
            raise ShardError(f"intermediate_size {a.intermediate_size} is not a multiple of {a.expert_group_size}")
        groups = a.intermediate_size // a.expert_group_size
        if groups < n:
            raise ShardError(f"intermediate_size / expert_group_size = {groups} is fewer than the {n} ranks (each needs one)")

    # ---------------------------------------------------------------- per-rank sizes

    @property
    def heads(self) -> int:
        return self.args.num_attention_heads // self.size

    @property
    def kv_heads(self) -> int:
        return self.args.num_key_value_heads // self.size

    def intermediate_range(self, rank: int | None = None) -> tuple[int, int]:
        """[start, stop) of the intermediate units rank `rank` (default: this one) holds: whole MXFP4
        groups of `expert_group_size`, as even as they go (120b over 4 ranks: 23, 23, 22, 22 groups),
        since the partial down-projections are summed whatever their widths."""
        r = self.rank if rank is None else rank
        g, groups, n = self.args.expert_group_size, self.args.intermediate_size // self.args.expert_group_size, self.size
        first = lambda k: k * (groups // n) + min(k, groups % n)  # noqa: E731
        return first(r) * g, first(r + 1) * g

    @property
    def intermediate(self) -> int:
        start, stop = self.intermediate_range()
        return stop - start

    @property
    def vocab(self) -> int:
        return self.args.vocab_size // self.size

    @property
    def vocab_start(self) -> int:
        return self.rank * self.vocab

    def local_args(self) -> ModelArgs:
        """The hyper-parameters of this rank's layers (vocab stays whole: token ids are global)."""
        return replace(
            self.args, num_attention_heads=self.heads, num_key_value_heads=self.kv_heads,
            intermediate_size=self.intermediate,
        )  # fmt: skip

    # ---------------------------------------------------------------- tensor slices

    def cut(self, name: str) -> tuple[int, str | None]:
        """(axis, kind) for a tensor name such as `layers.3.attn.qkv.weight`."""
        module = name.rsplit(".", 1)[0]
        for suffix, axis, kind in _CUTS:
            if module == suffix or module.endswith("." + suffix) or name.endswith("." + suffix) or name == suffix:
                return axis, kind
        return 0, None

    def ranges(self, name: str) -> tuple[int, list[tuple[int, int]]] | None:
        """(axis, [(start, stop), ...]) in logical (unquantized) indices along `axis`, or None when
        the tensor is held whole; "bias0" tensors return (0, []) on ranks other than 0 (zeros)."""
        axis, kind = self.cut(name)
        a, r = self.args, self.rank
        d = a.head_dim
        if kind is None:
            return None
        if kind == "bias0":
            return None if r == 0 else (0, [])
        if kind == "q_k_v":
            nq, nkv, hq, hk = a.num_attention_heads, a.num_key_value_heads, self.heads, self.kv_heads
            return axis, [
                (r * hq * d, (r + 1) * hq * d),
                (nq * d + r * hk * d, nq * d + (r + 1) * hk * d),
                ((nq + nkv) * d + r * hk * d, (nq + nkv) * d + (r + 1) * hk * d),
            ]
        if kind == "heads":
            return axis, [(r * self.heads, (r + 1) * self.heads)]
        if kind == "cols":
            return axis, [(r * self.heads * d, (r + 1) * self.heads * d)]
        if kind == "gate_up":
            i, (s, e) = a.intermediate_size, self.intermediate_range()
            return axis, [(s, e), (i + s, i + e)]
        if kind == "inter":
            return axis, [self.intermediate_range()]
        if kind == "vocab":
            return axis, [(self.vocab_start, self.vocab_start + self.vocab)]
        raise AssertionError(kind)

    def logical_length(self, name: str, axis: int) -> int:
        """The unquantized length of `name` along `axis` (quantized words/scales are shorter)."""
        a = self.args
        _, kind = self.cut(name)
        return {
            "q_k_v": a.qkv_dim, "heads": a.num_attention_heads, "cols": a.num_attention_heads * a.head_dim,
            "gate_up": 2 * a.intermediate_size, "inter": a.intermediate_size, "vocab": a.vocab_size,
        }[kind]  # fmt: skip

    def stored_ranges(self, name: str, shape: tuple[int, ...]) -> tuple[int, list[tuple[int, int]]] | None:
        """`ranges` scaled to the stored tensor (MXFP4 / affine words and scales pack several values
        per entry along the input axis)."""
        rr = self.ranges(name)
        if rr is None or not rr[1]:
            return rr
        axis, ranges = rr
        logical = self.logical_length(name, axis)
        stored = shape[axis]
        if stored == logical:
            return axis, ranges
        out = []
        for s, e in ranges:
            if (s * stored) % logical or (e * stored) % logical:
                raise ShardError(f"{name}: a rank's slice [{s}, {e}) does not align with its packing ({stored} of {logical})")
            out.append((s * stored // logical, e * stored // logical))
        return axis, out

    def local_shape(self, name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
        rr = self.stored_ranges(name, shape)
        if rr is None or not rr[1]:
            return tuple(shape)
        axis, ranges = rr
        return tuple(sum(e - s for s, e in ranges) if i == axis else n for i, n in enumerate(shape))
