"""The int8 dot-product kernel (UNIFORM and small-span POW2 weights): float32 output exactly equal to the PyTorch
reference of the same quantized layer and to the module's numpy reference of its decomposition, on x86 (VNNI
where the host has it) and on the emulated aarch64 device (sdot with +dotprod, widening multiplies without);
the instructions are checked in the assembly; `auto` picks what the stated cost rule says."""

import dataclasses

import numpy as np
import pytest
import torch
import tvm

from tvmquant.compile import compile_model
from tvmquant.kernels import int8, registry
from tvmquant.kernels.family import layer_geometry, scheduled
from tvmquant.pipeline import BuildOptions
from tvmquant.quantize import QuantConfig
from tvmquant.reference import quantized_layer
from tvmquant.rpc import connect
from tvmquant.scheme import ActQuant, LayerScheme, WeightKind, WeightQuant
from tvmquant.target import TargetSpec, load_target

from models_for_tests import KERNEL_SHAPES, awkward_source, run_compiled, run_kernel
from test_arm_device import arm_device  # noqa: F401  (the shared emulated-device fixture)

SHAPES = KERNEL_SHAPES + [(2, 64, 5, 16, 40, (3, 3), (1, 1), (1, 1)), (16, 130, 1, 1, 32, (1, 1), (1, 1), (0, 0)),
                          (1, 16, 3, 8, 96, (1, 1), (1, 1), (0, 0))]  # 6 blocks, a short reduction: 8 x 2 tiles
# (kind, weight bits, activation bits, symmetric zero points): 8-bit symmetric and 7/8-bit asymmetric weights
# need the 2 * W + d form (with the activation sum), the rest fit int8 directly
BITS = [("uniform", 8, 8, True), ("uniform", 2, 2, False), ("uniform", 7, 3, False), ("uniform", 4, 8, True),
        ("pow2", 4, 5, None), ("uniform", 8, 2, False)]


def _layer(shape, kind, wbits, abits, symmetric, seed) -> LayerScheme:
    """A random layer; the activation zero point is never 0, so padding really has to hold it."""
    rng = np.random.default_rng(seed)
    n, c, h, w, o, kernel, stride, padding = shape
    if kind == "uniform":
        codes = rng.integers(0, 1 << wbits, (o, c, *kernel))
        zero = np.full(o, ((1 << wbits) - 1) / 2) if symmetric else rng.integers(0, 2 * (1 << wbits) - 1, o) / 2
        weight = WeightQuant(WeightKind.UNIFORM, wbits, codes, scale=rng.uniform(0.01, 1.0, o), zero_point=zero)
    else:  # exponent indices 1..6 (span 5): entries up to 2^5
        index = rng.integers(0, 7, (o, c, *kernel))
        negative = rng.integers(0, 2, index.shape) << (wbits - 1)
        weight = WeightQuant(WeightKind.POW2, wbits, index | negative, scale=rng.uniform(0.01, 1.0, o),
                             exp_max=rng.integers(-4, 3, o))
    act = ActQuant(abits, float(rng.uniform(0.1, 0.6)) * 4 / (1 << abits), int(rng.integers(1, 1 << abits)))
    op = "linear" if (h, w, kernel) == (1, 1, (1, 1)) else "conv2d"
    return LayerScheme("layer", op, weight, act, stride, padding)


def _input(shape, seed):
    return (np.random.default_rng(seed).standard_normal(shape[:4]) * 2).astype(np.float32)


def _compile(layer, x, target: TargetSpec):
    call = scheduled(int8.FAMILY, layer, layer_geometry(layer, x.shape), target.tvm_target)
    return call, tvm.compile(tvm.IRModule({"main": call.prim}), target.tvm_target)


def _run(layer, x, target, session=None, folder=None):
    """Run the layer's kernel here, or cross-compiled on the RPC `session` (linked in `folder`)."""
    call, lib = _compile(layer, x, target)
    return call, run_kernel(call, x, layer_geometry(layer, x.shape), target, lib, session, folder)


def _check(layer, x, call, got):
    """Exactly the PyTorch reference, and exactly the numpy reference of the int8 decomposition."""
    torch_ref = quantized_layer(torch.from_numpy(x if layer.op == "conv2d" else x[:, :, 0, 0]), layer, None).numpy()
    np.testing.assert_array_equal(got, torch_ref.reshape(got.shape))
    parts = int8.decompose(layer)
    geometry = layer_geometry(layer, x.shape)
    e = -layer.act.zero_point * (parts.multiplier * parts.w8.astype(np.int64) + parts.offset[:, None]).sum(axis=1)
    ints = int8.reference_int(x, parts, e, geometry, layer.act.inv_scale, layer.act.zero_point, layer.act.bits)
    assert ints.std() > 0, "degenerate case: the check would be vacuous"
    np.testing.assert_array_equal(got, ints.astype(np.float32) * call.consts[-1][None, :, None, None])


CASES = [(shape, BITS[(i + j) % len(BITS)]) for i, shape in enumerate(SHAPES) for j in (0, 2, 4)]


def _case_id(value) -> str:
    return "x".join(map(str, value[:5])) if len(value) == 8 else "%s-w%da%d-%s" % value


@pytest.mark.parametrize("shape,bits", CASES, ids=_case_id)
def test_exact_against_references(shape, bits, host_target):
    seed = hash((shape, bits)) % 2**32
    layer = _layer(shape, *bits, seed)
    x = _input(shape, seed)
    _check(layer, x, *_run(layer, x, host_target))


def test_decomposition_takes_the_2w_plus_d_form_only_when_t_does_not_fit_int8():
    shape = SHAPES[2]
    wide = int8.decompose(_layer(shape, "uniform", 8, 8, True, 0))
    assert wide.multiplier == 2 and set(wide.offset) == {1}  # T = 2u - 255 = 2 (u - 128) + 1
    narrow = int8.decompose(_layer(shape, "uniform", 6, 8, False, 0))
    assert narrow.multiplier == 1 and not narrow.offset.any()


def test_refuses_what_does_not_fit_with_a_reason():
    layer = _layer(SHAPES[0], "pow2", 5, 4, None, 1)
    layer.weight.codes[0, 0, 0, 0] = 9  # exponent index 9: an entry 2^8 or more
    assert "do not fit int8" in int8.supports(layer)
    codebook = WeightQuant(WeightKind.CODEBOOK, 2, layer.weight.codes & 3, levels=np.ones((5, 4)))
    assert "no single integer matrix" in int8.supports(dataclasses.replace(layer, weight=codebook))


@pytest.mark.skipif(int8.dot_isa(load_target("x86").tvm_target) != "vnni", reason="host has no AVX-512 VNNI")
def test_x86_inner_step_is_vpdpbusd(host_target):
    layer = _layer(SHAPES[5], "uniform", 2, 2, False, 0)
    _, lib = _compile(layer, _input(SHAPES[5], 0), host_target)
    assert "vpdpbusd" in lib.mod.inspect_source("asm")


def test_register_tiles_follow_the_stated_rule():
    assert int8.register_tile(112, 6, 4, "vnni") == (8, 2)  # short reduction: 16 accumulators
    assert int8.register_tile(56, 9, 6, "vnni") == (8, 3)
    assert int8.register_tile(14, 36, 24, "vnni") == (7, 3)  # 7 x 4 = 28 spills
    assert int8.register_tile(1, 63, 320, "vnni") == (1, 21)
    assert int8.register_tile(5, 4, 9, "vnni") == (5, 4)
    assert int8.register_tile(14, 36, 24, "sdot") == (2, 1) and int8.register_tile(16, 6, 9, "widen") == (4, 1)


@pytest.mark.skipif(int8.dot_isa(load_target("x86").tvm_target) != "vnni", reason="host has no AVX-512 VNNI")
def test_x86_tile_spans_several_blocks(host_target):
    shape = SHAPES[-1]  # 8 pixels x 2 blocks x 4 channel groups, unrolled: 64 vpdpbusd per tile
    _, lib = _compile(_layer(shape, "uniform", 4, 4, False, 0), _input(shape, 0), host_target)
    assert lib.mod.inspect_source("asm").count("vpdpbusd") >= 64


@pytest.mark.parametrize("mattr,instruction", [(["+neon", "+dotprod"], "sdot\t"), (["+neon"], "smlal")])
def test_aarch64_inner_step(mattr, instruction):
    target = _aarch64(mattr)
    layer = _layer(SHAPES[5], "uniform", 2, 2, False, 0)
    _, lib = _compile(layer, _input(SHAPES[5], 0), target)
    asm = lib.mod.inspect_source("asm")
    assert instruction in asm and ("sdot" in asm) == ("+dotprod" in mattr)


def _aarch64(mattr) -> TargetSpec:
    base = load_target("arm_cpu")
    return dataclasses.replace(base, tvm_config={**base.tvm_config, "mattr": mattr})


def test_auto_follows_the_stated_cost_rule():
    def pick(shape, bits, isa):
        return registry.auto_family(_layer(shape, *bits, 0), isa)

    stem = (1, 3, 16, 16, 8, (7, 7), (2, 2), (3, 3))
    conv64, conv512 = (1, 64, 4, 4, 8, (3, 3), (1, 1), (1, 1)), (1, 512, 2, 2, 8, (3, 3), (1, 1), (1, 1))
    w2a2, w1a1, w8a8 = ("uniform", 2, 2, True), ("uniform", 1, 1, True), ("uniform", 8, 8, True)
    assert pick(stem, w1a1, "vnni") == "int8"  # 1*1*64 bits > 6*4 bytes per tap
    assert pick(conv64, w2a2, "vnni") == "bitserial"  # 256 <= 6*64
    assert pick(conv64, ("uniform", 2, 4, True), "vnni") == "int8"  # 512 > 384
    assert pick(conv64, ("uniform", 5, 5, True), "vnni") == "int8"
    assert pick(conv512, ("uniform", 2, 3, True), "vnni") == "bitserial"  # 3072 <= 6*512
    assert pick(conv512, ("uniform", 3, 3, True), "vnni") == "int8"  # wbits * abits > 6 once C fills words
    assert pick(conv64, w8a8, "widen") == "int8" and pick(conv64, ("uniform", 4, 4, True), "widen") == "bitserial"
    assert pick(conv64, ("pow2", 4, 5, None), "vnni") == "int8"
    assert pick(conv64, ("pow2", 4, 5, None), "widen") == "shift"
    x86 = load_target("x86").tvm_target  # choose() applies the rule for the target's dot ISA
    assert registry.choose(_layer(stem, *w8a8, 0), x86) == (int8.FAMILY, None)
    assert registry.choose(_layer(conv64, *w2a2, 0), x86)[0].name == "bitserial"


@pytest.fixture(scope="module")
def awkward():
    return awkward_source(2)


@pytest.mark.parametrize("kernel,bits", [("int8", (2, 2, 8)), ("auto", (3, 4, 8)), ("int8", (4, 4, 4))])
def test_model_compiles_to_int8_and_matches_reference(awkward, kernel, bits, tmp_path, host_target):
    result = compile_model(awkward, QuantConfig(*bits), host_target, tmp_path / "m.so", BuildOptions(kernel=kernel))
    assert set(result.kernels.values()) == {"int8"}, result.kernels  # few channels: auto picks int8 too
    compiled = run_compiled(result, awkward.eval_x, 1)
    np.testing.assert_array_equal(compiled, result.reference_outputs)


@pytest.mark.arm
@pytest.mark.parametrize("index,mattr", [(0, ["+neon", "+dotprod"]), (2, ["+neon", "+dotprod"]),
                                         (5, ["+neon", "+dotprod"]), (4, ["+neon"]), (6, ["+neon"])])
def test_exact_on_aarch64(arm_device, index, mattr, tmp_path):  # noqa: F811
    shape, bits = SHAPES[index], BITS[index % len(BITS)]
    layer = _layer(shape, *bits, seed=index)
    x = _input(shape, index)
    _check(layer, x, *_run(layer, x, _aarch64(mattr), connect(arm_device), tmp_path))
