"""The one composition of the compiler: every caller (compile, tune, benchmarks, tests) goes through here.

    quantize      ModelSource + QuantRequest -> Quantized (scheme, graph; QAT trains the graph)
    relax_module  -> Relax IRModule, quantized layers swapped for unscheduled kernel calls, weights bound
    legalize      -> fused TIR PrimFuncs (the adapter's passes), every kernel unscheduled
                     (this module is what `tune` extracts its tasks from)
    apply_records -> functions with a matching tuning record take its schedule
    default_schedules -> the rest take their family's rule for the target (the target's rule table:
                     the families' own rules, then those the adapter brings), other functions the
                     adapter's generic rules (ApplyDefaultSchedule)
    finalize      -> VM executable (the adapter's remaining passes)
    export        -> the artifact (the adapter links it)

Target-kind specifics come from the target's adapter (adapters/), kernel specifics from the families
(kernels/); what the lowering decided is read back from the module (`Lowered.from_module`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tvm
from torch import fx
from tvm import relax
from tvm.s_tir.dlight import ScheduleRule

from . import family_times, frontend
from .adapters import for_target
from .database import load_task_state, read_databases, task_key
from .kernels.family import rule_table
from .kernels.registry import FAMILIES
from .passes.default_schedule import ApplyDefaultSchedule
from .errors import UserError
from .passes.lower_quantized import Lowered, LowerQuantizedLayers
from .plan import Plan
from .quantize import QuantConfig, quantize_model, quantize_with_training
from .scheme import QuantScheme
from .source import ModelSource, default_train_data
from .target import TargetSpec
from .train import TrainConfig


@dataclass(frozen=True)
class QuantRequest:
    """What decides the quantized model: method and bits, and QAT (`train`, with data or the built-in split);
    or a per-layer `plan` (plan.py: each layer's own method and bits, post-training; `config` then gives only
    the multipoint budget and the activation scales)."""

    config: QuantConfig
    train: TrainConfig | None = None
    train_data: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False, compare=False)
    plan: Plan | None = field(default=None, repr=False)


@dataclass(frozen=True)
class TuningRecords:
    """`tune` log folders as compile applies them: one database (with several, each query answers with the best
    record among them), the untuned latencies `tune` measured, and its per-family kernel times (family_times:
    workload key -> ms) by which `auto` picks each layer's family."""

    log_dirs: list[Path]
    database: object = field(repr=False)
    untuned_ms: dict[str, float] = field(repr=False)
    family_ms: dict[str, float] = field(default_factory=dict, repr=False)

    @classmethod
    def read(cls, log_dirs: Path | list[Path]) -> TuningRecords:
        dirs = [log_dirs] if isinstance(log_dirs, Path) else list(log_dirs)
        untuned: dict[str, float] = {}
        for log in dirs:
            untuned.update({k: v["untuned_ms"] for k, v in load_task_state(log).items() if "untuned_ms" in v})
        return cls(dirs, read_databases(dirs), untuned, family_times.merged(dirs))


@dataclass(frozen=True)
class BuildOptions:
    """`kernel`: "auto" or a family to use wherever it applies; `records`: tuning records to apply."""

    kernel: str = "auto"
    records: TuningRecords | None = None


@dataclass
class Quantized:
    scheme: QuantScheme
    gm: fx.GraphModule  # the graph the scheme belongs to (QAT changes its float parameters too)


@dataclass
class BuildResult:
    executable: relax.VMExecutable
    lowered: Lowered
    tuned: list[str]  # PrimFuncs that took their schedule from a tuning record
    untuned_faster: list[str]  # PrimFuncs with records that `tune` measured slower than the untuned build


def quantize(source: ModelSource, request: QuantRequest) -> Quantized:
    """Post-training, or QAT when `request.train` is set, or by the request's per-layer plan."""
    if request.plan is not None:
        if request.train is not None:
            raise UserError("a per-layer plan is post-training; it cannot be combined with training")
        from .plan_apply import quantize_planned

        scheme = quantize_planned(source.gm, source.layers, source.calib, request.plan, request.config, source.batch_size)
        return Quantized(scheme, source.gm)
    if request.train is None:
        return Quantized(quantize_model(source.gm, source.layers, source.calib, request.config, source.batch_size),
                         source.gm)
    data = request.train_data if request.train_data is not None else default_train_data(source)
    scheme, gm = quantize_with_training(
        source.gm, source.layers, source.calib, request.config, source.batch_size, request.train, data
    )
    return Quantized(scheme, gm)


def rules(spec: TargetSpec) -> dict[str, ScheduleRule]:
    """The target's rule table: family name -> its default schedule rule there (family.rule_table)."""
    target = spec.tvm_target
    return rule_table(FAMILIES.values(), target, for_target(spec).family_rules(target))


Prepare = Callable[[tvm.IRModule, dict[str, str]], tvm.IRModule]


def relax_module(
    source: ModelSource, quantized: Quantized, spec: TargetSpec, kernel: str = "auto", prepare: Prepare | None = None,
    measured: dict[str, float] | None = None,
) -> tvm.IRModule:
    """The Relax module with quantized layers as kernel calls and every remaining weight bound as a constant.
    `prepare(mod, param_fqn)`: a rewrite of the imported module before the quantized layers are lowered (the
    VTA adapter offloads its layers there); it gets the parameter -> ExportedProgram name map. `measured`:
    TuningRecords.family_ms, by which `auto` picks each layer's family."""
    mod, params, param_fqn = frontend.to_relax(quantized.gm, source.input_shape)
    if prepare is not None:
        mod = prepare(mod, param_fqn)
    layer_of_weight = {info.weight: info.name for info in source.layers if info.name in quantized.scheme.layers}
    param_to_layer = {p: layer_of_weight[fqn] for p, fqn in param_fqn.items() if fqn in layer_of_weight}
    mod = LowerQuantizedLayers(quantized.scheme, param_to_layer, spec.tvm_target, kernel, rules(spec), measured)(mod)
    mod = relax.transform.BindParams("main", {k: tvm.runtime.tensor(v) for k, v in params.items()})(mod)
    return relax.transform.DeadCodeElimination()(mod)


def legalize(mod: tvm.IRModule, spec: TargetSpec) -> tvm.IRModule:
    """Fused TIR, every kernel unscheduled (MetaSchedule's task analysis cannot read some default schedules,
    e.g. int8's dot intrinsic; `tune` leaves non-tunable families' kernels out of its tasks)."""
    target, adapter = spec.tvm_target, for_target(spec)
    adapter.configure()
    with target:
        return tvm.transform.Sequential(list(adapter.legalize_passes(target)))(mod)


def apply_records(mod: tvm.IRModule, records: TuningRecords, spec: TargetSpec) -> tuple[tvm.IRModule, list[str], list[str]]:
    """Schedule each function by its best record, unless `tune` measured the untuned build faster (few trials
    can leave the best record behind our default kernel schedule). Returns (module, applied, not applied)."""
    target, database = spec.tvm_target, records.database
    applied, slower = [], []
    for gv, func in list(mod.functions_items()):
        if not isinstance(func, tvm.tirx.PrimFunc) or func.attrs.get("tirx.is_scheduled", False):
            continue
        name, task = gv.name_hint, tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
        record = database.query_tuning_record(task, target, name)
        if record is None:
            continue
        best_ms = 1e3 * float(np.mean([float(s) for s in record.run_secs]))
        if records.untuned_ms.get(task_key(name, task), float("inf")) <= best_ms:
            slower.append(name)
            continue
        tuned = database.query_schedule(task, target, name).mod["main"]
        if "global_symbol" not in func.attrs:
            tuned = tuned.without_attr("global_symbol")
        mod[gv] = tuned.with_attr("tirx.is_scheduled", True)
        applied.append(name)
    return mod, sorted(applied), sorted(slower)


def default_schedules(mod: tvm.IRModule, spec: TargetSpec) -> tvm.IRModule:
    """Every kernel no record scheduled gets its family's rule for the target; other functions the adapter's."""
    target = spec.tvm_target
    return ApplyDefaultSchedule(target, [*rules(spec).values(), *for_target(spec).generic_rules(target)])(mod)


def finalize(mod: tvm.IRModule, spec: TargetSpec) -> relax.VMExecutable:
    target = spec.tvm_target
    pipeline = tvm.transform.Sequential(list(for_target(spec).finalize_passes(target)))
    return tvm.compile(mod, target, relax_pipeline=pipeline)


def export(executable: relax.VMExecutable, spec: TargetSpec, path: Path) -> str:
    """Write the artifact; returns what linked it."""
    return for_target(spec).export(spec, executable, path)


def tuning_module(source: ModelSource, quantized: Quantized, spec: TargetSpec, kernel: str = "auto") -> tvm.IRModule:
    """The module `tune` extracts tasks from: exactly what `build` looks records up in."""
    return legalize(relax_module(source, quantized, spec, kernel), spec)


def build(
    source: ModelSource, quantized: Quantized, spec: TargetSpec, options: BuildOptions = BuildOptions(),
    prepare: Prepare | None = None,
) -> BuildResult:
    """relax_module -> legalize -> apply_records -> default_schedules -> finalize (`prepare`: see relax_module)."""
    measured = options.records.family_ms if options.records is not None else None
    mod = relax_module(source, quantized, spec, options.kernel, prepare, measured)
    lowered = Lowered.from_module(mod)
    mod = legalize(mod, spec)
    tuned, slower = [], []
    if options.records is not None:
        mod, tuned, slower = apply_records(mod, options.records, spec)
    return BuildResult(finalize(default_schedules(mod, spec), spec), lowered, tuned, slower)
