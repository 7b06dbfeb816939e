"""The shared representation decodes every kind to the values its definition says."""

import numpy as np
import pytest

from tvmquant.scheme import ActQuant, LayerScheme, WeightKind, WeightQuant, integer_core


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


def _core_value(layer):
    """sum_j combine_j * T_j, the weight the IntegerCore stands for (per unit activation), over scale s_a."""
    core = integer_core(layer)
    total = sum(core.combine[j][:, None] * core.term(j) for j in range(core.terms))
    return total * core.scale.astype(np.float64)[:, None] / layer.act.scale


@pytest.mark.parametrize("weight", [
    WeightQuant(WeightKind.UNIFORM, 2, np.array([[0, 1, 2, 3]]), scale=np.array([0.5]), zero_point=np.array([1.5])),
    WeightQuant(WeightKind.UNIFORM, 3, np.array([[0, 1, 7]]), scale=np.array([0.25]), zero_point=np.array([2.3])),
    WeightQuant(WeightKind.POW2, 3, np.array([[0, 1, 2, 3, 5, 7], [0, 0, 0, 0, 0, 0]]), scale=np.array([0.5, 1.0]),
                exp_max=np.array([-1, 3])),
    WeightQuant(WeightKind.POW2, 8, np.array([[1, 126, 129]]), scale=np.array([1.0]), exp_max=np.array([0])),
    WeightQuant(WeightKind.CODEBOOK, 2, np.array([[3, 0, 1]]), levels=np.array([[-1.0, -0.1, 0.2, 0.9]])),
    WeightQuant(WeightKind.MULTIPOINT, 2, np.array([[[3, 0]], [[1, 2]]]), scale=np.array([[1.0], [0.1]]),
                zero_point=np.array([[1.5], [1.5]]), coeffs=np.array([[1.0], [2.0]])),
], ids=["uniform", "uniform-odd-zp", "pow2", "pow2-wide", "codebook", "multipoint"])
def test_integer_core_stands_for_the_weights(weight):
    """Every kind's integer matrices, combined and scaled, are the dequantized weights (to float32 rounding)."""
    layer = LayerScheme("l", "linear", weight, ActQuant(4, 0.1, 3))
    want = weight.dequantize().reshape(weight.out_channels, -1)
    np.testing.assert_allclose(_core_value(layer), want, rtol=1e-6, atol=1e-30)
    core = integer_core(layer)
    for j in range(core.terms):
        assert np.array_equal(core.term(j), np.round(core.term(j)))


def test_pow2_core_is_one_integer_matrix_of_shifts():
    w = WeightQuant(WeightKind.POW2, 4, np.array([[1, 3, 7, 9, 0]]), scale=np.array([1.0]), exp_max=np.array([2]))
    core = integer_core(LayerScheme("l", "linear", w, ActQuant(4, 1.0, 0)))
    assert core.terms == 1 and core.combine[0, 0] == 1.0
    np.testing.assert_array_equal(core.term(0), [[64, 16, 1, -64, 0]])  # 2^2, 2^0, 2^-4, -2^2 over 2^-4
    assert core.scale[0] == np.float32(2.0**-4)
