"""The dequantize-then-dense kernel against its numpy reference."""

import numpy as np
import pytest
import tvm

from tvmquant.kernels import dequant
from tvmquant.kernels.dequant import DequantConv2dConfig

SHAPES = [
    (1, 3, 7, 9, 5, (3, 3), (2, 2), (1, 1)),
    (3, 70, 1, 1, 13, (1, 1), (1, 1), (0, 0)),
    (2, 17, 6, 5, 24, (3, 3), (1, 1), (1, 1)),
]


@pytest.mark.parametrize("abits", [2, 4, 8])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s[:5])))
def test_dequant_conv_matches_reference(shape, abits, host_target):
    rng = np.random.default_rng(abits)
    cfg = DequantConv2dConfig(*shape, abits=abits)
    x = rng.standard_normal((cfg.batch, cfg.in_channels, cfg.height, cfg.width)).astype(np.float32)
    w = rng.standard_normal((cfg.out_channels, cfg.in_channels, *cfg.kernel))
    zp, scale = int(rng.integers(0, 1 << abits)), float(rng.uniform(0.05, 0.5))
    inv = float(np.float32(1.0 / scale))
    lib = tvm.compile(tvm.IRModule({"main": dequant.build_primfunc(cfg, inv, zp, scale)}), host_target.tvm_target)
    dev = tvm.cpu()
    out = tvm.runtime.tensor(np.zeros((cfg.batch, cfg.out_channels, *cfg.out_hw), np.float32), dev)
    lib(tvm.runtime.tensor(x, dev), tvm.runtime.tensor(w, dev), out)
    want = dequant.reference(x, w, cfg, inv, zp, scale)
    assert want.std() > 0
    np.testing.assert_allclose(out.numpy(), want, rtol=1e-6, atol=1e-6 * np.abs(want).max())
