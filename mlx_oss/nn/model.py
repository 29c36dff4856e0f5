"""gpt-oss in MLX, block for block as OpenAI's reference `gpt_oss/torch/model.py`.

Module names follow our converted format (docs/FORMAT.md), so a folder's tensors load by name:
`embed`, `layers.{i}.{attn_norm, attn.{qkv, sinks, out}, mlp_norm, mlp.{router, gate_up, down}}`,
`norm`, `unembed`.

`model(tokens [B, T], cache=None) -> logits [B, T, vocab]`: one forward pass. Work that does not depend
on the layer (masks, the position offset) is done once per call, not once per layer, and
`last_only=True` sends only the final position through the 201088-row lm_head. Long prompts are fed in
chunks by the caller (`mlx_oss.engine.prefill_chunks`, the one chunk loop).

`model.step(tokens [B], caches [B][layers]) -> logits [B, vocab]`: one decode token for each of B
independent sequences (own caches, offsets, rings) in one forward pass (`mlx_oss.batch`).
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from mlx_oss.config import ModelArgs
from mlx_oss.nn.attention import Attention, full_mask, sliding_mask
from mlx_oss.config import check_kv_quant
from mlx_oss.nn.cache import KVCache, RotatingKVCache, make_cache
from mlx_oss.nn.moe import MoE
from mlx_oss.nn.rope import YarnRoPE


class RMSNorm(nn.Module):
    """Reference RMSNorm: computed in float32 with a float32 weight, result cast back to the input dtype."""

    def __init__(self, dims: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = mx.ones((dims,), dtype=mx.float32)

    def __call__(self, x: mx.array) -> mx.array:
        return mx.fast.rms_norm(x.astype(mx.float32), self.weight, self.eps).astype(x.dtype)


class TransformerBlock(nn.Module):
    """x + attn(attn_norm(x)), then x + mlp(mlp_norm(x)): the reference's AttentionBlock + MLPBlock."""

    def __init__(self, args: ModelArgs, layer_idx: int, rope: YarnRoPE) -> None:
        super().__init__()
        self.sliding = args.is_sliding(layer_idx)
        self.attn_norm = RMSNorm(args.hidden_size, args.rms_norm_eps)
        self.attn = Attention(args, rope)
        self.mlp_norm = RMSNorm(args.hidden_size, args.rms_norm_eps)
        self.mlp = MoE(args)

    def __call__(self, x: mx.array, masks: tuple, cache=None, offset: int = 0, last_only: bool = False) -> mx.array:
        """x [B, T, H]; masks = (full-layer mask, sliding-layer mask) -> [B, T, H] ([B, 1, H] with
        `last_only`: attention still sees and caches all T positions, the MoE runs on the last one)."""
        x = x + self.attn(self.attn_norm(x), masks[self.sliding], cache, offset)
        if last_only:
            x = x[:, -1:]
        return x + self.mlp(self.mlp_norm(x))


class Model(nn.Module):
    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.args = args
        rope = YarnRoPE(
            args.head_dim, args.rope_theta, args.rope_scaling_factor, args.initial_context_length,
            args.rope_ntk_alpha, args.rope_ntk_beta,
        )  # fmt: skip
        self.embed = nn.Embedding(args.vocab_size, args.hidden_size)
        self.layers = [TransformerBlock(args, i, rope) for i in range(args.num_hidden_layers)]
        self.norm = RMSNorm(args.hidden_size, args.rms_norm_eps)
        self.unembed = nn.Linear(args.hidden_size, args.vocab_size, bias=False)
        self._first_sliding = next((i for i, l in enumerate(self.layers) if l.sliding), None)
        self.kv_bits: int | None = None  # the caches `make_cache()` makes: `load(..., kv_bits=)` sets them
        self.kv_group_size = 64

    # ------------------------------------------------------------------ caches

    def make_cache(
        self, kv_bits: int | None = None, kv_group_size: int | None = None, quantize_window: bool = False
    ) -> list[KVCache | RotatingKVCache]:
        """Rotating `sliding_window`-slot caches on sliding layers, growing caches on full layers;
        `kv_bits` 8 or 4: the full layers' quantized (the window too with `quantize_window`; see
        `mlx_oss.nn.cache.make_cache`), ValueError (one line) if bits or group size cannot apply.
        Without arguments, what the model was loaded for (`self.kv_bits`, `self.kv_group_size`), so every
        caller of `make_cache()` (Engine, Chat, the server, mlx-lm's generate) gets the same kind."""
        if kv_bits is None:
            kv_bits = self.kv_bits
        group = self.kv_group_size if kv_group_size is None else kv_group_size
        check_kv_quant(kv_bits, group, self.args.head_dim)
        return make_cache(self.args.layer_types, self.args.sliding_window, kv_bits, group, quantize_window)

    def set_kv_quant(self, kv_bits: int | None, kv_group_size: int = 64) -> None:
        """Make `make_cache()` return quantized caches from now on (None: unquantized); checked first."""
        check_kv_quant(kv_bits, kv_group_size, self.args.head_dim)
        self.kv_bits, self.kv_group_size = kv_bits, kv_group_size

    # ------------------------------------------------------------------ forward

    def hidden(self, tokens: mx.array, cache: list | None = None, last_only: bool = False) -> mx.array:
        """tokens [B, T] -> final hidden states [B, T, H], before the last norm. One pass, no chunking.

        `last_only` -> [B, 1, H]: the last layer's MoE runs on the last position only (what a prefill
        needs; 20b slice, 128 tokens: one MoE layer 8.6 s of a 4-layer prefill's ~47 s, docs/BENCH.md).
        """
        T = tokens.shape[1]
        offset = cache[0].offset if cache else 0
        retained = cache[self._first_sliding].retained(T) if cache and self._first_sliding is not None else 0
        masks = (full_mask(T), sliding_mask(T, retained, self.args.sliding_window))
        x = self.embed(tokens)  # [B, T, H]
        n = len(self.layers)
        for i, (layer, c) in enumerate(zip(self.layers, cache or [None] * n)):
            x = layer(x, masks, c, offset, last_only and i == n - 1)
        return x

    def step(self, tokens: mx.array | list[int], caches: list[list]) -> mx.array:
        """One decode step of B independent sequences: tokens [B] (sequence b's next token) and
        caches[b] (sequence b's per-layer caches, each with its own offset and ring state) -> logits
        [B, vocab]; every cache advances one position.

        One forward pass for all B: the embedding, norms, projections, MoE (routed per token) and the
        lm_head run once on [B, 1, H], so each weight is read once per step, not once per sequence;
        only attention runs per sequence (`Attention.decode_rows`). Row b equals `model(tokens[b:b+1],
        caches[b], last_only=True)` up to float rounding (tests/test_batch.py)."""
        tokens = mx.array(tokens, dtype=mx.int32) if isinstance(tokens, list) else tokens
        B = tokens.size
        if len(caches) != B or any(len(c) != len(self.layers) for c in caches):
            raise ValueError(
                f"step needs one cache list of {len(self.layers)} layers per token, got {len(caches)} for {B} tokens"
            )
        offsets = mx.array([c[0].offset for c in caches], dtype=mx.int32)  # per sequence, read before the writes
        x = self.embed(tokens.reshape(B, 1))  # [B, 1, H]
        for i, layer in enumerate(self.layers):
            x = layer(x, (None, None), [c[i] for c in caches], offsets)  # a decode step needs no mask
        return self.logits(x).reshape(B, -1)

    def logits(self, h: mx.array) -> mx.array:
        """Hidden [B, T, H] -> logits [B, T, vocab]."""
        return self.unembed(self.norm(h))

    def __call__(self, tokens: mx.array, cache: list | None = None, *, last_only: bool = False) -> mx.array:
        """tokens [B, T] -> logits [B, T, vocab] (or [B, 1, vocab] with `last_only`).

        With `cache`, positions continue from the cache's offset and the cache is updated.
        """
        if tokens.ndim != 2:
            raise ValueError(f"tokens must be [B, T], got shape {tokens.shape}")
        return self.logits(self.hidden(tokens, cache, last_only))

    @property
    def embed_dtype(self) -> mx.Dtype:
        """The compute dtype (dtype of the hidden states)."""
        e = self.embed
        return e.scales.dtype if isinstance(e, nn.QuantizedEmbedding) else e.weight.dtype


def build_model(args: ModelArgs) -> Model:
    """An uninitialised model; dense layers are swapped for quantized ones if the folder has them."""
    model = Model(args)
    dq = args.dense_quant
    if dq is not None:
        nn.quantize(
            model, group_size=dq.group_size, bits=dq.bits,
            class_predicate=lambda path, m: isinstance(m, (nn.Linear, nn.Embedding)) and (dq.params_for(path) or False),
        )  # fmt: skip
    return model
