"""CUDA schedules of every tvmquant kernel family, as dlight rules (`apply(func, target, tunable)`, None where
the function is not that family's kernel or the target is not CUDA).

All of them tile the layer's output as a GEMM (common.tile_gemm) and stage the activation operand in shared
memory; what differs is the reduction and what is staged:

- bitserial: AND + `__popcll` over 64-bit words of packed activation bit-planes, which are staged in shared
  memory one word (all taps, all planes) at a time; the popcount sums live in registers and the integer
  epilogue runs on them before anything is stored. Bit-planes are packed by a kernel of their own. Layers
  with few output pixels (GEMV) split the words over threadIdx.y as well and add the slices across threads.
- multipoint: bitserial's GEMM over the expanded rows, then the float64 per-channel combination.
- shift: shifts of centred activation codes (`<<`, per thread per weight), a chunk of 8 input channels of the
  padded codes staged per step; int accumulators in registers, the float32 rescale fused behind them.
- lut: the per-pixel u8 tables of partial sums are staged in shared memory 8 channel pairs (8 x 32 channels)
  at a time, looked up with the weights' index nibbles (a gather from shared memory).
- dequant: the float64 fallback; centred codes staged 8 channels at a time. Its products (`weighted`) are
  still stored before the combination sums them, so no fused multiply-add changes their rounding.
- int8 (dp4a.py) and depthwise (depthwise.py) have modules of their own: `__dp4a` tensorization; depthwise
  convolutions are no GEMM (a KH*KW reduction) and tile channels x output rows instead.
"""

from __future__ import annotations

from collections.abc import Callable

from tvm import tirx
from tvm.s_tir import Schedule
from tvm.s_tir.dlight import ScheduleRule
from tvm.target import Target

from . import depthwise, dp4a
from .common import (bind_remaining, family_of, inline, is_cuda, reduce_across_threads, split_k_gemm,
                     split_reduction, stage_shared, tile_gemm, wants_split_k)

CHUNK = 8  # input channels (or channel groups) of the activation operand staged in shared memory per step
SPLIT_K_LANES = 32  # split_k_gemm: threads along output channels, one channel each (16 pixels x uint64 sums),
SPLIT_K_SLICES = 8  # and along the words: 256 threads, so that the sums fit the registers a thread may have


def bitserial_gemm(sch: Schedule) -> None:
    """Packing kernel + the popcount GEMM with its epilogue in registers (bitserial and multipoint); for few
    output pixels the words split over threads too (common.split_k_gemm)."""
    inline(sch, "quantize", "pad_codes")
    dot = sch.get_sblock("popcount_dot")
    if wants_split_k(sch, dot, channel_axis=3, split=0, slices=SPLIT_K_SLICES):
        split_k_gemm(sch, dot, channel_axis=3, split=0, inner=2, epilogue="dot_epilogue", per_thread=1,
                     lanes=SPLIT_K_LANES, slices=SPLIT_K_SLICES)
        reduce_across_threads(sch, sch.get_sblock("act_sum"))
        return
    tiled = tile_gemm(sch, dot, channel_axis=3)
    words, _r, _s, wbit, abit = tiled.reduction
    stage_shared(sch, dot, "pack_act", words, tiled.threads)
    sch.unroll(wbit)
    sch.unroll(abit)
    sch.set_scope(dot, 0, "local")
    sch.reverse_compute_at(sch.get_sblock("dot_epilogue"), tiled.thread_channels)


def bitserial(sch: Schedule) -> None:
    """bitserial and multipoint: the GEMM, then the integer core inlined into its consumer (the rescale, or
    the multipoint combination)."""
    bitserial_gemm(sch)
    inline(sch, "integer_core")
    bind_remaining(sch)


def staged_gemm(sch: Schedule, name: str, channel_axis: int, staged: str, chunked: int) -> tuple:
    """Quantization inlined, block `name` tiled, its reduction over input channels (or channel groups: the
    `chunked`-th reduction loop) cut into CHUNK-wide steps taken outermost, and what it reads of `staged`
    staged in shared memory per step. Returns (block, tiled loops)."""
    inline(sch, "quantize")
    block = sch.get_sblock(name)
    tiled = tile_gemm(sch, block, channel_axis)
    taps = list(tiled.reduction)
    outer, inner = split_reduction(sch, taps.pop(chunked), CHUNK)
    sch.reorder(outer, *taps, inner)
    stage_shared(sch, block, staged, outer, tiled.threads)
    return block, tiled


def shift(sch: Schedule) -> None:
    core, _ = staged_gemm(sch, "shift_add", 3, "centred", 2)
    sch.set_scope(core, 0, "local")
    bind_remaining(sch)


def lut(sch: Schedule) -> None:
    staged_gemm(sch, "lookup", 4, "table", 2)
    bind_remaining(sch)


def dequant(sch: Schedule) -> None:
    acc, tiled = staged_gemm(sch, "dense_acc", 2, "centred", 0)
    sch.set_scope(acc, 0, "local")
    sch.reverse_compute_at(sch.get_sblock("weighted"), tiled.thread_channels)
    bind_remaining(sch)


class CudaFamilyRule(ScheduleRule):
    """One family's CUDA schedule as a dlight rule."""

    def __init__(self, family: str, schedule: Callable[[Schedule], None]):
        self.family, self.schedule = family, schedule

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool) -> Schedule | None:
        if not isinstance(func, tirx.PrimFunc) or not is_cuda(target) or family_of(func) != self.family:
            return None
        sch = Schedule(func)
        self.schedule(sch)
        return sch


RULES = [CudaFamilyRule(name, fn) for name, fn in
         (("bitserial", bitserial), ("multipoint", bitserial), ("shift", shift), ("lut", lut), ("dequant", dequant),
          ("int8", dp4a.schedule), ("depthwise", depthwise.schedule))]
