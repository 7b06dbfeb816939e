"""The multipoint kernel (one bit-serial GEMM over expanded rows + fused combination) against the PyTorch
reference and its own numpy reference: exactly equal float32 outputs."""

import numpy as np
import pytest
import tvm

from tvmquant.pipeline import BuildOptions
from tvmquant.compile import compile_model
from tvmquant.kernels import multipoint
from tvmquant.kernels.family import layer_geometry, scheduled
from tvmquant.quantize import QuantConfig
from tvmquant.rpc import connect
from tvmquant.scheme import ActQuant, LayerScheme, WeightKind, WeightQuant
from tvmquant.target import load_target

from models_for_tests import KERNEL_SHAPES, awkward_source, layer_reference, run_call, run_compiled
from test_arm_device import arm_device  # noqa: F401 (the emulated aarch64 device fixture)

SHAPES = KERNEL_SHAPES
BITS = [(2, 2), (3, 4), (4, 4), (2, 8), (8, 3)]


def make_layer(shape, wbits, abits, points, rng, extra=0.3) -> LayerScheme:
    """A MULTIPOINT layer as the Multipoint PTQ method builds it: zero point = the grid's top code, unused
    points with coefficient 0 and codes = zero point; arbitrary coefficients and a nonzero activation zero point."""
    n, c, h, w, o, kernel, stride, padding = shape
    m = (1 << (wbits - 1)) - 1
    used = np.minimum(rng.geometric(1 - extra, o), points)
    used[0] = points  # at least one channel uses every point
    codes = np.full((points, o, c, *kernel), m, np.int64)
    coeffs = np.zeros((points, o))
    for ch in range(o):
        codes[: used[ch], ch] = rng.integers(0, 2 * m + 1, (used[ch], c, *kernel))
        coeffs[: used[ch], ch] = rng.uniform(-1.5, 1.5, used[ch])
    scale = rng.uniform(0.01, 0.5, (points, o))
    weight = WeightQuant(WeightKind.MULTIPOINT, wbits, codes.astype(np.uint8), scale=scale,
                         zero_point=np.full((points, o), float(m)), coeffs=coeffs)
    act = ActQuant(abits, float(rng.uniform(0.02, 0.2)), int(rng.integers(1, 1 << abits)))
    op = "conv2d" if h > 1 or kernel != (1, 1) else "linear"
    return LayerScheme("layer", op, weight, act, stride, padding)


def _check(shape, wbits, abits, points, seed, target):
    rng = np.random.default_rng(seed)
    layer = make_layer(shape, wbits, abits, points, rng)
    x = (rng.standard_normal(shape[:4]) * 2).astype(np.float32)
    geometry = layer_geometry(layer, shape[:4])
    call = scheduled(multipoint.FAMILY, layer, geometry, target)
    got = run_call(call, x, (shape[0], geometry.out_channels, *geometry.out_hw), target)
    want = layer_reference(x, layer)
    assert np.abs(want).max() > 0, "degenerate case: the check would be vacuous"
    np.testing.assert_array_equal(got, want)
    rows = multipoint.expand_rows(layer)
    cfg = multipoint.MultipointConv2dConfig(**vars(geometry), wbits=wbits, abits=abits, rows=len(rows.codes),
                                            slots=rows.rowmap.shape[1])
    np.testing.assert_array_equal(multipoint.reference(x, rows, cfg, layer.act.inv_scale, layer.act.zero_point), want)
    return rows


@pytest.mark.parametrize("wbits,abits", BITS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s[:5])) + f"_s{s[6][0]}p{s[7][0]}")
def test_kernel_equals_reference(shape, wbits, abits, host_target):
    rows = _check(shape, wbits, abits, 3, hash((shape, wbits, abits)) % 2**32, host_target.tvm_target)
    assert rows.rowmap.shape[1] == 3 and rows.extra_rows >= 2


def test_single_point_layer_needs_one_row_per_channel(host_target):
    rows = _check(SHAPES[2], 3, 3, 1, 5, host_target.tvm_target)
    assert rows.rowmap.shape == (24, 1) and len(rows.codes) == 24 and rows.extra_rows == 0


def test_expanded_rows_skip_zero_rows_and_keep_point_order():
    layer = make_layer(SHAPES[1], 3, 3, 3, np.random.default_rng(2))
    rows = multipoint.expand_rows(layer)
    used = layer.weight.coeffs != 0
    assert rows.extra_rows == used.sum() - used.shape[1]
    assert len(rows.codes) % multipoint.ROW_PAD == 0
    for o in range(layer.weight.out_channels):
        points = np.flatnonzero(used[:, o])
        want = layer.weight.codes[points, o].reshape(len(points), -1)
        np.testing.assert_array_equal(rows.codes[rows.rowmap[o, : len(points)]], want)
        assert (rows.combine[o, len(points):] == 0).all()


def test_supports_only_multipoint():
    layer = make_layer(SHAPES[0], 2, 2, 2, np.random.default_rng(0))
    assert multipoint.supports(layer) is None
    codes = np.zeros((1, 1, 1, 1))
    uniform = LayerScheme("u", "conv2d", WeightQuant(WeightKind.UNIFORM, 2, codes, np.ones(1), np.ones(1)), layer.act)
    assert "not multipoint" in multipoint.supports(uniform)


@pytest.fixture(scope="module")
def awkward_multipoint():
    return awkward_source(1, batch=2, evaluate=8)


@pytest.mark.parametrize("kernel", ["auto", "multipoint"])
def test_whole_model_uses_multipoint_and_matches_reference(awkward_multipoint, kernel, tmp_path, host_target):
    config = QuantConfig(3, 4, 8, method="multipoint", budget=0.3)
    result = compile_model(awkward_multipoint, config, host_target, tmp_path / "m.so", BuildOptions(kernel=kernel))
    assert set(result.kernels.values()) == {"multipoint"}
    assert any(multipoint.expand_rows(layer).extra_rows for layer in result.scheme.layers.values())
    compiled = run_compiled(result, awkward_multipoint.eval_x, 2)
    np.testing.assert_array_equal(compiled, result.reference_outputs)


def _tie_case(width: int) -> tuple[LayerScheme, np.ndarray]:
    """c0*I0 + c1*I1 with the exact sum just above a float32 tie that rounding c1*I1 first erases: an
    fma-contracted combination gives 2^24 + 2 here, the reference 2^24 (constants found by exact search)."""
    c0, c1 = 2**24 / 6, float.fromhex("0x1.c71c71d555556p-5")
    codes = np.array([4, 6], np.uint8).reshape(2, 1, 1, 1, 1)  # T0 = 2, T1 = 6 around zero point 3
    weight = WeightQuant(WeightKind.MULTIPOINT, 3, codes, scale=np.ones((2, 1)), zero_point=np.full((2, 1), 3.0),
                         coeffs=np.array([[2 * c0], [2 * c1]]))
    layer = LayerScheme("tie", "conv2d", weight, ActQuant(2, 1.0, 0))
    return layer, np.full((1, 1, 1, width), 3.0, np.float32)  # I0 = 6, I1 = 18


@pytest.mark.parametrize("width", [1, 8], ids=["scalar", "vector"])
def test_products_are_rounded_before_the_sum(width, host_target):
    layer, x = _tie_case(width)
    call = scheduled(multipoint.FAMILY, layer, layer_geometry(layer, x.shape), host_target.tvm_target)
    got = run_call(call, x, x.shape, host_target.tvm_target)
    want = layer_reference(x, layer)
    assert want.flat[0] == 2**24
    np.testing.assert_array_equal(got, want)

def _run_on_device(session, call, x, out_shape, spec, tmp_path):
    """Cross-compile for the arm_cpu target, upload over RPC, run on the emulated aarch64 device."""
    lib = tvm.compile(tvm.IRModule({"main": call.prim}), spec.tvm_target)
    path = tmp_path / "kernel.so"
    spec.export(lib, path)
    session.upload(str(path))
    module = session.load_module(path.name)
    dev = session.cpu()
    out = tvm.runtime.tensor(np.zeros(out_shape, np.float32), dev)
    module["main"](*[tvm.runtime.tensor(np.ascontiguousarray(a), dev) for a in (x, *call.consts)], out)
    return out.numpy()


@pytest.mark.arm
@pytest.mark.parametrize("shape,wbits,abits", [(SHAPES[0], 2, 2), (SHAPES[1], 3, 4), (SHAPES[2], 4, 8)])
def test_kernel_equals_reference_on_aarch64(arm_device, shape, wbits, abits, tmp_path):
    rng = np.random.default_rng(wbits)
    layer = make_layer(shape, wbits, abits, 3, rng)
    x = (rng.standard_normal(shape[:4]) * 2).astype(np.float32)
    geometry = layer_geometry(layer, shape[:4])
    call = scheduled(multipoint.FAMILY, layer, geometry, load_target("arm_cpu").tvm_target)
    got = _run_on_device(connect(arm_device), call, x, (shape[0], geometry.out_channels, *geometry.out_hw),
                         load_target("arm_cpu"), tmp_path)
    np.testing.assert_array_equal(got, layer_reference(x, layer))


@pytest.mark.arm
def test_products_are_rounded_before_the_sum_on_aarch64(arm_device, tmp_path):
    layer, x = _tie_case(8)
    call = scheduled(multipoint.FAMILY, layer, layer_geometry(layer, x.shape), load_target("arm_cpu").tvm_target)
    got = _run_on_device(connect(arm_device), call, x, x.shape, load_target("arm_cpu"), tmp_path)
    np.testing.assert_array_equal(got, layer_reference(x, layer))
