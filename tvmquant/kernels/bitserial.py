"""Bit-serial conv2d (dense = 1x1 conv on a 1x1 image): UNIFORM weights x uniform activations.

With weight codes u = w/s_w + z_w and activation codes a = x/s_a + z_a (both unsigned), the layer's integer core

    I = 2 * sum_k (u_k - z_w)(a_k - z_a)
      = 2*sum(u*a) - 2*z_a*sum(u) - zw2*sum(a) + K*zw2*z_a,       zw2 = 2*z_w (an integer)

needs only sum(u*a) = sum_{i,j} 2^(i+j) popcount(U_i & A_j) over bit-planes U_i, A_j, plus per-row sums that
are precomputed (weights) or a popcount away (activations). The output is float32(I) * scale[o] with
scale = s_a * s_w / 2. Spatial zero padding uses code z_a (real zero), so (a - z_a) vanishes there exactly.

The op is compute (TE) + a default schedule + a numpy reference of I, in one place, so every caller verifies
the same definition.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tvm import te, tirx
from tvm.s_tir import Schedule

from ..packing import WORD_BITS, num_words, pack_bitplanes
from ..scheme import LayerScheme, WeightKind, integer_core
from .family import KernelCall
from .geometry import ConvGeometry

FAMILY = "bitserial"
TUNABLE = True


@dataclass(frozen=True)
class BitserialConv2dConfig(ConvGeometry):
    """Shapes and bit widths that decide one bit-serial kernel instance."""

    wbits: int
    abits: int

    @property
    def reduction(self) -> int:
        return self.in_channels * self.kernel[0] * self.kernel[1]

    @property
    def words(self) -> int:
        """64-bit words per pixel and bit-plane (channels are packed; taps are a reduction axis)."""
        return num_words(self.in_channels)

    @property
    def acc_dtype(self) -> str:
        """int32 unless the worst-case |I| could overflow it."""
        worst = 4 * self.reduction * ((1 << self.wbits) - 1) * ((1 << self.abits) - 1)
        return "int32" if worst < 2**31 else "int64"


def quantize_activations(x: te.Tensor, inv_scale: float, zero_point: int, bits: int) -> te.Tensor:
    """clip(nearbyint(x * inv_scale) + zp, 0, 2^bits-1) as int32; nearbyint rounds half to even like torch."""
    inv = tirx.const(float(np.float32(inv_scale)), "float32")
    lo, hi = tirx.const(0.0, "float32"), tirx.const(float((1 << bits) - 1), "float32")
    zp = tirx.const(float(zero_point), "float32")

    def code(*idx):
        v = te.nearbyint(x(*idx) * inv) + zp
        return te.max(te.min(v, hi), lo).astype("int32")

    return te.compute(x.shape, code, name="quantize")


def pack_activation_planes(q: te.Tensor, cfg: BitserialConv2dConfig) -> te.Tensor:
    """Bit-plane packing along channels, once per pixel: (N, H, W, abits, words) uint64, bits past C zero.

    Packing per pixel (not per im2col patch) reads each activation abits times instead of KH*KW*abits times.
    """
    t = te.reduce_axis((0, WORD_BITS), name="t")

    def word(n, h, w, b, cw):
        c = cw * WORD_BITS + t
        bit = tirx.if_then_else(c < cfg.in_channels, (q[n, c, h, w] >> b) & 1, 0)
        return te.sum(bit.astype("uint64") << t.astype("uint64"), axis=t)

    return te.compute((cfg.batch, cfg.height, cfg.width, cfg.abits, cfg.words), word, name="pack_act")


def _padded_word(planes: te.Tensor, cfg: BitserialConv2dConfig, zero_point: int, n, y, x, r, s, j, cw):
    """The packed word a kernel tap reads; in the spatial padding, the code zero_point (real zero) in every
    channel that exists, i.e. all-ones over valid channels in the planes where zero_point has a 1 bit."""
    (sh, sw), (ph, pw) = cfg.stride, cfg.padding
    h, w = y * sh + r - ph, x * sw + s - pw
    inside = tirx.all(h >= 0, h < cfg.height, w >= 0, w < cfg.width)
    valid_bits = cfg.in_channels - cw * WORD_BITS
    all_valid = tirx.const(2**64 - 1, "uint64")
    mask = tirx.if_then_else(
        valid_bits >= WORD_BITS, all_valid,
        (tirx.const(1, "uint64") << valid_bits.astype("uint64")) - tirx.const(1, "uint64"),
    )
    pad = tirx.if_then_else(((zero_point >> j) & 1) == 1, mask, tirx.const(0, "uint64"))
    return tirx.if_then_else(inside, planes[n, h, w, j, cw], pad)


def bitserial_conv2d_int(
    x: te.Tensor, wplanes: te.Tensor, wsum: te.Tensor, zw2: te.Tensor, cfg: BitserialConv2dConfig,
    inv_scale: float, zero_point: int,
) -> te.Tensor:
    """The exact integer core I (N, O, OH, OW) of the layer, from float input x (N, C, H, W).

    wplanes: (KH, KW, wbits, words, O) uint64, channels packed per kernel tap, output channels innermost for
    vector lanes; wsum: (O,) sum of weight codes; zw2: (O,) twice the weight zero point.
    """
    acc = cfg.acc_dtype
    q = quantize_activations(x, inv_scale, zero_point, cfg.abits)
    planes = pack_activation_planes(q, cfg)
    oh, ow = cfg.out_hw
    kh, kw = cfg.kernel
    r, s = te.reduce_axis((0, kh), name="r"), te.reduce_axis((0, kw), name="s")
    i = te.reduce_axis((0, cfg.wbits), name="i")
    j = te.reduce_axis((0, cfg.abits), name="j")
    wd = te.reduce_axis((0, cfg.words), name="wd")
    dot = te.compute(
        (cfg.batch, cfg.out_channels, oh, ow),
        lambda n, o, y, z: te.sum(
            tirx.popcount(wplanes[r, s, i, wd, o] & _padded_word(planes, cfg, zero_point, n, y, z, r, s, j, wd))
            .astype(acc) << (i + j).astype(acc),
            axis=[r, s, i, j, wd],
        ),
        name="popcount_dot",
    )
    r2, s2 = te.reduce_axis((0, kh), name="r2"), te.reduce_axis((0, kw), name="s2")
    j2 = te.reduce_axis((0, cfg.abits), name="j2")
    wd2 = te.reduce_axis((0, cfg.words), name="wd2")
    asum = te.compute(
        (cfg.batch, oh, ow),
        lambda n, y, z: te.sum(
            tirx.popcount(_padded_word(planes, cfg, zero_point, n, y, z, r2, s2, j2, wd2)).astype(acc)
            << j2.astype(acc),
            axis=[r2, s2, j2, wd2],
        ),
        name="act_sum",
    )
    za, k_total = tirx.const(zero_point, acc), tirx.const(cfg.reduction, acc)
    return te.compute(
        dot.shape,
        lambda n, o, y, z: 2 * dot[n, o, y, z]
        - 2 * za * wsum[o].astype(acc)
        - zw2[o].astype(acc) * asum[n, y, z]
        + k_total * zw2[o].astype(acc) * za,
        name="integer_core",
    )


def bitserial_conv2d(
    x: te.Tensor, wplanes: te.Tensor, wsum: te.Tensor, zw2: te.Tensor, scale: te.Tensor,
    cfg: BitserialConv2dConfig, inv_scale: float, zero_point: int,
) -> te.Tensor:
    """float32 output (N, O, OH, OW) = float32(I) * scale[o]; bias is left to the graph."""
    core = bitserial_conv2d_int(x, wplanes, wsum, zw2, cfg, inv_scale, zero_point)
    return te.compute(
        core.shape, lambda n, o, y, z: core[n, o, y, z].astype("float32") * scale[o], name="rescale"
    )


def reference_int(
    x: np.ndarray, codes: np.ndarray, zw2: np.ndarray, cfg: BitserialConv2dConfig,
    inv_scale: float, zero_point: int,
) -> np.ndarray:
    """numpy reference of I: quantize x exactly as the kernel does, then an integer convolution."""
    qmax = (1 << cfg.abits) - 1
    q = np.clip(np.rint(x.astype(np.float32) * np.float32(inv_scale)) + zero_point, 0, qmax).astype(np.int64)
    (kh, kw), (sh, sw), (ph, pw) = cfg.kernel, cfg.stride, cfg.padding
    centred = np.pad(q - zero_point, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    oh, ow = cfg.out_hw
    w2 = 2 * codes.astype(np.int64).reshape(cfg.out_channels, cfg.in_channels, kh, kw) - zw2.reshape(-1, 1, 1, 1)
    out = np.zeros((cfg.batch, cfg.out_channels, oh, ow), dtype=np.int64)
    for r in range(kh):
        for s in range(kw):
            patch = centred[:, :, r : r + sh * oh : sh, s : s + sw * ow : sw]
            out += np.einsum("nchw,oc->nohw", patch, w2[:, :, r, s])
    return out


def _lanes(extent: int, widest: int = 16) -> int:
    """The widest power-of-two vector width up to `widest` that divides `extent`."""
    lanes = widest
    while extent % lanes:
        lanes //= 2
    return lanes


def schedule(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """Default CPU schedule (no tuning needed): threads over output pixels, vector lanes over channels.

    The popcount GEMM keeps 16 output channels in vector lanes (AVX-512 vpopcntq / NEON cnt) with all three
    reductions outside them, so each packed activation word is loaded once and broadcast.
    """
    sch = Schedule(func)
    quant = sch.get_sblock("quantize")
    loops = sch.get_loops(quant)
    sch.parallel(sch.fuse(*loops[:2]))

    pack = sch.get_sblock("pack_act")
    n, y, *_ = sch.get_loops(pack)
    sch.parallel(sch.fuse(n, y))

    dot = sch.get_sblock("popcount_dot")
    n, o, y, z, r, s, i, j, wd = sch.get_loops(dot)
    out_channels = int(sch.get(o).extent)
    oo, oi = sch.split(o, [None, _lanes(out_channels)])
    sch.reorder(n, y, z, oo, r, s, i, j, wd, oi)
    sch.parallel(sch.fuse(n, y, z, oo))
    sch.vectorize(oi)
    sch.decompose_reduction(dot, r)

    asum = sch.get_sblock("act_sum")
    n, y, *_ = sch.get_loops(asum)
    sch.parallel(sch.fuse(n, y))

    core = sch.get_sblock("integer_core")
    consumers = sch.get_consumers(core)
    if consumers:
        sch.compute_inline(core)
        core = consumers[0]
    n, o, *_ = sch.get_loops(core)
    sch.parallel(sch.fuse(n, o))
    return sch.mod["main"]


def build_primfunc(
    cfg: BitserialConv2dConfig, inv_scale: float, zero_point: int, scheduled: bool = True
) -> tirx.PrimFunc:
    """The kernel (x, wplanes, wsum, zw2, scale) -> float32 output, for one layer instance.

    `scheduled=False` gives the plain TE function, which is what MetaSchedule tunes and what tuning records
    are matched against; `schedule()` turns it into the default (untuned) kernel.
    """
    oc = cfg.out_channels
    x = te.placeholder((cfg.batch, cfg.in_channels, cfg.height, cfg.width), "float32", name="x")
    wplanes = te.placeholder((*cfg.kernel, cfg.wbits, cfg.words, oc), "uint64", name="wplanes")
    wsum = te.placeholder((oc,), "int32", name="wsum")
    zw2 = te.placeholder((oc,), "int32", name="zw2")
    scale = te.placeholder((oc,), "float32", name="scale")
    out = bitserial_conv2d(x, wplanes, wsum, zw2, scale, cfg, inv_scale, zero_point)
    func = te.create_prim_func([x, wplanes, wsum, zw2, scale, out])
    return schedule(func) if scheduled else func


def pack_weights(codes: np.ndarray, cfg: BitserialConv2dConfig) -> np.ndarray:
    """(O, K) weight codes, K in (C, KH, KW) order -> (KH, KW, wbits, words, O) uint64 planes."""
    (kh, kw), oc, ic = cfg.kernel, cfg.out_channels, cfg.in_channels
    per_tap = codes.reshape(oc, ic, kh, kw).transpose(2, 3, 0, 1).reshape(kh * kw * oc, ic)
    planes = pack_bitplanes(per_tap, cfg.wbits).reshape(kh, kw, oc, cfg.wbits, cfg.words)
    return np.ascontiguousarray(planes.transpose(0, 1, 3, 4, 2))


def supports(layer: LayerScheme) -> str | None:
    w = layer.weight
    if w.kind is not WeightKind.UNIFORM:
        return f"{w.kind.value} weights are not uniform codes"
    if not np.allclose(2 * np.asarray(w.zero_point), np.round(2 * np.asarray(w.zero_point))):
        return "weight zero points are not multiples of 1/2"
    return None


def instantiate(layer: LayerScheme, geometry: ConvGeometry, scheduled: bool = True) -> KernelCall:
    """UNIFORM layers: packed bit-planes, code sums, twice the zero points and the output scale."""
    w = layer.weight
    cfg = BitserialConv2dConfig(**vars(geometry), wbits=w.bits, abits=layer.act.bits)
    codes = w.codes.reshape(w.out_channels, -1)
    zw2 = np.round(2 * np.asarray(w.zero_point, np.float64)).astype(np.int32)
    code_sums = codes.sum(axis=1, dtype=np.int64).astype(np.int32)
    prim = build_primfunc(cfg, layer.act.inv_scale, layer.act.zero_point, scheduled=scheduled)
    return KernelCall(prim, [pack_weights(codes, cfg), code_sums, zw2, integer_core(layer).scale])
