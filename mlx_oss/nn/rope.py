"""YaRN rotary embedding exactly as OpenAI's reference computes it.

Differences from mlx-lm's `YarnRoPE` that matter for fidelity: the NTK-by-parts correction range is
kept fractional (about 8.09..17.40 for head_dim 64; mlx-lm floors/ceils it to 8..18), and the
concentration 0.1*ln(factor)+1 multiplies cos and sin. Because RoPE is linear in x, multiplying cos
and sin by c is the same as multiplying q and k by c, i.e. the attention logits by c**2: the attention
block folds c**2 into its softmax scale (`YarnRoPE.concentration`) instead of paying two
elementwise multiplies per layer per token.
"""

from __future__ import annotations

import math

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from mlx_oss.config import yarn_correction_range


def yarn_inv_freq(
    head_dim: int,
    base: float,
    scaling_factor: float = 1.0,
    initial_context_length: int = 4096,
    ntk_alpha: float = 1.0,
    ntk_beta: float = 32.0,
) -> tuple[float, np.ndarray]:
    """-> (concentration, inv_freq float32 [head_dim/2]), the reference's `_compute_concentration_and_inv_freq`."""
    freq = np.float32(base) ** (np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim))
    if scaling_factor <= 1.0:
        return 1.0, (1.0 / freq).astype(np.float32)
    concentration = 0.1 * math.log(scaling_factor) + 1.0
    d_half = head_dim / 2
    low, high = yarn_correction_range(head_dim, base, initial_context_length, ntk_alpha, ntk_beta)
    if not 0 < low < high < d_half - 1:
        raise ValueError(f"YaRN correction range {low:.3f}..{high:.3f} is outside (0, {d_half - 1})")
    interpolation = np.float32(1.0) / (np.float32(scaling_factor) * freq)
    extrapolation = np.float32(1.0) / freq
    ramp = (np.arange(d_half, dtype=np.float32) - np.float32(low)) / np.float32(high - low)
    mask = np.float32(1.0) - np.clip(ramp, 0, 1)
    inv_freq = interpolation * (1 - mask) + extrapolation * mask
    return concentration, inv_freq.astype(np.float32)


class YarnRoPE(nn.Module):
    """Half-split (non-traditional) RoPE with YaRN frequencies, WITHOUT the concentration factor.

    `__call__(x [B, heads, T, head_dim], offset)` rotates positions offset..offset+T-1.
    The caller applies `concentration` (see module docstring).
    """

    def __init__(
        self,
        head_dim: int,
        base: float,
        scaling_factor: float = 1.0,
        initial_context_length: int = 4096,
        ntk_alpha: float = 1.0,
        ntk_beta: float = 32.0,
    ) -> None:
        super().__init__()
        self.head_dim = head_dim
        c, inv_freq = yarn_inv_freq(head_dim, base, scaling_factor, initial_context_length, ntk_alpha, ntk_beta)
        self.concentration = c
        # mx.fast.rope takes periods (1/inv_freq); underscore keeps it out of parameters()
        self._freqs = mx.array(1.0 / inv_freq.astype(np.float64), dtype=mx.float32)

    def __call__(self, x: mx.array, offset: int | mx.array = 0) -> mx.array:
        return mx.fast.rope(
            x, self.head_dim, traditional=False, base=None, scale=1.0, offset=offset, freqs=self._freqs
        )

    def cos_sin(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Reference cos/sin (with concentration) for tests: float32 [T, head_dim/2]."""
        c, inv_freq = self.concentration, np.asarray(1.0 / np.array(self._freqs, dtype=np.float64), np.float32)
        f = np.asarray(positions, np.float32)[:, None] * inv_freq[None]
        return np.cos(f) * c, np.sin(f) * c
