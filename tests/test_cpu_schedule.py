"""No unscheduled fp32 op: after a CPU build's fusion every PrimFunc has a schedule (our kernels their family's,
the rest the CPU adapter's generic rules: dlight's CPU rules or cpu_schedule.ParallelVectorize), which runs
threads and vector lanes, and the scheduled ops compute what the model does."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import tvm
from tvm import relax

from tvmquant import cpu_schedule, frontend, pipeline
from tvmquant.passes.default_schedule import ApplyDefaultSchedule
from tvmquant.quantize import QuantConfig, quantize_model
from tvmquant.source import load_source

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from depthwise_models import mobilenet_v2  # noqa: E402


def _prims(mod):
    return {gv.name_hint: f for gv, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc)}


def test_every_function_of_a_depthwise_model_is_scheduled(host_target):
    calib = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    source = load_source(mobilenet_v2(0.25, 10), (1, 3, 32, 32), calib=calib)
    scheme = quantize_model(source.gm, source.layers, source.calib, QuantConfig(4, 4), 1)
    for name in list(scheme.layers)[-2:]:  # unquantized layers (a 1x1 conv, the classifier) stay fp32 ops
        del scheme.layers[name]
    mod = pipeline.legalize(pipeline.relax_module(source, pipeline.Quantized(scheme, source.gm), host_target),
                            host_target)
    kernels_only = ApplyDefaultSchedule(host_target.tvm_target, pipeline.rules(host_target).values())(mod)
    before = [name for name, f in _prims(kernels_only).items() if not f.attrs.get("tirx.is_scheduled", False)]
    assert any("conv2d" in n for n in before) and "mean" in before and any("clip" in n for n in before)
    scheduled = _prims(pipeline.default_schedules(mod, host_target))
    assert [n for n, f in scheduled.items() if not f.attrs.get("tirx.is_scheduled", False)] == []
    for name in before:
        text = scheduled[name].script()
        assert "T.parallel" in text or "T.vectorized" in text, name


class _Ops(torch.nn.Module):
    """Pooling, a residual add, ReLU6, softmax and an unquantized conv: the ops a CNN keeps in fp32."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        y = F.relu6(self.conv(x)) + x
        y = F.max_pool2d(y, 3, 2, 1) + F.avg_pool2d(y, 2, 2, 0, ceil_mode=True)[..., : 9, : 9]
        return torch.softmax(y.mean((2, 3)), dim=1)


def _float_module(host_target):
    model = _Ops().eval()
    ep = frontend.export_module(model, (1, 8, 17, 17))
    gm, _ = frontend.prepare(ep, (1, 8, 17, 17))
    mod, params, _ = frontend.to_relax(gm, (1, 8, 17, 17))
    mod = relax.transform.BindParams("main", {k: tvm.runtime.tensor(v) for k, v in params.items()})(mod)
    return model, pipeline.legalize(mod, host_target)


@pytest.mark.parametrize("schedule", [True, False], ids=["scheduled", "unscheduled"])
def test_scheduled_fp32_ops_compute_what_the_model_does(schedule, host_target):
    """The scheduled build agrees with PyTorch as closely as TVM's naive lowering does (float reductions may be
    reordered, so not bit for bit); the unscheduled variant shows the bound is not vacuous."""
    model, mod = _float_module(host_target)
    if schedule:
        mod = ApplyDefaultSchedule(host_target.tvm_target, cpu_schedule.rules())(mod)
        assert all(f.attrs.get("tirx.is_scheduled", False) for f in _prims(mod).values())
    vm = relax.VirtualMachine(pipeline.finalize(mod, host_target), tvm.cpu())
    x = np.random.default_rng(0).standard_normal((1, 8, 17, 17)).astype(np.float32)
    got = vm["main"](tvm.runtime.tensor(x)).numpy()
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_pooling_functions_take_the_pooling_rule(host_target):
    """Max- and avg-pool functions get unrolled windows (Pooling), the other fp32 ops do not; their results are
    checked against PyTorch by the test above."""
    _, mod = _float_module(host_target)
    taken = {name: cpu_schedule.Pooling().apply(f, host_target.tvm_target, False) is not None
             for name, f in _prims(mod).items()}
    pools = [name for name, hit in taken.items() if hit]
    assert any("max_pool" in n for n in pools) and any("avg_pool" in n for n in pools), taken
    assert all("pool" in n for n in pools), taken
    for name in pools:
        assert "T.unroll" in cpu_schedule.Pooling().apply(_prims(mod)[name], host_target.tvm_target, False).mod.script()
