"""Multipoint kernel: MULTIPOINT weights as ONE bit-serial GEMM over expanded rows plus a fused combination.

A multipoint layer has P uniform points per output channel; `scheme.integer_core` gives one integer matrix T_p
per point, combine[p, o] and out[o] = float32(sum_p combine[p, o] * I_p[o]) * scale[o] (float64 sum, p
ascending from 0). Most channels use one point, so the P matrices are mostly zero rows. We stack only the
rows that exist (point p of channel o with T_p[o] not all zero; an all-zero row adds exactly +0) into R >= O
expanded rows: row o is channel o's first point, the extra points follow, and zero rows pad R to a multiple
of 8 (the vector width). One bit-serial popcount GEMM (`bitserial.bitserial_conv2d_int`) gives I for every row,
and the combination stage gathers each channel's rows through a (O, S) row map, S the most points any
channel uses, padded with weight 0 (adds exactly +0 because every I is finite):

    out[n, o, y, x] = float32(sum_s combine[o, s] * I[n, rowmap[o, s], y, x]) * scale[o]

Each product is taken through an fma with a +0 addend so that LLVM (which TVM lets contract a*b+c into one
fma) cannot fuse it with the running sum: the reference rounds every product before adding it.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
from tvm import te, tirx
from tvm.s_tir import Schedule
from tvm.target import Target

from .. import actquant
from ..scheme import LayerScheme, WeightKind, half_integers, integer_core
from . import bitserial
from .bitserial import BitserialConv2dConfig
from .family import Family, KernelCall, kernel_call
from .geometry import ConvGeometry
ROW_PAD = 8  # expanded rows are padded to a multiple of this: 8 u64 lanes = one AVX-512 / four NEON registers


@dataclass(frozen=True)
class MultipointConv2dConfig(ConvGeometry):
    """Shapes and bit widths of one instance: `rows` expanded rows (padded), `slots` rows per channel.
    `derived`: slot 0 is not a row but I[last row] - sum of the channel's other slots (`derived_first`)."""

    wbits: int
    abits: int
    rows: int
    slots: int
    derived: bool = False

    @property
    def gemm(self) -> BitserialConv2dConfig:
        """The bit-serial GEMM over the expanded rows."""
        geometry = {f.name: getattr(self, f.name) for f in fields(ConvGeometry)}
        return BitserialConv2dConfig(**{**geometry, "out_channels": self.rows}, wbits=self.wbits, abits=self.abits)


@dataclass(frozen=True)
class ExpandedRows:
    """A multipoint layer as rows of uniform codes and the per-channel map that recombines them."""

    codes: np.ndarray  # (R, K) uint8 weight codes of every expanded row, K in (C, KH, KW) order
    zw2: np.ndarray  # (R,) int32: twice each row's zero point, so T_r = 2 * codes - zw2
    rowmap: np.ndarray  # (O, S) int32: the rows of channel o in ascending point order, then padding
    combine: np.ndarray  # (O, S) float64: combine[p, o] of those rows, 0 in the padding
    scale: np.ndarray  # (O,) float32

    @property
    def extra_rows(self) -> int:
        """Rows beyond one per channel that carry a point: extra slots point past the first O rows, padding
        slots back at the channel's own first row."""
        return int((self.rowmap[:, 1:] >= len(self.rowmap)).sum())


def _channel_points(matrices: np.ndarray) -> list[list[int]]:
    """Per channel, the points whose row is not all zero (ascending); at least one point per channel."""
    nonzero = matrices.any(axis=2)  # (P, O)
    return [list(np.flatnonzero(nonzero[:, o])) or [0] for o in range(nonzero.shape[1])]


def expand_rows(layer: LayerScheme, pad: int = ROW_PAD) -> ExpandedRows:
    """Stack the existing (point, channel) rows: row o is channel o's first point, extra points follow."""
    w, core = layer.weight, integer_core(layer)
    points, out = core.combine.shape
    codes = w.codes.reshape(points, out, -1)
    zw2 = np.round(2 * np.asarray(w.zero_point, np.float64)).astype(np.int32)
    chosen = _channel_points(core.matrices)
    slots = max(len(p) for p in chosen)
    order = [(p[0], o) for o, p in enumerate(chosen)]
    rowmap = np.repeat(np.arange(out, dtype=np.int32)[:, None], slots, axis=1)
    combine = np.zeros((out, slots))
    for o, pts in enumerate(chosen):
        combine[o, 0] = core.combine[pts[0], o]
        for s, p in enumerate(pts[1:], start=1):
            rowmap[o, s] = len(order)
            combine[o, s] = core.combine[p, o]
            order.append((p, o))
    rows = -(-len(order) // pad) * pad
    row_codes = np.zeros((rows, codes.shape[2]), np.uint8)
    row_zw2 = np.zeros(rows, np.int32)
    for r, (p, o) in enumerate(order):
        row_codes[r], row_zw2[r] = codes[p, o], zw2[p, o]
    return ExpandedRows(row_codes, row_zw2, rowmap, combine, core.scale)


def _product(weight: tirx.PrimExpr, value: tirx.PrimExpr) -> tirx.PrimExpr:
    """weight * value rounded on its own: fma(w, v, +0) is round(w*v) and cannot be contracted further."""
    return tirx.call_intrin("float64", "tirx.fma", weight, value, tirx.const(0.0, "float64"))


def multipoint_conv2d(
    x: te.Tensor, inv_scale: te.Tensor, zero_point: te.Tensor, wplanes: te.Tensor, wsum: te.Tensor,
    zw2: te.Tensor, rowmap: te.Tensor, combine: te.Tensor, scale: te.Tensor, cfg: MultipointConv2dConfig,
) -> te.Tensor:
    """float32 output (N, O, OH, OW) from float32 x (N, C, H, W); the weights as in bitserial (R rows)."""
    core = bitserial.bitserial_conv2d_int(x, inv_scale, zero_point, wplanes, wsum, zw2, cfg.gemm)

    def term(n, o, y, z, s):
        # clamped: MetaSchedule measures candidates on random inputs, a random row map must stay in bounds
        row = tirx.min(tirx.max(rowmap[o, s], 0), cfg.rows - 1)
        return _product(combine[o, s], core[n, row, y, z].astype("float64"))

    def first(n, o, y, z):
        if not cfg.derived:
            return term(n, o, y, z, 0)
        rest = [core[n, tirx.min(tirx.max(rowmap[o, s], 0), cfg.rows - 1), y, z] for s in range(1, cfg.slots)]
        derived = core[n, cfg.rows - 1, y, z] - sum(rest[1:], rest[0]) if rest else core[n, cfg.rows - 1, y, z]
        return _product(combine[o, 0], derived.astype("float64"))

    def combined(n, o, y, z):
        acc = first(n, o, y, z)
        for s in range(1, cfg.slots):
            acc = acc + term(n, o, y, z, s)
        return acc.astype("float32") * scale[o]

    return te.compute((cfg.batch, cfg.out_channels, *cfg.out_hw), combined, name="combine")


def reference(
    x: np.ndarray, rows: ExpandedRows, cfg: MultipointConv2dConfig, inv_scale: float, zero_point: int
) -> np.ndarray:
    """numpy reference: the integer core of every row (bitserial.reference_int), then the float64 combination."""
    core = bitserial.reference_int(x, rows.codes, rows.zw2, cfg.gemm, inv_scale, zero_point)
    if cfg.derived:
        core = np.concatenate([core, core[:, -1:] - core[:, rows.rowmap[:, 1:]].sum(axis=2)], axis=1)
    core = core.astype(np.float64)
    acc = np.zeros((cfg.batch, cfg.out_channels, *cfg.out_hw))
    if cfg.derived:
        acc = acc + rows.combine[None, :, 0, None, None] * core[:, len(rows.codes):]
    for s in range(1 if cfg.derived else 0, cfg.slots):
        acc = acc + rows.combine[None, :, s, None, None] * core[:, rows.rowmap[:, s]]
    return acc.astype(np.float32) * rows.scale[None, :, None, None]


def schedule(func: tirx.PrimFunc, target: Target) -> tirx.PrimFunc:
    """Default CPU schedule: bitserial's packing and register-tiled popcount GEMM over the expanded rows; the
    combination (with the integer core inlined) parallel over (batch, channel, row) and vectorized along the
    output row, where the gathered I are contiguous."""
    sch = Schedule(func)
    bitserial.schedule_gemm(sch, target)
    sch.compute_inline(sch.get_sblock("integer_core"))
    n, o, y, z = sch.get_loops(sch.get_sblock("combine"))
    sch.parallel(sch.fuse(n, o, y))
    width = int(sch.get(z).extent)
    lanes = bitserial.vector_lanes(width, 8)
    if lanes > 1:
        sch.vectorize(sch.split(z, [None, lanes])[1])
    return sch.mod["main"]


def build_primfunc(cfg: MultipointConv2dConfig, codes_in: bool = False) -> tirx.PrimFunc:
    """The unscheduled kernel (x, act_inv_scale, act_zero_point, wplanes, wsum, zw2, rowmap, combine, scale)
    -> float32 output, for one layer instance. `codes_in`: x is bitserial's encoder planes
    (`bitserial.planes_shape`, uint64) instead of float NCHW (the onehot family's codes between layers)."""
    rows, out = cfg.rows, cfg.out_channels
    x = (te.placeholder(bitserial.planes_shape(cfg.gemm), "uint64", name="x") if codes_in
         else te.placeholder((cfg.batch, cfg.in_channels, cfg.height, cfg.width), "float32", name="x"))
    inv, zp = actquant.te_placeholders()
    wplanes = te.placeholder((*cfg.kernel, cfg.wbits, cfg.gemm.words, rows), "uint64", name="wplanes")
    wsum = te.placeholder((rows,), "int32", name="wsum")
    zw2 = te.placeholder((rows,), "int32", name="zw2")
    rowmap = te.placeholder((out, cfg.slots), "int32", name="rowmap")
    combine = te.placeholder((out, cfg.slots), "float64", name="combine")
    scale = te.placeholder((out,), "float32", name="scale")
    y = multipoint_conv2d(x, inv, zp, wplanes, wsum, zw2, rowmap, combine, scale, cfg)
    return te.create_prim_func([x, inv, zp, wplanes, wsum, zw2, rowmap, combine, scale, y])


def kernel_consts(rows: ExpandedRows, cfg: MultipointConv2dConfig) -> list[np.ndarray]:
    """The constants build_primfunc's kernel takes after x, in order."""
    code_sums = rows.codes.sum(axis=1, dtype=np.int64).astype(np.int32)
    return [bitserial.pack_weights(rows.codes, cfg.gemm), code_sums, rows.zw2, rows.rowmap, rows.combine, rows.scale]


def supports(layer: LayerScheme) -> str | None:
    w = layer.weight
    if w.kind is not WeightKind.MULTIPOINT:
        return f"{w.kind.value} weights are not multipoint"
    if not half_integers(w.zero_point):
        return "weight zero points are not multiples of 1/2"
    if not np.isfinite(integer_core(layer).combine).all():
        return "non-finite point coefficients"
    return None


def compute(layer: LayerScheme, geometry: ConvGeometry) -> KernelCall:
    """MULTIPOINT layers: the expanded rows packed as bit-planes, the row map and the combination weights."""
    rows = expand_rows(layer)
    cfg = MultipointConv2dConfig(
        **vars(geometry), wbits=layer.weight.bits, abits=layer.act.bits, rows=len(rows.codes),
        slots=rows.rowmap.shape[1],
    )
    return kernel_call(build_primfunc(cfg), layer, kernel_consts(rows, cfg))


FAMILY = Family("multipoint", tunable=True, check=supports, build=compute, schedules={"cpu": schedule})
