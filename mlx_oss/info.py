"""What a model costs before you load it: parameters, bytes per weight format, KV cache, memory, and
which Macs it fits (with which settings).

Works on a converted folder, a Hugging Face or original checkpoint, or a bare config.json, so a user
can check whether gpt-oss-120b fits their Mac before downloading 65 GB. Imports no MLX.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mlx_oss.config import SCORE_BLOCK_BYTES, Dims, check_kv_quant, read_json_object, slot_bytes
from mlx_oss.convert import dense_quant
from mlx_oss.convert.layouts import Spec, our_specs
from mlx_oss.convert.manifest import check_folder
from mlx_oss.convert.reader import detect_layout, dims_for, open_source
from mlx_oss.convert.safetensors_io import nbytes_of
from mlx_oss.errors import ConvertError

DTYPE_BYTES = {"bfloat16": 2, "float32": 4}
KV_SETTINGS: tuple[int | None, ...] = (None, 8, 4)  # the cache kinds `info` compares: --kv-bits absent / 8 / 4
DENSE_BITS = (8, 4)  # `mlx-oss convert --dense-bits` (affine, groups of dense_quant.GROUP_SIZE)

# `mlx_oss.engine.DEFAULT_PREFILL_CHUNK`, repeated so that `info` needs no MLX import (tests/test_info.py
# holds the two equal): tokens per forward call while prefilling, what the activation estimate assumes.
PREFILL_CHUNK = 2048
# Measured peak of `mlx_oss.nn.attention.quantized_attention` (mx.get_peak_memory, mlx 0.32.4 CPU, float32
# and bfloat16, T 256-512 x S 4096-8192): 3.0x the score array of one block of queries (scores, masked
# scores, sink column + softmax), a block's float32 scores being at most `SCORE_BLOCK_BYTES`. The same
# graph runs on Metal; the unquantized path uses MLX's fused attention, which on Metal builds no such array.
QUANTIZED_SCORE_COPIES = 3
RUN_CONTEXT = 4096  # what "runs" means for the advice when --context is not given: a prompt and a reply fit
MAC_MEMORY_GB = (16, 24, 32, 48, 64, 96, 128, 192)  # Apple silicon sizes (Apple's "GB" are GiB)
OS_RESERVE = 4 * 2**30  # what a raised wired limit leaves to macOS and apps: our margin, not an Apple rule


def kv_settings(info: ModelInfo, kv_bits: int | None, group_size: int = 64) -> list[int | None]:
    """The cache settings `info` shows: `kv_bits` alone when given, else the unquantized cache and the
    quantized ones the model's head_dim allows with `group_size`."""
    if kv_bits is not None:
        return [kv_bits]
    return [None] + ([b for b in KV_SETTINGS if b] if info.dims.head_dim % group_size == 0 else [])


def kv_key(bits: int | None) -> str:
    """The name of a cache setting in text and JSON."""
    return "unquantized" if bits is None else f"{bits}-bit"


def default_gpu_limit(memory: int) -> int:
    """Bytes the GPU may use on a Mac with `memory` bytes of RAM, by default (`iogpu.wired_limit_mb=0`).

    Apple does not document the rule; Metal's recommendedMaxWorkingSetSize, as llama.cpp and MLX users
    log it, is 2/3 of RAM below 36 GB (16 GB -> 10.67 GiB, 32 GB -> 21.33 GiB) and 3/4 from 36 GB
    (36 GB -> 27 GiB, 64 GB -> 48 GiB); recent macOS versions may give more. On a Mac, `info` uses the
    machine's own value (`mlx_oss.backend.device`), which also follows a raised `iogpu.wired_limit_mb`.
    """
    return memory * 3 // 4 if memory >= 36 * 2**30 else memory * 2 // 3


def raised_gpu_limit(memory: int) -> int:
    """The most the advice suggests wiring with `sudo sysctl iogpu.wired_limit_mb=N`: all but OS_RESERVE."""
    return max(memory - OS_RESERVE, 0)


@dataclass
class ModelInfo:
    dims: Dims
    layout: str
    params: dict[str, int] = field(default_factory=dict)  # weight format -> parameter count
    bytes: dict[str, int] = field(default_factory=dict)  # weight format -> bytes on disk / in memory
    integrity: str | None = None  # what was checked against manifest.json (mlx-oss folders)
    from_config: bool = False  # sizes from a config.json alone (no weights to convert here)

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

    def weight_bytes_dense_bits(self, bits: int) -> int | None:
        """Bytes after `mlx-oss convert --dense-bits bits`: the tensors the converter quantizes
        (`dense_quant.is_quantizable`: attention qkv/out, embedding, lm_head) become its affine codes plus
        bf16 scales and biases per group of `dense_quant.GROUP_SIZE` (exact: the converter's own shapes).
        None when the dense weights are already quantized (the converter keeps those as they are)."""
        if "affine dense" in self.bytes:
            return None
        before = after = 0
        for s in our_specs(self.dims):
            if dense_quant.is_quantizable(s.name):
                before += nbytes_of(s.dtype, s.shape)
                after += sum(nbytes_of(dt, shape) for _, dt, shape in dense_quant.quantized_specs(s.name, s.shape, bits))
        return self.weight_bytes - before + after

    @property
    def full_layers(self) -> int:
        return sum(t == "full_attention" for t in self.dims.layer_types)

    @property
    def sliding_layers(self) -> int:
        return self.dims.num_hidden_layers - self.full_layers

    def slot_bytes(self, dtype: str = "bfloat16", bits: int | None = None, group_size: int = 64) -> int:
        """One position's K and V in one layer (`mlx_oss.config.slot_bytes`, the cache's own formula)."""
        d = self.dims
        check_kv_quant(bits, group_size, d.head_dim)  # a group size that does not divide head_dim: ValueError
        return slot_bytes(d.num_key_value_heads, d.head_dim, DTYPE_BYTES[dtype], bits, group_size)

    def kv_bytes_per_token(self, dtype: str = "bfloat16", bits: int | None = None, group_size: int = 64) -> int:
        """Growing cost: full-attention layers keep K and V for every token (`bits` 8/4: quantized)."""
        return self.full_layers * self.slot_bytes(dtype, bits, group_size)

    def kv_bytes(self, context: int, dtype: str = "bfloat16", bits: int | None = None, group_size: int = 64) -> int:
        """Full layers hold every token (`bits`: quantized); sliding layers a ring of `sliding_window`
        slots, allocated whole and kept in full precision even with `bits` (`mlx_oss.nn.cache.make_cache`:
        its few MiB are where quantizing costs the most accuracy)."""
        ring = self.sliding_layers * self.dims.sliding_window * self.slot_bytes(dtype) if context > 0 else 0
        return self.full_layers * context * self.slot_bytes(dtype, bits, group_size) + ring

    def activation_bytes(self, context: int, dtype: str = "bfloat16", bits: int | None = None) -> int:
        """An ESTIMATE of the working memory on top of weights and cache: one prefill chunk of
        T = min(PREFILL_CHUNK, context) tokens ending at `context` (the worst case: a long prompt).
        Layers run one after another and MLX frees each intermediate once used, so one layer's
        temporaries count, in the compute dtype: the MoE's T x top-k rows (input copy, gate_up 2I, SwiGLU I)
        and the attention's qkv, rotated q/k, output and four hidden-size rows (norms, projection,
        residuals). Unquantized, Metal's fused attention builds no score array; a quantized cache is
        attended by `quantized_attention`, which builds the [n_heads, T, context] scores in blocks of
        queries of at most SCORE_BLOCK_BYTES (float32), QUANTIZED_SCORE_COPIES of one block at its peak."""
        d, s = self.dims, DTYPE_BYTES[dtype]
        T = min(PREFILL_CHUNK, context)
        qkv = (d.num_attention_heads + 2 * d.num_key_value_heads) * d.head_dim
        moe = T * d.experts_per_token * (d.hidden_size + 3 * d.intermediate_size)
        attn = T * (2 * qkv + d.num_attention_heads * d.head_dim + 4 * d.hidden_size)
        scores = 0 if bits is None else QUANTIZED_SCORE_COPIES * min(4 * d.num_attention_heads * T * context, SCORE_BLOCK_BYTES)
        return max(moe, attn) * s + scores

    def needed_bytes(
        self, context: int, dtype: str = "bfloat16", bits: int | None = None, group_size: int = 64,
        dense_bits: int | None = None,
    ) -> int:  # fmt: skip
        """Weights (as stored, or after `--dense-bits`) + KV cache + activations (estimate) at `context`."""
        return self._needed(context, self.weights_with(dense_bits, dtype), dtype, bits, group_size)

    def weights_with(self, dense_bits: int | None, dtype: str = "bfloat16") -> int:
        """Weight bytes as stored (dense held in `dtype`), or after `--dense-bits` (ValueError if it cannot apply)."""
        weights = self.weight_bytes_at(dtype) if dense_bits is None else self.weight_bytes_dense_bits(dense_bits)
        if weights is None:
            raise ValueError("the dense weights are already quantized: --dense-bits does not apply")
        return weights

    def _needed(self, context: int, weights: int, dtype: str, bits: int | None, group_size: int) -> int:
        return weights + self.kv_bytes(context, dtype, bits, group_size) + self.activation_bytes(context, dtype, bits)

    def longest_context(self, limit: int, bits: int | None = None, group_size: int = 64, dense_bits: int | None = None,
                        dtype: str = "bfloat16") -> int:  # fmt: skip
        """The longest context (<= max_position_embeddings) whose `needed_bytes` fit `limit`; 0: none."""
        weights = self.weights_with(dense_bits, dtype)

        def fits(c: int) -> bool:
            return self._needed(c, weights, dtype, bits, group_size) <= limit

        lo, hi = 0, self.dims.max_position_embeddings  # needed_bytes grows with the context: bisect
        if fits(hi):
            return hi
        while hi - lo > 1:  # invariant: lo fits (or is 0), hi does not
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if fits(mid) else (lo, mid)
        return lo


AUTO_BATCH_CAP = 8  # `serve --max-batch auto` never batches more (the step cost grows with the rows; docs/SERVER.md)


def auto_batch_size(limit: int, weights: int, cache_bytes: int, per_sequence: int, cap: int = AUTO_BATCH_CAP) -> int:
    """`mlx-oss serve --max-batch auto`: how many sequences at the full context fit `limit` bytes (the GPU's
    working set, or the RAM on the CPU backend) beside the weights and the prompt-cache pool's budget
    (`--cache-bytes`, which the pool may fill), each needing `per_sequence` bytes of KV cache; at least 1
    (one at a time always runs), at most `cap`."""
    free = limit - weights - cache_bytes
    return max(1, min(cap, free // max(1, per_sequence)))


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
    return f"{spec.dtype.lower()} dense", n  # "bf16 dense", "f32 dense", ... as stored


def describe(path: str | Path) -> ModelInfo:
    """Inspect a folder (any layout) or a config.json; tensors are read from headers only. An mlx-oss
    folder is also held to its manifest (sizes, headers): a damaged one raises ConvertError."""
    path = Path(path).expanduser()
    integrity = None
    if path.is_file() and path.name.endswith(".json"):
        cfg = read_json_object(path)  # a bad file is named in one line
        layout = "mlx-oss" if cfg.get("format") == "mlx-oss" else "hf" if cfg.get("model_type") == "gpt_oss" else "original"
        dims = dims_for(layout, cfg, path)
        info = ModelInfo(dims, layout, from_config=True)
        _count_bytes(info, list(our_specs(dims)))
        return info
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
    _count_bytes(info, specs)
    return info


def _count_bytes(info: ModelInfo, specs: list[Spec]) -> None:
    """Parameters and bytes per weight format of the stored tensors `specs`."""
    dims = info.dims
    by_name = {s.name: s for s in specs}
    dense = {s.name: s for s in our_specs(dims)}  # unquantized shapes, whatever the group size/bits
    for s in specs:
        fmt, n = _classify(s, by_name, dense)
        info.params[fmt] = info.params.get(fmt, 0) + n
        info.bytes[fmt] = info.bytes.get(fmt, 0) + nbytes_of(s.dtype, s.shape)


# ---------------------------------------------------------------- which Macs it fits, with which settings


@dataclass(frozen=True)
class Mac:
    label: str  # "16 GB", "this Mac (Apple M3, 16 GB)"
    memory: int  # bytes of RAM
    gpu_limit: int  # bytes the GPU may use as the Mac is set (a size from the table: default_gpu_limit)


def mac_sizes(gbs: tuple[int, ...] | list[int] = MAC_MEMORY_GB) -> list[Mac]:
    return [Mac(f"{gb} GB", gb * 2**30, default_gpu_limit(gb * 2**30)) for gb in gbs]


@dataclass(frozen=True)
class Setup:
    """A way to run the model: weights as stored or converted with --dense-bits, a cache setting, and
    the GPU limit as the Mac is set or raised to `raised_gpu_limit`."""

    dense_bits: int | None = None
    kv_bits: int | None = None
    raised: bool = False

    def cost(self, kv_fixed: bool) -> tuple[int, ...]:
        """Order of preference: 8-bit steps cost little accuracy (docs/MODEL.md measures the 8-bit
        cache), raising the wired limit costs macOS headroom and sudo, 4-bit steps cost accuracy.
        A cache setting the user chose (--kv-bits) costs nothing. Ties: fewer changes, the cache first."""
        step = {None: 0, 8: 1, 4: 3}
        kv = 0 if kv_fixed else step[self.kv_bits]
        changes = (self.dense_bits is not None) + (not kv_fixed and self.kv_bits is not None) + self.raised
        return (step[self.dense_bits] + kv + 2 * self.raised, changes, self.raised, self.dense_bits is not None)


@dataclass
class Advice:
    mac: Mac
    target: int  # the context asked for (--context's largest, else RUN_CONTEXT)
    default_longest: int  # as stored, the cache setting asked for, the Mac's limit
    setup: Setup | None  # what to change (None: nothing runs on this Mac)
    longest: int = 0  # the longest context with `setup`
    limit: int = 0  # the GPU limit with `setup`
    weights: int = 0  # weight bytes with `setup`
    longer: tuple[Setup, int] | None = None  # a setup that reaches further, when `setup` stops short
    least_weights: int = 0  # the smallest weights any setup gives (why nothing runs)
    unquantized_longest: int | None = None  # with --kv-bits asked for: the setup's reach without it

    @property
    def fits(self) -> bool:
        return self.longest >= self.target

    @property
    def wired_limit_mb(self) -> int | None:
        return self.limit // 2**20 if self.setup is not None and self.setup.raised else None


def advise(info: ModelInfo, mac: Mac, target: int, kv_bits: list[int | None], group_size: int = 64) -> Advice | None:
    """None when the model as stored runs `target` tokens on `mac` with the first of `kv_bits` (the
    setting asked for); else the cheapest `Setup` (see `Setup.cost`) that does, or, when none does, the
    one with the longest context. Metal, bfloat16."""
    kv_fixed = len(kv_bits) == 1
    default_longest = info.longest_context(mac.gpu_limit, kv_bits[0], group_size)
    if default_longest >= target:
        return None
    dense = [None] + [b for b in DENSE_BITS if info.weight_bytes_dense_bits(b) is not None]
    raise_options = [False, True] if raised_gpu_limit(mac.memory) > mac.gpu_limit else [False]
    setups = sorted((Setup(d, k, r) for d in dense for k in kv_bits for r in raise_options), key=lambda s: s.cost(kv_fixed))
    longest = {s: info.longest_context(_limit(mac, s), s.kv_bits, group_size, s.dense_bits) for s in setups}
    best = max(setups, key=lambda s: longest[s])  # the first (cheapest) of equals
    least = min(info.weights_with(d) for d in dense)
    if longest[best] == 0:
        return Advice(mac, target, default_longest, None, least_weights=least)
    chosen = next((s for s in setups if longest[s] >= target), best)
    longer = (best, longest[best]) if longest[best] > longest[chosen] else None
    unq = None
    if kv_fixed and chosen.kv_bits is not None:  # the same setup with an unquantized cache, for comparison
        unq = info.longest_context(_limit(mac, chosen), None, group_size, chosen.dense_bits)
    return Advice(mac, target, default_longest, chosen, longest[chosen], _limit(mac, chosen),
                  info.weights_with(chosen.dense_bits), longer, least, unq)  # fmt: skip


def _limit(mac: Mac, s: Setup) -> int:
    return raised_gpu_limit(mac.memory) if s.raised else mac.gpu_limit


@dataclass
class Fit:
    mac: Mac
    longest: dict[str, int]  # cache setting -> longest context, weights as stored, the Mac's limit
    advice: Advice | None


def fit_macs(info: ModelInfo, macs: list[Mac], kv_bits: list[int | None], group_size: int = 64,
             target: int | None = None) -> list[Fit]:  # fmt: skip
    """The longest context per Mac and cache setting, and advice where the first setting does not run
    `target` tokens (default RUN_CONTEXT, at most the model's context)."""
    target = min(target or RUN_CONTEXT, info.dims.max_position_embeddings)
    return [
        Fit(mac, {kv_key(b): info.longest_context(mac.gpu_limit, b, group_size) for b in kv_bits},
            advise(info, mac, target, kv_bits, group_size))
        for mac in macs
    ]  # fmt: skip


def _steps(info: ModelInfo, s: Setup, mac: Mac, group_size: int, source: str) -> str:
    """The changes `s` makes, as commands."""
    out = []
    if s.dense_bits is not None:
        out.append(f"convert with `mlx-oss convert {source} FOLDER --dense-bits {s.dense_bits}` "
                   f"(weights {_gib(info.weights_with(s.dense_bits))})")  # fmt: skip
    if s.kv_bits is not None:
        g = f" --kv-group-size {group_size}" if group_size != 64 else ""
        out.append(f"run with `--kv-bits {s.kv_bits}{g}`")
    else:
        out.append("keep the cache unquantized (no --kv-bits)")
    if s.raised:
        out.append(f"raise the GPU limit with `sudo sysctl iogpu.wired_limit_mb={raised_gpu_limit(mac.memory) // 2**20}` "
                   f"(until a restart; leaves {OS_RESERVE // 2**30} GiB to macOS)")  # fmt: skip
    return ", ".join(out[:-1]) + " and " + out[-1] if len(out) > 1 else out[0]


def too_small_text(small: list[Advice]) -> str:
    """One line for the Macs where nothing runs, however set."""
    names = ", ".join(a.mac.label for a in small[:-1]) + (" and " if len(small) > 1 else "") + small[-1].mac.label
    top = small[-1].mac
    macs = "Macs" if len(small) > 1 else "Mac"
    return (f"{names} {macs}: too small with any setting: the weights alone take at least "
            f"{_gib(small[-1].least_weights)}, "
            f"more than the {_gib(raised_gpu_limit(top.memory))} worth wiring on {top.label} "
            f"(all but {OS_RESERVE // 2**30} GiB).")  # fmt: skip


def advice_text(info: ModelInfo, a: Advice, group_size: int, source: str) -> str:
    """One paragraph: what to set so the model runs `a.target` tokens on `a.mac`, from the numbers."""
    head = f"{a.mac.label} Mac: as stored ({_gib(info.weight_bytes)} of weights), "
    if a.default_longest:
        head += f"contexts up to {a.default_longest} tokens fit under the GPU limit of {_gib(a.mac.gpu_limit)}"
    else:
        head += f"it does not fit under the GPU limit of {_gib(a.mac.gpu_limit)}"
    src = "CHECKPOINT" if info.layout == "mlx-oss" or info.from_config else source  # what convert can read
    steps = _steps(info, a.setup, a.mac, group_size, src)
    if a.fits:
        text = f"{head}. To run {a.target} tokens: {steps}; then contexts up to {a.longest} tokens fit."
    else:
        kv = f" with --kv-bits {a.setup.kv_bits}" if a.unquantized_longest is not None else ""
        text = f"{head}. No setting{kv} runs {a.target} tokens; the longest, {a.longest} tokens: {steps}."
    if a.longer is not None:
        s, n = a.longer
        text += f" Up to {n} tokens: {_flags(info, s, a.mac, group_size)}."
    if a.unquantized_longest is not None and a.unquantized_longest > a.longest:
        text += (f" The same without --kv-bits: up to {a.unquantized_longest} tokens (a quantized cache's "
                 "attention builds each prefill chunk's scores).")  # fmt: skip
    return text


def _flags(info: ModelInfo, s: Setup, mac: Mac, group_size: int) -> str:
    """`s` in short, for a second option after `_steps` spelled out the commands."""
    out = [f"--dense-bits {s.dense_bits} (weights {_gib(info.weights_with(s.dense_bits))})" if s.dense_bits else "weights as stored"]
    g = f" --kv-group-size {group_size}" if s.kv_bits and group_size != 64 else ""
    out.append(f"--kv-bits {s.kv_bits}{g}" if s.kv_bits else "an unquantized cache")
    out.append(f"iogpu.wired_limit_mb={raised_gpu_limit(mac.memory) // 2**20}" if s.raised else "the default GPU limit")
    return ", ".join(out)


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


def format_info(
    info: ModelInfo, contexts: list[int], kv_bits: int | None = None, group_size: int = 64,
    macs: list[Mac] | None = None, target: int | None = None, source: str = "CHECKPOINT",
) -> str:  # fmt: skip
    """The text of `mlx-oss info`. `kv_bits` None compares the unquantized, 8-bit and 4-bit caches;
    8 or 4 shows that setting only. `macs` default: `mac_sizes()`; `target`: see `fit_macs`."""
    d = info.dims
    settings = kv_settings(info, kv_bits, group_size)
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
    dq = {b: info.weight_bytes_dense_bits(b) for b in DENSE_BITS}
    if all(v is not None for v in dq.values()):
        lines.append("                  " + ", ".join(f"{_gib(v)} with --dense-bits {b}" for b, v in dq.items())
                     + f" (`mlx-oss convert`: affine, groups of {dense_quant.GROUP_SIZE})")  # fmt: skip
    per = ", ".join(
        f"{kv_key(b)} {info.kv_bytes_per_token('bfloat16', b, group_size) / 1024:.1f}"
        f" / {info.kv_bytes_per_token('float32', b, group_size) / 1024:.1f} KiB"
        for b in settings
    )
    group = f", groups of {group_size}" if any(b is not None for b in settings) else ""
    lines.append(f"KV cache          per token (bf16 Metal / float32 CPU{group}): {per}")
    ring = info.kv_bytes(1) - info.kv_bytes_per_token()
    lines.append(f"                  full layers only; the {info.sliding_layers} sliding layers add a {d.sliding_window}-slot "
                 f"ring each, never quantized ({_gib(ring)} bf16)")  # fmt: skip
    lines.append("memory needed     weights as stored + KV cache (Metal: bf16; CPU: float32)")
    lines.append(f"{'context':>17}" + "".join(f"{kv_key(b):>14}" for b in settings) + f"{kv_key(settings[0]) + ' CPU':>20}")
    for c in contexts:
        row = "".join(f"{_gib(info.weight_bytes + info.kv_bytes(c, 'bfloat16', b, group_size)):>14}" for b in settings)
        cpu = info.weight_bytes_at("float32") + info.kv_bytes(c, "float32", settings[0], group_size)
        lines.append(f"{c:>17}{row}{_gib(cpu):>20}")
    act = info.activation_bytes(PREFILL_CHUNK)
    lines.append(f"activations       ~{_gib(act)} for a {PREFILL_CHUNK}-token prefill chunk (estimate)")
    if any(b is not None for b in settings):
        lines.append(f"                  + up to {_gib(QUANTIZED_SCORE_COPIES * SCORE_BLOCK_BYTES)} with a quantized cache: "
                     "its attention builds the scores of a block of queries at a time")  # fmt: skip
    fits = fit_macs(info, mac_sizes() if macs is None else macs, settings, group_size, target)
    lines.append("longest context   weights as stored + KV cache + activations (a full prefill chunk) under the GPU limit, "
                 "Metal, bf16")  # fmt: skip
    lines.append(f"{'Mac':>17}{'GPU limit':>12}" + "".join(f"{kv_key(b):>14}" for b in settings))
    for f in fits:
        cells = "".join(f"{(str(f.longest[kv_key(b)]) if f.longest[kv_key(b)] else '-'):>14}" for b in settings)
        lines.append(f"{f.mac.label:>17}{_gib(f.mac.gpu_limit):>12}{cells}")
    here = "; this Mac: Metal's, as set now" if any(f.mac.label.startswith("this Mac") for f in fits) else ""
    lines.append("                  GPU limit: macOS's default, about 2/3 of RAM below 36 GB and 3/4 from 36 GB "
                 f"(`iogpu.wired_limit_mb`){here}")  # fmt: skip
    advice = [advice_text(info, f.advice, group_size, source) for f in fits if f.advice and f.advice.setup]
    small = [f.advice for f in fits if f.advice and not f.advice.setup]
    if small:
        advice.insert(0, too_small_text(small))
    for i, text in enumerate(advice):
        lines.append(("advice            " if i == 0 else "                  ") + text)
    if info.integrity:
        lines.append(f"integrity         {info.integrity}")
    return "\n".join(lines)


def _advice_json(info: ModelInfo, a: Advice | None, group_size: int, source: str) -> dict | None:
    if a is None:
        return None
    out = {"target_context": a.target, "default_longest_context": a.default_longest, "runs": a.setup is not None}
    if a.setup is None:
        return {**out, "least_weight_bytes": a.least_weights, "text": too_small_text([a])}
    return {
        **out, "fits_target": a.fits, "dense_bits": a.setup.dense_bits, "kv_bits": a.setup.kv_bits,
        "wired_limit_mb": a.wired_limit_mb, "gpu_limit_bytes": a.limit, "weight_bytes": a.weights,
        "longest_context": a.longest, "unquantized_longest_context": a.unquantized_longest,
        "longer": None if a.longer is None else {"dense_bits": a.longer[0].dense_bits, "kv_bits": a.longer[0].kv_bits,
                                                 "raised": a.longer[0].raised, "longest_context": a.longer[1]},
        "text": advice_text(info, a, group_size, source),
    }  # fmt: skip


def info_json(
    info: ModelInfo, contexts: list[int], kv_bits: int | None = None, group_size: int = 64,
    macs: list[Mac] | None = None, target: int | None = None, source: str = "CHECKPOINT",
) -> dict:  # fmt: skip
    """`mlx-oss info --json`: the text's figures. The top-level KV and memory figures are for the cache
    setting asked for (`kv_bits`, None: unquantized); "memory_fit" compares the settings the text shows."""
    settings = kv_settings(info, kv_bits, group_size)
    fits = fit_macs(info, mac_sizes() if macs is None else macs, settings, group_size, target)
    return {
        "layout": info.layout,
        "integrity": info.integrity,
        "dims": info.dims.ours(),
        "parameters": info.params,
        "bytes": info.bytes,
        "weight_bytes": info.weight_bytes,
        "weight_bytes_float32_dense": info.weight_bytes_at("float32"),
        "weight_bytes_dense_bits": {str(b): info.weight_bytes_dense_bits(b) for b in DENSE_BITS},
        "kv_bits": kv_bits,
        "kv_group_size": group_size,
        "kv_bytes_per_token": {k: info.kv_bytes_per_token(k, kv_bits, group_size) for k in DTYPE_BYTES},
        "memory_bytes": {
            str(c): {k: info.weight_bytes_at(k) + info.kv_bytes(c, k, kv_bits, group_size) for k in DTYPE_BYTES}
            for c in contexts
        },
        "memory_fit": {
            "dtype": "bfloat16",
            "prefill_chunk": PREFILL_CHUNK,
            "os_reserve_bytes": OS_RESERVE,
            "kv_settings": [kv_key(b) for b in settings],
            "kv_bytes_per_token": {kv_key(b): info.kv_bytes_per_token("bfloat16", b, group_size) for b in settings},
            "memory_bytes": {
                str(c): {kv_key(b): info.needed_bytes(c, "bfloat16", b, group_size) for b in settings} for c in contexts
            },
            "activation_bytes_estimate": {
                str(c): {kv_key(b): info.activation_bytes(c, "bfloat16", b) for b in settings} for c in contexts
            },
            "macs": [
                {
                    "label": f.mac.label,
                    "memory_bytes": f.mac.memory,
                    "gpu_limit_bytes": f.mac.gpu_limit,
                    "raised_gpu_limit_bytes": raised_gpu_limit(f.mac.memory),
                    "longest_context": f.longest,
                    "advice": _advice_json(info, f.advice, group_size, source),
                }
                for f in fits
            ],
        },
    }


__all__ = [
    "Advice", "Mac", "ModelInfo", "Setup", "advise", "default_gpu_limit", "describe", "detect_layout", "fit_macs",
    "format_info", "info_json", "mac_sizes", "raised_gpu_limit",
]  # fmt: skip
