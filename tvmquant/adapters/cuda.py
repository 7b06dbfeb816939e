"""The CUDA adapter: cuda.pipeline's legalize/finalize passes, the families' CUDA rules (cuda/rules/), dlight's
GPU rules for everything else, MetaSchedule's GPU space, the cubin artifact (cuda/artifact.py) and tvm.cuda()
devices. The only place outside tvmquant/cuda/ where CUDA is assumed."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import tvm
from tvm import tirx
from tvm.s_tir import Schedule
from tvm.s_tir.dlight import ScheduleRule
from tvm.target import Target

from ..kernels.family import FAMILY_ATTR
from .cpu import CpuAdapter

if TYPE_CHECKING:
    from tvm import rpc
    from tvm.s_tir import meta_schedule as ms

    from ..target import TargetSpec


class GenericKernelRule(ScheduleRule):
    """A family without a CUDA rule of its own (none today) still runs on the GPU: its kernels take the first
    of dlight's generic GPU rules that applies (as TVM schedules any TIR), correct but not tuned for it."""

    def __init__(self, family: str, rules: Sequence[ScheduleRule]):
        self.family, self.rules = family, list(rules)

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool) -> Schedule | None:
        if not isinstance(func, tirx.PrimFunc) or func.attrs is None or func.attrs.get(FAMILY_ATTR) != self.family:
            return None
        return next((sch for rule in self.rules if (sch := rule.apply(func, target, tunable)) is not None), None)


class CudaAdapter(CpuAdapter):
    """Host code (the VM's glue) is LLVM for this CPU, so the CPU adapter's builder and linking stay."""

    key = "cuda"
    runner_device = "cuda"

    def tvm_target(self, spec: TargetSpec) -> Target:
        return Target(dict(spec.tvm_config), host={"kind": "llvm"})

    def configure(self) -> None:
        """Exact float math for NVRTC, here and in MetaSchedule's builder processes (cuda/toolkit.py)."""
        from ..cuda import toolkit

        toolkit.configure()

    def legalize_passes(self, target: Target) -> Sequence[tvm.transform.Pass]:
        from ..cuda import pipeline

        return pipeline.legalize_passes(target)

    def finalize_passes(self, target: Target) -> Sequence[tvm.transform.Pass]:
        from ..cuda import pipeline

        return pipeline.finalize_passes(target)

    def family_rules(self, target: Target) -> Mapping[str, ScheduleRule]:
        from ..cuda.rules import RULES
        from ..kernels.registry import FAMILIES

        generic = self.generic_rules(target)
        return {**{name: GenericKernelRule(name, generic) for name in FAMILIES}, **{r.family: r for r in RULES}}

    def generic_rules(self, target: Target) -> Sequence[ScheduleRule]:
        from ..cuda.rules import generic_rules

        return generic_rules()

    def tuning_space(self) -> ms.space_generator.SpaceGenerator:
        """MetaSchedule's GPU space (multi-level tiling with thread binding, cross-thread reduction, auto bind)
        as TVM defines it."""
        from tvm.s_tir import meta_schedule as ms

        return ms.space_generator.PostOrderApply(sch_rules="cuda", postprocs="cuda", mutator_probs="cuda")

    def export(self, spec: TargetSpec, executable: tvm.relax.VMExecutable, path: Path) -> str:
        from ..cuda import artifact

        arch = spec.tvm_config["arch"]
        artifact.export(executable, path, arch)
        return f"the host compiler, with NVRTC's {arch} cubin inside"

    def device(self, session: rpc.RPCSession | None) -> tvm.runtime.Device:
        return tvm.cuda() if session is None else session.cuda()

    def remote(self, spec: TargetSpec, rpc_given: bool) -> bool:
        return spec.runs == "rpc" or rpc_given  # a GPU may be here or behind --rpc

    def local_problem(self, spec: TargetSpec) -> str | None:
        from ..cuda.target import gpu_present, no_gpu_reason

        return None if gpu_present() else no_gpu_reason(spec)
