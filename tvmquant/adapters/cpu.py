"""The CPU adapter (x86, aarch64): TVM's cpu_generic Relax pipeline, the LLVM MetaSchedule space, export
through the target's (cross) compiler, and tvm.cpu() devices. The only place CPU is assumed."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import psutil
import tvm
from tvm.relax.backend.cpu_generic import pipeline as cpu_pipeline
from tvm.s_tir.dlight import ScheduleRule
from tvm.target import Target

from .. import _ms_workers

if TYPE_CHECKING:
    from tvm import rpc
    from tvm.s_tir import meta_schedule as ms

    from ..target import TargetSpec


class CpuAdapter:
    key = "cpu"
    runner_device = "cpu"

    def tvm_target(self, spec: TargetSpec) -> Target:
        config = dict(spec.tvm_config)
        if config.get("mcpu") == "native":
            config["mcpu"] = tvm.target.codegen.llvm_get_system_cpu()
        if spec.runs == "local" and "num-cores" not in config:
            # MetaSchedule sizes parallel loops by it and refuses a target without it.
            config["num-cores"] = psutil.cpu_count(logical=False) or 1
        return Target(config)

    def configure(self) -> None:
        pass  # LLVM is in TVM; cross linkers are found per target (linker.py)

    def legalize_passes(self, target: Target) -> Sequence[tvm.transform.Pass]:
        return cpu_pipeline.library_dispatch_passes(target) + cpu_pipeline.legalize_passes(target)

    def finalize_passes(self, target: Target) -> Sequence[tvm.transform.Pass]:
        # the second half of TVM's CPU pipeline (the package does not re-export these two)
        return cpu_pipeline.dataflow_lower_passes(target) + cpu_pipeline.finalize_passes(target)

    def family_rules(self, target: Target) -> Mapping[str, ScheduleRule]:
        return {}  # the families' own "cpu" schedules

    def generic_rules(self, target: Target) -> Sequence[ScheduleRule]:
        return []  # LLVM compiles unscheduled TIR as plain loops, as tvm.compile does by default

    def tuning_space(self) -> ms.space_generator.SpaceGenerator:
        """TVM's default CPU rules, except that multi-level tiling does not fuse the consumer into the tiles:
        in our kernels the consumer also reads the activation sums, and TVM 0.27's reverse_compute_at then
        raises instead of skipping the candidate, which ends the whole run."""
        from tvm.s_tir import meta_schedule as ms

        rules = [
            ms.schedule_rule.InlineConstantScalars(),
            ms.schedule_rule.AutoInline(
                into_producer=False, into_consumer=True, inline_const_tensor=True, disallow_if_then_else=True,
                require_injective=True, require_ordered=True, disallow_op=["tirx.exp"],
            ),
            ms.schedule_rule.AddRFactor(max_jobs_per_core=16, max_innermost_factor=64),
            ms.schedule_rule.MultiLevelTiling(structure="SSRSRS", max_innermost_factor=64),
            ms.schedule_rule.ParallelizeVectorizeUnroll(
                max_jobs_per_core=16, max_vectorize_extent=64, unroll_max_steps=[0, 16, 64, 512],
                unroll_explicit=True,
            ),
            ms.schedule_rule.RandomComputeLocation(),
        ]
        return ms.space_generator.PostOrderApply(sch_rules=rules, postprocs="llvm", mutator_probs="llvm")

    def builder(self, spec: TargetSpec, timeout: float) -> ms.builder.Builder:
        from tvm.s_tir import meta_schedule as ms

        f_export, linker = None, spec.linker()
        if linker is not None:
            f_export = functools.partial(_ms_workers.export_so, link_command=list(linker.command))
        return ms.builder.LocalBuilder(f_build=_ms_workers.build, f_export=f_export, timeout_sec=timeout)

    def export(self, spec: TargetSpec, executable: tvm.relax.VMExecutable, path: Path) -> str:
        return spec.export(executable, path)

    def device(self, session: rpc.RPCSession | None) -> tvm.runtime.Device:
        return tvm.cpu() if session is None else session.cpu()

    def remote(self, spec: TargetSpec, rpc_given: bool) -> bool:
        return spec.runs == "rpc"

    def local_problem(self, spec: TargetSpec) -> str | None:
        return None

    def command(self, name: str) -> Callable[..., int] | None:
        return None  # compile, run, tune and deploy take the standard path (cli.py)
