"""The plug-in contracts (docs/ARCHITECTURE.md): families behind the KernelFamily Protocol with dlight-style
rules, the stateless pass whose decisions are read from the module, calibration-independent workloads, and
the method registry's options."""

import numpy as np
import pytest
import tvm
import tvm_ffi
from tvm.target import Target

from tvmquant import pipeline
from tvmquant.adapters import for_target
from tvmquant.cli import main
from tvmquant.errors import UserError
from tvmquant.kernels import bitserial, registry
from tvmquant.kernels.family import FAMILY_ATTR, LAYER_ATTR, KernelFamily, layer_geometry
from tvmquant.passes.lower_quantized import Lowered
from tvmquant.pipeline import QuantRequest
from tvmquant.quantize import QuantConfig
from tvmquant.scheme import ActQuant, LayerScheme, WeightKind, WeightQuant
from tvmquant.target import load_target

from models_for_tests import awkward_source

CUDA = Target("cuda")  # no family has a CUDA rule of its own: the CUDA adapter brings them (cuda/rules/)


def _uniform_layer(channels: int = 3) -> LayerScheme:
    """W2A2; with many channels auto's cost rule keeps it bit-serial (with 3, int8 is cheaper)."""
    weight = WeightQuant(WeightKind.UNIFORM, 2, np.ones((4, channels, 3, 3)), scale=np.ones(4), zero_point=np.full(4, 1.5))
    return LayerScheme("conv", "conv2d", weight, ActQuant(2, 0.5, 1), (1, 1), (1, 1))


@pytest.mark.parametrize("name", list(registry.FAMILIES))
def test_every_family_meets_the_protocol_and_rules_decline_what_they_do_not_schedule(name, host_target):
    family = registry.FAMILIES[name]
    assert isinstance(family, KernelFamily)
    assert family.rule_for(host_target.tvm_target) is not None and family.rule_for(CUDA) is None
    other = next(f for f in registry.FAMILIES.values() if f.name != name)
    layer = _uniform_layer()
    call = bitserial.FAMILY.compute(layer, layer_geometry(layer, (1, 3, 5, 5)))
    rule = family.rule_for(host_target.tvm_target)
    claims = rule.apply(call.prim, host_target.tvm_target, False) is not None
    assert claims == (name == "bitserial"), f"{name}'s rule on a bitserial kernel ({other.name} is another family)"
    assert rule.apply(call.prim, CUDA, False) is None


def test_family_without_a_rule_for_the_target_falls_back_with_a_reason(host_target):
    family, note = registry.choose(_uniform_layer(64), CUDA)  # the families' own rules only
    assert family.name == "dequant"
    assert note.startswith("bitserial: no schedule rule for target keys") and "generic schedule" in note
    assert registry.choose(_uniform_layer(64), host_target.tvm_target) == (bitserial.FAMILY, None)
    assert registry.choose(_uniform_layer(3), host_target.tvm_target)[0].name == "int8"  # auto's cost rule


def test_the_target_adapter_brings_rules_for_the_families():
    """CUDA's rule table: every family (cuda/rules/ where one exists, dlight's generic rules otherwise), so a
    CUDA build keeps auto's choice; the CPU adapter brings none (the families' own "cpu" schedules)."""
    cuda = load_target("cuda")
    table = pipeline.rules(cuda)
    assert set(table) == set(registry.FAMILIES)
    assert registry.choose(_uniform_layer(64), cuda.tvm_target, rules=table) == (bitserial.FAMILY, None)
    assert for_target(cuda).family_rules(cuda.tvm_target)["bitserial"] is table["bitserial"]
    assert for_target(load_target("x86")).family_rules(load_target("x86").tvm_target) == {}
    assert [for_target(load_target(n)).key for n in ("x86", "arm_cpu", "cuda", "vta")] == ["cpu", "cpu", "cuda", "cpu"]


@pytest.fixture(scope="module")
def awkward():
    return awkward_source(7)


def _kernels(mod: tvm.IRModule) -> dict[str, tvm.tirx.PrimFunc]:
    return {str(f.attrs[LAYER_ATTR]): f for _, f in mod.functions_items()
            if isinstance(f, tvm.tirx.PrimFunc) and f.attrs is not None and LAYER_ATTR in f.attrs}


def test_lowering_decisions_travel_in_the_module(awkward, host_target):
    quantized = pipeline.quantize(awkward, QuantRequest(QuantConfig(2, 2, 8)))
    mod = pipeline.relax_module(awkward, quantized, host_target, kernel="lut")  # lut cannot run uniform layers
    lowered = Lowered.from_module(mod)
    auto = {n: registry.choose(layer, host_target.tvm_target)[0].name for n, layer in quantized.scheme.layers.items()}
    assert lowered.kernels == auto and set(lowered.kernels) == set(quantized.scheme.layers)
    assert all(note.startswith("lut: uniform weights") for note in lowered.notes.values()) and lowered.notes
    for layer, func in _kernels(mod).items():
        assert str(func.attrs[FAMILY_ATTR]) == lowered.kernels[layer]
    assert lowered.const_bytes[next(iter(lowered.kernels))] > 0


def test_tuning_workloads_do_not_depend_on_calibration(awkward, host_target):
    """Re-calibrated activation scales change the scheme but no kernel: a record keeps matching."""
    config = QuantConfig(2, 2, 8)
    first = pipeline.quantize(awkward, QuantRequest(config))
    shifted = awkward_source(7)
    shifted.calib = shifted.calib * 3 + 1
    second = pipeline.quantize(shifted, QuantRequest(config))
    acts = [(first.scheme.layers[n].act, second.scheme.layers[n].act) for n in first.scheme.layers]
    assert all(a.scale != b.scale for a, b in acts), "the re-calibration must really change every scale"
    a = _kernels(pipeline.tuning_module(awkward, first, host_target))
    b = _kernels(pipeline.tuning_module(shifted, second, host_target))
    assert a.keys() == b.keys()
    for layer in a:
        assert tvm_ffi.structural_equal(a[layer], b[layer]), layer


def test_method_options_reach_the_quantizer(awkward):
    gaussian = pipeline.quantize(awkward, QuantRequest(QuantConfig(2, 8, 8, method="uniq", options=(("fit", "gaussian"),))))
    empirical = pipeline.quantize(awkward, QuantRequest(QuantConfig(2, 8, 8, method="uniq", options=(("fit", "empirical"),))))
    name = next(n for n, layer in gaussian.scheme.layers.items() if layer.weight.bits == 2)
    assert not np.array_equal(gaussian.scheme.layers[name].weight.levels, empirical.scheme.layers[name].weight.levels)


@pytest.mark.parametrize("opt,message", [
    ("fit=student", "option fit must be one of auto, gaussian, empirical"),
    ("temperature=3", "has no option temperature (its options: fit, per_channel)"),
    ("fit", "expects KEY=VALUE"),
])
def test_bad_method_options_are_one_line_errors(opt, message, capsys, tmp_path):
    assert main(["compile", "--method", "uniq", "--method-opt", opt, "-o", str(tmp_path / "m.so")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not list(tmp_path.iterdir())


def test_multipoint_options_are_checked():
    with pytest.raises(UserError, match="max_points: must be >= 1"):
        QuantConfig(2, 2, 8, method="multipoint", options=(("max_points", "0"),))
    assert QuantConfig(2, 2, 8, method="multipoint", options=(("max_points", "2"),)).method_options() == {
        "budget": 0.1, "max_points": 2}


def test_default_schedules_leave_the_module_they_read_unscheduled(awkward, host_target):
    """tune measures each task's default schedule and then tunes the same task module: scheduling it in
    place would leave MetaSchedule nothing to search (no candidates, no records)."""
    mod = pipeline.tuning_module(awkward, pipeline.quantize(awkward, QuantRequest(QuantConfig(2, 2, 8))), host_target)
    scheduled = pipeline.default_schedules(mod, host_target)
    assert all(f.attrs.get("tirx.is_scheduled", False) for f in _kernels(scheduled).values())
    assert not any(f.attrs.get("tirx.is_scheduled", False) for f in _kernels(mod).values())
