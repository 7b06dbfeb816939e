"""The lookup-table (CODEBOOK) kernel: exact against its numpy reference and the PyTorch reference, on x86,
on the emulated aarch64 device, and through the whole compile pipeline."""

import numpy as np
import pytest
import torch
import tvm

from tvmquant.pipeline import BuildOptions
from tvmquant.compile import compile_model
from tvmquant.kernels import lut, registry
from tvmquant.kernels.family import scheduled
from tvmquant.kernels.geometry import ConvGeometry
from tvmquant.kernels.lut import LutConv2dConfig
from tvmquant.quantize import QuantConfig
from tvmquant.reference import quantized_layer
from tvmquant.rpc import connect
from tvmquant.scheme import ActQuant, LayerScheme, WeightKind, WeightQuant
from tvmquant.target import load_target

from models_for_tests import KERNEL_SHAPES, awkward_source, run_compiled
from test_arm_device import arm_device  # noqa: F401  (the emulated device fixture)

SHAPES = KERNEL_SHAPES
BITS = [(1, 8), (2, 8), (2, 2), (3, 4), (4, 8)]


def _layer(cfg: LutConv2dConfig, rng: np.random.Generator) -> LayerScheme:
    """A random CODEBOOK layer of this geometry with a nonzero activation zero point."""
    codes = rng.integers(0, 1 << cfg.wbits, (cfg.out_channels, cfg.in_channels, *cfg.kernel))
    levels = rng.standard_normal((cfg.out_channels, 1 << cfg.wbits))
    act = ActQuant(cfg.abits, float(rng.uniform(0.2, 1.0)) / (1 << cfg.abits), int(rng.integers(1, 1 << cfg.abits)))
    weight = WeightQuant(WeightKind.CODEBOOK, cfg.wbits, codes, levels=levels)
    return LayerScheme("l", "conv2d", weight, act, cfg.stride, cfg.padding)


def _case(shape, wbits, abits, seed):
    rng = np.random.default_rng(seed)
    cfg = LutConv2dConfig(*shape, wbits=wbits, abits=abits)
    layer = _layer(cfg, rng)
    x = (2 * rng.standard_normal((cfg.batch, cfg.in_channels, cfg.height, cfg.width))).astype(np.float32)
    return cfg, layer, x


def _run_local(call, x, cfg, target):
    lib = tvm.compile(tvm.IRModule({"main": call.prim}), target)
    out = tvm.runtime.tensor(np.zeros((cfg.batch, cfg.out_channels, *cfg.out_hw), np.float32))
    lib(*[tvm.runtime.tensor(a) for a in (x, *call.consts)], out)
    return out.numpy()


def _references(cfg, layer, x):
    """(numpy reference, PyTorch reference) of the layer's float32 output."""
    codes = layer.weight.codes.reshape(cfg.out_channels, -1)
    buckets = lut.reference_buckets(x, codes, cfg, layer.act.inv_scale, layer.act.zero_point)
    levels = np.ascontiguousarray(layer.weight.levels.T)
    mine = lut.reference(buckets, levels, np.full(cfg.out_channels, layer.act.scale, np.float32))
    torch_ref = quantized_layer(torch.from_numpy(x), layer, None).numpy()
    return mine, torch_ref


@pytest.mark.parametrize("wbits,abits", BITS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s[:5])) + f"_s{s[6][0]}p{s[7][0]}")
def test_lut_is_exact(shape, wbits, abits, host_target):
    cfg, layer, x = _case(shape, wbits, abits, seed=hash((shape, wbits, abits)) % 2**32)
    target = host_target.tvm_target
    got = _run_local(scheduled(lut.FAMILY, layer, ConvGeometry(*shape), target), x, cfg, target)
    mine, torch_ref = _references(cfg, layer, x)
    assert np.abs(torch_ref).max() > 0, "degenerate case: the check would be vacuous"
    np.testing.assert_array_equal(got, mine)
    np.testing.assert_array_equal(got, torch_ref)


def test_buckets_reference_agrees_with_onehot_core():
    cfg, layer, x = _case(SHAPES[2], 2, 4, seed=3)
    codes = layer.weight.codes.reshape(cfg.out_channels, -1)
    buckets = lut.reference_buckets(x, codes, cfg, layer.act.inv_scale, layer.act.zero_point)
    assert buckets.sum(axis=1).std() > 0  # code 0's bucket is really derived from a nonzero window sum
    index = lut.pack_index(codes, cfg)  # 17 channels: one pair of table blocks; 24 outputs: rows of 16, padded
    assert index.shape == (2, 3, 3, 1, 3, 16, 4) and (index & 15).max() == 15 and not index[1, ..., 8:, :].any()
    assert (index >> 4).max() == 1 and not (index[..., 1:] >> 4).any()  # channel 16: high nibble, j = 0, bit 0
    assert np.array_equal(lut.code_counts(codes, cfg)[:, :3], [(codes[:3] == l).sum(axis=1) for l in (1, 2, 3)])


def test_index_nibbles_address_the_right_channels():
    """Byte [o/16, r, s, t, l, o%16, j] nibble h, bit i <=> channel 32t + 16h + 4j + i of output o has code l."""
    cfg = LutConv2dConfig(1, 70, 1, 1, 20, (1, 1), (1, 1), (0, 0), 2, 2)
    codes = np.zeros((20, 70), np.int64)
    codes[17, 53] = 2  # t = 1, h = 1, j = 1, i = 1
    index = lut.pack_index(codes, cfg)
    assert index.shape == (2, 1, 1, 3, 3, 16, 4)
    assert index[1, 0, 0, 1, 1, 1, 1] == 2 << 4 and np.count_nonzero(index) == 1


def test_byte_planes_follow_the_largest_table_entry():
    assert LutConv2dConfig(1, 64, 3, 3, 8, (3, 3), (1, 1), (1, 1), 2, 6).planes == 1  # 4 * 63 <= 255
    assert LutConv2dConfig(1, 64, 3, 3, 8, (3, 3), (1, 1), (1, 1), 2, 7).planes == 2


@pytest.mark.parametrize("isa", ["gather", "vpermb"])
def test_fallback_and_shuffle_schedules_are_exact(isa):
    """The gather fallback (a target with neither shuffle) and the x86 shuffle, each on its own target."""
    target = tvm.target.Target({"kind": "llvm", "mcpu": "haswell" if isa == "gather" else "znver4"})
    assert lut.lookup_isa(target) == isa
    for shape, wbits, abits in [(SHAPES[2], 2, 8), (SHAPES[4], 3, 2)]:
        cfg, layer, x = _case(shape, wbits, abits, seed=5)
        call = scheduled(lut.FAMILY, layer, ConvGeometry(*shape), target)
        asm = tvm.compile(tvm.IRModule({"main": call.prim}), target).mod.inspect_source("asm")
        assert ("vpermb" in asm) == (isa == "vpermb") and ("vpdpbusd" in asm) == (isa == "vpermb")
        if isa == "gather" or lut.lookup_isa(load_target("x86").tvm_target) == "vpermb":  # this host runs it
            got = _run_local(call, x, cfg, target)
            mine, torch_ref = _references(cfg, layer, x)
            np.testing.assert_array_equal(got, mine)
            np.testing.assert_array_equal(got, torch_ref)


@pytest.mark.parametrize("mattr,isa,instructions", [(["+neon", "+dotprod"], "tbl_udot", ("tbl\t", "udot\t")),
                                                    (["+neon"], "tbl", ("tbl\t", "uadalp\t"))])
def test_aarch64_lookup_is_a_tbl(mattr, isa, instructions):
    target = tvm.target.Target({**load_target("arm_cpu").tvm_config, "mattr": mattr})
    assert lut.lookup_isa(target) == isa
    cfg, layer, _ = _case(SHAPES[2], 2, 2, seed=5)
    call = scheduled(lut.FAMILY, layer, ConvGeometry(*SHAPES[2]), target)
    asm = tvm.compile(tvm.IRModule({"main": call.prim}), target).mod.inspect_source("asm")
    assert all(i in asm for i in instructions) and ("udot" in asm) == (isa == "tbl_udot")


def test_accumulator_widens_when_int32_could_overflow():
    assert LutConv2dConfig(1, 64, 3, 3, 8, (3, 3), (1, 1), (1, 1), 2, 8).acc_dtype == "int32"
    assert LutConv2dConfig(1, 2**20, 3, 3, 8, (3, 3), (1, 1), (1, 1), 2, 8).acc_dtype == "int64"


def test_supports_low_bit_codebooks_only():
    rng = np.random.default_rng(0)
    cfg = LutConv2dConfig(1, 4, 1, 1, 2, (1, 1), (1, 1), (0, 0), 2, 8)
    layer = _layer(cfg, rng)
    x86 = load_target("x86").tvm_target
    assert lut.supports(layer) is None and registry.choose(layer, x86)[0] is lut.FAMILY
    layer.weight = WeightQuant(WeightKind.CODEBOOK, 8, layer.weight.codes, levels=rng.standard_normal((2, 256)))
    assert "255 lookups" in lut.supports(layer) and registry.choose(layer, x86)[0].name == "dequant"
    layer.weight = WeightQuant(WeightKind.UNIFORM, 2, layer.weight.codes & 3, scale=np.ones(2), zero_point=np.ones(2))
    assert lut.supports(layer) is not None


@pytest.fixture(scope="module")
def awkward():
    return awkward_source(5)


@pytest.mark.parametrize("kernel", ["auto", "lut"])
def test_uniq_model_compiles_to_lut_exactly(awkward, kernel, host_target, tmp_path):
    result = compile_model(awkward, QuantConfig(2, 8, 8, method="uniq"), host_target, tmp_path / "m.so",
                           BuildOptions(kernel=kernel))
    for name, layer in result.scheme.layers.items():
        assert layer.weight.kind is WeightKind.CODEBOOK
        assert result.kernels[name] == ("lut" if layer.weight.bits <= lut.MAX_BITS else "dequant")
    assert sum(k == "lut" for k in result.kernels.values()) == 2  # the two middle layers; first/last at 8 bits
    compiled = run_compiled(result, awkward.eval_x, 1)
    np.testing.assert_array_equal(compiled, result.reference_outputs)


def test_lut_kernel_request_falls_back_for_other_kinds(awkward, host_target, tmp_path):
    result = compile_model(awkward, QuantConfig(2, 2, None), host_target, tmp_path / "m.so", BuildOptions(kernel="lut"))
    target = host_target.tvm_target
    assert result.kernels == {n: registry.choose(l, target)[0].name for n, l in result.scheme.layers.items()}
    assert set(result.lowered.notes) == set(result.kernels)


@pytest.mark.arm
@pytest.mark.parametrize("shape,wbits,abits", [(SHAPES[0], 2, 8), (SHAPES[2], 3, 4), (SHAPES[4], 1, 2)])
def test_lut_is_exact_on_aarch64(arm_device, shape, wbits, abits, tmp_path):  # noqa: F811
    cfg, layer, x = _case(shape, wbits, abits, seed=11)
    target = load_target("arm_cpu")
    call = scheduled(lut.FAMILY, layer, ConvGeometry(*shape), target.tvm_target)
    lib = tvm.compile(tvm.IRModule({"main": call.prim}), target.tvm_target)
    path = tmp_path / "lut.so"
    lib.export_library(str(path), fcompile=tvm.support.cc.cross_compiler(target.cross_compiler))
    session = connect(arm_device)
    session.upload(str(path))
    remote = session.load_module(path.name)
    dev = session.cpu()
    out = tvm.runtime.tensor(np.zeros((cfg.batch, cfg.out_channels, *cfg.out_hw), np.float32), dev)
    remote["main"](*[tvm.runtime.tensor(a, dev) for a in (x, *call.consts)], out)
    mine, torch_ref = _references(cfg, layer, x)
    np.testing.assert_array_equal(out.numpy(), mine)
    np.testing.assert_array_equal(out.numpy(), torch_ref)
