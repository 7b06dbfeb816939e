"""Grouped and depthwise convs: the depthwise family's float32 output exactly equals the PyTorch reference of the
same quantized layer and the module's numpy reference of its integer sums, on x86 and on the emulated aarch64
device; the dequant fallback's grouped form (multi-term kinds) likewise; `auto` sends grouped convs to it and
says why; a whole depthwise network compiles bit-exact against the reference."""

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import tvm

from tvmquant.compile import compile_model
from tvmquant.kernels import depthwise, dequant, registry
from tvmquant.kernels.family import layer_geometry, scheduled
from tvmquant.quantize import QuantConfig
from tvmquant.reference import quantized_layer
from tvmquant.rpc import connect
from tvmquant.scheme import ActQuant, LayerScheme, WeightKind, WeightQuant
from tvmquant.source import load_source
from tvmquant.target import load_target

from models_for_tests import run_compiled, run_kernel
from test_arm_device import arm_device  # noqa: F401  (the shared emulated-device fixture)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from depthwise_models import efficientnet_lite0, mobilenet_v2  # noqa: E402

# (N, C, H, W, groups, O, kernel, stride, padding): depthwise 3x3 and 5x5, stride 2, odd widths (no lane
# multiple), channel multiplier 2, grouped with 3 channels per group, batch 2, no padding
SHAPES = [
    (1, 8, 9, 13, 8, 8, (3, 3), (1, 1), (1, 1)),
    (2, 6, 11, 7, 6, 6, (3, 3), (2, 2), (1, 1)),
    (1, 5, 10, 10, 5, 5, (5, 5), (2, 2), (2, 2)),
    (1, 4, 6, 17, 4, 8, (3, 3), (1, 1), (0, 0)),
    (2, 12, 7, 5, 4, 8, (3, 3), (1, 1), (1, 1)),
]
BITS = [("uniform", 4, 4, True), ("uniform", 2, 2, False), ("uniform", 8, 8, True), ("pow2", 4, 5, None),
        ("uniform", 7, 3, False)]


def _layer(shape, kind, wbits, abits, symmetric, seed) -> LayerScheme:
    """A random grouped layer; the activation zero point is never 0, so padding really has to hold it."""
    rng = np.random.default_rng(seed)
    n, c, h, w, groups, o, kernel, stride, padding = shape
    wshape = (o, c // groups, *kernel)
    if kind == "uniform":
        codes = rng.integers(0, 1 << wbits, wshape)
        zero = np.full(o, ((1 << wbits) - 1) / 2) if symmetric else rng.integers(0, 2 * (1 << wbits) - 1, o) / 2
        weight = WeightQuant(WeightKind.UNIFORM, wbits, codes, scale=rng.uniform(0.01, 1.0, o), zero_point=zero)
    elif kind == "pow2":  # exponent indices 1..6 (span 5)
        index = rng.integers(0, 7, wshape)
        negative = rng.integers(0, 2, index.shape) << (wbits - 1)
        weight = WeightQuant(WeightKind.POW2, wbits, index | negative, scale=rng.uniform(0.01, 1.0, o),
                             exp_max=rng.integers(-4, 3, o))
    else:  # codebook: several integer terms, the dequant fallback's case
        levels = np.sort(rng.standard_normal((o, 1 << wbits)), axis=1)
        weight = WeightQuant(WeightKind.CODEBOOK, wbits, rng.integers(0, 1 << wbits, wshape), levels=levels)
    act = ActQuant(abits, float(rng.uniform(0.1, 0.6)) * 4 / (1 << abits), int(rng.integers(1, 1 << abits)))
    return LayerScheme("layer", "conv2d", weight, act, stride, padding, groups)


def _input(shape, seed):
    return (np.random.default_rng(seed).standard_normal(shape[:4]) * 2).astype(np.float32)


def _run(family, layer, x, target, session=None, folder=None):
    geometry = layer_geometry(layer, x.shape)
    call = scheduled(family.FAMILY, layer, geometry, target.tvm_target)
    lib = tvm.compile(tvm.IRModule({"main": call.prim}), target.tvm_target)
    return call, run_kernel(call, x, geometry, target, lib, session, folder)


def _torch_reference(layer, x):
    return quantized_layer(torch.from_numpy(x), layer, None).numpy()


def _check(layer, x, call, got):
    """Exactly the PyTorch reference, and exactly the numpy reference of the integer sums."""
    np.testing.assert_array_equal(got, _torch_reference(layer, x))
    ints = depthwise.reference_int(x, depthwise.integer_matrix(layer), layer_geometry(layer, x.shape),
                                   layer.act.inv_scale, layer.act.zero_point, layer.act.bits)
    assert ints.std() > 0, "degenerate case: the check would be vacuous"
    np.testing.assert_array_equal(got, ints.astype(np.float32) * call.consts[-1][None, :, None, None])


CASES = [(shape, BITS[(i + j) % len(BITS)]) for i, shape in enumerate(SHAPES) for j in (0, 1, 3)]


def _case_id(value) -> str:
    return "x".join(map(str, value[:6])) if len(value) == 9 else "%s-w%da%d-%s" % value


@pytest.mark.parametrize("shape,bits", CASES, ids=_case_id)
def test_exact_against_references(shape, bits, host_target):
    seed = hash((shape, bits)) % 2**32
    layer = _layer(shape, *bits, seed)
    x = _input(shape, seed)
    _check(layer, x, *_run(depthwise, layer, x, host_target))


@pytest.mark.parametrize("index", [0, 1, 2, 4])
def test_encoder_then_kernel_on_codes_equals_the_references(index, host_target):
    """Codes between layers: the encoder writes the centred int16 codes, the kernel reads them."""
    shape, bits = SHAPES[index], BITS[index]
    layer, x, target = _layer(shape, *bits, index), _input(shape, index), host_target.tvm_target
    encoded = depthwise.FAMILY.compute_encoded(layer, layer_geometry(layer, x.shape), target)
    assert encoded.io.dtype == "int16" and encoded.kernel.prim.params[0].dtype == "int16"
    encoder = depthwise.FAMILY.encoder_rule_for(target).apply(encoded.encoder, target, False).mod["main"]
    kernel = depthwise.FAMILY.rule_for(target).apply(encoded.kernel.prim, target, False).mod["main"]
    dev = tvm.cpu()
    codes = tvm.runtime.tensor(np.zeros(encoded.codes_shape, "int16"), dev)
    act = [tvm.runtime.tensor(a, dev) for a in encoded.kernel.act]
    tvm.compile(tvm.IRModule({"main": encoder}), target)(tvm.runtime.tensor(x, dev), *act, codes)
    geometry = layer_geometry(layer, x.shape)
    out = tvm.runtime.tensor(np.zeros((geometry.batch, geometry.out_channels, *geometry.out_hw), np.float32), dev)
    consts = [tvm.runtime.tensor(a, dev) for a in encoded.kernel.consts]
    tvm.compile(tvm.IRModule({"main": kernel}), target)(codes, *consts, out)
    _check(layer, x, encoded.kernel, out.numpy())


def test_numpy_reference_is_the_grouped_convolution():
    """reference_int against a plain loop over (o, c, r, s): the reference the kernel is judged by is right."""
    shape = SHAPES[4]
    layer = _layer(shape, *BITS[0], 3)
    x = _input(shape, 3)
    g = layer_geometry(layer, x.shape)
    t = depthwise.integer_matrix(layer).reshape(g.out_channels, -1, *g.kernel)
    a = np.clip(np.rint(x * layer.act.inv_scale) + layer.act.zero_point, 0, layer.act.qmax).astype(np.int64)
    a = np.pad(a - layer.act.zero_point, ((0, 0), (0, 0), (1, 1), (1, 1)))
    cin, cout = g.in_channels // g.conv_groups, g.out_channels // g.conv_groups
    want = np.zeros((g.batch, g.out_channels, *g.out_hw), np.int64)
    for o, c, r, s in np.ndindex(*t.shape):
        src = (o // cout) * cin + c
        want[:, o] += t[o, c, r, s] * a[:, src, r : r + g.out_hw[0], s : s + g.out_hw[1]]
    np.testing.assert_array_equal(depthwise.reference_int(x, t.reshape(g.out_channels, -1), g, layer.act.inv_scale,
                                                          layer.act.zero_point, layer.act.bits), want)


@pytest.mark.parametrize("index", [0, 4])
def test_dequant_fallback_runs_grouped_codebook_layers_exactly(index, host_target):
    shape = SHAPES[index]
    layer = _layer(shape, "codebook", 2, 3, None, index)
    assert "more than one integer matrix" in depthwise.supports(layer)
    assert registry.choose(layer, host_target.tvm_target)[0] is dequant.FAMILY
    x = _input(shape, index)
    _, got = _run(dequant, layer, x, host_target)
    np.testing.assert_array_equal(got, _torch_reference(layer, x))


def test_auto_sends_grouped_convs_to_depthwise_and_says_why(host_target):
    x86 = host_target.tvm_target
    dw = _layer(SHAPES[0], *BITS[0], 0)
    family, note = registry.choose(dw, x86)
    assert family is depthwise.FAMILY and "groups=8 (depthwise)" in note
    family, note = registry.choose(_layer(SHAPES[4], *BITS[0], 0), x86)
    assert family is depthwise.FAMILY and "3 channels per group" in note
    family, note = registry.choose(dw, x86, "bitserial")  # asked for a family without a grouped form
    assert family is depthwise.FAMILY and note.startswith("bitserial: grouped convolution (groups=8)")
    dense = dataclasses.replace(dw, groups=1, weight=dataclasses.replace(dw.weight, codes=np.zeros((8, 8, 3, 3))))
    assert registry.choose(dense, x86, "depthwise")[0] is not depthwise.FAMILY


def test_weights_take_the_narrowest_dtype():
    for bits, dtype in ((BITS[0], np.int8), (BITS[2], np.int16)):
        layer = _layer(SHAPES[0], *bits, 0)
        assert depthwise.compute(layer, layer_geometry(layer, SHAPES[0][:4])).weights[0].dtype == dtype


@pytest.mark.parametrize("target,vector_mac", [("x86", ("vpmulld", "vpmaddwd")), ("arm_cpu", ("mla\tv", "mul\tv"))])
def test_inner_loop_is_vectorised(target, vector_mac):
    """Vector multiplies of int32 lanes (AVX-512 / NEON .4s) in the generated assembly, not scalar MACs."""
    spec = load_target(target)
    layer = _layer(SHAPES[0], *BITS[0], 0)
    call = scheduled(depthwise.FAMILY, layer, layer_geometry(layer, SHAPES[0][:4]), spec.tvm_target)
    asm = tvm.compile(tvm.IRModule({"main": call.prim}), spec.tvm_target).mod.inspect_source("asm")
    assert any(op in asm for op in vector_mac)


@pytest.mark.parametrize("build", [mobilenet_v2, efficientnet_lite0], ids=["mobilenet_v2", "efficientnet_lite0"])
def test_depthwise_network_compiles_to_reference_bit_for_bit(build, tmp_path, host_target):
    calib = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    source = load_source(build(width=0.25, classes=10), (1, 3, 32, 32), calib=calib, eval_x=calib[:2])
    result = compile_model(source, QuantConfig(4, 4), host_target, tmp_path / "m.so")
    assert not result.scheme.kept_float
    grouped = [name for name, layer in result.scheme.layers.items() if layer.groups != 1]
    assert grouped and {result.kernels[name] for name in grouped} == {"depthwise"}
    compiled = run_compiled(result, source.eval_x, 1)
    assert np.abs(compiled).max() > 0
    np.testing.assert_array_equal(compiled, result.reference_outputs)


@pytest.mark.arm
@pytest.mark.parametrize("index", [0, 2, 4])
def test_exact_on_aarch64(arm_device, index, tmp_path):  # noqa: F811
    shape, bits = SHAPES[index], BITS[index % len(BITS)]
    layer = _layer(shape, *bits, seed=index)
    x = _input(shape, index)
    _check(layer, x, *_run(depthwise, layer, x, load_target("arm_cpu"), connect(arm_device), tmp_path))
