"""The target-adapter contract: everything that differs between target kinds (CPU, CUDA, VTA), in one place.

The pipeline (pipeline.py), `tune` and the device-run path (run.py) ask the adapter of the target file's
`"adapter"` key and never branch on a target's name or kind themselves.
"""

from __future__ import annotations

from collections.abc import Sequence
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
    """One per target kind; `key` is the target key the kernel families' schedule rules are registered under
    (kernels/family.py: `Family.schedules`)."""

    key: str

    def legalize_passes(self, target: Target) -> Sequence[tvm.transform.Pass]:
        """Relax -> fused TIR PrimFuncs: the functions MetaSchedule tunes and records are matched against."""

    def finalize_passes(self, target: Target) -> Sequence[tvm.transform.Pass]:
        """Scheduled TIR + Relax -> what tvm.compile turns into a VM executable."""

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
