"""Codes between layers (passes/codes_between_layers.py, kernels/encoder.py): the bitserial and int8 kernels read
codes from an encoder that FuseOps fuses with the ops before it. On and off give the same outputs bit for bit,
whole models with codes on equal the quantized PyTorch reference, and each encoder + kernel pair equals the
reference on its own."""

import numpy as np
import pytest
import torch
import tvm
from tvm import relax
from tvm.target import Target

from tvmquant import pipeline
from tvmquant.compile import compile_model, load_source
from tvmquant.kernels import bitserial, int8
from tvmquant.kernels.family import layer_geometry
from tvmquant.passes.default_schedule import is_scheduled
from tvmquant.pipeline import BuildOptions, QuantRequest
from tvmquant.quantize import QuantConfig
from tvmquant.reference import quantized_layer
from tvmquant.scheme import ActQuant, LayerScheme, WeightKind, WeightQuant

from models_for_tests import Residual, WithDepthwise, awkward_source, randomize_bn, run_compiled

RES_SHAPE = (1, 3, 16, 16)


def _residual_source():
    torch.manual_seed(0)
    calib = np.random.default_rng(0).standard_normal((6, *RES_SHAPE[1:])).astype(np.float32)
    return load_source(randomize_bn(Residual(), seed=1), RES_SHAPE, calib=calib, eval_x=calib[:3])


def _depthwise_source():
    torch.manual_seed(0)
    data = np.random.default_rng(0).standard_normal((6, 4, 6, 6)).astype(np.float32)
    return load_source(WithDepthwise().eval(), (1, 4, 6, 6), calib=data, eval_x=data[:3])


SOURCES = {"awkward": lambda: awkward_source(0), "residual": _residual_source, "depthwise": _depthwise_source,
           "builtin": lambda: load_source(None)}  # builtin: the digits CNN on its 360 held-out digits


def _run(built, x):
    vm = relax.VirtualMachine(built.executable, tvm.cpu())
    return np.concatenate([vm["main"](tvm.runtime.tensor(x[i : i + 1])).numpy() for i in range(len(x))])


@pytest.mark.parametrize("name,kernel", [("awkward", "auto"), ("residual", "auto"), ("residual", "bitserial"),
                                         ("depthwise", "auto")])
def test_on_and_off_give_the_same_outputs_bit_for_bit(name, kernel, host_target):
    source = SOURCES[name]()
    quantized = pipeline.quantize(source, QuantRequest(QuantConfig(2, 2, 8)))
    on = pipeline.build(source, quantized, host_target, BuildOptions(kernel, codes=True))
    off = pipeline.build(source, quantized, host_target, BuildOptions(kernel, codes=False))
    assert on.lowered.kernels == off.lowered.kernels
    got, want = _run(on, source.eval_x), _run(off, source.eval_x)
    assert want.std() > 0
    np.testing.assert_array_equal(got, want)


def _functions(source, target, codes):
    quantized = pipeline.quantize(source, QuantRequest(QuantConfig(2, 2, 8)))
    mod = pipeline.legalize(pipeline.relax_module(source, quantized, target, codes=codes), target)
    return {gv.name_hint: f for gv, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc)}, mod


def test_kernels_read_codes_and_the_relu_before_them_is_fused_into_the_encoder(host_target):
    funcs, mod = _functions(_residual_source(), host_target, codes=True)
    kernels = {n: f for n, f in funcs.items() if n.startswith(("bitserial_", "int8_"))}
    assert len(kernels) == 7
    for name, func in kernels.items():  # x is the codes: bit-planes (uint64) or padded NHWC u8 codes
        dtype = func.params[0].dtype
        assert dtype == ("uint64" if name.startswith("bitserial_") else "uint8"), name
        assert sum(n.endswith(f"encode_{name}") for n in funcs) == 1, name
    # conv2 of each block reads relu(bias + conv1) and nothing else: that chain and the encoder are one function
    for consumer in ("b1c2", "b2c2"):
        assert any(n.startswith("fused_") and "relu" in n and n.endswith(f"encode_bitserial_{consumer}")
                   for n in funcs), consumer
    scheduled = pipeline.default_schedules(mod, host_target)
    encoders = [f for gv, f in scheduled.functions_items() if "encode_" in gv.name_hint]
    assert encoders and all(is_scheduled(f) and "T.parallel" in f.script() for f in encoders)


def test_codes_off_keeps_float_inputs(host_target):
    funcs, _ = _functions(_residual_source(), host_target, codes=False)
    assert not any("encode_" in n for n in funcs)
    kernels = [f for n, f in funcs.items() if n.startswith(("bitserial_", "int8_"))]
    assert kernels and all(f.params[0].dtype == "float32" for f in kernels)


def test_no_encoder_where_the_target_has_no_schedule_for_it():
    cuda = Target({"kind": "cuda", "arch": "sm_80"})
    assert bitserial.FAMILY.encoder_rule_for(cuda) is None and int8.FAMILY.encoder_rule_for(cuda) is None
    assert bitserial.FAMILY.encoder_rule_for(Target("llvm")) is not None


@pytest.mark.parametrize("name", ["residual", "depthwise", "builtin"])
def test_whole_models_with_codes_equal_the_reference_bit_for_bit(name, tmp_path, host_target):
    source = SOURCES[name]()
    result = compile_model(source, QuantConfig(2, 2, 8), host_target, tmp_path / "m.so")
    compiled = run_compiled(result, source.eval_x, 1)
    assert result.reference_outputs.std() > 0
    np.testing.assert_array_equal(compiled, result.reference_outputs)


def _layer(family, shape, seed) -> LayerScheme:
    """A random UNIFORM layer; the activation zero point is not 0, so the encoder's padding must hold it."""
    rng = np.random.default_rng(seed)
    n, c, h, w, o, kernel, stride, padding = shape
    wbits, abits = (2, 2) if family is bitserial else (8, 8)
    codes = rng.integers(0, 1 << wbits, (o, c, *kernel))
    zero = rng.integers(0, 2 * (1 << wbits) - 1, o) / 2
    weight = WeightQuant(WeightKind.UNIFORM, wbits, codes, scale=rng.uniform(0.01, 1.0, o), zero_point=zero)
    act = ActQuant(abits, float(rng.uniform(0.1, 0.6)) * 4 / (1 << abits), int(rng.integers(1, 1 << abits)))
    return LayerScheme("layer", "conv2d", weight, act, stride, padding)


@pytest.mark.parametrize("family", [bitserial, int8], ids=["bitserial", "int8"])
@pytest.mark.parametrize("shape", [(2, 70, 6, 5, 24, (3, 3), (1, 1), (1, 1)), (1, 9, 8, 8, 7, (3, 3), (2, 2), (0, 0)),
                                   (2, 20, 9, 7, 12, (1, 1), (2, 2), (0, 0))])
def test_encoder_then_kernel_on_codes_equals_the_reference(family, shape, host_target):
    target = host_target.tvm_target
    layer = _layer(family, shape, seed=shape[1])
    x = (np.random.default_rng(1).standard_normal(shape[:4]) * 2).astype(np.float32)
    encoded = family.FAMILY.compute_encoded(layer, layer_geometry(layer, x.shape), target)
    encoder = family.FAMILY.encoder_rule_for(target).apply(encoded.encoder, target, False).mod["main"]
    kernel = family.FAMILY.rule_for(target).apply(encoded.kernel.prim, target, False).mod["main"]
    dev = tvm.cpu()
    act = [tvm.runtime.tensor(a, dev) for a in encoded.kernel.act]
    codes = tvm.runtime.tensor(np.zeros(encoded.codes_shape, encoded.io.dtype), dev)
    tvm.compile(tvm.IRModule({"main": encoder}), target)(tvm.runtime.tensor(x, dev), *act, codes)
    geometry = layer_geometry(layer, x.shape)
    out = tvm.runtime.tensor(np.zeros((geometry.batch, geometry.out_channels, *geometry.out_hw), np.float32), dev)
    consts = [tvm.runtime.tensor(a, dev) for a in encoded.kernel.consts]
    tvm.compile(tvm.IRModule({"main": kernel}), target)(codes, *consts, out)
    want = quantized_layer(torch.from_numpy(x), layer, None).numpy()
    assert want.std() > 0
    np.testing.assert_array_equal(out.numpy(), want)


def test_strided_1x1_encoder_packs_only_the_pixels_the_kernel_reads(host_target):
    layer = _layer(bitserial, (2, 20, 9, 7, 12, (1, 1), (2, 2), (0, 0)), seed=3)
    encoded = bitserial.FAMILY.compute_encoded(layer, layer_geometry(layer, (2, 20, 9, 7)), host_target.tvm_target)
    n, rows, abits, words, cols = encoded.codes_shape
    assert (rows, cols) == (5, 4)  # the (OH, OW) of a 9x7 input at stride 2, not the 9x7 pixels


@pytest.mark.parametrize("command", ["compile", "tune"])
def test_the_switch_is_on_by_default_and_off_by_flag(command):
    from tvmquant.cli import build_parser

    parser = build_parser()
    assert parser.parse_args([command]).codes is True
    assert parser.parse_args([command, "--no-codes-between-layers"]).codes is False
