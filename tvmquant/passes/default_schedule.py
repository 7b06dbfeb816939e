"""ApplyDefaultSchedule: every unscheduled PrimFunc that a rule claims gets that rule's schedule.

TVM dlight's pass of the same name, with the target passed in rather than read from `Target.current()`, so no
kernel ever depends on an ambient context. Rules are dlight `ScheduleRule`s (`apply(func, target, tunable)`,
None where they do not apply); the first that applies wins. Functions no rule claims (the fp32 ops, a kernel
whose family has no rule for this target) are left for the target adapter's generic lowering.
"""

from __future__ import annotations

from collections.abc import Sequence

import tvm
from tvm import tirx
from tvm.s_tir.dlight import ScheduleRule
from tvm.target import Target

SCHEDULED = "tirx.is_scheduled"


def is_scheduled(func: tirx.PrimFunc) -> bool:
    return func.attrs is not None and bool(func.attrs.get(SCHEDULED, False))


@tvm.transform.module_pass(opt_level=0, name="ApplyDefaultSchedule")
class ApplyDefaultSchedule:
    """Module pass over `rules` for `target`; marks what it scheduled `tirx.is_scheduled`."""

    def __init__(self, target: Target, rules: Sequence[ScheduleRule]):
        self.target = target
        self.rules = list(rules)

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        updates = {}
        for gv, func in mod.functions_items():
            if not isinstance(func, tirx.PrimFunc) or is_scheduled(func):
                continue
            for rule in self.rules:
                sch = rule.apply(func, self.target, False)
                if sch is not None:
                    updates[gv] = sch.mod["main"].with_attr(SCHEDULED, True)
                    break
        if not updates:
            return mod
        mod = mod.clone()  # never the caller's module: a task's module stays unscheduled for MetaSchedule
        for gv, func in updates.items():
            mod[gv] = func
        return mod
