"""The bit-serial kernel against its numpy reference: integer core exactly, float output to 1e-5."""

import numpy as np
import pytest
import tvm
from tvm import te

from tvmquant import actquant
from tvmquant.kernels import bitserial
from tvmquant.kernels.bitserial import BitserialConv2dConfig

from models_for_tests import KERNEL_SHAPES

SHAPES = KERNEL_SHAPES + [
    (2, 64, 5, 16, 40, (3, 3), (1, 1), (1, 1)),  # full 8-pixel tiles along OW, 8-lane channel blocks
    (16, 130, 1, 1, 32, (1, 1), (1, 1), (0, 0)),  # dense: pixel tiles along the batch
]
BITS = [(1, 1), (2, 2), (1, 3), (3, 2), (4, 4), (8, 8), (2, 8)]


def _case(shape, wbits, abits, seed):
    rng = np.random.default_rng(seed)
    cfg = BitserialConv2dConfig(*shape, wbits=wbits, abits=abits)
    x = rng.standard_normal((cfg.batch, cfg.in_channels, cfg.height, cfg.width)).astype(np.float32)
    codes = rng.integers(0, 1 << wbits, (cfg.out_channels, cfg.reduction)).astype(np.uint8)
    zw2 = rng.integers(0, 2 * ((1 << wbits) - 1) + 1, cfg.out_channels).astype(np.int32)
    zero_point = int(rng.integers(0, 1 << abits))
    inv_scale = float(np.float32(rng.uniform(0.5, 4.0) * (1 << abits) / 4))
    return cfg, x, codes, zw2, zero_point, inv_scale


def _act(inv, zp):
    return [np.array([inv], np.float32), np.array([zp], np.int32)]


def _run(func, host_target, args, out_shape, out_dtype):
    lib = tvm.compile(tvm.IRModule({"main": func}), host_target.tvm_target)
    dev = tvm.cpu()
    out = tvm.runtime.tensor(np.zeros(out_shape, out_dtype), dev)
    lib(*[tvm.runtime.tensor(a, dev) for a in args], out)
    return out.numpy()


@pytest.mark.parametrize("wbits,abits", BITS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s[:5])) + f"_s{s[6][0]}p{s[7][0]}")
def test_integer_core_is_exact(shape, wbits, abits, host_target):
    cfg, x, codes, zw2, zp, inv = _case(shape, wbits, abits, seed=hash((shape, wbits, abits)) % 2**32)
    xs = te.placeholder(x.shape, "float32", name="x")
    wp = te.placeholder((*cfg.kernel, wbits, cfg.words, cfg.out_channels), "uint64", name="wp")
    ws = te.placeholder((cfg.out_channels,), "int32", name="ws")
    z2 = te.placeholder((cfg.out_channels,), "int32", name="z2")
    inv_t, zp_t = actquant.te_placeholders()
    core = bitserial.bitserial_conv2d_int(xs, inv_t, zp_t, wp, ws, z2, cfg)
    func = bitserial.schedule(te.create_prim_func([xs, inv_t, zp_t, wp, ws, z2, core]), host_target.tvm_target)
    args = (x, *_act(inv, zp), bitserial.pack_weights(codes, cfg), codes.sum(1).astype(np.int32), zw2)
    out_shape = (cfg.batch, cfg.out_channels, *cfg.out_hw)
    got = _run(func, host_target, args, out_shape, cfg.acc_dtype)
    want = bitserial.reference_int(x, codes, zw2, cfg, inv, zp)
    assert want.std() > 0, "degenerate case: the check would be vacuous"
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("shape", SHAPES[:3])
def test_float_output_within_1e5(shape, host_target):
    cfg, x, codes, zw2, zp, inv = _case(shape, 2, 3, seed=7)
    scale = np.random.default_rng(1).uniform(0.01, 1.0, cfg.out_channels).astype(np.float32)
    func = bitserial.schedule(bitserial.build_primfunc(cfg), host_target.tvm_target)
    args = (x, *_act(inv, zp), bitserial.pack_weights(codes, cfg), codes.sum(1).astype(np.int32), zw2, scale)
    got = _run(func, host_target, args, (cfg.batch, cfg.out_channels, *cfg.out_hw), "float32")
    want = bitserial.reference_int(x, codes, zw2, cfg, inv, zp) * scale.astype(np.float64)[None, :, None, None]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_accumulator_widens_when_int32_could_overflow():
    small = BitserialConv2dConfig(1, 64, 3, 3, 8, (3, 3), (1, 1), (1, 1), 2, 2)
    huge = BitserialConv2dConfig(1, 4096, 3, 3, 8, (3, 3), (1, 1), (1, 1), 8, 8)
    assert small.acc_dtype == "int32" and huge.acc_dtype == "int64"


def test_arm_target_keeps_one_pixel_tiles_and_uses_neon_cnt():
    """For an arm_cpu target the register tile shrinks (NEON has 2 uint64 lanes per register)."""
    from tvmquant.target import load_target

    cfg = BitserialConv2dConfig(1, 64, 6, 8, 32, (3, 3), (1, 1), (1, 1), 2, 2)
    target = load_target("arm_cpu").tvm_target
    func = bitserial.schedule(bitserial.build_primfunc(cfg), target)
    assert "T.unroll(8)" not in func.script()
    asm = tvm.compile(tvm.IRModule({"main": func}), target).mod.inspect_source("asm")
    assert "cnt\tv" in asm and "uaddlp" in asm
