"""Tensor-parallel gpt-oss: the single-machine blocks built at this rank's sizes (`ShardPlan.local_args`),
each followed by the one collective that joins the ranks' partial results.

Per layer and forward call: one `all_sum` of [B, T, hidden] after attention, one after the MoE.
Per call: one `all_sum` after the embedding lookup, one `all_gather` of the logits. Every rank ends a
layer with bit-identical hidden states, so the replicated router picks the same experts everywhere.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import mlx.core as mx
import mlx.nn as nn

from mlx_oss.nn.attention import Attention
from mlx_oss.config import ModelArgs
from mlx_oss.distributed.mirror import Mirror
from mlx_oss.distributed.plan import ShardPlan
from mlx_oss.nn.model import Model
from mlx_oss.nn.moe import MoE
from mlx_oss.nn.rope import YarnRoPE


class Comm:
    """The collectives of one model over one `mx.distributed` group.

    `suspended()` turns them into no-ops (wrong numbers, same compute) so a benchmark can measure
    how much of a step is communication; nothing else uses it. `mirror`: on rank 0, the ids of the
    engines and states the followers hold for it (engine.py).
    """

    def __init__(self, group: mx.distributed.Group) -> None:
        self.group = group
        self.rank = group.rank()
        self.size = group.size()
        self.mirror = Mirror()
        self._on = True

    def all_sum(self, x: mx.array) -> mx.array:
        return mx.distributed.all_sum(x, group=self.group) if self._on and self.size > 1 else x

    def gather_last(self, x: mx.array) -> mx.array:
        """Concatenate every rank's `x` along the last axis, in rank order."""
        if not self._on or self.size == 1:
            return mx.concatenate([x] * self.size, axis=-1) if self.size > 1 else x
        y = mx.distributed.all_gather(mx.moveaxis(x, -1, 0), group=self.group)
        return mx.moveaxis(y, 0, -1)

    @contextmanager
    def suspended(self) -> Iterator[None]:
        self._on = False
        try:
            yield
        finally:
            self._on = True


class ShardedAttention(Attention):
    """This rank's heads (q, kv, sinks) and out-projection columns; partial outputs all-summed."""

    def __init__(self, args: ModelArgs, rope: YarnRoPE, comm: Comm) -> None:
        super().__init__(args, rope)
        self._comm = comm

    def __call__(self, x: mx.array, mask, cache=None, offset: int = 0) -> mx.array:
        return self._comm.all_sum(super().__call__(x, mask, cache, offset))


class ShardedMoE(MoE):
    """Every expert, this rank's share of each expert's intermediate units; partial outputs all-summed."""

    def __init__(self, args: ModelArgs, comm: Comm) -> None:
        super().__init__(args)
        self._comm = comm

    def __call__(self, x: mx.array) -> mx.array:
        return self._comm.all_sum(super().__call__(x))


def _vocab_lookup(emb: nn.Module, lookup, tokens: mx.array) -> mx.array:
    """Rows for the tokens this rank holds, zeros for the others, all-summed over the ranks."""
    local = tokens - emb._start
    inside = (local >= 0) & (local < emb._rows)
    x = lookup(mx.where(inside, local, 0))
    return emb._comm.all_sum(x * mx.expand_dims(inside, -1).astype(x.dtype))


class VocabShardedEmbedding(nn.Embedding):
    """Rows [start, start + rows) of the embedding table."""

    def __init__(self, rows: int, dims: int, start: int, comm: Comm) -> None:
        super().__init__(rows, dims)
        self._start, self._rows, self._comm = start, rows, comm

    def __call__(self, tokens: mx.array) -> mx.array:
        return _vocab_lookup(self, super().__call__, tokens)


class QuantizedVocabShardedEmbedding(nn.QuantizedEmbedding):
    """`VocabShardedEmbedding` with affine-quantized rows (`mlx-oss convert --dense-bits`)."""

    def __init__(self, rows: int, dims: int, start: int, comm: Comm, group_size: int, bits: int) -> None:
        super().__init__(rows, dims, group_size=group_size, bits=bits)
        self._start, self._rows, self._comm = start, rows, comm

    def __call__(self, tokens: mx.array) -> mx.array:
        return _vocab_lookup(self, super().__call__, tokens)


class ShardedModel(Model):
    """`Model` whose blocks, embedding and lm_head hold this rank's slices (`ShardPlan`)."""

    def __init__(self, plan: ShardPlan, comm: Comm) -> None:
        args = plan.local_args()
        super().__init__(args)  # full-size placeholders below are lazy zeros, never materialised
        self.plan = plan
        self.comm = comm
        rope = self.layers[0].attn._rope if self.layers else None
        for layer in self.layers:
            layer.attn = ShardedAttention(args, rope, comm)
            layer.mlp = ShardedMoE(args, comm)
        dq = args.dense_quant.params_for("embed") if args.dense_quant else None
        if dq:
            self.embed = QuantizedVocabShardedEmbedding(plan.vocab, args.hidden_size, plan.vocab_start, comm, **dq)
        else:
            self.embed = VocabShardedEmbedding(plan.vocab, args.hidden_size, plan.vocab_start, comm)
        self.unembed = nn.Linear(args.hidden_size, plan.vocab, bias=False)

    def logits(self, h: mx.array) -> mx.array:
        """Hidden [B, T, H] -> logits [B, T, vocab]: this rank's vocabulary rows, gathered."""
        return self.comm.gather_last(super().logits(h))


def build_sharded_model(plan: ShardPlan, comm: Comm) -> ShardedModel:
    """An unloaded sharded model; dense layers quantized as the folder says (the embedding already is)."""
    model = ShardedModel(plan, comm)
    dq = plan.args.dense_quant
    if dq is not None:
        nn.quantize(
            model, group_size=dq.group_size, bits=dq.bits,
            class_predicate=lambda path, m: type(m) in (nn.Linear, nn.Embedding) and (dq.params_for(path) or False),
        )  # fmt: skip
    return model
