"""Shift-add conv2d by exponent buckets: the conv form of the shift family (kernels/shift.py), no multiplies.

With the integer core T[o, k] = sign * 2^e (scheme.integer_core) and centred activation codes a_k,

    I[o, p] = sum_k T[o, k] * a_k[p] = sum_{k: T[o,k] != 0} (sign * (a_k << e))[p]

so once every activation is held pre-shifted and pre-signed, one row per (sign, e, c) -- 2 * (max_shift + 1)
copies of the input, made once per image (adds and shifts only; shift.compute uses this form for one exponent,
up to MAX_EXPONENTS) -- an output pixel is a plain sum of rows
picked by the weights: per nonzero weight, one vector load and one add over a row of output pixels, and zero
weights cost nothing. The weights become, per output channel, the list of its nonzero taps
(row, r, s) packed in one integer, padded to the longest channel's list with a row that is all zeros.

Lanes are output pixels along a row (contiguous in the padded NCHW copy at stride 1) in the narrowest exact
integer: int16 (32 lanes per zmm, 8 per NEON q register) where the worst-case sum L * (2^abits - 1) *
2^max_shift fits, else int32 / int64. A tile of output rows stays in registers while the tap list runs
outside it, so each list entry is decoded once per tile; the output is written NCHW, contiguous.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tvm import te, tirx
from tvm.target import codegen
from tvm.s_tir import Schedule
from tvm.target import Target

from .. import actquant
from .geometry import ConvGeometry

CHANNELS_PER_TASK = 32  # output channels one thread runs over the same rows tile (it stays in L2 between them)
MAX_EXPONENTS = 3  # shift.compute's limit: at 3x3 64->64 @56x56 (1 thread, CPU time) 1 and 3 exponents measured
# 2.8x and 1.6x the channel-lane form, 7 exponents 0.4x (each exponent is two more copies of the input to stream)
PIXEL_LANES = 32  # output columns per vector at most: one zmm of int16
REGISTER_BYTES = {True: 1024, False: 256}  # accumulators: 16 of AVX-512's 32 zmm, else 16 of NEON's 32 q (8 ymm)


@dataclass(frozen=True)
class GatherConv2dConfig(ConvGeometry):
    """Shapes, bit widths and the tap-list length L that decide one bucket kernel instance."""

    abits: int
    max_shift: int
    length: int

    @property
    def exponents(self) -> int:
        return self.max_shift + 1

    @property
    def rows(self) -> int:
        """Pre-shifted activation rows: (sign, e, c), then one row of zeros for list padding."""
        return 2 * self.exponents * self.in_channels + 1

    @property
    def acc_dtype(self) -> str:
        worst = self.length * ((1 << self.abits) - 1) << self.max_shift
        return next(t for t, top in (("int16", 2**15), ("int32", 2**31), ("int64", 2**63)) if worst < top)

    @property
    def padded_width(self) -> int:
        """Output columns computed per row: OW rounded up to whole vectors (power-of-two lanes, at most
        PIXEL_LANES), so no vector is an odd width LLVM would split into pieces; the extra columns read zeros."""
        ow = self.out_hw[1]
        lanes = min(PIXEL_LANES, 1 << (ow - 1).bit_length())
        return -(-ow // lanes) * lanes

    @property
    def row_width(self) -> int:
        """Columns of the pre-shifted rows: the padded input, widened to what the padded output columns read."""
        read = max(self.width + 2 * self.padding[1], (self.padded_width - 1) * self.stride[1] + self.kernel[1])
        return -(-read // PIXEL_LANES) * PIXEL_LANES  # whole vectors, so the copies vectorise without a tail

    @property
    def table_dtype(self) -> str:
        return "int16" if self.rows * self.kernel[0] * self.kernel[1] < 2**15 else "int32"


def shifted_rows(x: te.Tensor, inv_scale: te.Tensor, zero_point: te.Tensor, cfg: GatherConv2dConfig) -> te.Tensor:
    """(N, rows, H + 2ph, row_width): row (sign, e, c) holds +-(centred code << e), spatial padding 0 (real
    zero). The codes are quantized once ("centred"), then copied shifted and signed (adds and shifts only)."""
    acc, (ph, pw) = cfg.acc_dtype, cfg.padding
    q = actquant.te_codes(x, inv_scale, zero_point, cfg.abits)
    hp = cfg.height + 2 * ph

    def code(n, c, h, w):
        inside = tirx.all(h >= ph, h < cfg.height + ph, w >= pw, w < cfg.width + pw)
        return tirx.if_then_else(inside, q[n, c, h - ph, w - pw] - zero_point[0], 0).astype(acc)

    centred = te.compute((cfg.batch, cfg.in_channels, hp, cfg.row_width), code, name="centred")
    per_sign = cfg.exponents * cfg.in_channels

    def value(n, row, h, w):
        c = row % cfg.in_channels
        e = (row // cfg.in_channels) % cfg.exponents
        shifted = centred[n, c, h, w] << e.astype(acc)
        signed = tirx.Select(row < per_sign, shifted, tirx.const(0, acc) - shifted)
        return tirx.Select(row < 2 * per_sign, signed, tirx.const(0, acc))

    return te.compute((cfg.batch, cfg.rows, hp, cfg.row_width), value, name="shifted_rows")


def gather_conv2d(
    x: te.Tensor, inv_scale: te.Tensor, zero_point: te.Tensor, table: te.Tensor, scale: te.Tensor,
    cfg: GatherConv2dConfig,
) -> te.Tensor:
    """float32 (N, O, OH, OW) = float32(I) * scale[o]; table: (O, L) packed (row, r, s) of each nonzero weight."""
    rows = shifted_rows(x, inv_scale, zero_point, cfg)
    (kh, kw), (sh, sw) = cfg.kernel, cfg.stride
    t = te.reduce_axis((0, cfg.length), name="t")

    def tap(n, o, y, z):
        v = table[o, t].astype("int32")
        return rows[n, v // (kh * kw), y * sh + v // kw % kh, z * sw + v % kw]

    oh, ow = cfg.out_hw
    shape = (cfg.batch, cfg.out_channels, oh, cfg.padded_width)
    core = te.compute(shape, lambda *i: te.sum(tap(*i), axis=t), name="bucket_sum")
    out_shape = (cfg.batch, cfg.out_channels, oh, ow)
    return te.compute(out_shape, lambda n, o, y, z: core[n, o, y, z].astype("float32") * scale[o], name="rescale")


def build_primfunc(cfg: GatherConv2dConfig) -> tirx.PrimFunc:
    """The unscheduled kernel (x, act_inv_scale, act_zero_point, table, scale) -> float32 output."""
    x = te.placeholder((cfg.batch, cfg.in_channels, cfg.height, cfg.width), "float32", name="x")
    inv, zp = actquant.te_placeholders()
    table = te.placeholder((cfg.out_channels, cfg.length), cfg.table_dtype, name="taps")
    scale = te.placeholder((cfg.out_channels,), "float32", name="scale")
    return te.create_prim_func([x, inv, zp, table, scale, gather_conv2d(x, inv, zp, table, scale, cfg)])


def list_length(matrix: np.ndarray) -> int:
    """L: the most nonzero weights any output channel has (at least 1, so the reduction is never empty)."""
    return max(1, int(np.count_nonzero(matrix, axis=1).max(initial=0)))


def encode_weights(matrix: np.ndarray, cfg: GatherConv2dConfig) -> np.ndarray:
    """(O, K) integer core T (0 or +-2^e, K in (C, KH, KW) order) -> (O, L) tap lists, padded with the zero row."""
    kh, kw = cfg.kernel
    weight = matrix.astype(np.int64).reshape(cfg.out_channels, cfg.in_channels, kh * kw)
    magnitude = np.abs(weight)
    shift = np.log2(np.where(magnitude > 0, magnitude, 1)).astype(np.int64)
    if not np.array_equal(np.where(magnitude > 0, 1 << shift, 0), magnitude) or shift.max(initial=0) > cfg.max_shift:
        raise ValueError(f"matrix entries must be 0 or +-2^s with s <= {cfg.max_shift}")
    channel = np.arange(cfg.in_channels)[None, :, None]
    row = ((weight < 0) * cfg.exponents + shift) * cfg.in_channels + channel
    packed = row * (kh * kw) + np.arange(kh * kw)[None, None, :]
    table = np.full((cfg.out_channels, cfg.length), (cfg.rows - 1) * kh * kw, np.int64)
    for o in range(cfg.out_channels):
        taps = packed[o][weight[o] != 0]
        table[o, : taps.size] = taps
    return table.astype(cfg.table_dtype)


def _divisor_tile(extent: int, widest: int) -> int:
    return max(d for d in range(1, max(1, min(extent, widest)) + 1) if extent % d == 0)


def schedule(func: tirx.PrimFunc, target: Target) -> tirx.PrimFunc:
    """Threads over (image, row tile, block of CHANNELS_PER_TASK channels): the rows a tile reads stay in L2
    while its channels run one after another (channels outermost measured 4x slower: every channel streamed
    all rows again). Per channel, OH_tile x OW accumulators (a register budget's worth) stay put while the tap
    list runs outside them, the pixel row innermost and vectorised."""
    sch = Schedule(func)
    sch.compute_inline(sch.get_sblock("quantize"))
    for name in ("centred", "shifted_rows"):
        block = sch.get_sblock(name)
        n, r, h, w = sch.get_loops(block)
        sch.parallel(sch.fuse(n, r))
        sch.vectorize(sch.split(w, [None, 16])[1])  # 16 lanes: the float quantize runs in 32-bit lanes

    core = sch.get_sblock("bucket_sum")
    out = sch.get_consumers(core)[0]
    n, o, y, z, t = sch.get_loops(core)
    acc_bytes = {"int16": 2, "int32": 4, "int64": 8}[str(sch.get(core).writes[0].source.dtype)]
    budget = REGISTER_BYTES[bool(codegen.target_has_features("avx512f", target))] // acc_bytes
    width = int(sch.get(z).extent)  # a multiple of `lanes` (GatherConv2dConfig.padded_width)
    lanes = min(width, PIXEL_LANES)
    columns = _divisor_tile(width // lanes, max(1, budget // lanes)) * lanes
    zo, zc, zi = sch.split(z, [None, columns // lanes, lanes])
    yo, yi = sch.split(y, [None, _divisor_tile(int(sch.get(y).extent), max(1, budget // columns))])
    oo, oi = sch.split(o, [None, _divisor_tile(int(sch.get(o).extent), CHANNELS_PER_TASK)])
    sch.reorder(n, yo, zo, oo, oi, t, yi, zc, zi)
    sch.parallel(sch.fuse(n, yo, zo, oo))
    sch.unroll(yi)
    sch.unroll(zc)
    sch.vectorize(zi)
    sch.set_scope(core, 0, "local")  # the tile's accumulators: LLVM keeps them in registers
    sch.reverse_compute_at(out, oi)
    sch.decompose_reduction(core, t)
    return sch.mod["main"]

