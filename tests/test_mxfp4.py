"""MXFP4 as the checkpoints store it, and proof that MLX's mode="mxfp4" reads the very same bytes."""

import mlx.core as mx
import numpy as np
import pytest

from mlx_oss.convert import mxfp4


def _f32(a: mx.array) -> np.ndarray:
    return np.array(a.astype(mx.float32))


def test_low_nibble_is_even_element_and_scale_bias_127():
    blocks = np.zeros((1, 1, 16), np.uint8)
    blocks[0, 0, 0] = 0x2 | (0x9 << 4)  # element 0 = code 2 (+1.0), element 1 = code 9 (-0.5)
    blocks[0, 0, 15] = 0x7 << 4  # element 31 = code 7 (+6.0)
    scales = np.array([[128]], np.uint8)  # 2**(128-127) = 2
    v = mxfp4.dequantize(blocks, scales)[0]
    assert v[0] == 2.0 and v[1] == -1.0 and v[31] == 12.0
    assert np.count_nonzero(v) == 3


def test_quantize_round_trips_representable_values():
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 16, size=(4, 64))
    exps = rng.integers(-3, 4, size=(4, 2))
    x = mxfp4.FP4_VALUES[codes] * np.exp2(np.repeat(exps, 32, axis=1))
    # make every group's maximum 6*2^e so the chosen scale is exactly 2^e
    x[:, 0] = 6.0 * np.exp2(exps[:, 0])
    x[:, 32] = 6.0 * np.exp2(exps[:, 1])
    b, s = mxfp4.quantize(x)
    assert np.array_equal(mxfp4.dequantize(b, s), x.astype(np.float32))


def test_quantize_error_is_bounded():
    x = np.random.default_rng(1).standard_normal((8, 256)).astype(np.float32)
    b, s = mxfp4.quantize(x)
    err = np.abs(mxfp4.dequantize(b, s) - x)
    amax = np.abs(x.reshape(8, 8, 32)).max(-1).repeat(32, axis=1)
    assert np.all(err <= amax / 4 + 1e-7)  # half the widest E2M1 step (2) at scale amax/[4,8)


def test_mlx_reads_checkpoint_bytes_through_uint32_view():
    x = np.random.default_rng(2).standard_normal((3, 16, 128)).astype(np.float32) * 3
    b, s = mxfp4.quantize(x)
    w = mxfp4.blocks_to_words(b)
    assert w.dtype == np.uint32 and w.shape == (3, 16, 16)
    deq = mx.dequantize(mx.array(w), mx.array(s), None, group_size=32, bits=4, mode="mxfp4")
    assert np.array_equal(_f32(deq), mxfp4.dequantize(b, s))
    assert np.array_equal(mxfp4.words_to_blocks(w), b)


def test_mlx_quantized_matmul_on_checkpoint_bytes_matches_dense():
    rng = np.random.default_rng(3)
    wf = rng.standard_normal((48, 96)).astype(np.float32)
    b, s = mxfp4.quantize(wf)
    x = rng.standard_normal((5, 96)).astype(np.float32)
    y = mx.quantized_matmul(
        mx.array(x), mx.array(mxfp4.blocks_to_words(b)), mx.array(s), None,
        transpose=True, group_size=32, bits=4, mode="mxfp4",
    )  # fmt: skip
    np.testing.assert_allclose(_f32(y), x @ mxfp4.dequantize(b, s).T, rtol=1e-4, atol=1e-4)


def test_rejects_row_length_not_multiple_of_32():
    with pytest.raises(ValueError, match="multiple of 32"):
        mxfp4.quantize(np.zeros((2, 40), np.float32))
