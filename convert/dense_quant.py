"""Optional 8/4-bit affine quantization of the big dense matrices, with the error it introduces.

MXFP4 experts are never touched here. Quantization runs through MLX in row chunks (MLX's CPU quantize
crashes on arrays over ~2^31 bytes) and reports the relative error of `x @ W.T` on a fixed batch of
activations, so a user can judge what the smaller file costs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

GROUP_SIZE = 64
ROWS_PER_CHUNK = 4096
ERROR_BATCH = 16  # fixed activation rows used for the error report

# our tensor-name suffixes that may be quantized (FORMAT.md)
QUANTIZABLE = ("attn.qkv.weight", "attn.out.weight", "embed.weight", "unembed.weight")


def is_quantizable(name: str) -> bool:
    return name.endswith(QUANTIZABLE)


def quantized_specs(name: str, shape: tuple[int, ...], bits: int) -> list[tuple[str, str, tuple[int, ...]]]:
    """The three tensors a quantized `X.weight` becomes (MLX's QuantizedLinear layout)."""
    rows, k = shape
    base = name[: -len(".weight")]
    return [
        (base + ".weight", "U32", (rows, k * bits // 32)),
        (base + ".scales", "BF16", (rows, k // GROUP_SIZE)),
        (base + ".biases", "BF16", (rows, k // GROUP_SIZE)),
    ]


@dataclass
class ErrorMeter:
    """Accumulates ||x W^T - x Wq^T||^2 and ||x W^T||^2 over row chunks of one matrix."""

    k: int
    x: np.ndarray = field(init=False)
    num: float = 0.0
    den: float = 0.0

    def __post_init__(self) -> None:
        rng = np.random.default_rng(1234)
        self.x = rng.standard_normal((ERROR_BATCH, self.k), dtype=np.float32)

    def add(self, w: np.ndarray, wq: np.ndarray) -> None:
        y, yq = self.x @ w.T, self.x @ wq.T
        self.num += float(np.sum((y - yq) ** 2))
        self.den += float(np.sum(y**2))

    @property
    def relative_error(self) -> float:
        return (self.num / self.den) ** 0.5 if self.den else 0.0


def quantize_chunk(bf16_bits: np.ndarray, bits: int, meter: ErrorMeter | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """bf16 rows (as uint16) -> (uint32 weight, bf16 scales, bf16 biases) as uint16/uint32 numpy."""
    import mlx.core as mx

    w = mx.array(bf16_bits).view(mx.bfloat16)
    wq, scales, biases = mx.quantize(w, group_size=GROUP_SIZE, bits=bits)
    if meter is not None:
        deq = mx.dequantize(wq, scales, biases, group_size=GROUP_SIZE, bits=bits)
        meter.add(np.array(w.astype(mx.float32)), np.array(deq.astype(mx.float32)))
    return np.array(wq), np.array(scales.view(mx.uint16)), np.array(biases.view(mx.uint16))
