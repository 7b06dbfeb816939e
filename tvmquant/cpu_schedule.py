"""Schedules for the fp32 ops a compiled model keeps (bias adds, ReLU/ReLU6, residual adds, pooling, softmax,
reshapes, unquantized layers): without them TVM's CPU pipeline runs each as a naive single-threaded loop nest.

They are the CPU adapter's generic rules (adapters/cpu.py): after fusion every PrimFunc that no family's rule
and no tuning record scheduled gets the first that applies: TVM's `s_tir.dlight` CPU rules (GEMV for
matrix-vector products, Reduction for softmax/norm chains), `Pooling` for TOPI's pooling blocks, else
`ParallelVectorize`: every block's leading spatial loops fused and spread over threads, the innermost spatial
loop in vector lanes; in a reduction (an fp32 conv) that loop moves inside the reduction, so the window is
summed for a vector of outputs at a time.
"""

from __future__ import annotations

import tvm
from tvm import s_tir, tirx
from tvm.s_tir import dlight
from tvm.s_tir.dlight.analysis import normalize_prim_func
from tvm.s_tir.dlight.base import try_inline_contiguous_spatial
from tvm.s_tir.dlight.cpu.base import CPUScheduleRule

from .kernels.bitserial import vector_lanes

MAX_VECTOR = 64  # lanes of one vectorised loop before it is split (LLVM splits the rest into registers)


def _lanes(extent: int) -> int:
    """The whole loop up to MAX_VECTOR lanes, else the widest power of two up to 16 that divides it (1: none)."""
    return extent if extent <= MAX_VECTOR else vector_lanes(extent)


def _vectorize(sch: s_tir.Schedule, loop) -> None:
    extent = sch.get(loop).extent
    if not isinstance(extent, tirx.IntImm) or int(extent) < 2:
        return
    lanes = _lanes(int(extent))
    if lanes == int(extent):
        sch.vectorize(loop)
    elif lanes > 1:
        sch.vectorize(sch.split(loop, [None, lanes])[1])


class ParallelVectorize(CPUScheduleRule):
    """The fallback rule: threads over leading spatial loops, lanes over the innermost spatial one."""

    def apply(self, func: tirx.PrimFunc, target: tvm.target.Target, _tunable: bool) -> s_tir.Schedule | None:
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        sch = s_tir.Schedule(func)
        infos = normalize_prim_func(sch)
        if infos is None:
            return None
        for info in try_inline_contiguous_spatial(sch, infos) or infos:
            _schedule_block(sch, info)
        return sch


def _leading_spatial(info) -> tuple[list, str, int]:
    """(loops, their kinds as "S"/"R", how many spatial loops lead) of one normalized block."""
    kinds = info.dom_kind()
    return [it.loop_rv for it in info.iters], kinds, len(kinds) - len(kinds.lstrip("S"))


def _schedule_block(sch: s_tir.Schedule, info) -> None:
    loops, kinds, spatial = _leading_spatial(info)
    if spatial == 0 or "S" in kinds[spatial:]:  # no leading spatial loop, or spatial after reduction: leave it
        if spatial:
            sch.parallel(sch.fuse(*loops[:spatial]) if spatial > 1 else loops[0])
        return
    if spatial == len(loops):  # injective
        if spatial > 1:
            sch.parallel(sch.fuse(*loops[:-1]) if spatial > 2 else loops[0])
        _vectorize(sch, loops[-1])
        return
    inner = loops[spatial - 1]
    if spatial < 2 or int(sch.get(inner).extent) < 4:  # nothing to put in lanes: threads only
        sch.parallel(sch.fuse(*loops[:spatial]) if spatial > 1 else loops[0])
        return
    sch.parallel(sch.fuse(*loops[: spatial - 1]) if spatial > 2 else loops[0])
    sch.reorder(*loops[spatial:], inner)
    _vectorize(sch, inner)  # before the init is split off: TVM refuses it on the update block afterwards
    init = sch.decompose_reduction(info.block_rv, loops[spatial])
    _vectorize(sch, sch.get_loops(init)[-1])


POOL_RULE_PREFIX = "meta_schedule.pool"  # TOPI's annotation on its pooling blocks (pool_max, pool_avg)
UNROLL_WINDOW = 7  # pooling windows up to 7 x 7 are unrolled
MAX_ROW = 512  # a padded row up to this width is one vectorised loop (LLVM splits it into registers)


class Pooling(CPUScheduleRule):
    """Max/avg pooling: ParallelVectorize would put a strided output row in vector lanes, which on NCHW reads
    every lane with its own scalar load (a 3x3/2 max-pool at 112x112x64: 0.6-0.9 ms). Instead the padded input
    is written once (parallel rows, vector lanes) and each output row's windows are fully unrolled scalar
    max/adds, threads over (batch, channel, row): 0.21 ms for the same pool, measured side by side."""

    def apply(self, func: tirx.PrimFunc, target: tvm.target.Target, _tunable: bool) -> s_tir.Schedule | None:
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        sch = s_tir.Schedule(func)
        infos = normalize_prim_func(sch)
        if infos is None or not any(_is_pool(sch, info.block_rv) for info in infos):
            return None
        for info in infos:  # TOPI's avg-pool annotates the divide, not the window sum: treat all alike
            if "R" in info.dom_kind():
                _schedule_window(sch, info)
            else:
                _schedule_rows(sch, info)
        return sch


def _is_pool(sch: s_tir.Schedule, block) -> bool:
    rule = sch.get(block).annotations.get("schedule_rule")
    return rule is not None and str(rule).startswith(POOL_RULE_PREFIX)


def _schedule_window(sch: s_tir.Schedule, info) -> None:
    """Threads over (batch, channel, row), the window unrolled, output pixels scalar."""
    loops, kinds, spatial = _leading_spatial(info)
    if spatial < 2 or "S" in kinds[spatial:]:
        _schedule_block(sch, info)
        return
    sch.parallel(sch.fuse(*loops[: spatial - 1]))
    for loop in loops[spatial:]:
        extent = sch.get(loop).extent
        if isinstance(extent, tirx.IntImm) and int(extent) <= UNROLL_WINDOW:
            sch.unroll(loop)


def _schedule_rows(sch: s_tir.Schedule, info) -> None:
    """Padding and elementwise epilogues: threads over rows, a whole row in vector lanes."""
    loops = [it.loop_rv for it in info.iters]
    if len(loops) < 2:
        _schedule_block(sch, info)
        return
    sch.parallel(sch.fuse(*loops[:-1]))
    extent = sch.get(loops[-1]).extent
    if isinstance(extent, tirx.IntImm) and int(extent) <= MAX_ROW:
        sch.vectorize(loops[-1])


def rules() -> list:
    """The rules in the order they are tried."""
    return [dlight.cpu.GEMV(), dlight.cpu.Reduction(), Pooling(), ParallelVectorize()]

