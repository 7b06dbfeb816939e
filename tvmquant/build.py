"""Relax module + QuantScheme -> executable: lower quantized layers, embed the remaining weights, compile.

CPU targets: the module is lowered with unscheduled tunable kernels, exactly as `tune` extracted its tasks, and
fused; functions with a record (a MetaSchedule database) take its schedule, kernels without one their family's
default schedule, and every remaining fp32 op a real one (cpu_schedule.py), not TVM's naive loop nest.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax
from tvm.relax.backend.cpu_generic import pipeline as cpu_pipeline

from .cpu_schedule import schedule_remaining
from .database import task_key
from .frontend import LayerInfo
from .kernels.registry import tunable_family
from .passes.lower_quantized import LowerQuantizedLayers
from .scheme import QuantScheme
from .target import TargetSpec


@dataclass
class Lowered:
    """What the lowering decided per quantized layer."""

    kernels: dict[str, str]  # layer -> kernel family
    const_bytes: dict[str, int]  # layer -> bytes of the kernel's constants (what the artifact stores)
    notes: dict[str, str]  # layer -> why the preferred or requested family was not taken


@dataclass
class BuildResult:
    executable: relax.VMExecutable
    lowered: Lowered
    tuned: list[str]  # PrimFuncs that took their schedule from a tuning record
    untuned_faster: list[str]  # PrimFuncs with records that `tune` measured slower than the untuned build


def lower(
    mod: tvm.IRModule,
    params: dict[str, np.ndarray],
    param_fqn: dict[str, str],
    layers: list[LayerInfo],
    scheme: QuantScheme,
    tunable: bool = False,
    kernel: str = "auto",
    deferred: bool = False,
) -> tuple[tvm.IRModule, Lowered]:
    """Swap quantized layers for kernel calls and bind the remaining weights as constants (`deferred`: every
    kernel unscheduled, for a target whose own rules schedule them, CUDA)."""
    layer_of_weight = {info.weight: info.name for info in layers if info.name in scheme.layers}
    param_to_layer = {p: layer_of_weight[fqn] for p, fqn in param_fqn.items() if fqn in layer_of_weight}
    lowering = LowerQuantizedLayers(scheme, param_to_layer, tunable=tunable, kernel=kernel, deferred=deferred)
    mod = lowering(mod)
    mod = relax.transform.BindParams("main", {k: tvm.runtime.tensor(v) for k, v in params.items()})(mod)
    mod = relax.transform.DeadCodeElimination()(mod)
    return mod, Lowered(dict(lowering.kernels), dict(lowering.const_bytes), dict(lowering.notes))


def legalize(mod: tvm.IRModule, target: tvm.target.Target) -> tvm.IRModule:
    """Relax ops -> fused TIR PrimFuncs (the first half of TVM's CPU pipeline): the functions MetaSchedule
    tunes and records are matched against."""
    if target.kind.name == "cuda":
        from .cuda import pipeline as cuda_pipeline

        return cuda_pipeline.legalize(mod, target)
    with target:
        return tvm.transform.Sequential(cpu_pipeline.library_dispatch_passes(target) + cpu_pipeline.legalize_passes(target))(mod)


def apply_records(
    mod: tvm.IRModule, database, target: tvm.target.Target, untuned_ms: dict[str, float]
) -> tuple[tvm.IRModule, list[str], list[str]]:
    """Schedule each function by its best record, unless `tune` measured the untuned build faster (few trials
    can leave the best record behind our default kernel schedule). Returns (module, applied, not applied)."""
    applied, slower = [], []
    for gv, func in list(mod.functions_items()):
        if not isinstance(func, tvm.tirx.PrimFunc):
            continue
        name, task = gv.name_hint, tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
        record = database.query_tuning_record(task, target, name)
        if record is None:
            continue
        best_ms = 1e3 * float(np.mean([float(s) for s in record.run_secs]))
        if untuned_ms.get(task_key(name, task), float("inf")) <= best_ms:
            slower.append(name)
            continue
        tuned = database.query_schedule(task, target, name).mod["main"]
        if "global_symbol" not in func.attrs:
            tuned = tuned.without_attr("global_symbol")
        mod[gv] = tuned.with_attr("tirx.is_scheduled", True)
        applied.append(name)
    return mod, sorted(applied), sorted(slower)


def schedule_kernels(mod: tvm.IRModule) -> tvm.IRModule:
    """Give our kernels that no record scheduled their family's default schedule."""
    for gv, func in mod.functions_items():
        family = tunable_family(gv.name_hint)
        if family is not None and not func.attrs.get("tirx.is_scheduled", False):
            mod[gv] = family.schedule(func).with_attr("tirx.is_scheduled", True)
    return mod


def build(
    mod: tvm.IRModule,
    params: dict[str, np.ndarray],
    param_fqn: dict[str, str],
    layers: list[LayerInfo],
    scheme: QuantScheme,
    target: TargetSpec,
    database=None,
    untuned_ms: dict[str, float] | None = None,
    kernel: str = "auto",
) -> BuildResult:
    """Compile for `target`, applying the records of `database` (a MetaSchedule Database) if given;
    `untuned_ms` (tasks.json, by `task_key`) lets a record lose against the untuned build; `kernel` as in
    LowerQuantizedLayers."""
    tvm_target = target.tvm_target
    cuda = tvm_target.kind.name == "cuda"
    with tvm_target:  # kernel families pick target-specific defaults (e.g. register tiles) from the context
        mod, lowered = lower(mod, params, param_fqn, layers, scheme, tunable=not cuda, kernel=kernel, deferred=cuda)
    if cuda:
        from .cuda import pipeline as cuda_pipeline, toolkit

        toolkit.configure()  # exact float math for NVRTC, also where TVM compiles the kernels itself (a GPU here)
    mod, tuned, slower = legalize(mod, tvm_target), [], []
    if database is not None:
        mod, tuned, slower = apply_records(mod, database, tvm_target, untuned_ms or {})
    if cuda:
        executable = cuda_pipeline.finalize(cuda_pipeline.schedule(mod, tvm_target), tvm_target)
        return BuildResult(executable, lowered, tuned, slower)
    with tvm_target:
        mod = schedule_kernels(mod)
    mod = schedule_remaining(mod, tvm_target)
    # the second half of TVM's CPU pipeline (the package does not re-export these two)
    pipeline = tvm.transform.Sequential(
        cpu_pipeline.dataflow_lower_passes(tvm_target) + cpu_pipeline.finalize_passes(tvm_target)
    )
    return BuildResult(tvm.compile(mod, tvm_target, relax_pipeline=pipeline), lowered, tuned, slower)
