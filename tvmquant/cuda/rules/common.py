"""Scheduling helpers shared by the CUDA rules: which family a PrimFunc is, thread binding, GEMM tiles.

A kernel's output is tiled as a GEMM (pixels x output channels): a thread block computes `pixels` output
pixels (threadIdx.y) x `channels` output channels (threadIdx.x, adjacent channels in adjacent lanes so weight
loads coalesce), each thread `per_thread` channels in registers; the reduction runs inside each thread, and
the activation operand is staged in shared memory one reduction chunk at a time, loaded cooperatively by the
whole block. Auxiliary stages (quantize, pack, epilogues) are elementwise kernels of 256 threads.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tvm import tirx
from tvm.s_tir import Schedule
from tvm.target import Target

FAMILY_ATTR = "tvmquant.family"  # set by the architecture's pass; older modules are recognised by their blocks
# the block that only this family's kernel has (multipoint before bitserial: it contains bitserial's blocks)
SIGNATURES = (("multipoint", {"popcount_dot", "combine"}), ("bitserial", {"popcount_dot"}),
              ("shift", {"shift_add"}), ("lut", {"lookup"}), ("dequant", {"dense_acc"}),
              ("int8", {"act_codes", "dot"}), ("depthwise", {"centred", "dot"}))
THREADS = 256


def block_names(func: tirx.PrimFunc) -> set[str]:
    sch = Schedule(func)
    names, stack = set(), [sch.get_sblock("root")]
    while stack:
        block = stack.pop()
        names.add(sch.get(block).name_hint)
        stack.extend(sch.get_child_blocks(block))
    return names


def family_of(func: tirx.PrimFunc) -> str | None:
    """The tvmquant kernel family of `func`, or None for any other function."""
    if func.attrs is not None and FAMILY_ATTR in func.attrs:
        return str(func.attrs[FAMILY_ATTR])
    names = block_names(func)
    return next((family for family, blocks in SIGNATURES if blocks <= names), None)


def is_cuda(target: Target) -> bool:
    return target.kind.name == "cuda"


def largest_divisor(extent: int, limit: int) -> int:
    return max(d for d in range(1, min(extent, limit) + 1) if extent % d == 0)


def spatial_count(sch: Schedule, block) -> int:
    """How many of the block's outer loops are spatial (TE blocks put reduction loops last)."""
    return sum(1 for v in sch.get(block).iter_vars if v.iter_type == tirx.IterVar.DataPar)


def bind_threads(sch: Schedule, block, threads: int = THREADS) -> None:
    """The block's spatial loops fused over blockIdx.x x threadIdx.x; its reduction loops serial per thread."""
    loops = sch.get_loops(block)[: spatial_count(sch, block)]
    fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
    extent = int(sch.get(fused).extent)
    bx, tx = sch.split(fused, [None, min(threads, extent)])
    sch.bind(bx, "blockIdx.x")
    sch.bind(tx, "threadIdx.x")


def inline(sch: Schedule, *names: str) -> None:
    for name in names:
        sch.compute_inline(sch.get_sblock(name))


def bind_remaining(sch: Schedule) -> None:
    """Every root-level stage not yet on the GPU becomes an elementwise kernel (bind_threads)."""
    for block in sch.get_child_blocks(sch.get_sblock("root")):
        loops = sch.get_loops(block)
        if loops and sch.get(loops[0]).thread_binding is None:
            bind_threads(sch, block)


@dataclass(frozen=True)
class Tile:
    """Threads per block along pixels and output channels, and output channels per thread (registers):
    `lanes` apart (adjacent lanes load adjacent weights) or, `adjacent`, next to each other (one thread's
    weights are one vector, as a tensorized dot wants)."""

    pixels: int = 8
    channels: int = 32
    per_thread: int = 2
    adjacent: bool = False


@dataclass
class TiledLoops:
    thread_channels: object  # the threadIdx.x loop: register accumulators and epilogues go under it
    reduction: list  # the reduction loops, outermost first, as reordered
    threads: tuple[int, int]  # (threadIdx.y, threadIdx.x) extents
    registers: object  # a thread's output channels (innermost, after the reduction)


def tile_gemm(sch: Schedule, block, channel_axis: int, tile: Tile = Tile()) -> TiledLoops:
    """Tile the block's output (its spatial loops) as described in the module docstring. The pixel axis is
    the innermost spatial loop with extent > 1 other than the channel axis (OW for convolutions, the batch for
    dense layers); the remaining spatial loops go to blockIdx.x. Splits divide exactly (no tail predicates)."""
    loops = sch.get_loops(block)
    count = spatial_count(sch, block)
    spatial, reduction = loops[:count], loops[count:]
    channel = spatial[channel_axis]
    others = [loop for k, loop in enumerate(spatial) if k != channel_axis]
    extents = {loop: int(sch.get(loop).extent) for loop in spatial}
    pixel = next((loop for loop in reversed(others) if extents[loop] > 1), others[-1])
    block_pixels, thread_pixels = sch.split(pixel, [None, largest_divisor(extents[pixel], tile.pixels)])
    if tile.adjacent and extents[channel] % tile.per_thread == 0:
        per_thread = tile.per_thread
        lanes = largest_divisor(extents[channel] // per_thread, tile.channels)
        block_channels, lanes_loop, registers = sch.split(channel, [None, lanes, per_thread])
    else:
        lanes = largest_divisor(extents[channel], tile.channels)
        per_thread = tile.per_thread if extents[channel] % (lanes * tile.per_thread) == 0 else 1
        block_channels, registers, lanes_loop = sch.split(channel, [None, per_thread, lanes])
    outer = [block_pixels if loop is pixel else loop for loop in others]
    sch.reorder(*outer, block_channels, thread_pixels, lanes_loop, *reduction, registers)
    sch.bind(sch.fuse(*outer) if len(outer) > 1 else outer[0], "blockIdx.x")
    sch.bind(block_channels, "blockIdx.y")
    sch.bind(thread_pixels, "threadIdx.y")
    sch.bind(lanes_loop, "threadIdx.x")
    sch.unroll(registers)
    return TiledLoops(lanes_loop, list(reduction), (int(sch.get(thread_pixels).extent), lanes), registers)


def stage_shared(sch: Schedule, block, buffer: str, at, threads: tuple[int, int]) -> None:
    """Stage what `block` reads of `buffer` under loop `at` in shared memory, loaded by all the block's
    `threads` (y, x) together, consecutive threads on consecutive elements."""
    index = next(i for i, region in enumerate(sch.get(block).reads) if region.source.name == buffer)
    cache = sch.cache_read(block, index, "shared", consumer_blocks=[block])
    load_cooperatively(sch, cache, at, threads)


def load_cooperatively(sch: Schedule, stage, at, threads: tuple[int, int]) -> int:
    """Compute block `stage` (a shared-memory buffer) under loop `at`, its elements spread over the block's
    `threads` (y, x), consecutive threads on consecutive elements. Returns how many elements it holds."""
    sch.compute_at(stage, at)
    loops = sch.get_loops(stage)
    depth = next(k for k, loop in enumerate(loops) if sch.get(loop).same_as(sch.get(at))) + 1
    own = loops[depth:]
    if not own:  # one element per step (compute_at dropped its unit loops): every thread loads it
        return 1
    fused = sch.fuse(*own) if len(own) > 1 else own[0]
    elements = int(sch.get(fused).extent)
    _, ty, tx = sch.split(fused, [None, *threads])
    sch.bind(ty, "threadIdx.y")
    sch.bind(tx, "threadIdx.x")
    return elements


def split_reduction(sch: Schedule, loop, chunk: int):
    """(outer, inner) with inner the largest divisor of the extent up to `chunk`."""
    return sch.split(loop, [None, largest_divisor(int(sch.get(loop).extent), chunk)])


SPLIT_K_PIXELS = 16  # at most this many output pixels: split the reduction over threads too (split_k_gemm)
SPLIT_K = 32  # slices of the reduction (threadIdx.y)
SPLIT_K_LANES = 32  # threads along output channels (threadIdx.x)


def wants_split_k(sch: Schedule, block, channel_axis: int, split: int, unit: int = 1, slices: int = SPLIT_K) -> bool:
    """Whether split_k_gemm applies: at most SPLIT_K_PIXELS output pixels (all spatial loops but the channel
    axis), and the `split`-th reduction loop, in steps of `unit`, divides into at least 2 slices."""
    loops = sch.get_loops(block)
    count = spatial_count(sch, block)
    pixels = int(np.prod([int(sch.get(loop).extent) for k, loop in enumerate(loops[:count]) if k != channel_axis]))
    steps = int(sch.get(loops[count + split]).extent) // unit
    return pixels <= SPLIT_K_PIXELS and largest_divisor(steps, slices) >= 2


@dataclass
class SplitLoops:
    partial: object  # the rfactor block: a thread's partial sums of its slice, in registers
    registers: object  # its loop over the thread's output channels (innermost but for `inner`)
    pixels: object  # its loop over the output pixels (just outside `registers`)


def split_k_gemm(sch: Schedule, block, channel_axis: int, split: int, inner: int, epilogue: str,
                 per_thread: int = 1, lanes: int = SPLIT_K_LANES, slices: int = SPLIT_K) -> SplitLoops:
    """For layers with few output pixels (dense layers at small batch), where pixels x channels give too few
    threads to keep the GPU's memory busy: threadIdx.x over output channels (`per_thread` adjacent ones per
    thread), threadIdx.y over `slices` slices of the `split`-th reduction loop; each thread sums its slice for
    every pixel in registers (rfactor), then the slices are added across threadIdx.y (TVM's cross-thread
    reduction, through shared memory) and `epilogue` runs on the sums. The last `inner` reduction loops stay
    innermost, after the thread's channels."""
    reduction = sch.get_loops(block)[spatial_count(sch, block):]
    slices, _ = sch.split(reduction[split], [largest_divisor(int(sch.get(reduction[split]).extent), slices), None])
    partial = sch.rfactor(slices, 0)  # the block now sums the partials over `slices`
    loops = sch.get_loops(partial)
    count = spatial_count(sch, block)  # the original block's spatial loops, now the partial's outer ones
    spatial, reduction = loops[:count], loops[count:]
    channel = spatial[channel_axis]
    extent = int(sch.get(channel).extent)
    per_thread = per_thread if extent % per_thread == 0 else 1
    outer, lane, registers = sch.split(channel, [None, largest_divisor(extent // per_thread, lanes), per_thread])
    others = [loop for k, loop in enumerate(spatial) if k != channel_axis]
    pixels = sch.fuse(*others) if len(others) > 1 else others[0]
    slices = reduction[split]  # the partial keeps the loop nest: the reduction loops with the split in place
    rest = reduction[:split] + reduction[split + 1 :]
    sch.reorder(outer, lane, slices, *rest[: len(rest) - inner], pixels, registers, *rest[len(rest) - inner :])
    sch.bind(outer, "blockIdx.x")
    sch.bind(lane, "threadIdx.x")
    sch.bind(slices, "threadIdx.y")
    sch.set_scope(partial, 0, "local")
    sch.decompose_reduction(partial, rest[0] if rest else pixels)
    sch.reverse_compute_at(block, lane)
    total, *outputs = sch.get_loops(block)[2:]
    sch.reorder(*outputs, total)  # the cross-thread sum must be the innermost loop
    sch.bind(total, "threadIdx.y")
    sch.set_scope(block, 0, "local")
    tail = sch.get_sblock(epilogue)
    sch.reverse_compute_at(tail, lane)
    for loop in sch.get_loops(tail)[2:]:
        sch.unroll(loop)
    sch.unroll(pixels)  # a weight is loaded once for all pixels
    sch.unroll(registers)
    return SplitLoops(partial, registers, pixels)


def reduce_across_threads(sch: Schedule, block) -> None:
    """A reduction with few outputs (a dense layer's activation sums): THREADS threads per output sum strided
    parts of it, then add them across threadIdx.x."""
    loops = sch.get_loops(block)
    count = spatial_count(sch, block)
    spatial, reduction = loops[:count], loops[count:]
    sch.bind(sch.fuse(*spatial) if len(spatial) > 1 else spatial[0], "blockIdx.x")
    fused = sch.fuse(*reduction) if len(reduction) > 1 else reduction[0]
    _, lanes = sch.split(fused, [None, largest_divisor(int(sch.get(fused).extent), THREADS)])
    sch.bind(lanes, "threadIdx.x")
