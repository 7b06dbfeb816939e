"""Relax module + QuantScheme -> executable: lower quantized layers, embed the remaining weights, compile.

Without tuning records the kernels carry their default schedule and TVM's default pipeline does the rest.
With records (a MetaSchedule database), the module is lowered with unscheduled kernels, exactly as `tune`
extracted its tasks, so that the records match; kernels without a record fall back to the default schedule.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax
from tvm.relax.backend.cpu_generic import pipeline as cpu_pipeline

from .frontend import LayerInfo
from .kernels import bitserial
from .passes.lower_quantized import KERNEL_PREFIX, LowerQuantizedLayers
from .scheme import QuantScheme
from .target import TargetSpec


@dataclass
class BuildResult:
    executable: relax.VMExecutable
    kernels: dict[str, str]  # quantized layer -> kernel family
    tuned: list[str]  # PrimFuncs that took their schedule from a tuning record


def lower(
    mod: tvm.IRModule,
    params: dict[str, np.ndarray],
    param_fqn: dict[str, str],
    layers: list[LayerInfo],
    scheme: QuantScheme,
    tunable: bool = False,
) -> tuple[tvm.IRModule, dict[str, str]]:
    """Swap quantized layers for kernel calls and bind the remaining weights as constants."""
    layer_of_weight = {info.weight: info.name for info in layers if info.name in scheme.layers}
    param_to_layer = {p: layer_of_weight[fqn] for p, fqn in param_fqn.items() if fqn in layer_of_weight}
    lowering = LowerQuantizedLayers(scheme, param_to_layer, tunable=tunable)
    mod = lowering(mod)
    mod = relax.transform.BindParams("main", {k: tvm.runtime.tensor(v) for k, v in params.items()})(mod)
    mod = relax.transform.DeadCodeElimination()(mod)
    return mod, dict(lowering.kernels)


def legalize(mod: tvm.IRModule, target: tvm.target.Target) -> tvm.IRModule:
    """Relax ops -> fused TIR PrimFuncs (the first half of TVM's CPU pipeline): the functions MetaSchedule
    tunes and records are matched against."""
    with target:
        return tvm.transform.Sequential(cpu_pipeline.library_dispatch_passes(target) + cpu_pipeline.legalize_passes(target))(mod)


def schedule_kernels(mod: tvm.IRModule) -> tvm.IRModule:
    """Give our bit-serial kernels that no record scheduled their default schedule."""
    for gv, func in mod.functions_items():
        if gv.name_hint.startswith(KERNEL_PREFIX) and not func.attrs.get("tirx.is_scheduled", False):
            mod[gv] = bitserial.schedule(func).with_attr("tirx.is_scheduled", True)
    return mod


def tuned_functions(mod: tvm.IRModule) -> list[str]:
    return sorted(gv.name_hint for gv, f in mod.functions_items()
                  if isinstance(f, tvm.tirx.PrimFunc) and f.attrs.get("tirx.is_scheduled", False))


def build(
    mod: tvm.IRModule,
    params: dict[str, np.ndarray],
    param_fqn: dict[str, str],
    layers: list[LayerInfo],
    scheme: QuantScheme,
    target: TargetSpec,
    database=None,
) -> BuildResult:
    """Compile for `target`, applying the records of `database` (a MetaSchedule Database) if given."""
    if database is None:
        mod, kernels = lower(mod, params, param_fqn, layers, scheme)
        return BuildResult(tvm.compile(mod, target.tvm_target), kernels, [])
    tvm_target = target.tvm_target
    mod, kernels = lower(mod, params, param_fqn, layers, scheme, tunable=True)
    mod = legalize(mod, tvm_target)
    with tvm_target, database:
        mod = relax.transform.MetaScheduleApplyDatabase(enable_warning=False)(mod)
    tuned = tuned_functions(mod)
    mod = schedule_kernels(mod)
    # the second half of TVM's CPU pipeline (the package does not re-export these two)
    pipeline = tvm.transform.Sequential(
        cpu_pipeline.dataflow_lower_passes(tvm_target) + cpu_pipeline.finalize_passes(tvm_target)
    )
    return BuildResult(tvm.compile(mod, tvm_target, relax_pipeline=pipeline), kernels, tuned)
