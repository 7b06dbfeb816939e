"""Whole models: the compiled artifact agrees with the quantized PyTorch reference."""

import numpy as np
import pytest
import torch

from tvmquant.compile import compile_model, load_source
from tvmquant.kernels import registry
from tvmquant.quantize import QuantConfig
from tvmquant.batching import run_batched

from models_for_tests import Awkward, WithDepthwise, randomize_bn, run_compiled

SHAPE = (2, 3, 9, 4)  # batch 2 with 5 samples: the padded tail batch is exercised too


def _data(seed, n=5):
    return np.random.default_rng(seed).standard_normal((n, *SHAPE[1:])).astype(np.float32)


@pytest.mark.parametrize("wbits,abits,first_last", [(1, 1, None), (2, 2, 8), (3, 4, 3), (8, 8, 8)])
def test_compiled_matches_reference(tmp_path, host_target, wbits, abits, first_last):
    torch.manual_seed(wbits)
    source = load_source(randomize_bn(Awkward(), seed=wbits), SHAPE, calib=_data(0, 16), eval_x=_data(1))
    result = compile_model(source, QuantConfig(wbits, abits, first_last), host_target, tmp_path / "m.so")
    expected = 2 if first_last is None else 4
    target = host_target.tvm_target  # auto's cost rule: int8 for the few-channel and 8-bit layers
    want = {name: registry.choose(layer, target)[0].name for name, layer in result.scheme.layers.items()}
    assert result.kernels == want and len(result.kernels) == expected
    compiled = run_compiled(result, source.eval_x, 2)
    ref = result.reference_outputs
    assert compiled.shape == (5, 4) and compiled.dtype == np.float32
    np.testing.assert_allclose(compiled, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    # the quantized model really is quantized: it differs from fp32 at low bits
    if wbits <= 2:
        assert np.abs(ref - run_batched(source.fp32, source.eval_x, 2)).max() > 1e-3


def test_grouped_conv_stays_float_with_named_warning(tmp_path, host_target):
    model = WithDepthwise().eval()
    data = np.random.default_rng(0).standard_normal((6, 4, 6, 6)).astype(np.float32)
    source = load_source(model, (1, 4, 6, 6), calib=data)
    with pytest.warns(UserWarning, match="'dw' kept in float32: grouped convolution"):
        result = compile_model(source, QuantConfig(2, 2, 8), host_target, tmp_path / "dw.so")
    assert "dw" in result.scheme.kept_float and "dw" not in result.kernels
    compiled = run_compiled(result, data, 1)
    np.testing.assert_allclose(compiled, result.reference_outputs, rtol=1e-5, atol=1e-5)


def test_builtin_model_w4a4_keeps_accuracy(tmp_path, host_target):
    source = load_source(None)
    result = compile_model(source, QuantConfig(4, 4, 8), host_target, tmp_path / "d.so")
    compiled = run_compiled(result, source.eval_x, 1)
    np.testing.assert_allclose(compiled, result.reference_outputs, rtol=1e-5, atol=1e-5)
    accuracy = (compiled.argmax(1) == source.eval_y).mean()
    assert accuracy >= 0.97, accuracy
