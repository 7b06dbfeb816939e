"""The shared representation decodes every kind to the values its definition says."""

import numpy as np
import pytest

from tvmquant.scheme import ActQuant, WeightKind, WeightQuant


def test_uniform_dequantize_per_channel():
    w = WeightQuant(WeightKind.UNIFORM, 2, np.array([[0, 3], [1, 2]]), scale=np.array([1.0, 0.5]),
                    zero_point=np.array([1.5, 1.5]))
    np.testing.assert_allclose(w.dequantize(), [[-1.5, 1.5], [-0.25, 0.25]])


def test_pow2_sign_zero_and_exponents():
    # 3 bits: sign bit 4, index 0 = zero, index m -> 2^(exp_max - (m - 1))
    w = WeightQuant(WeightKind.POW2, 3, np.array([[0, 1, 2, 3, 5, 7]]), scale=np.array([1.0]),
                    exp_max=np.array([2]))
    np.testing.assert_allclose(w.dequantize(), [[0, 4, 2, 1, -4, -1]])


def test_codebook_rows_per_channel():
    levels = np.array([[-1.0, -0.1, 0.2, 0.9], [0.0, 1.0, 2.0, 3.0]])
    w = WeightQuant(WeightKind.CODEBOOK, 2, np.array([[3, 0], [2, 2]]), levels=levels)
    np.testing.assert_allclose(w.dequantize(), [[0.9, -1.0], [2.0, 2.0]])


def test_multipoint_sums_points():
    codes = np.array([[[3, 0]], [[1, 2]]])  # P=2, O=1, K=2
    w = WeightQuant(WeightKind.MULTIPOINT, 2, codes, scale=np.array([[1.0], [0.1]]),
                    zero_point=np.array([[1.5], [1.5]]), coeffs=np.array([[1.0], [2.0]]))
    np.testing.assert_allclose(w.dequantize(), [[1.5 + 2 * -0.05, -1.5 + 2 * 0.05]])
    assert w.out_channels == 1


@pytest.mark.parametrize("bits", [0, 9])
def test_bits_out_of_range_rejected(bits):
    with pytest.raises(ValueError):
        WeightQuant(WeightKind.UNIFORM, bits, np.zeros((1, 1)))
    with pytest.raises(ValueError):
        ActQuant(bits, 1.0, 0)


def test_codes_must_fit_bits():
    with pytest.raises(ValueError, match="exceed"):
        WeightQuant(WeightKind.UNIFORM, 2, np.array([[4]]))
