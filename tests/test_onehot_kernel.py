"""The one-hot kernel (CODEBOOK weights as one-hot 1-bit rows on the multipoint popcount GEMM) against the
PyTorch reference and its numpy reference: exactly equal float32 outputs; the auto rule between lut and it."""

import numpy as np
import pytest
import tvm

from tvmquant import pipeline
from tvmquant.compile import compile_model
from tvmquant.kernels import multipoint, onehot, registry
from tvmquant.kernels.family import layer_geometry, scheduled
from tvmquant.pipeline import BuildOptions, QuantRequest
from tvmquant.quantize import QuantConfig
from tvmquant.rpc import connect
from tvmquant.scheme import ActQuant, LayerScheme, WeightKind, WeightQuant
from tvmquant.target import load_target

from models_for_tests import KERNEL_SHAPES, awkward_source, layer_reference, run_call, run_compiled
from test_arm_device import arm_device  # noqa: F401 (the emulated aarch64 device fixture)
from test_multipoint_kernel import _run_on_device

SHAPES = KERNEL_SHAPES
BITS = [(1, 3), (2, 2), (2, 8), (3, 2), (3, 4)]
SHAPE_IDS = lambda s: "x".join(map(str, s[:5])) + f"_s{s[6][0]}p{s[7][0]}"  # noqa: E731


def make_layer(shape, wbits, abits, rng, unused=True) -> LayerScheme:
    """A random CODEBOOK layer with a nonzero activation zero point; with `unused`, channel 0 never uses code 0
    and channel 1 uses one code only (rows of unused codes are skipped)."""
    n, c, h, w, o, kernel, stride, padding = shape
    codes = rng.integers(0, 1 << wbits, (o, c, *kernel))
    if unused and wbits > 1:
        codes[0] = rng.integers(1, 1 << wbits, codes[0].shape)
        codes[1] = (1 << wbits) - 1
    levels = rng.standard_normal((o, 1 << wbits))
    act = ActQuant(abits, float(rng.uniform(0.2, 1.0)) / (1 << abits), int(rng.integers(1, 1 << abits)))
    op = "conv2d" if h > 1 or kernel != (1, 1) else "linear"
    return LayerScheme("layer", op, WeightQuant(WeightKind.CODEBOOK, wbits, codes, levels=levels), act, stride, padding)


@pytest.mark.parametrize("wbits,abits", BITS)
@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
def test_kernel_equals_reference(shape, wbits, abits, host_target):
    rng = np.random.default_rng(hash((shape, wbits, abits)) % 2**32)
    layer = make_layer(shape, wbits, abits, rng)
    x = (2 * rng.standard_normal(shape[:4])).astype(np.float32)
    geometry = layer_geometry(layer, shape[:4])
    target = host_target.tvm_target
    got = run_call(scheduled(onehot.FAMILY, layer, geometry, target), x, (shape[0], shape[4], *geometry.out_hw), target)
    want = layer_reference(x, layer)
    assert np.abs(want).max() > 0, "degenerate case: the check would be vacuous"
    np.testing.assert_array_equal(got, want)
    rows = onehot.expand_rows(layer)
    cfg = multipoint.MultipointConv2dConfig(**vars(geometry), wbits=1, abits=abits, rows=len(rows.codes),
                                            slots=rows.rowmap.shape[1], derived=True)
    np.testing.assert_array_equal(multipoint.reference(x, rows, cfg, layer.act.inv_scale, layer.act.zero_point), want)


def test_rows_are_one_hot_planes_of_the_used_codes_above_zero_then_zero_and_window_rows():
    layer = make_layer(SHAPES[2], 3, 2, np.random.default_rng(4))
    rows = onehot.expand_rows(layer)
    codes = layer.weight.codes.reshape(layer.weight.out_channels, -1)
    assert len(rows.codes) % multipoint.ROW_PAD == 0 and not rows.zw2.any()
    assert (rows.codes[-1] == 1).all() and not rows.codes[-2].any()  # the window-sum row, the zero row
    assert (rows.rowmap[:, 0] == len(rows.codes) - 1).all()
    np.testing.assert_array_equal(rows.combine[:, 0], layer.weight.levels[:, 0] / 2)
    for o in range(len(codes)):
        used = np.unique(codes[o])
        used = used[used > 0]
        slots = rows.rowmap[o, 1 : 1 + len(used)]
        np.testing.assert_array_equal(rows.codes[slots], codes[o][None] == used[:, None])
        np.testing.assert_array_equal(rows.combine[o, 1 : 1 + len(used)], layer.weight.levels[o, used] / 2)
        assert (rows.combine[o, 1 + len(used):] == 0).all() and (rows.rowmap[o, 1 + len(used):] == len(rows.codes) - 2).all()
    assert (rows.rowmap[1, 2:] == len(rows.codes) - 2).all()  # channel 1 uses code 7 only: one row
    assert len(rows.codes) == -(-(sum(len(np.unique(c[c > 0])) for c in codes) + 2) // multipoint.ROW_PAD) * 8


def test_encoder_then_kernel_on_codes_equals_the_reference(host_target):
    target = host_target.tvm_target
    rng = np.random.default_rng(7)
    layer = make_layer(SHAPES[0], 2, 2, rng)
    x = (2 * rng.standard_normal(SHAPES[0][:4])).astype(np.float32)
    geometry = layer_geometry(layer, x.shape)
    encoded = onehot.FAMILY.compute_encoded(layer, geometry, target)
    encoder = onehot.FAMILY.encoder_rule_for(target).apply(encoded.encoder, target, False).mod["main"]
    kernel = onehot.FAMILY.rule_for(target).apply(encoded.kernel.prim, target, False).mod["main"]
    codes = tvm.runtime.tensor(np.zeros(encoded.codes_shape, encoded.io.dtype))
    act = [tvm.runtime.tensor(a) for a in encoded.kernel.act]
    tvm.compile(tvm.IRModule({"main": encoder}), target)(tvm.runtime.tensor(x), *act, codes)
    out = tvm.runtime.tensor(np.zeros((geometry.batch, geometry.out_channels, *geometry.out_hw), np.float32))
    tvm.compile(tvm.IRModule({"main": kernel}), target)(codes, *[tvm.runtime.tensor(a) for a in encoded.kernel.consts], out)
    np.testing.assert_array_equal(out.numpy(), layer_reference(x, layer))


def test_supports_low_bit_codebooks_with_halvable_levels_only():
    rng = np.random.default_rng(0)
    layer = make_layer(SHAPES[1], 2, 2, rng)
    assert onehot.supports(layer) is None
    wide = WeightQuant(WeightKind.CODEBOOK, 8, layer.weight.codes, levels=rng.standard_normal((13, 256)))
    assert "one-hot rows" in onehot.supports(LayerScheme("w", "linear", wide, layer.act))
    tiny = layer.weight.levels.copy()
    tiny[0, 0] = 5e-324  # the smallest float64 subnormal: its half rounds to 0
    bad = WeightQuant(WeightKind.CODEBOOK, 2, layer.weight.codes, levels=tiny)
    assert "halvable" in onehot.supports(LayerScheme("t", "linear", bad, layer.act))
    uniform = WeightQuant(WeightKind.UNIFORM, 2, layer.weight.codes, scale=np.ones(13), zero_point=np.ones(13))
    assert "not a codebook" in onehot.supports(LayerScheme("u", "linear", uniform, layer.act))


@pytest.mark.parametrize("shape,wbits,abits,used,want", [
    ((1, 64, 56, 56, 64, (3, 3), (1, 1), (1, 1)), 2, 2, 3, "onehot"),  # conv56: 384 bit-ops <= LUT_COST x 48 lookups
    ((1, 64, 56, 56, 64, (3, 3), (1, 1), (1, 1)), 4, 6, 15, "lut"),  # 5760 bit-ops > LUT_COST x 240 lookups
])
def test_auto_rule_between_lut_and_onehot(shape, wbits, abits, used, want):
    rng = np.random.default_rng(1)
    layer = make_layer(shape, wbits, abits, rng, unused=False)
    serial, lookups = registry.codebook_cost(layer)
    assert serial == used * abits * 64 and lookups == ((1 << wbits) - 1) * 16
    x86 = load_target("x86").tvm_target
    assert registry.auto_family(layer, "vnni") == want and registry.choose(layer, x86)[0].name == want
    assert registry.candidates(layer, x86) == ["lut", "onehot"]
    assert registry.rule_why(layer, "vnni").startswith(f"cost rule: one-hot {serial} bit-ops")


@pytest.fixture(scope="module")
def awkward():
    return awkward_source(5)


@pytest.mark.parametrize("codes", [True, False], ids=["codes", "nocodes"])
def test_uniq_model_on_onehot_equals_reference(awkward, codes, host_target, tmp_path):
    result = compile_model(awkward, QuantConfig(2, 2, 8, method="uniq"), host_target, tmp_path / "m.so",
                           BuildOptions(kernel="onehot", codes=codes))
    assert sum(k == "onehot" for k in result.kernels.values()) == 2  # the middle layers; the 8-bit edges: dequant
    compiled = run_compiled(result, awkward.eval_x, 1)
    assert result.reference_outputs.std() > 0
    np.testing.assert_array_equal(compiled, result.reference_outputs)


def test_codes_between_layers_split_onehot_kernels(awkward, host_target):
    quantized = pipeline.quantize(awkward, QuantRequest(QuantConfig(2, 2, 8, method="uniq")))
    mod = pipeline.legalize(pipeline.relax_module(awkward, quantized, host_target, codes=True, kernel="onehot"),
                            host_target)
    funcs = {gv.name_hint: f for gv, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc)}
    kernels = {n: f for n, f in funcs.items() if n.startswith("onehot_")}
    assert kernels and all(f.params[0].dtype == "uint64" for f in kernels.values())
    assert all(any(n.endswith(f"encode_{name}") for n in funcs) for name in kernels)


@pytest.mark.arm
@pytest.mark.parametrize("shape,wbits,abits", [(SHAPES[0], 2, 2), (SHAPES[1], 3, 4)])
def test_kernel_equals_reference_on_aarch64(arm_device, shape, wbits, abits, tmp_path):
    rng = np.random.default_rng(wbits)
    layer = make_layer(shape, wbits, abits, rng)
    x = (2 * rng.standard_normal(shape[:4])).astype(np.float32)
    geometry = layer_geometry(layer, shape[:4])
    spec = load_target("arm_cpu")
    call = scheduled(onehot.FAMILY, layer, geometry, spec.tvm_target)
    got = _run_on_device(connect(arm_device), call, x, (shape[0], shape[4], *geometry.out_hw), spec, tmp_path)
    np.testing.assert_array_equal(got, layer_reference(x, layer))
