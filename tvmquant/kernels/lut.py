"""Lookup-table conv2d (dense = 1x1 conv on a 1x1 image) for CODEBOOK weights, T-MAC style, exact.

A CODEBOOK weight is value = levels[o, code] with arbitrary float levels, so the layer's integer core
(`scheme.integer_core`) is one bucket sum per code l,

    S_l[o] = sum_{k: code[o, k] = l} (a_k - z_a)                       (exact integers)
    out[o] = float32(sum_l levels[o, l] * S_l[o]) * s_a                 (float64, l ascending from 0)

The bucket sums are table lookups (T-MAC, Wei et al. 2024). The reduction is cut into groups of G = 4
consecutive input channels of one pixel; once per input pixel, shared by every output channel and kernel tap,
a table of the 16 partial sums sum_{i in m} a_i of the group's *raw* u8 codes is built. The G one-hot bits
[code == l] of a weight group (a nibble) index that table, so one lookup adds G weights' worth of bucket l.
Raw codes keep every entry non-negative, so an entry splits exactly into byte planes (one plane while
4 (2^abits - 1) <= 255, i.e. up to 6-bit activations; two planes above, recombined as lo + 256 hi), and
S_l = (looked-up sum) - z_a * count_l[o] with the per-channel code counts as a constant. Codes 1..2^b-1 are
looked up; S_0 = sum(a - z_a) over the window - sum_{l>=1} S_l saves a lookup per group.

Layout, chosen for the byte shuffles: four tables (16 channels) form one 64-byte block, two blocks (32
channels) share one index byte (low nibble: block 0, high nibble: block 1), so the index is
(O/16, KH, KW, channel pairs, codes-1, 16, 4) uint8 — 16 output channels x 4 tables per 64-byte row, each row
of 16 outputs one contiguous stream. One step looks up one index row in a (2, 4, 16) table pair:

    x86 (AVX-512 VBMI + VNNI)   2 x (`vpermb` over the 64-byte block: 16 outputs x 4 tables,
                                `vpdpbusd` against ones: each output's 4 bytes into its int32 lane)
    aarch64 NEON                per 4 outputs 2 x (`tbl` over the block in four q registers, then `udot`
                                against ones with +dotprod, else `uaddlp` + `uadalp`)
    any other target            the same compute, lanes = output channels, each gathering its entry

(nibble j * 16 + m: one and/shift + add per nibble; u8 x 1 dot products cannot saturate). The step is
emitted by hand on the regions of a blockized block (`_emit_step`): TVM's tensorize cannot match a
description whose buffer index is itself a load. Accumulators (pixels x codes x planes x 16 outputs) stay in
registers for the whole reduction; each table block is loaded once per pixel and tap for all codes and rows.

Spatial padding is the code z_a (real zero) in the padded channel-last codes the tables are built from;
channels past C are 0 and their weights match no code. Activations in this project are always uniform
integer codes (scheme.ActQuant), so T-MAC's "product table" for codebook activations does not arise.
Measured results: docs/BENCHMARKS.md (the LUT section), static aarch64 estimates: docs/ARM_MCA.md.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import tvm_ffi
from tvm import te, tirx
from tvm.ir import TensorRegion
from tvm.s_tir import Schedule
from tvm.s_tir.stmt import SBlock
from tvm.target import Target, codegen

from .. import actquant
from ..scheme import LayerScheme, WeightKind, integer_core
from .family import Family, KernelCall, kernel_call
from .geometry import ConvGeometry

GROUP = 4  # channels per table: 2^4 = 16 entries
ENTRIES = 1 << GROUP
TABLES = 4  # tables per 64-byte block (one zmm, four NEON q registers): an index byte selects j * 16 + nibble
BLOCK = TABLES * ENTRIES
HALVES = 2  # blocks per index byte: its low and its high nibble
PAIR_CHANNELS = HALVES * TABLES * GROUP  # 32 input channels per (index byte row, pair of table blocks)
MAX_BITS = 4  # 2^b - 1 lookups per group: past 4 bits the float64 dequant fallback does less work
LANES = 16  # output channels per index row
J_OFFSETS = 0x30201000  # bytes 0, 16, 32, 48: the table offset of j = byte position % 4, as one u32


@dataclass(frozen=True)
class LutConv2dConfig(ConvGeometry):
    """Shapes and bit widths that decide one lookup-table kernel instance."""

    wbits: int
    abits: int

    @property
    def pairs(self) -> int:
        """Pairs of 64-byte table blocks per input pixel (channels in groups of 32, the last one zero-filled)."""
        return -(-self.in_channels // PAIR_CHANNELS)

    @property
    def planes(self) -> int:
        """Byte planes per table entry: 1 while a sum of GROUP codes fits a byte (abits <= 6), else 2."""
        return 1 if GROUP * ((1 << self.abits) - 1) <= 255 else 2

    @property
    def lookups(self) -> int:
        """Codes whose bucket is looked up: 1..2^b-1 (code 0's bucket is derived)."""
        return (1 << self.wbits) - 1

    @property
    def padded_out(self) -> int:
        """Output channels rounded up to whole index rows; the extra channels' indices are 0."""
        return -(-self.out_channels // LANES) * LANES

    @property
    def acc_dtype(self) -> str:
        """int32 unless the worst-case |S_l| (every centred activation at its extreme) could overflow it."""
        worst = self.reduction * ((1 << self.abits) - 1)
        return "int32" if worst < 2**31 else "int64"


def entry_index(byte: tirx.PrimExpr, half: tirx.PrimExpr) -> tirx.PrimExpr:
    """The table entry (0..15) that nibble `half` of an index byte selects."""
    return (byte.astype("int32") >> (half * GROUP)) & (ENTRIES - 1)


# --- the compute (TE) -----------------------------------------------------------------------------------

def padded_codes(x: te.Tensor, inv_scale: te.Tensor, zero_point: te.Tensor, cfg: LutConv2dConfig) -> te.Tensor:
    """(N, Hp, Wp, 32 * pairs) int32 channel-last codes: z_a (real zero) in the spatial padding, 0 for the
    channels past C (their weights match no code)."""
    q = actquant.te_codes(x, inv_scale, zero_point, cfg.abits)
    ph, pw = cfg.padding

    def code(n, hp, wp, c):
        inside = tirx.all(hp >= ph, hp < cfg.height + ph, wp >= pw, wp < cfg.width + pw)
        value = tirx.if_then_else(inside, q[n, tirx.min(c, cfg.in_channels - 1), hp - ph, wp - pw], zero_point[0])
        return tirx.if_then_else(c < cfg.in_channels, value, tirx.const(0, "int32"))

    shape = (cfg.batch, cfg.height + 2 * ph, cfg.width + 2 * pw, cfg.pairs * PAIR_CHANNELS)
    return te.compute(shape, code, name="codes")


def activation_tables(codes: te.Tensor, cfg: LutConv2dConfig) -> te.Tensor:
    """(N, Hp, Wp, planes, pairs, 2, 4, 16) uint8: entry m of table (t, h, j) = byte plane p of the sum of the
    codes of channels 32t + 16h + 4j + i over the bits i set in m (sums of raw u8 codes: no sign, so they
    split into exact byte planes)."""

    def entry(n, hp, wp, p, t, h, j, m):
        base = t * PAIR_CHANNELS + h * (TABLES * GROUP) + j * GROUP
        total = sum(((m >> i) & 1) * codes[n, hp, wp, base + i] for i in range(GROUP))
        return ((total >> (p * 8)) & 255).astype("uint8")

    shape = (*codes.shape[:3], cfg.planes, cfg.pairs, HALVES, TABLES, ENTRIES)
    return te.compute(shape, entry, name="table")


def window_sum(codes: te.Tensor, cfg: LutConv2dConfig) -> te.Tensor:
    """(N, OH, OW): the sum of the raw codes in each output's window (code 0's bucket is derived from it)."""
    c = te.reduce_axis((0, cfg.in_channels), name="c")
    csum = te.compute(codes.shape[:3], lambda n, hp, wp: te.sum(codes[n, hp, wp, c], axis=c), name="channel_sum")
    (kh, kw), (sh, sw) = cfg.kernel, cfg.stride
    r, s = te.reduce_axis((0, kh), name="r2"), te.reduce_axis((0, kw), name="s2")
    return te.compute((cfg.batch, *cfg.out_hw),
                      lambda n, y, z: te.sum(csum[n, y * sh + r, z * sw + s].astype(cfg.acc_dtype), axis=[r, s]),
                      name="window_sum")


def lut_conv2d_buckets(
    x: te.Tensor, inv_scale: te.Tensor, zero_point: te.Tensor, index: te.Tensor, counts: te.Tensor,
    cfg: LutConv2dConfig,
) -> tuple[te.Tensor, te.Tensor]:
    """(S (N, OH, OW, codes-1, O) for codes 1.., sum of (a - z_a) over the window (N, OH, OW)).

    index: (O/16, KH, KW, pairs, codes-1, 16, 4) uint8, nibble h of byte [o/16, r, s, t, l, o%16, j] has bit i
    set where the weight of channel 32t + 16h + 4j + i is code l (each row of 16 outputs is one contiguous
    stream); counts: (codes-1, O) how many weights have each code (S_l = its raw code sum - z_a * count)."""
    acc = cfg.acc_dtype
    codes = padded_codes(x, inv_scale, zero_point, cfg)
    table = activation_tables(codes, cfg)
    (kh, kw), (sh, sw) = cfg.kernel, cfg.stride
    r, s = te.reduce_axis((0, kh), name="r"), te.reduce_axis((0, kw), name="s")
    t = te.reduce_axis((0, cfg.pairs), name="t")
    h, j = te.reduce_axis((0, HALVES), name="h"), te.reduce_axis((0, TABLES), name="j")
    oh, ow = cfg.out_hw
    planes = cfg.planes
    # (code, plane) pairs on one axis: the epilogue's reads stay affine in the code, so it can be computed at
    # the register tile (a constant plane index would not be)
    lookup = te.compute(
        (cfg.batch, oh, ow, cfg.lookups * planes, cfg.padded_out),
        lambda n, y, z, lp, o: te.sum(
            table[n, y * sh + r, z * sw + s, lp % planes, t, h, j,
                  entry_index(index[o // LANES, r, s, t, lp // planes, o % LANES, j], h)].astype("int32"),
            axis=[r, s, t, h, j],
        ),
        name="lookup",
    )
    zp = zero_point[0].astype(acc)

    def bucket(n, y, z, l, o):
        raw = tirx.const(0, acc)
        for p in range(planes):
            raw = raw + (lookup[n, y, z, l * planes + p, o].astype(acc) << (8 * p))
        return raw - zp * counts[l, o]

    buckets = te.compute((cfg.batch, oh, ow, cfg.lookups, cfg.out_channels), bucket, name="bucket")
    total = window_sum(codes, cfg)
    centred = te.compute(total.shape, lambda n, y, z: total[n, y, z] - zp * cfg.reduction, name="centred_sum")
    return buckets, centred


def lut_conv2d(
    x: te.Tensor, inv_scale: te.Tensor, zero_point: te.Tensor, index: te.Tensor, counts: te.Tensor,
    levels: te.Tensor, scale: te.Tensor, cfg: LutConv2dConfig,
) -> te.Tensor:
    """float32 output (N, O, OH, OW); levels: (codes, O) float64 (the IntegerCore's combine), scale (O,)."""
    buckets, total = lut_conv2d_buckets(x, inv_scale, zero_point, index, counts, cfg)
    l1 = te.reduce_axis((0, cfg.lookups), name="l1")
    oh, ow = cfg.out_hw
    looked = te.compute(
        (cfg.batch, oh, ow, cfg.out_channels),
        lambda n, y, z, o: te.sum(buckets[n, y, z, l1, o], axis=l1),
        name="looked_up",
    )

    def bucket(n, y, z, l, o):
        zero = total[n, y, z] - looked[n, y, z, o]
        return tirx.if_then_else(l == 0, zero, buckets[n, y, z, tirx.max(l - 1, 0), o]).astype("float64")

    # products and their sum are separate stages (separate parallel tasks): a fused multiply-add would round
    # differently from the reference's multiply, then add
    weighted = te.compute(
        (cfg.batch, oh, ow, cfg.lookups + 1, cfg.out_channels),
        lambda n, y, z, l, o: levels[l, o] * bucket(n, y, z, l, o),
        name="weighted",
    )
    l = te.reduce_axis((0, cfg.lookups + 1), name="l")
    core = te.compute(
        (cfg.batch, cfg.out_channels, oh, ow),
        lambda n, o, y, z: te.sum(weighted[n, y, z, l, o], axis=l),
        name="combine",
    )
    return te.compute(core.shape, lambda n, o, y, z: core[n, o, y, z].astype("float32") * scale[o], name="rescale")


# --- the lookup instructions ----------------------------------------------------------------------------

def _vector(value: int, dtype: str, lanes: int) -> tirx.PrimExpr:
    return tirx.Broadcast(tirx.const(value, dtype), lanes)


def _bytes(buf: _Region, begin: list, lanes: int) -> tirx.PrimExpr:
    """A vector load of u8 table bytes as the i8 vector LLVM's shuffle intrinsics take."""
    return tirx.reinterpret(f"int8x{lanes}", buf.vload(begin, f"uint8x{lanes}"))


def _nibble_indices(idx: _Region, lanes: int) -> tuple[tirx.PrimExpr, tirx.PrimExpr]:
    """The index row's low and high nibbles as byte-shuffle indices j * 16 + nibble (j = byte position % 4)."""
    n = lanes * TABLES
    row = idx.vload([0, 0], f"uint8x{n}")
    offsets = tirx.reinterpret(f"uint8x{n}", tirx.Broadcast(tirx.const(J_OFFSETS, "uint32"), lanes))
    low = tirx.bitwise_and(row, _vector(ENTRIES - 1, "uint8", n)) + offsets
    high = tirx.shift_right(row, _vector(GROUP, "uint8", n)) + offsets
    return tirx.reinterpret(f"int8x{n}", low), tirx.reinterpret(f"int8x{n}", high)


def _vpermb_step(tab: _Region, idx: _Region, acc: _Region) -> tirx.PrimExpr:
    """x86 AVX-512 VBMI + VNNI: per block, one `vpermb` looks up 64 entries (16 outputs x 4 tables) and one
    `vpdpbusd` against ones adds each output's 4 bytes into its int32 lane (u8 x 1: exact, no saturation)."""
    total = acc.vload([0], "int32x16")
    ones = _vector(1, "int8", BLOCK)
    for half, index in enumerate(_nibble_indices(idx, LANES)):
        looked = tirx.call_llvm_pure_intrin("int8x64", "llvm.x86.avx512.permvar.qi.512",
                                            _bytes(tab, [half, 0, 0], BLOCK), index)
        total = tirx.call_llvm_pure_intrin("int32x16", "llvm.x86.avx512.vpdpbusd.512", total, looked, ones)
    return total


def _tbl_step(dot: bool) -> Callable[[_Region, _Region, _Region], tirx.PrimExpr]:
    """aarch64 NEON: per block, one `tbl` over the 64-byte table in four q registers looks up 16 entries (4
    outputs x 4 tables); `udot` against ones (+dotprod), else `uaddlp` + `uadalp` (LLVM folds the add into
    the second widening), adds each output's 4 bytes."""

    def step(tab: _Region, idx: _Region, acc: _Region) -> tirx.PrimExpr:
        total = acc.vload([0], "int32x4")
        for half, index in enumerate(_nibble_indices(idx, 4)):
            regs = [_bytes(tab, [half, k, 0], ENTRIES) for k in range(TABLES)]
            looked = tirx.call_llvm_pure_intrin("int8x16", "llvm.aarch64.neon.tbl4.v16i8", *regs, index)
            if dot:
                total = tirx.call_llvm_pure_intrin("int32x4", "llvm.aarch64.neon.udot.v4i32.v16i8", total, looked,
                                                   _vector(1, "int8", 16))
            else:
                pairs = tirx.call_llvm_pure_intrin("int16x8", "llvm.aarch64.neon.uaddlp.v8i16.v16i8", looked)
                total = total + tirx.call_llvm_pure_intrin("int32x4", "llvm.aarch64.neon.uaddlp.v4i32.v8i16", pairs)
        return total

    return step


class _Region:
    """A buffer region as the instruction steps see it: vector loads relative to the region's start."""

    def __init__(self, region: TensorRegion):
        self.buffer, self.begin = region.source, [r.min for r in region.region]

    def vload(self, offset: list, dtype: str) -> tirx.PrimExpr:
        lead = self.begin[: len(self.begin) - len(offset)]
        return self.buffer.vload([*lead, *(b + o for b, o in zip(self.begin[len(lead):], offset))], dtype)


STEPS = {  # isa -> (instruction step over one index row, output channels per step)
    "vpermb": (_vpermb_step, LANES),
    "tbl_udot": (_tbl_step(True), 4),
    "tbl": (_tbl_step(False), 4),
}


def _emit_step(func: tirx.PrimFunc, block_name: str, isa: str) -> tirx.PrimFunc:
    """The blockized lookup step (one index row: its output lanes x 2 blocks x 4 tables) replaced by the ISA's
    instructions, on the regions the block reads and writes. This is tensorize done by hand: TVM's tensorize
    cannot match a description whose buffer index is itself a load (the table entry an index byte selects)."""
    step, lanes = STEPS[isa]

    def replace(stmt: SBlock) -> SBlock:
        if stmt.name_hint != block_name:
            return stmt
        reads = {r.source.name: _Region(r) for r in stmt.reads}
        acc = _Region(stmt.writes[0])
        value = step(reads["table"], reads["index"], acc)
        indices = [*acc.begin[:-1], tirx.Ramp(acc.begin[-1], 1, lanes)]
        return SBlock(stmt.iter_vars, stmt.reads, stmt.writes, stmt.name_hint,
                      tirx.BufferStore(acc.buffer, value, indices), stmt.init, stmt.alloc_buffers,
                      stmt.match_buffers, stmt.annotations)

    return func.with_body(tvm_ffi.structural_map(func.body, (SBlock, replace)))


def lookup_isa(target: Target | None) -> str:
    """'vpermb' (x86 AVX-512 VBMI + VNNI), 'tbl_udot' (aarch64 +dotprod), 'tbl' (aarch64 NEON) or 'gather'
    (every other target, and None): how the schedule looks tables up."""
    if target is None or target.kind.name != "llvm":
        return "gather"
    if codegen.target_has_features("avx512vbmi", target) and codegen.target_has_features("avx512vnni", target):
        return "vpermb"
    if "aarch64" in str(target.attrs.get("mtriple", "")) and codegen.target_has_features("neon", target):
        return "tbl_udot" if codegen.target_has_features("dotprod", target) else "tbl"
    return "gather"


# --- the default schedule -------------------------------------------------------------------------------

PARALLEL_MIN = 1 << 16  # loop iterations (incl. reductions) below which a stage runs on the calling thread
REGISTER_TILES = {"vpermb": 24, "tbl_udot": 4, "tbl": 4, "gather": 8}  # accumulator rows of 16 int32 per tile


def _largest_divisor(extent: int, limit: int) -> int:
    return max(d for d in range(1, min(extent, limit) + 1) if extent % d == 0)


def _parallel_if_large(sch: Schedule, name: str) -> None:
    """Threads over a stage's first two loops, unless the whole stage is too small to pay for a parallel launch
    (a GEMV's quantize, table and epilogue are a few thousand elements)."""
    block = sch.get_sblock(name)
    loops = sch.get_loops(block)
    if int(np.prod([int(sch.get(lp).extent) for lp in loops])) >= PARALLEL_MIN:
        sch.parallel(sch.fuse(*loops[:2]))


def _schedule_combination(sch: Schedule) -> None:
    """The float64 combination one output row at a time (a parallel task each): the row's bucket sums, products
    and their sum stay in L2, each a loop nest of its own (products stored, then summed: LLVM contracts a
    multiply feeding an add into an FMA, which would round differently from the reference)."""
    combine = sch.get_sblock("combine")
    n, o, y, z, l = sch.get_loops(combine)
    sch.reorder(n, y, o, z, l)
    row = sch.fuse(n, y)
    if int(np.prod([int(sch.get(lp).extent) for lp in sch.get_loops(combine)])) >= PARALLEL_MIN:
        sch.parallel(row)
    sch.compute_at(sch.get_sblock("weighted"), row)
    sch.compute_at(sch.get_sblock("looked_up"), row)
    sch.reverse_compute_at(sch.get_sblock("rescale"), row)


def schedule(func: tirx.PrimFunc, target: Target) -> tirx.PrimFunc:
    """Threads over (pixel tiles, output-channel tiles); per tile the accumulators (pixels x codes x planes x
    16-channel rows) stay in registers while the whole reduction runs inside: each 128-byte table pair is
    loaded once per pixel and tap for every code and row, each index row once for every pixel of the tile.
    The step over one index row is `vpermb` + `vpdpbusd` (x86), `tbl` + `udot`/`uadalp` (aarch64), else
    vectorised gathers."""
    isa = lookup_isa(target)
    sch = Schedule(func)
    sch.compute_inline(sch.get_sblock("centred_sum"))
    _schedule_combination(sch)
    step = schedule_lookup(sch, isa)
    return sch.mod["main"] if step is None else _emit_step(sch.mod["main"], step, isa)


def schedule_lookup(sch: Schedule, isa: str) -> str | None:
    """Everything up to the integer bucket sums (codes, tables, the lookup tile and its epilogue); returns the
    name of the blockized step `_emit_step` replaces (None for gathers). Separate so that a benchmark can
    time the lookups without the float64 combination."""
    for name in ("quantize", "codes", "channel_sum", "table", "window_sum"):
        _parallel_if_large(sch, name)
    sch.vectorize(sch.get_loops(sch.get_sblock("table"))[-1])
    lookup = sch.get_sblock("lookup")
    n, y, z, lp, o, r, s, t, h, j = sch.get_loops(lookup)
    dense = int(sch.get(y).extent) == 1 and int(sch.get(z).extent) == 1
    per_pixel = int(sch.get(lp).extent)
    budget = max(1, REGISTER_TILES[isa] // per_pixel)
    ob, oi = sch.split(o, [None, LANES])
    rows = int(sch.get(ob).extent)
    tiled = n if dense else z
    pixels = 1 if dense else _largest_divisor(int(sch.get(tiled).extent), budget)
    po, pi = sch.split(tiled, [None, pixels])
    bo, bi = sch.split(ob, [None, _largest_divisor(rows, max(1, budget // pixels))])
    outer = [po, y, z, bo] if dense else [n, y, po, bo]
    lanes = STEPS.get(isa, (None, LANES))[1]
    oq, ol = sch.split(oi, [None, lanes])
    sch.reorder(*outer, r, s, t, pi, bi, lp, oq, ol, h, j)
    fused = sch.fuse(*outer)
    sch.parallel(fused)
    sch.set_scope(lookup, 0, "local")
    if isa not in STEPS:  # lanes = output channels, each gathering its own entry
        sch.reorder(h, j, ol)
        sch.unroll(h)
        sch.unroll(j)
        sch.vectorize(ol)
    init = sch.decompose_reduction(lookup, r)
    sch.vectorize(sch.get_loops(init)[-1])
    bucket = sch.get_sblock("bucket")
    sch.reverse_compute_at(bucket, fused)
    step = sch.blockize(ol) if isa in STEPS else None
    for loop in (pi, bi, lp, oq):
        sch.unroll(loop)
    channels = sch.get_loops(bucket)[-1]
    lanes_out = _largest_divisor(int(sch.get(channels).extent), LANES)
    if lanes_out > 1:
        sch.vectorize(sch.split(channels, [None, lanes_out])[1])
    return None if step is None else sch.get(step).name_hint


def build_primfunc(cfg: LutConv2dConfig) -> tirx.PrimFunc:
    """The unscheduled kernel (x, act_inv_scale, act_zero_point, index, counts, levels, scale) -> float32."""
    x = te.placeholder((cfg.batch, cfg.in_channels, cfg.height, cfg.width), "float32", name="x")
    inv, zp = actquant.te_placeholders()
    index = te.placeholder((cfg.padded_out // LANES, *cfg.kernel, cfg.pairs, cfg.lookups, LANES, TABLES), "uint8",
                           name="index")
    counts = te.placeholder((cfg.lookups, cfg.out_channels), cfg.acc_dtype, name="counts")
    levels = te.placeholder((cfg.lookups + 1, cfg.out_channels), "float64", name="levels")
    scale = te.placeholder((cfg.out_channels,), "float32", name="scale")
    out = lut_conv2d(x, inv, zp, index, counts, levels, scale, cfg)
    return te.create_prim_func([x, inv, zp, index, counts, levels, scale, out])


# --- the weights (numpy) --------------------------------------------------------------------------------

def pack_index(codes: np.ndarray, cfg: LutConv2dConfig) -> np.ndarray:
    """(O, K) codes, K in (C, KH, KW) order -> (O/16, KH, KW, pairs, codes-1, 16, 4) uint8 (see
    lut_conv2d_buckets)."""
    (kh, kw), oc, ic = cfg.kernel, cfg.out_channels, cfg.in_channels
    per_tap = codes.reshape(oc, ic, kh, kw).transpose(2, 3, 1, 0)  # (KH, KW, C, O)
    padded = np.full((kh, kw, cfg.pairs * PAIR_CHANNELS, cfg.padded_out), -1, np.int16)  # -1 matches no code
    padded[:, :, :ic, :oc] = per_tap
    grouped = padded.reshape(kh, kw, cfg.pairs, HALVES, TABLES, GROUP, 1, cfg.padded_out)
    wanted = np.arange(1, cfg.lookups + 1).reshape(-1, 1)
    bits = (grouped == wanted).astype(np.uint8) << np.arange(GROUP, dtype=np.uint8).reshape(-1, 1, 1)
    nibbles = bits.sum(axis=5, dtype=np.uint8)  # (KH, KW, pairs, 2, 4, codes-1, O)
    packed = nibbles[:, :, :, 0] | (nibbles[:, :, :, 1] << GROUP)  # (KH, KW, pairs, 4, codes-1, O)
    rows = packed.reshape(*packed.shape[:-1], cfg.padded_out // LANES, LANES)
    return np.ascontiguousarray(rows.transpose(5, 0, 1, 2, 4, 6, 3))


def code_counts(codes: np.ndarray, cfg: LutConv2dConfig) -> np.ndarray:
    """(codes-1, O): how many of each output's weights have code l = 1.. (the zero point's share of S_l)."""
    return np.stack([(codes == l).sum(axis=1) for l in range(1, cfg.lookups + 1)]).astype(cfg.acc_dtype)


# --- the numpy references -------------------------------------------------------------------------------

def reference_buckets(
    x: np.ndarray, codes: np.ndarray, cfg: LutConv2dConfig, inv_scale: float, zero_point: int
) -> np.ndarray:
    """numpy reference of every bucket S_l, (N, codes, O, OH, OW) int64: a one-hot integer convolution."""
    q = actquant.numpy_codes(x, inv_scale, zero_point, cfg.abits).astype(np.int64)
    (kh, kw), (sh, sw), (ph, pw) = cfg.kernel, cfg.stride, cfg.padding
    centred = np.pad(q - zero_point, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    oh, ow = cfg.out_hw
    w = codes.reshape(cfg.out_channels, cfg.in_channels, kh, kw)
    out = np.zeros((cfg.batch, cfg.lookups + 1, cfg.out_channels, oh, ow), np.int64)
    for code in range(cfg.lookups + 1):
        onehot = (w == code).astype(np.int64)
        for r in range(kh):
            for s in range(kw):
                patch = centred[:, :, r : r + sh * oh : sh, s : s + sw * ow : sw]
                out[:, code] += np.einsum("nchw,oc->nohw", patch, onehot[:, :, r, s])
    return out


def reference(buckets: np.ndarray, levels: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """float32 output from reference_buckets: float64 combination in ascending code order, then the scale."""
    core = np.zeros(buckets[:, 0].shape)
    for code in range(buckets.shape[1]):
        core = core + levels[code][None, :, None, None] * buckets[:, code]
    return core.astype(np.float32) * scale[None, :, None, None]


def supports(layer: LayerScheme) -> str | None:
    w = layer.weight
    if w.kind is not WeightKind.CODEBOOK:
        return f"{w.kind.value} weights are not a codebook"
    if w.bits > MAX_BITS:
        return f"{w.bits}-bit codebook: {(1 << w.bits) - 1} lookups per {GROUP} weights cost more than dequant"
    if w.codes[0].size * 255 // GROUP >= 2**31:
        return "the int32 sum of a plane's looked-up bytes could overflow"
    return None


def compute(layer: LayerScheme, geometry: ConvGeometry) -> KernelCall:
    """CODEBOOK layers: index nibbles and counts per code 1.., the level table (codes, O) and the output scale."""
    w = layer.weight
    cfg = LutConv2dConfig(**vars(geometry), wbits=w.bits, abits=layer.act.bits)
    core = integer_core(layer)
    codes = w.codes.reshape(w.out_channels, -1)
    weights = [pack_index(codes, cfg), code_counts(codes, cfg), np.ascontiguousarray(core.combine), core.scale]
    return kernel_call(build_primfunc(cfg), layer, weights)


# The shuffles are emitted by the default schedule, which MetaSchedule's CPU space cannot reach: not tunable.
FAMILY = Family("lut", tunable=False, check=supports, build=compute, schedules={"cpu": schedule})
