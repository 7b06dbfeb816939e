"""The target-adapter contract: everything that differs between target kinds (CPU, CUDA, VTA), in one place.

The pipeline (pipeline.py), `tune`, the device-run path (device_run.py) and the command line ask the adapter
of the target file's `"adapter"` key and never branch on a target's name or kind themselves.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import tvm
from tvm.s_tir.dlight import ScheduleRule
from tvm.target import Target

if TYPE_CHECKING:
    from tvm import rpc
    from tvm.s_tir import meta_schedule as ms

    from ..target import TargetSpec


@runtime_checkable
class TargetAdapter(Protocol):
    """One per target kind; `key` is the target key the kernel families' own schedule rules are registered
    under (kernels/family.py: `Family.schedules`); `family_rules` are the rules the target brings for them."""

    key: str

    def tvm_target(self, spec: TargetSpec) -> Target:
        """The TVM target of the target file (host, defaults the file leaves to the machine)."""

    def configure(self) -> None:
        """Set the toolchain up before anything is built for this kind in this process (idempotent)."""

    def legalize_passes(self, target: Target) -> Sequence[tvm.transform.Pass]:
        """Relax -> fused TIR PrimFuncs: the functions MetaSchedule tunes and records are matched against."""

    def finalize_passes(self, target: Target) -> Sequence[tvm.transform.Pass]:
        """Scheduled TIR + Relax -> what tvm.compile turns into a VM executable."""

    def family_rules(self, target: Target) -> Mapping[str, ScheduleRule]:
        """Schedule rules this target brings for kernel families (family name -> rule), used where a family has
        no rule of its own for the target's keys (family.rule_table)."""

    def generic_rules(self, target: Target) -> Sequence[ScheduleRule]:
        """Default schedules for PrimFuncs no family claims (fp32 ops, a family without a rule here)."""

    def tuning_space(self) -> ms.space_generator.SpaceGenerator:
        """MetaSchedule's search space (schedule rules, postprocs, mutators) for this kind."""

    def builder(self, spec: TargetSpec, timeout: float) -> ms.builder.Builder:
        """How MetaSchedule builds (and links) a candidate for this target."""

    @property
    def runner_device(self) -> str:
        """The device type MetaSchedule's runner measures candidates on ("cpu", "cuda", ...)."""

    def export(self, spec: TargetSpec, executable: tvm.relax.VMExecutable, path: Path) -> str:
        """Link and write the artifact; returns what linked it (for the summary)."""

    def device(self, session: rpc.RPCSession | None) -> tvm.runtime.Device:
        """Where an artifact runs: in this process (session None) or on the RPC session's device."""

    def remote(self, spec: TargetSpec, rpc_given: bool) -> bool:
        """Whether an artifact runs over RPC (the target file's `runs`, or a device that may be elsewhere)."""

    def local_problem(self, spec: TargetSpec) -> str | None:
        """Why an artifact cannot run in this process (CUDA: no GPU here), or None."""

    def command(self, name: str) -> Callable[..., int] | None:
        """The target's own implementation of a command ("compile", "run", "tune", "deploy") where the standard
        one does not fit it as a whole (VTA), else None."""
