"""Round-to-nearest int4 quantization (awqcore.quantize.rtn) against docs/format.md."""
from __future__ import annotations

import numpy as np
import pytest

from awqcore.quantize.rtn import MAX_Q, MIN_SCALE, dequantize_int4, quantize_int4


def reference_scales(w: np.ndarray, g: int) -> np.ndarray:
    """The per-group scale in float64, from the documented rule: the range of
    the group widened to include 0, over 15, at least MIN_SCALE. [out, in/g]"""
    groups = w.astype(np.float64).reshape(w.shape[0], -1, g)
    span = np.maximum(groups.max(-1), 0) - np.minimum(groups.min(-1), 0)
    return np.maximum(span / MAX_Q, MIN_SCALE)


def unpack_per_element(qweight: np.ndarray, in_features: int) -> np.ndarray:
    """Unpacks code by code with bit operations, as the spec words it: q[r, c] is
    in byte c/2 of row r, in the low nibble when c is even."""
    out = np.zeros((qweight.shape[0], in_features), dtype=np.int64)
    for r in range(qweight.shape[0]):
        for c in range(in_features):
            byte = int(qweight[r, c >> 1])
            out[r, c] = (byte >> (4 * (c & 1))) & 0xF
    return out


def weights(seed: int, out: int = 24, inp: int = 256) -> np.ndarray:
    """Gaussian rows plus the awkward cases: outliers, an all-positive row and
    an all-negative row (groups that do not straddle zero). [out, in] f32"""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((out, inp)).astype(np.float32) * 0.05
    w[1, 7] = 3.0
    w[2] = np.abs(w[2]) + 0.5
    w[3] = -np.abs(w[3]) - 0.01
    return w


@pytest.mark.parametrize("group_size", [32, 64, 128])
def test_error_is_within_half_a_step(group_size):
    w = weights(seed=group_size)
    qweight, scales, zeros = quantize_int4(w, group_size)
    n_groups = w.shape[1] // group_size
    assert qweight.dtype == np.uint8 and qweight.shape == (w.shape[0], w.shape[1] // 2)
    assert scales.dtype == np.float16 and scales.shape == (w.shape[0], n_groups)
    assert zeros.dtype == np.uint8 and zeros.shape == (w.shape[0], n_groups)

    np.testing.assert_array_equal(scales, reference_scales(w, group_size).astype(np.float16))
    deq = dequantize_int4(qweight, scales, zeros, group_size)
    assert deq.dtype == np.float32 and deq.shape == w.shape
    err = assert_within_bound(w, deq, scales, group_size)
    # The bound is tight enough to mean something: the error does reach ~half a step.
    assert (err / np.repeat(scales.astype(np.float64), group_size, axis=1)).max() > 0.4


def assert_within_bound(w: np.ndarray, deq: np.ndarray, scales: np.ndarray, g: int) -> np.ndarray:
    """Checks |w - deq| per element against the bound derived below; returns the errors.

    Rounding to the nearest step errs by at most half a step s16/2. The codes
    were chosen with the f16 scale s16 rather than the exact one, so the grid's
    15 steps can fall short of the group's range by 15 * |exact - s16|, which
    the element at the top of the range may add (the bottom cannot be clipped:
    the zero point is rounded from it). Plus f32 arithmetic rounding.
    """
    exact = reference_scales(w, g)                                      # [out, G]
    s16 = scales.astype(np.float64)                                     # [out, G]
    bound = np.repeat(s16 / 2 + MAX_Q * np.abs(exact - s16), g, axis=1)  # [out, in]
    bound += 4 * np.finfo(np.float32).eps * (np.abs(w) + np.repeat(s16, g, axis=1))
    err = np.abs(w.astype(np.float64) - deq)                            # [out, in]
    worst = np.unravel_index(np.argmax(err - bound), w.shape)
    assert (err <= bound).all(), f"error {err[worst]} > bound {bound[worst]} at {worst}"
    return err


def test_codes_and_packing_order_match_an_independent_unpack():
    w = weights(seed=5, out=6, inp=64)
    g = 32
    qweight, scales, zeros = quantize_int4(w, g)
    assert zeros.min() >= 0 and zeros.max() <= 15
    q = unpack_per_element(qweight, w.shape[1])  # [out, in], every value 0..15 by construction

    # The codes are what rounding with the stored f16 scale and zero gives.
    s = np.repeat(scales.astype(np.float64), g, axis=1)
    z = np.repeat(zeros.astype(np.int64), g, axis=1)
    expected_q = np.clip(np.round(w.astype(np.float64) / s) + z, 0, 15)
    np.testing.assert_array_equal(q, expected_q)
    # Every group straddles 0 here, so 0 and 15 are both used somewhere.
    assert q.min() == 0 and q.max() == 15

    # dequantize_int4 agrees element by element with the formula of the spec.
    deq = dequantize_int4(qweight, scales, zeros, g)
    for r in range(w.shape[0]):
        for c in range(w.shape[1]):
            expected = np.float32(q[r, c] - int(zeros[r, c // g])) * np.float32(scales[r, c // g])
            assert deq[r, c] == expected, (r, c)


def test_hand_computed_example():
    # One group of 4: w = [-1, 0, 0.5, 2], min -1, max 2.
    #   scale = (2 - (-1)) / 15 = 0.2 -> f16 0.199951171875 (0.2 = 1.6 * 2^-3 and
    #           the f16 mantissa keeps 614/1024 of the 0.6: 1.599609375 * 0.125)
    #   zero  = -round(-1 / 0.19995...) = -round(-5.0012) = 5
    #   q     = round(w / 0.19995...) + 5 = [-5, 0, round(2.5006), round(10.0024)] + 5
    #         = [0, 5, 8, 15]
    # With the unrounded scale 0.2, 0.5 / 0.2 = 2.5 would round (half to even)
    # to 2: this example tells apart a quantizer that ignores the f16 rounding.
    #   packed: byte 0 = 0 | 5 << 4 = 0x50, byte 1 = 8 | 15 << 4 = 0xF8
    #   w'    = ([0, 5, 8, 15] - 5) * 0.199951171875
    #         = [-0.999755859375, 0, 0.599853515625, 1.99951171875]
    w = np.array([[-1.0, 0.0, 0.5, 2.0]], dtype=np.float32)
    qweight, scales, zeros = quantize_int4(w, 4)
    assert scales[0, 0] == np.float16(0.199951171875) == np.float16(0.2)
    assert zeros.tolist() == [[5]]
    assert qweight.tolist() == [[0x50, 0xF8]]
    np.testing.assert_array_equal(dequantize_int4(qweight, scales, zeros, 4),
                                  [[-0.999755859375, 0.0, 0.599853515625, 1.99951171875]])


def test_constant_groups_are_reconstructed_exactly():
    # Values exactly representable in f16 (the precision scales are stored at).
    values = [0.375, -2.5, 0.0, float(np.float16(0.01234)), -float(np.float16(7e-5))]
    g = 32
    w = np.repeat(np.array(values, dtype=np.float32)[:, None], 2 * g, axis=1)
    w[0, g:] = np.linspace(-1, 1, g)  # a constant group next to an ordinary one
    qweight, scales, zeros = quantize_int4(w, g)
    deq = dequantize_int4(qweight, scales, zeros, g)
    np.testing.assert_array_equal(deq[:, :g], w[:, :g])
    np.testing.assert_array_equal(deq[1:, g:], w[1:, g:])
    assert_within_bound(w[:1, g:], deq[:1, g:], scales[:1, 1:], g)


def test_group_size_must_divide_in_features():
    w = np.zeros((2, 576), np.float32)
    with pytest.raises(ValueError, match=r"^up\.weight: in_features=576 is not divisible by "
                                         r"group_size=128; use --group-size 64 or 32$"):
        quantize_int4(w, 128, name="up.weight")
    with pytest.raises(ValueError, match=r"in_features=100 .* no supported group size"):
        quantize_int4(np.zeros((2, 100), np.float32), 32)
    with pytest.raises(ValueError, match="positive integer"):
        quantize_int4(w, 0)
    with pytest.raises(ValueError, match="2-D"):
        quantize_int4(np.zeros(64, np.float32), 32)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_weights_are_rejected_by_name(bad):
    w = weights(seed=1, out=4, inp=64)
    w[2, 33] = bad
    with pytest.raises(ValueError, match=r"model\.layers\.3\.mlp\.up_proj\.weight: 1 non-finite "
                                         r"value\(s\) \(first: -?(inf|nan) at \[2, 33\]\)"):
        quantize_int4(w, 32, name="model.layers.3.mlp.up_proj.weight")


def test_dequantize_checks_shapes():
    qweight, scales, zeros = quantize_int4(weights(seed=2, out=4, inp=64), 32)
    with pytest.raises(ValueError, match=r"scales \(4, 2\) and zeros \(4, 1\)"):
        dequantize_int4(qweight, scales, zeros[:, :1], 32)
