"""Which of a layer's exact families `auto` builds, and why: measured times where `tune` recorded at least two
of them for this very kernel workload (family_times), else the stated cost rule (registry.auto_family)."""

from __future__ import annotations

from collections.abc import Mapping

from tvm.s_tir.dlight import ScheduleRule
from tvm.target import Target

from ..family_times import describe, workload_key
from ..kernels import int8, registry
from ..kernels.family import KernelCall, KernelFamily
from ..kernels.geometry import ConvGeometry
from ..scheme import LayerScheme


def pick(
    layer: LayerScheme, geometry: ConvGeometry, target: Target, rules: Mapping[str, ScheduleRule] | None,
    ruled: KernelFamily, call: KernelCall, measured: Mapping[str, float],
) -> tuple[KernelFamily, KernelCall, str | None]:
    """(family, its kernel, why) for a layer `auto` gave to `ruled` (whose kernel is `call`) by its rule;
    why is None where the layer has one family only."""
    names = registry.candidates(layer, target, rules)
    if len(names) < 2 or ruled.name not in names:
        return ruled, call, None
    calls = {ruled.name: call}
    times = {}
    for name in names:
        if name not in calls and measured:
            calls[name] = registry.FAMILIES[name].compute(layer, geometry, target)
        if name in calls and (ms := measured.get(workload_key(calls[name].prim))) is not None:
            times[name] = ms
    rule = registry.rule_why(layer, int8.dot_isa(target))
    if len(times) < 2:
        return ruled, call, rule + ("" if not times else f" (only {', '.join(times)} measured)")
    fastest = min(times, key=times.__getitem__)
    return registry.FAMILIES[fastest], calls[fastest], describe(fastest, times)
