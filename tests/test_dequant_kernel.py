"""The dequantize-then-dense kernel against its numpy reference."""

import dataclasses

import numpy as np
import pytest
import tvm

from tvmquant.kernels import dequant
from tvmquant.kernels.dequant import DequantConv2dConfig

SHAPES = [
    (1, 3, 7, 9, 5, (3, 3), (2, 2), (1, 1)),
    (3, 70, 1, 1, 13, (1, 1), (1, 1), (0, 0)),
    (2, 17, 6, 5, 24, (3, 3), (1, 1), (1, 1)),
]


@pytest.mark.parametrize("terms,term_dtype", [(1, "int8"), (3, "int8"), (1, "int16")])
@pytest.mark.parametrize("abits", [2, 4, 8])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s[:5])))
def test_dequant_conv_matches_reference(shape, abits, terms, term_dtype, host_target):
    rng = np.random.default_rng(abits)
    cfg = DequantConv2dConfig(*shape, abits=abits, terms=terms, term_dtype=term_dtype)
    x = rng.standard_normal((cfg.batch, cfg.in_channels, cfg.height, cfg.width)).astype(np.float32)
    peak = 127 if term_dtype == "int8" else 255
    matrices = rng.integers(-peak, peak + 1, (terms, cfg.out_channels, cfg.in_channels, *cfg.kernel)).astype(term_dtype)
    combine = rng.standard_normal((terms, cfg.out_channels))
    scale = rng.uniform(0.05, 0.5, cfg.out_channels).astype(np.float32)
    zp, act_scale = int(rng.integers(0, 1 << abits)), float(rng.uniform(0.05, 0.5))
    inv = float(np.float32(1.0 / act_scale))
    func = dequant.schedule(dequant.build_primfunc(cfg), host_target.tvm_target)
    lib = tvm.compile(tvm.IRModule({"main": func}), host_target.tvm_target)
    oh, ow = cfg.out_hw
    out = tvm.runtime.tensor(np.zeros((cfg.batch, cfg.out_channels, oh, ow), np.float32))
    act = [np.array([inv], np.float32), np.array([zp], np.int32)]
    args = [tvm.runtime.tensor(a) for a in (x, *act, matrices, combine, scale)]
    lib(*args, out)
    want = dequant.reference(x, matrices, combine, scale, cfg, inv, zp)
    np.testing.assert_array_equal(out.numpy(), want)


def test_onehot_terms_are_formed_in_the_kernel_not_stored(host_target):
    """CODEBOOK layers store codes (1 byte per weight) and each term's code, not J float64 matrices; the
    result is the reference's exactly."""
    rng = np.random.default_rng(0)
    cfg = DequantConv2dConfig(*SHAPES[2], abits=4, terms=5, onehot=True)
    x = rng.standard_normal((cfg.batch, cfg.in_channels, cfg.height, cfg.width)).astype(np.float32)
    codes = rng.integers(0, 8, (cfg.out_channels, cfg.in_channels, *cfg.kernel)).astype(np.uint8)
    term_codes = np.array([0, 2, 3, 5, 7], np.int32)
    combine = rng.standard_normal((cfg.terms, cfg.out_channels))
    scale = rng.uniform(0.05, 0.5, cfg.out_channels).astype(np.float32)
    target = host_target.tvm_target
    lib = tvm.compile(tvm.IRModule({"main": dequant.schedule(dequant.build_primfunc(cfg), target)}), target)
    out = tvm.runtime.tensor(np.zeros((cfg.batch, cfg.out_channels, *cfg.out_hw), np.float32))
    act = [np.array([2.0], np.float32), np.array([3], np.int32)]  # the quantizer's runtime inputs
    lib(*[tvm.runtime.tensor(a) for a in (x, *act, codes, term_codes, combine, scale)], out)
    matrices = (codes[None] == term_codes[:, None, None, None, None]).astype(np.float64)
    want = dequant.reference(x, matrices, combine, scale, dataclasses.replace(cfg, onehot=False), 2.0, 3)
    assert want.std() > 0
    np.testing.assert_array_equal(out.numpy(), want)


@pytest.mark.parametrize("kind,bits", [("uniform", 8), ("uniform", 4), ("multipoint", 2)])
def test_stored_terms_are_never_larger_than_fp32_weights(kind, bits):
    """The fallback stores integer terms in their narrowest type (it stored float64: 2x the fp32 bytes)."""
    from tvmquant.kernels.family import layer_geometry
    from tvmquant.scheme import ActQuant, LayerScheme, WeightKind, WeightQuant

    rng = np.random.default_rng(bits)
    o, c = 32, 48
    codes = rng.integers(0, 1 << bits, (2, o, c, 3, 3) if kind == "multipoint" else (o, c, 3, 3))
    zero = np.full(o, ((1 << bits) - 1) / 2)
    weight = (WeightQuant(WeightKind.MULTIPOINT, bits, codes, scale=np.ones(o), zero_point=np.stack([zero, zero]),
                          coeffs=np.ones((2, o)))
              if kind == "multipoint" else WeightQuant(WeightKind.UNIFORM, bits, codes, scale=np.ones(o), zero_point=zero))
    layer = LayerScheme("layer", "conv2d", weight, ActQuant(8, 0.1, 3), (1, 1), (1, 1))
    call = dequant.compute(layer, layer_geometry(layer, (1, c, 8, 8)))
    terms = call.weights[0]
    assert terms.dtype == (np.int16 if bits == 8 else np.int8)
    assert terms.nbytes <= 4 * o * c * 9 / 2  # at most half the fp32 weights' bytes
