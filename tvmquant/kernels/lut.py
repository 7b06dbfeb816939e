"""Lookup-table conv2d (dense = 1x1 conv on a 1x1 image) for CODEBOOK weights, T-MAC style.

A CODEBOOK weight is value = levels[o, code] with arbitrary float levels, so the layer's integer core
(`scheme.integer_core`) is one bucket sum per code l,

    S_l[o] = sum_{k: code[o, k] = l} (a_k - z_a)                       (exact integers)
    out[o] = float32(sum_l levels[o, l] * S_l[o]) * s_a                 (float64, l ascending from 0)

The bucket sums are table lookups (T-MAC, Wei et al. 2024): the reduction is cut into groups of G = 4
consecutive input channels of one pixel; once per input pixel, shared by every output channel and kernel tap,
a table of the 2^G partial sums sum_{j in mask} (a_j - z_a) is built (int16: |entry| <= 4 * 255). The G
one-hot bits [code == l] of a weight group form the index into that table, so each lookup adds G weights'
worth of one bucket. Codes 1..2^b-1 are looked up; S_0 = sum(a - z_a) - sum_{l>=1} S_l (the sum is table
entry 15) saves a lookup per group. Weights are prepacked as those index nibbles, (KH, KW, groups, code, O)
with output channels innermost, so a vector of output channels reads one contiguous row of indices.

Spatial padding is the code z_a (real zero): the table is built over the padded image, whose padding rows
are zero, so the lookup needs no bounds test. Channels past C in the last group contribute 0 to every entry.

Activations in this project are always uniform integer codes (scheme.ActQuant), so the "product table" of
T-MAC for codebook activations x codebook weights does not arise and is not built.

The default schedule gathers the 16-entry table with a vector of indices (scalar loads inserted into vectors
on x86 and aarch64). A byte/word shuffle (`vpermw`, NEON `tbl`) would look up 16 entries per instruction; a
tensorized prototype worked on x86 but did not measure faster, so it is not in this kernel (schedules now get
the target, so a per-target rule could tensorize). Measured: 0.6-0.8x PyTorch fp32 (docs/BENCHMARKS.md), not the goal.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tvm import te, tirx
from tvm.s_tir import Schedule
from tvm.target import Target

from .. import actquant
from ..scheme import LayerScheme, WeightKind, integer_core
from .family import Family, KernelCall, kernel_call
from .geometry import ConvGeometry
GROUP = 4  # reduction elements per table: 2^4 = 16 int16 entries, one 256-bit register
ENTRIES = 1 << GROUP
MAX_BITS = 4  # 2^b - 1 lookups per group: past 4 bits the float64 dequant fallback does less work
LANES = 16


@dataclass(frozen=True)
class LutConv2dConfig(ConvGeometry):
    """Shapes and bit widths that decide one lookup-table kernel instance."""

    wbits: int
    abits: int

    @property
    def groups(self) -> int:
        """Tables per input pixel (channels in groups of GROUP, the last one zero-filled)."""
        return -(-self.in_channels // GROUP)

    @property
    def lookups(self) -> int:
        """Codes whose bucket is looked up: 1..2^b-1 (code 0's bucket is derived)."""
        return (1 << self.wbits) - 1

    @property
    def padded_out(self) -> int:
        """Output channels rounded up to whole vectors; the extra channels' indices are 0 (entry 0 is 0)."""
        return -(-self.out_channels // LANES) * LANES

    @property
    def acc_dtype(self) -> str:
        """int32 unless the worst-case |S_l| (every centred activation at its extreme) could overflow it."""
        worst = self.reduction * ((1 << self.abits) - 1)
        return "int32" if worst < 2**31 else "int64"


def activation_tables(
    x: te.Tensor, inv_scale: te.Tensor, zero_point: te.Tensor, cfg: LutConv2dConfig
) -> te.Tensor:
    """(N, H+2ph, W+2pw, groups, 16) int16: entry m = sum of (a - z_a) over the channels whose bit is set in m."""
    q = actquant.te_codes(x, inv_scale, zero_point, cfg.abits)
    ph, pw = cfg.padding
    zp = zero_point[0]

    def entry(n, h, w, g, m):
        inside = tirx.all(h >= ph, h < cfg.height + ph, w >= pw, w < cfg.width + pw)
        total = tirx.const(0, "int32")
        for j in range(GROUP):
            c = g * GROUP + j
            take = tirx.all(inside, c < cfg.in_channels, ((m >> j) & 1) == 1)
            value = q[n, tirx.min(c, cfg.in_channels - 1), h - ph, w - pw] - zp
            total = total + tirx.if_then_else(take, value, tirx.const(0, "int32"))
        return total.astype("int16")

    shape = (cfg.batch, cfg.height + 2 * ph, cfg.width + 2 * pw, cfg.groups, ENTRIES)
    return te.compute(shape, entry, name="table")


def lut_conv2d_buckets(
    x: te.Tensor, inv_scale: te.Tensor, zero_point: te.Tensor, index: te.Tensor, cfg: LutConv2dConfig
) -> tuple[te.Tensor, te.Tensor]:
    """(S (N, OH, OW, codes-1, padded O) for codes 1.., total (N, OH, OW) = sum of (a - z_a) over the window).

    index: (KH, KW, groups, codes-1, padded O) uint8, bit j set where the weight of channel GROUP*g+j is that code.
    """
    acc = cfg.acc_dtype
    table = activation_tables(x, inv_scale, zero_point, cfg)
    (kh, kw), (sh, sw) = cfg.kernel, cfg.stride
    r, s = te.reduce_axis((0, kh), name="r"), te.reduce_axis((0, kw), name="s")
    g = te.reduce_axis((0, cfg.groups), name="g")
    oh, ow = cfg.out_hw
    buckets = te.compute(
        (cfg.batch, oh, ow, cfg.lookups, cfg.padded_out),
        lambda n, y, z, l, o: te.sum(
            # `% ENTRIES` (a no-op on nibbles) bounds the gathered entry, so a GPU schedule can stage tables
            table[n, y * sh + r, z * sw + s, g, index[r, s, g, l, o] % ENTRIES].astype(acc), axis=[r, s, g]
        ),
        name="lookup",
    )
    r2, s2 = te.reduce_axis((0, kh), name="r2"), te.reduce_axis((0, kw), name="s2")
    g2 = te.reduce_axis((0, cfg.groups), name="g2")
    total = te.compute(
        (cfg.batch, oh, ow),
        lambda n, y, z: te.sum(table[n, y * sh + r2, z * sw + s2, g2, ENTRIES - 1].astype(acc), axis=[r2, s2, g2]),
        name="window_sum",
    )
    return buckets, total


def lut_conv2d(
    x: te.Tensor, inv_scale: te.Tensor, zero_point: te.Tensor, index: te.Tensor, levels: te.Tensor,
    scale: te.Tensor, cfg: LutConv2dConfig,
) -> te.Tensor:
    """float32 output (N, O, OH, OW); levels: (codes, O) float64 (the IntegerCore's combine), scale (O,)."""
    buckets, total = lut_conv2d_buckets(x, inv_scale, zero_point, index, cfg)
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


def schedule(func: tirx.PrimFunc, target: Target) -> tirx.PrimFunc:
    """Default CPU schedule: threads over output pixels and channel vectors, 16 output channels in lanes.

    Every table row (one pixel, one channel group) is loaded once for all codes and 16 output channels.
    """
    sch = Schedule(func)
    for name in ("quantize", "window_sum", "looked_up", "weighted", "combine", "rescale"):
        loops = sch.get_loops(sch.get_sblock(name))
        sch.parallel(sch.fuse(*loops[:2]))
    table = sch.get_sblock("table")
    n, h, *_, m = sch.get_loops(table)
    sch.parallel(sch.fuse(n, h))
    sch.vectorize(m)

    lookup = sch.get_sblock("lookup")
    n, y, z, l, o, r, s, g = sch.get_loops(lookup)
    oo, oi = sch.split(o, [None, LANES])
    sch.reorder(n, y, z, oo, r, s, g, l, oi)
    sch.parallel(sch.fuse(n, y, z, oo))
    sch.vectorize(oi)
    sch.decompose_reduction(lookup, r)
    return sch.mod["main"]


def build_primfunc(cfg: LutConv2dConfig) -> tirx.PrimFunc:
    """The unscheduled kernel (x, act_inv_scale, act_zero_point, index, levels, scale) -> float32 output."""
    x = te.placeholder((cfg.batch, cfg.in_channels, cfg.height, cfg.width), "float32", name="x")
    inv, zp = actquant.te_placeholders()
    index = te.placeholder((*cfg.kernel, cfg.groups, cfg.lookups, cfg.padded_out), "uint8", name="index")
    levels = te.placeholder((cfg.lookups + 1, cfg.out_channels), "float64", name="levels")
    scale = te.placeholder((cfg.out_channels,), "float32", name="scale")
    out = lut_conv2d(x, inv, zp, index, levels, scale, cfg)
    return te.create_prim_func([x, inv, zp, index, levels, scale, out])


def pack_index(codes: np.ndarray, cfg: LutConv2dConfig) -> np.ndarray:
    """(O, K) codes, K in (C, KH, KW) order -> (KH, KW, groups, codes-1, padded O) uint8 index nibbles."""
    (kh, kw), oc, ic = cfg.kernel, cfg.out_channels, cfg.in_channels
    per_tap = codes.reshape(oc, ic, kh, kw).transpose(2, 3, 1, 0)  # (KH, KW, C, O)
    padded = np.zeros((kh, kw, cfg.groups * GROUP, cfg.padded_out), np.int16)
    padded[:, :, :ic, :oc] = per_tap
    padded[:, :, ic:, :] = -1  # matches no code: missing channels set no bit
    padded[:, :, :, oc:] = -1
    grouped = padded.reshape(kh, kw, cfg.groups, GROUP, 1, cfg.padded_out)
    wanted = np.arange(1, cfg.lookups + 1).reshape(1, 1, 1, 1, -1, 1)
    bits = (grouped == wanted).astype(np.uint8) << np.arange(GROUP, dtype=np.uint8).reshape(1, 1, 1, -1, 1, 1)
    return np.ascontiguousarray(bits.sum(axis=3, dtype=np.uint8))


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
    return None


def compute(layer: LayerScheme, geometry: ConvGeometry) -> KernelCall:
    """CODEBOOK layers: index nibbles per code 1.., the level table (codes, O) and the output scale."""
    w = layer.weight
    cfg = LutConv2dConfig(**vars(geometry), wbits=w.bits, abits=layer.act.bits)
    core = integer_core(layer)
    index = pack_index(w.codes.reshape(w.out_channels, -1), cfg)
    return kernel_call(build_primfunc(cfg), layer, [index, np.ascontiguousarray(core.combine), core.scale])


FAMILY = Family("lut", tunable=True, check=supports, build=compute, schedules={"cpu": schedule})
