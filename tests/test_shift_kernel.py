"""The shift-add kernels (POW2 weights; convs: exponent buckets, shift_gather; dense: channel lanes): float32
output exactly equal to the PyTorch reference of the same quantized layer and to the module's numpy reference,
on x86 and on the emulated aarch64 device; whole models through compile_model pick it for POW2 layers."""

import numpy as np
import pytest
import torch
import tvm
from tvm.target import Target

from tvmquant.pipeline import BuildOptions
from tvmquant.compile import compile_model
from tvmquant.kernels import registry, shift, shift_gather
from tvmquant.kernels.family import layer_geometry, scheduled
from tvmquant.quantize import QuantConfig
from tvmquant.reference import quantized_layer
from tvmquant.rpc import connect
from tvmquant.scheme import ActQuant, LayerScheme, WeightKind, WeightQuant, integer_core
from tvmquant.target import load_target

from models_for_tests import KERNEL_SHAPES, awkward_source, run_compiled, run_kernel
from test_arm_device import arm_device  # noqa: F401  (the shared emulated-device fixture)

SHAPES = KERNEL_SHAPES
# (weight bits, activation bits, largest exponent index used): 6 bits with indices up to 25 is span 24 with
# 8-bit activations, which needs the int64 accumulator.
BITS = [(2, 2, 1), (3, 4, 3), (4, 8, 7), (5, 3, 15), (6, 8, 25)]


def _layer(shape, wbits, abits, top_index, seed) -> LayerScheme:
    """A random POW2 layer; the activation zero point is never 0, so padding really has to be centred."""
    rng = np.random.default_rng(seed)
    n, c, h, w, o, kernel, stride, padding = shape
    index = rng.integers(0, top_index + 1, (o, c, *kernel))
    index[:, 0, 0, 0] = top_index  # every channel uses the largest exponent index
    negative = rng.integers(0, 2, index.shape) << (wbits - 1)
    weight = WeightQuant(WeightKind.POW2, wbits, index | negative, scale=rng.uniform(0.01, 1.0, o),
                         exp_max=rng.integers(-4, 3, o))
    act = ActQuant(abits, float(rng.uniform(0.1, 0.6)) * 4 / (1 << abits), int(rng.integers(1, 1 << abits)))
    op = "linear" if (h, w, kernel) == (1, 1, (1, 1)) else "conv2d"
    return LayerScheme("layer", op, weight, act, stride, padding)


def _compile_and_run(layer, x, target, session=None, folder=None):
    """Run the layer's kernel here, or cross-compiled on the RPC `session` (linked in `folder`)."""
    geometry = layer_geometry(layer, x.shape)
    call = scheduled(shift.FAMILY, layer, geometry, target.tvm_target)
    lib = tvm.compile(tvm.IRModule({"main": call.prim}), target.tvm_target)
    return run_kernel(call, x, geometry, target, lib, session, folder)


def _check(layer, x, got):
    """Exactly the PyTorch reference, and exactly the module's numpy reference of the integer core."""
    torch_ref = quantized_layer(torch.from_numpy(x if layer.op == "conv2d" else x[:, :, 0, 0]), layer, None).numpy()
    np.testing.assert_array_equal(got, torch_ref.reshape(got.shape))
    core = integer_core(layer)
    max_shift = int(np.abs(core.matrices[0]).max()).bit_length() - 1
    cfg = shift.ShiftConv2dConfig(**vars(layer_geometry(layer, x.shape)), abits=layer.act.bits, max_shift=max_shift)
    ints = shift.reference_int(x, core.matrices[0], cfg, layer.act.inv_scale, layer.act.zero_point)
    assert ints.std() > 0, "degenerate case: the check would be vacuous"
    np.testing.assert_array_equal(got, ints.astype(np.float32) * core.scale[None, :, None, None])
    return cfg


def _input(shape, seed):
    return (np.random.default_rng(seed).standard_normal(shape[:4]) * 2).astype(np.float32)


# every shape with three of the bit settings, every bit setting on three shapes (the full cross is slow)
CASES = [(shape, BITS[(i + j) % len(BITS)]) for i, shape in enumerate(SHAPES) for j in (0, 2, 4)]


def _case_id(value) -> str:
    return "x".join(map(str, value[:5])) if len(value) == 8 else "w%da%d-%d" % value


@pytest.mark.parametrize("shape,bits", CASES, ids=_case_id)
def test_exact_against_reference(shape, bits, host_target):
    wbits, abits, top = bits
    seed = hash((shape, wbits, abits)) % 2**32
    layer = _layer(shape, wbits, abits, top, seed)
    x = _input(shape, seed)
    cfg = _check(layer, x, _compile_and_run(layer, x, host_target))
    assert cfg.acc_dtype == ("int64" if top == 25 else "int32")


WIDE = [(1, 40, 5, 40, 9, (3, 3), (1, 1), (1, 1)), (2, 5, 9, 70, 4, (1, 3), (2, 1), (0, 2))]  # rows of 2-3 vectors


@pytest.mark.parametrize("shape", WIDE, ids=_case_id)
@pytest.mark.parametrize("bits", [(2, 2, 1), (2, 8, 1)], ids=lambda b: "w%da%d-%d" % b)
def test_bucket_kernel_exact_on_wide_rows(shape, bits, host_target):
    """Output rows wider than one vector (padded to whole vectors), int16 and int32 accumulators."""
    layer = _layer(shape, *bits, seed=7)
    x = _input(shape, 7)
    call = shift.FAMILY.compute(layer, layer_geometry(layer, x.shape), host_target.tvm_target)
    assert call.prim.attrs[shift.LAYOUT_ATTR] == shift.BUCKETS
    if shape == WIDE[0]:  # K = 360: a list of >= 129 weights overflows int16 at 8 activation bits
        length = shift_gather.list_length(integer_core(layer).matrices[0])
        cfg = shift_gather.GatherConv2dConfig(**vars(layer_geometry(layer, x.shape)), abits=bits[1], max_shift=0,
                                              length=length)
        assert cfg.acc_dtype == ("int32" if bits[1] == 8 else "int16"), length
    _check(layer, x, _compile_and_run(layer, x, host_target))


def test_bucket_lists_skip_zero_weights_and_pick_the_narrowest_accumulator():
    matrix = np.array([[1, 0, -2, 0], [0, 0, 0, 4]])  # (O=2, K = C 4 x 1 x 1)
    cfg = shift_gather.GatherConv2dConfig(1, 4, 8, 8, 2, (1, 1), (1, 1), (0, 0), abits=2, max_shift=2,
                                          length=shift_gather.list_length(matrix))
    table = shift_gather.encode_weights(matrix, cfg)
    zero_row = cfg.rows - 1
    # rows: (sign, exponent, channel) -> +1 at c0 is row 0, -2 at c2 is row (1*3 + 1)*4 + 2, +4 at c3 is row 2*4 + 3
    assert table.tolist() == [[0, 18], [11, zero_row]] and cfg.acc_dtype == "int16"
    assert shift_gather.GatherConv2dConfig(1, 512, 8, 8, 2, (3, 3), (1, 1), (1, 1), abits=8, max_shift=7,
                                           length=4608).acc_dtype == "int32"


def test_accumulator_widens_only_when_int32_could_overflow():
    geometry = (1, 64, 3, 3, 8, (3, 3), (1, 1), (1, 1))
    assert shift.ShiftConv2dConfig(*geometry, abits=8, max_shift=7).acc_dtype == "int32"
    assert shift.ShiftConv2dConfig(*geometry, abits=8, max_shift=24).acc_dtype == "int64"


def test_wide_exponent_span_falls_back_with_a_reason():
    layer = _layer(SHAPES[0], 6, 4, 26, seed=1)  # indices 1..26: span 25 > POW2_MAX_SPAN
    assert "exponent span 25 > 24" in shift.supports(layer)
    family, note = registry.choose(layer, load_target("x86").tvm_target)
    assert family.name == "dequant" and note.startswith("shift: exponent span 25")


def test_auto_picks_shift_for_pow2_without_a_dot_instruction():
    layer = _layer(SHAPES[0], 3, 4, 3, seed=2)
    assert registry.choose(layer, Target("llvm")) == (shift.FAMILY, None)  # generic x86-64: widening multiplies


@pytest.fixture(scope="module")
def awkward_inq():
    return awkward_source(0)


@pytest.mark.parametrize("kernel", ["auto", "shift"])
def test_inq_model_compiles_to_shift_and_matches_reference(awkward_inq, kernel, tmp_path, host_target):
    config = QuantConfig(3, 4, 3, method="inq")  # every layer pow2 (INQ's 8-bit layers are uniform)
    result = compile_model(awkward_inq, config, host_target, tmp_path / "m.so", BuildOptions(kernel=kernel))
    target = host_target.tvm_target  # auto: int8 where the target has a dot instruction (the same exact integers)
    auto = {registry.choose(layer, target)[0].name for layer in result.scheme.layers.values()}
    assert set(result.kernels.values()) == ({"shift"} if kernel == "shift" else auto), result.kernels
    compiled = run_compiled(result, awkward_inq.eval_x, 1)
    np.testing.assert_array_equal(compiled, result.reference_outputs)


def test_kernel_shift_on_uniform_layers_falls_back_to_their_family(awkward_inq, tmp_path, host_target):
    result = compile_model(awkward_inq, QuantConfig(2, 2, 8), host_target, tmp_path / "m.so", BuildOptions(kernel="shift"))
    target = host_target.tvm_target
    assert result.kernels == {n: registry.choose(l, target)[0].name for n, l in result.scheme.layers.items()}


@pytest.mark.arm
@pytest.mark.parametrize("index", [0, 1, 2])
def test_exact_on_aarch64(arm_device, index, tmp_path):  # noqa: F811
    shape = SHAPES[index]
    wbits, abits, top = BITS[index + 1]
    layer = _layer(shape, wbits, abits, top, seed=index)
    x = _input(shape, index)
    _check(layer, x, _compile_and_run(layer, x, load_target("arm_cpu"), connect(arm_device), tmp_path))


@pytest.mark.arm
@pytest.mark.parametrize("shape", [SHAPES[2], WIDE[0]], ids=_case_id)
def test_bucket_kernel_exact_on_aarch64(arm_device, shape, tmp_path):  # noqa: F811
    layer = _layer(shape, 2, 8, 1, seed=5)
    x = _input(shape, 5)
    target = load_target("arm_cpu")
    call = shift.FAMILY.compute(layer, layer_geometry(layer, x.shape), target.tvm_target)
    assert call.prim.attrs[shift.LAYOUT_ATTR] == shift.BUCKETS
    _check(layer, x, _compile_and_run(layer, x, target, connect(arm_device), tmp_path))
