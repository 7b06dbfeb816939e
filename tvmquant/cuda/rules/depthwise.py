"""The depthwise (grouped) family on CUDA: one thread block per (image, channel tile, output-row tile, column
tile).

A depthwise output is a sum of KH*KW products (C/g of them per tap for grouped convs), so there is no long
reduction to split: what a block shares is input. The block quantizes and pads the input rows its tile needs
(int16 centred codes, kernels/depthwise.py) straight into shared memory, a chunk of a group's input channels
at a time (the one channel, for depthwise): the codes never go through global memory, and each input pixel is
quantized once per tile instead of once per tap. threadIdx.y are the tile's channels, threadIdx.x adjacent
output columns (consecutive shared-memory reads); each thread keeps the tile's rows of its column as int32
(int64) accumulators in registers, its channel's KH*KW weights in registers, and rescales its outputs there
before their one store (the epilogue is fused). With the taps and rows unrolled, output rows y and y+1
(stride 1) read KH-1 input rows at the same shared addresses, which the compiler loads once.

Grouped convs with several groups in a tile stage one interval of channels per chunk, the channels between
the groups' chunks included (an interval is what TVM stages); SHARED_BYTES bounds it by shrinking the tile.
A thread's outputs are one column: were it to stride over several (z = k * lanes + lane), its register
accumulators would be the interval between them to TVM's region analysis, and the fused epilogue would
compute and store that whole interval, other threads' outputs included.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from tvm.s_tir import Schedule

from .common import inline, largest_divisor, load_cooperatively

COLUMNS = 32  # threads along output columns (a warp)
THREADS = 256  # threads per block at most: the channel tile takes what the columns leave
ROWS = 4  # output rows per thread
CHUNK = 8  # input channels of a group staged per step (grouped convs)
SHARED_BYTES = 24 * 1024  # staged codes per block at most: two blocks fit in 48 KB of static shared memory


@dataclass(frozen=True)
class Tile:
    channels: int  # threadIdx.y: output channels of a block
    rows: int  # output rows of a block (each thread all of them)
    columns: int  # threadIdx.x: output columns of a block


def schedule(sch: Schedule) -> None:
    """The largest tile whose staged codes fit SHARED_BYTES (fewer rows, then fewer channels, until they do)."""
    dot = sch.get_sblock("dot")
    _n, o, y, z, *_ = (int(sch.get(loop).extent) for loop in sch.get_loops(dot))
    tile = _first_tile(o, y, z)
    while _tiled(sch.copy(), tile) > SHARED_BYTES and (tile.rows, tile.channels) != (1, 1):
        tile = (replace(tile, rows=largest_divisor(y, tile.rows - 1)) if tile.rows > 1
                else replace(tile, channels=largest_divisor(o, tile.channels - 1)))
    _tiled(sch, tile)


def _first_tile(channels: int, rows: int, columns: int) -> Tile:
    """Columns: a divisor of the output width near a warp (no tail), else a warp and a tail predicate."""
    exact = largest_divisor(columns, COLUMNS)
    lanes = exact if 2 * exact >= min(columns, COLUMNS) else min(columns, COLUMNS)
    return Tile(largest_divisor(channels, max(1, THREADS // lanes)), largest_divisor(rows, ROWS), lanes)


def _tiled(sch: Schedule, tile: Tile) -> int:
    """Schedule `sch` with `tile`; returns the bytes of codes a block stages at once."""
    inline(sch, "quantize")
    dot = sch.get_sblock("dot")
    n, o, y, z, c, r, s = sch.get_loops(dot)
    block_channels, channels = sch.split(o, [None, tile.channels])
    block_rows, rows = sch.split(y, [None, tile.rows])
    block_columns, lanes = sch.split(z, [None, tile.columns])
    chunks, chunk = sch.split(c, [None, largest_divisor(int(sch.get(c).extent), CHUNK)])
    sch.reorder(n, block_channels, block_rows, block_columns, channels, lanes, chunks, chunk, r, s, rows)
    sch.bind(sch.fuse(n, block_channels, block_rows, block_columns), "blockIdx.x")
    sch.bind(channels, "threadIdx.y")
    sch.bind(lanes, "threadIdx.x")
    for loop in (r, s, rows):
        sch.unroll(loop)
    weights = sch.cache_read(dot, 1, "local")  # the thread's channel: KH*KW registers per input channel
    sch.compute_at(weights, chunk)
    codes = sch.get_sblock("centred")
    sch.set_scope(codes, 0, "shared")
    staged = load_cooperatively(sch, codes, chunks, (tile.channels, tile.columns))
    sch.set_scope(dot, 0, "local")
    sch.decompose_reduction(dot, chunks)
    rescale = sch.get_sblock("rescale")
    sch.reverse_compute_at(rescale, lanes)
    for loop in sch.get_loops(rescale)[3:]:
        sch.unroll(loop)
    return 2 * staged  # int16
