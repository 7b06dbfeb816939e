"""`tune`: MetaSchedule with the XGBoost cost model over the model's tasks, measured here or on an RPC device.

Tasks are the model as `compile` would build it, but with unscheduled kernels (see `build.legalize`): our
bit-serial kernels plus the fused fp32 ops. Records go to TVM's JSON database in the log folder, which is
locked for the run (`database.locked`). A task with `trials` successful records already, or whose search space ran out
before that, is not tuned again, so a second run resumes; untuned latencies and exhausted spaces are kept
beside the database (`tasks.json`) for the same reason.
"""

from __future__ import annotations

import functools
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

from . import _ms_workers, frontend, tempdirs
from .console import metaschedule_log, quiet_metaschedule_console
from .console import progress as progress_bar
from .build import legalize, lower
from .cpu_schedule import schedule_remaining
from .kernels.registry import fixed_kernel
from .compile import ModelSource
from .database import load_task_state, locked, open_database, save_task_state, task_key
from .kernels.registry import tunable_family
from .quantize import QuantConfig, quantize_model
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


def extract_tasks(
    source: ModelSource, config: QuantConfig, target: TargetSpec, kernel: str = "auto"
) -> list[ms.ExtractedTask]:
    """The model's tunable functions, as `compile` with tuning records will look them up."""
    scheme = quantize_model(source.gm, source.layers, source.calib, config, source.batch_size)
    mod, params, param_fqn = frontend.to_relax(source.gm, source.input_shape)
    # Every kernel unscheduled (MetaSchedule's task analysis cannot read some default schedules, e.g. int8's
    # dot intrinsic); the fused fp32 tasks around them are the same either way. Kernels of families that are
    # not tunable are then left out: compile always gives them their default schedule.
    with target.tvm_target:
        mod, _ = lower(mod, params, param_fqn, source.layers, scheme, tunable=True, kernel=kernel, deferred=True)
    tasks = ms.relax_integration.extract_tasks(legalize(mod, target.tvm_target), target.tvm_target)
    return sorted((t for t in tasks if not fixed_kernel(t.task_name)), key=lambda task: task.task_name)


def make_builder(target: TargetSpec, timeout: float) -> ms.builder.LocalBuilder:
    f_export, linker = None, target.linker()
    if linker is not None:
        f_export = functools.partial(_ms_workers.export_so, link_command=list(linker.command))
    return ms.builder.LocalBuilder(f_build=_ms_workers.build, f_export=f_export, timeout_sec=timeout)


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


def _default_schedule(task: ms.ExtractedTask, target: tvm.target.Target) -> tvm.IRModule:
    mod = task.dispatched[0]
    if target.kind.name == "cuda":
        from .cuda import pipeline as cuda_pipeline

        return cuda_pipeline.schedule(mod, target)
    family = tunable_family(task.task_name)
    if family is not None:
        return tvm.IRModule({"main": family.schedule(mod["main"])})
    return schedule_remaining(mod, target)


def measure_untuned(
    tasks: list[ms.ExtractedTask], target: TargetSpec, builder: ms.builder.Builder, runner: ms.runner.Runner
) -> list[float | None]:
    """Latency (ms) of each task as `compile` builds it without records: our default kernel schedule, or
    cpu_schedule's rules for fp32 ops. Measured with the same builder and runner as the trials."""
    with target.tvm_target:
        mods = [_default_schedule(task, target.tvm_target) for task in tasks]
    built = builder.build([ms.builder.BuilderInput(mod, target.tvm_target) for mod in mods])
    inputs, where = [], []
    for i, (mod, result) in enumerate(zip(mods, built)):
        if result.error_msg is None:
            args = ms.arg_info.ArgInfo.from_prim_func(mod["main"])
            inputs.append(ms.runner.RunnerInput(result.artifact_path, target.device_kind, args))
            where.append(i)
    latencies: list[float | None] = [None] * len(tasks)
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
    source: ModelSource,
    config: QuantConfig,
    target: TargetSpec,
    log_dir: Path,
    trials: int,
    tracker: Tracker | None = None,
    timeout: float = 60.0,
    workers: int = 1,
    progress: bool = True,
    kernel: str = "auto",
) -> list[TaskResult]:
    """Tune every task of the model up to `trials` records each; returns the per-task summary."""
    if target.device_kind == "cuda":  # candidates are compiled by NVRTC in the builder's worker processes
        from .cuda import toolkit

        toolkit.configure()
    tasks = extract_tasks(source, config, target, kernel)
    builder = make_builder(target, timeout)
    runner = make_runner(tracker, timeout, workers)
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
    return results


def search_space(target: TargetSpec) -> ms.space_generator.PostOrderApply:
    """CUDA: MetaSchedule's GPU space (multi-level tiling with thread binding, cross-thread reduction, auto
    bind) as TVM defines it. CPU: TVM's default CPU rules, except that multi-level tiling does not fuse the
    consumer into the tiles: in our kernels the consumer also reads the activation sums, and TVM 0.27's
    reverse_compute_at then raises instead of skipping the candidate, which ends the whole run."""
    if target.device_kind == "cuda":
        return ms.space_generator.PostOrderApply(sch_rules="cuda", postprocs="cuda", mutator_probs="cuda")
    rules = [
        ms.schedule_rule.InlineConstantScalars(),
        ms.schedule_rule.AutoInline(
            into_producer=False, into_consumer=True, inline_const_tensor=True, disallow_if_then_else=True,
            require_injective=True, require_ordered=True, disallow_op=["tirx.exp"],
        ),
        ms.schedule_rule.AddRFactor(max_jobs_per_core=16, max_innermost_factor=64),
        ms.schedule_rule.MultiLevelTiling(structure="SSRSRS", max_innermost_factor=64),
        ms.schedule_rule.ParallelizeVectorizeUnroll(
            max_jobs_per_core=16, max_vectorize_extent=64, unroll_max_steps=[0, 16, 64, 512], unroll_explicit=True,
        ),
        ms.schedule_rule.RandomComputeLocation(),
    ]
    return ms.space_generator.PostOrderApply(sch_rules=rules, postprocs="llvm", mutator_probs="llvm")


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
        contexts, _ = ms.relax_integration.extracted_tasks_to_tune_contexts([task], work_dir, space=search_space(target))
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
