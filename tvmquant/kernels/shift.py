"""Shift-add conv2d (dense = 1x1 conv on a 1x1 image): POW2 weights x uniform integer activations.

`scheme.integer_core` turns a POW2 layer into one matrix T[o, k] = sign * 2^shift (shift 0..POW2_MAX_SPAN,
zero weights 0) with combine = 1, so the layer is

    I[o] = sum_k T[o, k] * (a_k - z_a),      out[o] = float32(I[o]) * scale[o]

and every product is a left shift of the centred activation code, added or subtracted by the sign: no
multiplications. Activations are quantized inside the kernel from float32 NCHW input (the shared
`bitserial.quantize_activations`), centred on z_a, with spatial padding stored as 0 (= real zero).

Two forms. On CPUs a conv with few exponents per channel (2- and 3-bit POW2) runs the exponent-bucket kernel
(kernels/shift_gather.py): activations pre-shifted and pre-signed once per image, then one vector add per
nonzero weight over a row of output pixels in int16 lanes (docs/BENCHMARKS.md has it against the form below). Dense
layers, wider exponent spans and CUDA (whose rule in cuda/rules/ schedules it) keep the channel-lane form:

Weight storage: one int8 per weight, `shift | ZERO_BIT (zero weight) | SIGN_BIT (negative)`, laid out
(O/16, KH, KW, C, 16) so that 16 output channels sit in one vector's lanes next to each other in memory. One
byte keeps the weights 4x smaller than fp32 and decodes with a byte load, an `and` and two mask tests (sign, zero),
which the kernel does once per (tap, 16 channels) and reuses across a tile of output pixels (or rows of a
dense layer); the inner step per pixel is then a broadcast, a per-lane variable shift (x86 `vpsllvd`/`vpsllvq`,
NEON `sshl`/`ushl`) and a masked add or subtract. Output channels are padded to a multiple of 16 with zero
weights, so every tile is full-width.

The issue's "float activations add exponents" variant does not arise: ActQuant is always uniform integer codes
in this project (the integer kernels need them), so only the integer-shift form is built.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tvm import te, tirx
from tvm.s_tir import Schedule
from tvm.target import Target

from .. import actquant
from ..scheme import POW2_MAX_SPAN, LayerScheme, WeightKind, integer_core, pow2_fields
from . import shift_gather
from .family import Family, KernelCall, kernel_call
from .geometry import ConvGeometry

LANES = 16  # output channels per vector: one zmm of int32 (AVX-512), four q registers (NEON)
SHIFT_MASK, ZERO_BIT, SIGN_BIT = 31, 32, -128  # fields of one int8 weight code
TILE = 4  # output pixels (conv) or rows (dense) sharing one decoded weight vector: 4 x 16 int32 lanes
# = 16 NEON q registers of accumulators (8 would spill on NEON; on AVX-512 4 and 8 measured alike)
LAYOUT_ATTR, BUCKETS = "tvmquant.shift_layout", "buckets"  # marks the conv (exponent-bucket) kernel


@dataclass(frozen=True)
class ShiftConv2dConfig(ConvGeometry):
    """Shapes and bit widths that decide one shift-add kernel instance."""

    abits: int
    max_shift: int

    @property
    def blocks(self) -> int:
        """Output-channel blocks of LANES channels (the last one padded with zero weights)."""
        return -(-self.out_channels // LANES)

    @property
    def acc_dtype(self) -> str:
        """int32 unless the worst case K * (2^abits - 1) * 2^max_shift could overflow it."""
        worst = self.reduction * ((1 << self.abits) - 1) << self.max_shift
        return "int32" if worst < 2**31 else "int64"


def _term(code: tirx.PrimExpr, act: tirx.PrimExpr, acc: str) -> tirx.PrimExpr:
    """One weight's contribution: +-(act << shift), or 0 for a zero weight."""
    c = code.astype(acc)
    mag = act << (c & SHIFT_MASK)
    signed = tirx.Select(c < 0, tirx.const(0, acc) - mag, mag)
    return tirx.Select((c & ZERO_BIT) != 0, tirx.const(0, acc), signed)


def shift_conv2d_int(
    x: te.Tensor, inv_scale: te.Tensor, zero_point: te.Tensor, wcode: te.Tensor, cfg: ShiftConv2dConfig
) -> te.Tensor:
    """The exact integer core I, laid out (N, OH, OW, O padded to LANES) so output channels are innermost.

    x: (N, C, H, W) float32; wcode: (O/LANES, KH, KW, C, LANES) int8 codes (see module docstring).
    """
    acc = cfg.acc_dtype
    q = actquant.te_codes(x, inv_scale, zero_point, cfg.abits)
    (kh, kw), (sh, sw), (ph, pw) = cfg.kernel, cfg.stride, cfg.padding

    def centred(n, c, h, w):
        inside = tirx.all(h >= ph, h < cfg.height + ph, w >= pw, w < cfg.width + pw)
        value = q[n, c, h - ph, w - pw] - zero_point[0]
        return tirx.if_then_else(inside, value, 0).astype(acc)

    padded = te.compute((cfg.batch, cfg.in_channels, cfg.height + 2 * ph, cfg.width + 2 * pw), centred, name="centred")
    c = te.reduce_axis((0, cfg.in_channels), name="c")
    r, s = te.reduce_axis((0, kh), name="r"), te.reduce_axis((0, kw), name="s")
    oh, ow = cfg.out_hw
    return te.compute(
        (cfg.batch, oh, ow, cfg.blocks * LANES),
        lambda n, y, z, o: te.sum(
            _term(wcode[o // LANES, r, s, c, o % LANES], padded[n, c, y * sh + r, z * sw + s], acc), axis=[r, s, c]
        ),
        name="shift_add",
    )


def shift_conv2d(
    x: te.Tensor, inv_scale: te.Tensor, zero_point: te.Tensor, wcode: te.Tensor, scale: te.Tensor,
    cfg: ShiftConv2dConfig,
) -> te.Tensor:
    """float32 output (N, O, OH, OW) = float32(I) * scale[o]; bias is left to the graph."""
    core = shift_conv2d_int(x, inv_scale, zero_point, wcode, cfg)
    oh, ow = cfg.out_hw
    return te.compute(
        (cfg.batch, cfg.out_channels, oh, ow),
        lambda n, o, y, z: core[n, y, z, o].astype("float32") * scale[o],
        name="rescale",
    )


def _tile(extent: int, widest: int = TILE) -> int:
    """The largest divisor of `extent` up to `widest`: a full tile everywhere, no tail predicates."""
    return max(d for d in range(1, min(extent, widest) + 1) if extent % d == 0)


def schedule(func: tirx.PrimFunc, target: Target) -> tirx.PrimFunc:
    """Default CPU schedule: threads over (pixel tile, 16-channel block); per tile, an accumulator of
    TILE x 16 lanes stays in registers while the reduction runs over (r, s, c) outside it, so each weight
    vector is decoded once per tile and each activation is broadcast once per block. Input channels are the
    innermost (long, not fully unrolled) reduction loop, which keeps the loop body within NEON's registers."""
    sch = Schedule(func)
    sch.compute_inline(sch.get_sblock("quantize"))
    centred = sch.get_sblock("centred")
    n, c, *_ = sch.get_loops(centred)
    sch.parallel(sch.fuse(n, c))

    core = sch.get_sblock("shift_add")
    out = sch.get_consumers(core)[0]
    n, y, z, o, *_ = sch.get_loops(core)
    dense = int(sch.get(y).extent) == 1 and int(sch.get(z).extent) == 1
    tiled = n if dense else z
    widest = TILE if sch.get(core).writes[0].source.dtype == "int32" else TILE // 2  # int64: same registers
    to, ti = sch.split(tiled, [None, _tile(int(sch.get(tiled).extent), widest)])
    oo, oi = sch.split(o, [None, LANES])
    red = sch.get_loops(core)[-3:]
    outer = [to, y, z, oo] if dense else [n, y, to, oo]
    sch.reorder(*outer, *red, ti, oi)
    sch.parallel(sch.fuse(*outer))
    sch.vectorize(oi)
    sch.unroll(ti)
    sch.reverse_compute_at(out, sch.get_loops(core)[0])
    sch.decompose_reduction(core, red[0])
    return sch.mod["main"]


def build_primfunc(cfg: ShiftConv2dConfig) -> tirx.PrimFunc:
    """The unscheduled kernel (x, act_inv_scale, act_zero_point, wcode, scale) -> float32 output."""
    x = te.placeholder((cfg.batch, cfg.in_channels, cfg.height, cfg.width), "float32", name="x")
    inv, zp = actquant.te_placeholders()
    wcode = te.placeholder((cfg.blocks, *cfg.kernel, cfg.in_channels, LANES), "int8", name="wcode")
    scale = te.placeholder((cfg.out_channels,), "float32", name="scale")
    out = shift_conv2d(x, inv, zp, wcode, scale, cfg)
    return te.create_prim_func([x, inv, zp, wcode, scale, out])


def encode_weights(matrix: np.ndarray, cfg: ShiftConv2dConfig) -> np.ndarray:
    """(O, K) integer core T (entries 0 or +-2^s, K in (C, KH, KW) order) -> (O/16, KH, KW, C, 16) int8 codes."""
    magnitude = np.abs(matrix)
    shift = np.log2(np.where(magnitude > 0, magnitude, 1)).astype(np.int64)
    if not np.array_equal(np.where(magnitude > 0, 1 << shift, 0), magnitude) or shift.max(initial=0) > SHIFT_MASK:
        raise ValueError("matrix entries must be 0 or +-2^s with s <= 31")
    codes = shift | np.where(matrix == 0, ZERO_BIT, 0) | np.where(matrix < 0, SIGN_BIT, 0)
    padded = np.full((cfg.blocks * LANES, cfg.reduction), ZERO_BIT, np.int64)
    padded[: cfg.out_channels] = codes
    blocked = padded.reshape(cfg.blocks, LANES, cfg.in_channels, *cfg.kernel)
    return np.ascontiguousarray(blocked.transpose(0, 3, 4, 2, 1)).astype(np.int8)


def reference_int(
    x: np.ndarray, matrix: np.ndarray, cfg: ShiftConv2dConfig, inv_scale: float, zero_point: int
) -> np.ndarray:
    """numpy reference of I (N, O, OH, OW): quantize x as the kernel does, then an integer convolution with T."""
    q = actquant.numpy_codes(x, inv_scale, zero_point, cfg.abits).astype(np.int64)
    (kh, kw), (sh, sw), (ph, pw) = cfg.kernel, cfg.stride, cfg.padding
    centred = np.pad(q - zero_point, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    weight = matrix.astype(np.int64).reshape(cfg.out_channels, cfg.in_channels, kh, kw)
    oh, ow = cfg.out_hw
    out = np.zeros((cfg.batch, cfg.out_channels, oh, ow), dtype=np.int64)
    for r in range(kh):
        for s in range(kw):
            patch = centred[:, :, r : r + sh * oh : sh, s : s + sw * ow : sw]
            out += np.einsum("nchw,oc->nohw", patch, weight[:, :, r, s])
    return out


def exponent_span(layer: LayerScheme) -> int:
    """The widest per-channel range of used exponents (max index - min index over nonzero codes)."""
    w = layer.weight
    index, _ = pow2_fields(w.codes.reshape(w.out_channels, -1), w.bits)
    used = index > 0
    top = np.where(used, index, 0).max(axis=1)
    bottom = np.where(used, index, np.iinfo(np.int64).max).min(axis=1)
    return int(np.where(used.any(axis=1), top - bottom, 0).max(initial=0))


def supports(layer: LayerScheme) -> str | None:
    w = layer.weight
    if w.kind is not WeightKind.POW2:
        return f"{w.kind.value} weights are not powers of two"
    span = exponent_span(layer)
    if span > POW2_MAX_SPAN:
        return f"exponent span {span} > {POW2_MAX_SPAN} (not held as integer shifts)"
    return None


def compute(layer: LayerScheme, geometry: ConvGeometry, target: Target | None = None) -> KernelCall:
    """POW2 layers: on CPUs, convs over an image whose weights use at most shift_gather.MAX_EXPONENTS exponents
    per channel (every 2- and 3-bit POW2 layer) get the exponent-bucket kernel (shift_gather: tap lists of the integer core T); other
    layers the channel-lane kernel above (int8 shift/sign/zero codes): dense layers (a 1x1 image: no pixel
    row to put in lanes), wider spans (one pre-shifted copy of the input per exponent outgrows the caches:
    measured slower, docs/BENCHMARKS.md) and other targets (CUDA's shift rule schedules the channel-lane
    form). Both with T's float32 output scale."""
    core = integer_core(layer)
    if core.matrices is None:
        raise ValueError(f"layer {layer.name}: {supports(layer)}")
    matrix = core.matrices[0]
    max_shift = int(np.abs(matrix).max(initial=1)).bit_length() - 1
    buckets = max_shift + 1 <= shift_gather.MAX_EXPONENTS and geometry.out_hw != (1, 1)
    if buckets and target is not None and target.kind.name == "llvm":
        cfg = shift_gather.GatherConv2dConfig(**vars(geometry), abits=layer.act.bits, max_shift=max_shift,
                                              length=shift_gather.list_length(matrix))
        prim = shift_gather.build_primfunc(cfg).with_attr(LAYOUT_ATTR, BUCKETS)
        return kernel_call(prim, layer, [shift_gather.encode_weights(matrix, cfg), core.scale])
    cfg = ShiftConv2dConfig(**vars(geometry), abits=layer.act.bits, max_shift=max_shift)
    return kernel_call(build_primfunc(cfg), layer, [encode_weights(matrix, cfg), core.scale])


def schedule_any(func: tirx.PrimFunc, target: Target) -> tirx.PrimFunc:
    """The default schedule of either shift kernel (the layout attribute says which)."""
    buckets = func.attrs is not None and func.attrs.get(LAYOUT_ATTR) == BUCKETS
    return shift_gather.schedule(func, target) if buckets else schedule(func, target)


FAMILY = Family("shift", tunable=True, check=supports, build=compute, schedules={"cpu": schedule_any}, targeted=True)
