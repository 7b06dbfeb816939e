"""The one activation-quantizer definition (tvmquant.actquant): its numpy, torch and TE forms, and the
training-time fake quantizer, agree bit for bit, on round-half-even ties and at both clip edges."""

import numpy as np
import pytest
import torch
import tvm
from tvm import te

from tvmquant import actquant
from tvmquant.qat import fake_quant
from tvmquant.scheme import ActQuant


def _inputs(act: ActQuant) -> np.ndarray:
    """Exact ties (k + 1/2 code steps), values around them, below zero and past the top code, random values."""
    steps = np.arange(-3, act.qmax + 4, dtype=np.float64)
    ties = (steps + 0.5 - act.zero_point) * act.scale
    near = np.concatenate([ties, np.nextafter(ties.astype(np.float32), np.inf), np.nextafter(ties.astype(np.float32), -np.inf)])
    rng = np.random.default_rng(act.bits)
    return np.concatenate([near, rng.standard_normal(500) * act.scale * act.qmax]).astype(np.float32)


ACTS = [ActQuant(2, 0.25, 1), ActQuant(4, 0.1, 0), ActQuant(8, 0.03125, 128), ActQuant(3, 0.3, 5)]


@pytest.mark.parametrize("act", ACTS, ids=lambda a: f"A{a.bits}z{a.zero_point}")
def test_numpy_torch_and_te_forms_agree(act, host_target):
    x = _inputs(act)
    want = actquant.numpy_codes(x, act.inv_scale, act.zero_point, act.bits)
    assert {0.0, float(act.qmax)} <= set(want.tolist()), "both clip edges must be exercised"
    np.testing.assert_array_equal(actquant.torch_codes(torch.from_numpy(x), act).numpy(), want)
    xs = te.placeholder(x.shape, "float32", name="x")
    inv, zp = actquant.te_placeholders()
    func = te.create_prim_func([xs, inv, zp, actquant.te_codes(xs, inv, zp, act.bits)])
    lib = tvm.compile(tvm.IRModule({"main": func}), host_target.tvm_target)
    out = tvm.runtime.tensor(np.zeros(x.shape, np.int32))
    lib(*[tvm.runtime.tensor(a) for a in (x, *actquant.operands(act))], out)
    np.testing.assert_array_equal(out.numpy(), want.astype(np.int32))


@pytest.mark.parametrize("act", ACTS, ids=lambda a: f"A{a.bits}z{a.zero_point}")
def test_training_fake_quantizer_rounds_like_the_definition(act):
    x = torch.from_numpy(_inputs(act))
    value = fake_quant(x, act.scale, act.inv_scale, act.zero_point, act.qmax, noise=False)
    np.testing.assert_array_equal(value.detach().numpy(), actquant.torch_dequantized(x, act).numpy())


def test_ties_round_to_even():
    act = ActQuant(4, 1.0, 0)
    codes = actquant.numpy_codes(np.array([0.5, 1.5, 2.5], np.float32), act.inv_scale, act.zero_point, act.bits)
    np.testing.assert_array_equal(codes, [0, 2, 2])
