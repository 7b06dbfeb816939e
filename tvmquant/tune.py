"""`tune`: MetaSchedule with the XGBoost cost model over the model's tasks, measured here or on an RPC device.

Tasks are the model as `compile` builds it, up to the records (`pipeline.tuning_module`): our tunable
kernels, unscheduled, plus the fused fp32 ops. The model is quantized with the same options as `compile`
(method options, QAT); since activation scales are kernel inputs, records also survive re-calibration. Records go to TVM's JSON database in the log folder, which is
locked for the run (`database.locked`). A task with `trials` successful records already, or whose search space ran out
before that, is not tuned again, so a second run resumes; untuned latencies and exhausted spaces are kept
beside the database (`tasks.json`) for the same reason. Under `--kernel auto`, every exact family a layer
could run on is timed too (tune_families -> `families.json`), so that compile picks each layer's fastest.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import cloudpickle
import tvm
import tvm_ffi
from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms

from . import _ms_workers, pipeline, tempdirs, tune_families
from .adapters import for_target
from .console import metaschedule_log, quiet_metaschedule_console
from .console import progress as progress_bar
from .database import load_task_state, locked, open_database, save_task_state, task_key
from .kernels.family import FAMILY_ATTR, LAYER_ATTR
from .kernels.registry import FAMILIES
from .pipeline import QuantRequest
from .source import ModelSource
from .target import TargetSpec

# The builder/exporter run in MetaSchedule's worker processes: ship them by value, so a worker never needs
# to import this package (which may not be on its path).
cloudpickle.register_pickle_by_value(_ms_workers)

FAILED = 1e9  # MetaSchedule records a failed trial with run_secs of 1e10; anything this slow is a failure


@dataclass(frozen=True)
class Tracker:
    """Where to measure: an RPC tracker and the key the device(s) registered under."""

    host: str
    port: int
    key: str


@dataclass
class TaskResult:
    name: str
    untuned_ms: float | None
    best_ms: float | None
    records: int  # trials in the database after this run, failed ones included
    measured: int  # trials measured by this run
    failed: int  # of those, how many failed


@dataclass(frozen=True)
class TuneOptions:
    """How much to tune and where to measure."""

    trials: int
    tracker: Tracker | None = None
    timeout: float = 60.0
    workers: int = 1
    progress: bool = True
    kernel: str = "auto"


def extract_tasks(source: ModelSource, request: QuantRequest, target: TargetSpec, kernel: str = "auto",
                  quantized: pipeline.Quantized | None = None) -> list[ms.ExtractedTask]:
    """The model's tunable functions, as `compile` with tuning records will look them up. Kernels of families
    that are not tunable (int8, dequant) are left out: compile always gives them their default schedule.
    Under auto, also the kernels of every other exact family a layer could run on (tune_families), so
    compile's choice by measurement compares tuned kernels."""
    quantized = quantized if quantized is not None else pipeline.quantize(source, request)
    mods = [pipeline.tuning_module(source, quantized, target, kernel)]
    if kernel == "auto":
        mods += tune_families.extra_kernel_modules(source, quantized, target)
    tasks, seen = [], set()
    for mod in mods:
        for task in ms.relax_integration.extract_tasks(mod, target.tvm_target):
            key = task_key(task.task_name, task.dispatched[0])
            if _tunable(task.dispatched[0]["main"]) and key not in seen:
                seen.add(key)
                tasks.append(task)
    return sorted(tasks, key=lambda task: task.task_name)


def _tunable(func: tvm.tirx.PrimFunc) -> bool:
    family = FAMILIES.get(str(func.attrs.get(FAMILY_ATTR, ""))) if func.attrs is not None else None
    return family is None or family.tunable


def make_runner(tracker: Tracker | None, timeout: float, workers: int) -> ms.runner.Runner:
    evaluator = ms.runner.EvaluatorConfig(number=3, repeat=3, min_repeat_ms=0)
    if tracker is None:
        return ms.runner.LocalRunner(timeout_sec=timeout, evaluator_config=evaluator)
    config = ms.runner.RPCConfig(
        tracker_host=tracker.host, tracker_port=tracker.port, tracker_key=tracker.key, session_timeout_sec=timeout
    )
    return ms.runner.RPCRunner(rpc_config=config, evaluator_config=evaluator, max_workers=workers,
                               f_create_session=_ms_workers.create_session)


def _records(database: ms.database.Database, mod: tvm.IRModule) -> list[ms.database.TuningRecord]:
    if not database.has_workload(mod):
        return []
    workload = database.commit_workload(mod)
    return [r for r in database.get_all_tuning_records() if tvm_ffi.structural_equal(r.workload.mod, workload.mod)]


def _seconds(record: ms.database.TuningRecord) -> float | None:
    secs = [float(s) for s in record.run_secs or []]
    return sum(secs) / len(secs) if secs and max(secs) < FAILED else None


def _default_schedule(task: ms.ExtractedTask, target: TargetSpec) -> tvm.IRModule:
    """The task as `compile` builds it without a record (pipeline.default_schedules on the task alone)."""
    return pipeline.default_schedules(task.dispatched[0], target)


def measure_untuned(
    tasks: list[ms.ExtractedTask], target: TargetSpec, builder: ms.builder.Builder, runner: ms.runner.Runner
) -> list[float | None]:
    """Latency (ms) of each task as `compile` builds it without records: our default kernel schedule, or
    TVM's plain lowering for fp32 ops. Measured with the same builder and runner as the trials."""
    return measure_modules([_default_schedule(task, target) for task in tasks], target, builder, runner)


def measure_modules(
    mods: list[tvm.IRModule], target: TargetSpec, builder: ms.builder.Builder, runner: ms.runner.Runner
) -> list[float | None]:
    """Latency (ms) of each scheduled one-function module (None where it failed to build or run)."""
    if not mods:
        return []
    built = builder.build([ms.builder.BuilderInput(mod, target.tvm_target) for mod in mods])
    device = for_target(target).runner_device
    inputs, where = [], []
    for i, (mod, result) in enumerate(zip(mods, built)):
        if result.error_msg is None:
            args = ms.arg_info.ArgInfo.from_prim_func(mod["main"])
            inputs.append(ms.runner.RunnerInput(result.artifact_path, device, args))
            where.append(i)
    latencies: list[float | None] = [None] * len(mods)
    for i, future in zip(where, runner.run(inputs)):
        result = future.result()
        if result.error_msg is None:
            latencies[i] = 1e3 * sum(float(s) for s in result.run_secs) / len(result.run_secs)
    return latencies


@derived_object
class _Progress(ms.measure_callback.PyMeasureCallback):
    """Advances a tqdm bar per measured candidate and counts failures."""

    def __init__(self, bar):  # a console.progress bar
        self.bar = bar
        self.failed = 0
        self.measured = 0

    def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results) -> None:
        failed = sum(1 for b, r in zip(builder_results, runner_results) if b.error_msg or r.error_msg)
        self.failed += failed
        self.measured += len(runner_results)
        self.bar.update(len(runner_results))
        self.bar.set_postfix(failed=self.failed)


def tune(
    source: ModelSource, request: QuantRequest, target: TargetSpec, log_dir: Path, options: TuneOptions
) -> list[TaskResult]:
    """Tune every task of the model up to `options.trials` records each; returns the per-task summary."""
    trials, progress = options.trials, options.progress
    quantized = pipeline.quantize(source, request)
    tasks = extract_tasks(source, request, target, options.kernel, quantized)
    builder = for_target(target).builder(target, options.timeout)
    runner = make_runner(options.tracker, options.timeout, options.workers)
    tempdirs.clean_stale()
    with tempdirs.exit_cleanly_on_termination(), locked(log_dir):
        database = open_database(log_dir)
        state = load_task_state(log_dir)
        keys = [task_key(task.task_name, task.dispatched[0]) for task in tasks]
        missing = [i for i, key in enumerate(keys) if "untuned_ms" not in state.get(key, {})]
        if missing:
            for i, latency in zip(missing, measure_untuned([tasks[i] for i in missing], target, builder, runner)):
                if latency is not None:
                    state.setdefault(keys[i], {})["untuned_ms"] = latency
            save_task_state(log_dir, state)
        # Failed trials (a device lost mid-run) stay in the database but do not count: a re-run retries them.
        had = [sum(1 for r in _records(database, task.dispatched[0]) if _seconds(r) is not None) for task in tasks]
        todo = [i for i in range(len(tasks)) if had[i] < trials and not state.get(keys[i], {}).get("exhausted")]
        results = []
        with tempdirs.private_dir("tune") as work_dir, progress_bar(
            total=sum(trials - had[i] for i in todo), unit="trial", desc=f"tuning {target.name}",
            disable=not progress,
        ) as bar:
            counts: dict[int, tuple[int, int]] = {}
            for i in todo:
                bar.set_description(f"tuning {tasks[i].task_name}")
                callback = _Progress(bar)
                _tune_one(tasks[i], trials - had[i], target, str(work_dir), builder, runner, database, callback,
                          log_dir / "metaschedule.log")
                counts[i] = (callback.measured, callback.failed)
                if callback.measured < trials - had[i]:  # the search found no new candidates to try
                    bar.update(trials - had[i] - callback.measured)  # those trials will never come: count them done
                    state.setdefault(keys[i], {})["exhausted"] = True
                    save_task_state(log_dir, state)
        for i, task in enumerate(tasks):
            records = _records(database, task.dispatched[0])
            times = [t for t in map(_seconds, records) if t is not None]
            measured, failed = counts.get(i, (0, 0))
            untuned = state.get(keys[i], {}).get("untuned_ms")
            best = 1e3 * min(times) if times else None
            results.append(TaskResult(task.task_name, untuned, best, len(records), measured, failed))
        if options.kernel == "auto":
            tuned = {_kernel_of(task): r.best_ms for task, r in zip(tasks, results) if r.best_ms is not None}
            tune_families.time_families(tune_families.candidate_kernels(source, quantized, target), target, log_dir,
                                        tuned, lambda mods: measure_modules(mods, target, builder, runner))
    return results


def _kernel_of(task: ms.ExtractedTask) -> tuple[str, str]:
    """(layer, family) of a kernel task; ("", "") for other functions."""
    attrs = task.dispatched[0]["main"].attrs
    return str(attrs.get(LAYER_ATTR, "")), str(attrs.get(FAMILY_ATTR, ""))


@contextmanager
def _without_tensor_intrin() -> Iterator[None]:
    """TuneContext imports `tvm.s_tir.tensor_intrin` (~50 s, mostly CUDA intrinsics) though none of our rules
    tensorize; an empty stand-in module skips that for the duration of the run."""
    name = "tvm.s_tir.tensor_intrin"
    if name in sys.modules:
        yield
        return
    sys.modules[name] = types.ModuleType(name)
    try:
        yield
    finally:
        sys.modules.pop(name, None)


def _tune_one(task, remaining, target, work_dir, builder, runner, database, callback, log_file) -> None:
    quiet_metaschedule_console()
    with _without_tensor_intrin():
        space = for_target(target).tuning_space()
        contexts, _ = ms.relax_integration.extracted_tasks_to_tune_contexts([task], work_dir, space=space)
    with metaschedule_log(log_file):
        _tune_contexts(contexts, remaining, work_dir, builder, runner, database, callback)


def _tune_contexts(contexts, remaining, work_dir, builder, runner, database, callback) -> None:
    ms.tune.tune_tasks(
        tasks=contexts, task_weights=[1.0], work_dir=work_dir,
        max_trials_global=remaining, max_trials_per_task=remaining, num_trials_per_iter=min(remaining, 16),
        builder=builder, runner=runner, database=database,
        cost_model=ms.cost_model.XGBModel(num_warmup_samples=min(remaining, 16), verbose_eval=0),
        measure_callbacks=[*ms.measure_callback.MeasureCallback.create("default"), callback],
        task_scheduler="round-robin",
    )
