"""Bit-serial conv2d (dense = 1x1 conv on a 1x1 image): UNIFORM weights x uniform activations.

With weight codes u = w/s_w + z_w and activation codes a = x/s_a + z_a (both unsigned), the layer's integer core

    I = 2 * sum_k (u_k - z_w)(a_k - z_a)
      = 2*sum(u*a) - 2*z_a*sum(u) - zw2*sum(a) + K*zw2*z_a,       zw2 = 2*z_w (an integer)

needs only sum(u*a) = sum_{i,j} 2^(i+j) popcount(U_i & A_j) over bit-planes U_i, A_j, plus per-row sums that
are precomputed (weights) or a popcount away (activations). The output is float32(I) * scale[o] with
scale = s_a * s_w / 2. Spatial zero padding uses code z_a (real zero), so (a - z_a) vanishes there exactly.

Activations are quantized once into spatially padded codes (the padding holds z_a) and packed per padded
pixel, so the popcount GEMM reads every kernel tap without bounds checks.

The op is compute (TE) + a default schedule + a numpy reference of I, in one place, so every caller verifies
the same definition.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from tvm import te, tirx
from tvm.s_tir import Schedule
from tvm.target import Target

from .. import actquant
from ..packing import WORD_BITS, num_words, pack_bitplanes
from ..scheme import LayerScheme, WeightKind, half_integers, integer_core
from .encoder import Encoded, EncoderSpec, encoder_func, float_input, has_block
from .family import Family, KernelCall, TensorIO, kernel_call
from .geometry import ConvGeometry


@dataclass(frozen=True)
class BitserialConv2dConfig(ConvGeometry):
    """Shapes and bit widths that decide one bit-serial kernel instance."""

    wbits: int
    abits: int

    @property
    def words(self) -> int:
        """64-bit words per pixel and bit-plane (channels are packed; taps are a reduction axis)."""
        return num_words(self.in_channels)

    @property
    def acc_dtype(self) -> str:
        """int32 unless the worst-case |I| could overflow it."""
        worst = 4 * self.reduction * ((1 << self.wbits) - 1) * ((1 << self.abits) - 1)
        return "int32" if worst < 2**31 else "int64"


def pad_codes(q: te.Tensor, cfg: BitserialConv2dConfig, zero_point: te.Tensor) -> te.Tensor:
    """Spatially padded uint8 codes (N, C, H+2ph, W+2pw): the padding holds zero_point, i.e. real zero."""
    (ph, pw), n, c, h, w = cfg.padding, cfg.batch, cfg.in_channels, cfg.height, cfg.width

    def code(n, c, hp, wp):
        inside = tirx.all(hp >= ph, hp < h + ph, wp >= pw, wp < w + pw)
        return tirx.if_then_else(inside, q[n, c, hp - ph, wp - pw], zero_point[0]).astype("uint8")

    return te.compute((n, c, h + 2 * ph, w + 2 * pw), code, name="pad_codes")


def pack_activation_planes(codes: te.Tensor, cfg: BitserialConv2dConfig) -> te.Tensor:
    """Bit-plane packing along channels, once per padded pixel: (N, Hp, abits, words, Wp) uint64.

    Packing per pixel (not per im2col patch) reads each code abits times instead of KH*KW*abits times; the
    padded width is innermost so packing vectorizes over contiguous pixels; bits past C are zero.
    """
    n, _, hp, wp = codes.shape
    t = te.reduce_axis((0, WORD_BITS), name="t")

    def word(n, y, b, cw, x):
        c = cw * WORD_BITS + t
        bit = tirx.if_then_else(c < cfg.in_channels, (codes[n, c, y, x] >> b.astype("uint8")) & 1, 0)
        return te.sum(bit.astype("uint64") << t.astype("uint64"), axis=t)

    return te.compute((n, hp, cfg.abits, cfg.words, wp), word, name="pack_act")


def encode_activations(x: te.Tensor, inv_scale: te.Tensor, zero_point: te.Tensor, cfg: BitserialConv2dConfig) -> te.Tensor:
    """float x (N, C, H, W) -> the kernel's input planes (N, Hp, abits, words, Wp): quantize, pad, pack."""
    codes = actquant.te_codes(x, inv_scale, zero_point, cfg.abits)
    return pack_activation_planes(pad_codes(codes, cfg, zero_point), cfg)


def planes_shape(cfg: BitserialConv2dConfig) -> tuple[int, ...]:
    (ph, pw) = cfg.padding
    return (cfg.batch, cfg.height + 2 * ph, cfg.abits, cfg.words, cfg.width + 2 * pw)


def _tap_word(planes: te.Tensor, cfg: BitserialConv2dConfig, n, y, x, r, s, j, wd):
    """The packed word kernel tap (r, s) reads for output pixel (n, y, x)."""
    sh, sw = cfg.stride
    return planes[n, y * sh + r, j, wd, x * sw + s]


def bitserial_conv2d_int(
    x: te.Tensor, inv_scale: te.Tensor, zero_point: te.Tensor, wplanes: te.Tensor, wsum: te.Tensor,
    zw2: te.Tensor, cfg: BitserialConv2dConfig,
) -> te.Tensor:
    """The exact integer core I (N, O, OH, OW) of the layer, from float input x (N, C, H, W), or from x already
    encoded (`encode_activations`' bit-planes, uint64: codes between layers).

    inv_scale, zero_point: the activation quantizer's runtime inputs (actquant.te_placeholders);
    wplanes: (KH, KW, wbits, words, O) uint64, channels packed per kernel tap, output channels innermost for
    vector lanes; wsum: (O,) sum of weight codes; zw2: (O,) twice the weight zero point. The popcount sums
    run in uint64 lanes (what vpopcntq / cnt+uaddlp produce: no narrowing in the inner loop), in an
    (N, OH, OW, O) buffer whose tiles the schedule keeps in registers.
    """
    acc = cfg.acc_dtype
    planes = x if x.dtype == "uint64" else encode_activations(x, inv_scale, zero_point, cfg)
    oh, ow = cfg.out_hw
    kh, kw = cfg.kernel
    r, s = te.reduce_axis((0, kh), name="r"), te.reduce_axis((0, kw), name="s")
    i = te.reduce_axis((0, cfg.wbits), name="i")
    j = te.reduce_axis((0, cfg.abits), name="j")
    wd = te.reduce_axis((0, cfg.words), name="wd")
    dot = te.compute(
        (cfg.batch, oh, ow, cfg.out_channels),
        lambda n, y, z, o: te.sum(
            tirx.popcount(wplanes[r, s, i, wd, o] & _tap_word(planes, cfg, n, y, z, r, s, j, wd))
            << (i + j).astype("uint64"),
            axis=[wd, r, s, i, j],
        ),
        name="popcount_dot",
    )
    r2, s2 = te.reduce_axis((0, kh), name="r2"), te.reduce_axis((0, kw), name="s2")
    j2 = te.reduce_axis((0, cfg.abits), name="j2")
    wd2 = te.reduce_axis((0, cfg.words), name="wd2")
    asum = te.compute(
        (cfg.batch, oh, ow),
        lambda n, y, z: te.sum(
            tirx.popcount(_tap_word(planes, cfg, n, y, z, r2, s2, j2, wd2)).astype(acc) << j2.astype(acc),
            axis=[r2, s2, j2, wd2],
        ),
        name="act_sum",
    )
    za, k_total = zero_point[0].astype(acc), tirx.const(cfg.reduction, acc)
    # Split so the dot tile's epilogue needs only the dot (a fused consumer may read no other intermediate).
    partial = te.compute(
        (cfg.batch, cfg.out_channels, oh, ow),
        lambda n, o, y, z: 2 * dot[n, y, z, o].astype(acc)
        - 2 * za * wsum[o].astype(acc)
        + k_total * zw2[o].astype(acc) * za,
        name="dot_epilogue",
    )
    return te.compute(
        partial.shape,
        lambda n, o, y, z: partial[n, o, y, z] - zw2[o].astype(acc) * asum[n, y, z],
        name="integer_core",
    )


def bitserial_conv2d(
    x: te.Tensor, inv_scale: te.Tensor, zero_point: te.Tensor, wplanes: te.Tensor, wsum: te.Tensor,
    zw2: te.Tensor, scale: te.Tensor, cfg: BitserialConv2dConfig,
) -> te.Tensor:
    """float32 output (N, O, OH, OW) = float32(I) * scale[o]; bias is left to the graph."""
    core = bitserial_conv2d_int(x, inv_scale, zero_point, wplanes, wsum, zw2, cfg)
    return te.compute(
        core.shape, lambda n, o, y, z: core[n, o, y, z].astype("float32") * scale[o], name="rescale"
    )


def reference_int(
    x: np.ndarray, codes: np.ndarray, zw2: np.ndarray, cfg: BitserialConv2dConfig,
    inv_scale: float, zero_point: int,
) -> np.ndarray:
    """numpy reference of I: quantize x exactly as the kernel does, then an integer convolution."""
    q = actquant.numpy_codes(x, inv_scale, zero_point, cfg.abits).astype(np.int64)
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


def _pixel_tile(pixels: int, widest: int = 8) -> int:
    """Output pixels per register tile: the largest divisor of `pixels` up to `widest` (no tail loop)."""
    return max(d for d in range(1, widest + 1) if pixels % d == 0)


def _widest_pixel_tile(target: Target) -> int:
    """8 pixels x 16 uint64 lanes fit AVX-512's 32 zmm registers; NEON's 32 q registers hold 2 lanes each,
    so for an arm_cpu target tiles stay one pixel wide."""
    return 1 if "arm_cpu" in target.keys else 8


def vector_lanes(extent: int, widest: int = 16) -> int:
    """The widest power-of-two vector width up to `widest` that divides `extent`."""
    lanes = widest
    while extent % lanes:
        lanes //= 2
    return lanes


def _schedule_packing(sch: Schedule, _target: Target | None = None) -> None:
    """Quantize into the padded codes; pack with pixels in vector lanes, 64 channel bits per word unrolled
    and every bit-plane of a code vector from one load (in the kernel, or in the encoder of codes between
    layers; with the planes outside the channel bits it measured 1.07-1.17x slower at 56x56x64, A2, one
    thread, side by side on a loaded machine)."""
    sch.compute_inline(sch.get_sblock("quantize"))
    pad = sch.get_sblock("pad_codes")
    n, c, *_ = sch.get_loops(pad)
    sch.parallel(sch.fuse(n, c))
    pack = sch.get_sblock("pack_act")
    n, y, b, cw, x, t = sch.get_loops(pack)
    sch.reorder(cw, t, b, x)
    sch.parallel(sch.fuse(n, y))
    sch.vectorize(x)
    sch.unroll(b)
    sch.unroll(t)
    sch.decompose_reduction(pack, t)


MIN_PARALLEL_TILES = 16  # below this many pixel tiles, channel blocks are parallel work items too


def _schedule_dot(sch: Schedule, target: Target) -> None:
    """Register tiles of P pixels x L output channels (L vector lanes), the whole reduction inside the tile.

    Each weight vector is loaded once per tile and reused for P pixels and every activation plane; each
    activation word is a broadcast reused for every weight plane. The tile's accumulators live in registers
    (a "local" buffer LLVM promotes) and the dot epilogue runs on them before anything is stored. Pixels are
    tiled along OW, or along the batch for dense layers (1x1 image). Threads take pixel tiles; where there are
    fewer than MIN_PARALLEL_TILES (ResNet's 7x7 layers: 7 rows for 2 threads, one idle an eighth of the
    time; dense layers: one tile) they take (channel block, pixel tile) pairs, channel blocks outermost so
    that consecutive items of a thread share their weights (7x7x512 W2A2: 1.12-1.15x, one kernel alone,
    interleaved; 14x14 and larger measured 0.84-0.88x that way, so they keep pixel tiles).
    """
    dot = sch.get_sblock("popcount_dot")
    n, y, z, o, wd, r, s, i, j = sch.get_loops(dot)
    tiled = z if int(sch.get(z).extent) > 1 else n
    po, pi = sch.split(tiled, [None, _pixel_tile(int(sch.get(tiled).extent), _widest_pixel_tile(target))])
    oo, oi = sch.split(o, [None, vector_lanes(int(sch.get(o).extent))])
    spatial = [n, y, po] if tiled is z else [po, y, z]
    few = int(np.prod([int(sch.get(loop).extent) for loop in spatial])) < MIN_PARALLEL_TILES
    sch.reorder(*([oo, *spatial] if few else [*spatial, oo]), wd, r, s, i, j, pi, oi)
    items = sch.fuse(oo, *spatial) if few else sch.fuse(*spatial)
    sch.parallel(items)
    for loop in (i, j, pi):
        sch.unroll(loop)
    sch.vectorize(oi)
    sch.set_scope(dot, 0, "local")
    epilogue = sch.get_sblock("dot_epilogue")
    sch.reverse_compute_at(epilogue, items if few else oo)
    _vectorize_tile_epilogue(sch, epilogue, 1 if few else 2)
    sch.decompose_reduction(dot, wd)


def _vectorize_tile_epilogue(sch: Schedule, epilogue, outer: int) -> None:
    """Read the accumulators as whole vectors (channels in lanes) and store them per pixel; the loop the other
    way round would gather across the tile (measured ~20% of the kernel at 56x56x64). `outer`: the loops the
    tile sits under (pixel tiles and channel blocks, or the two fused); unit loops are left out."""
    inner = sch.get_loops(epilogue)[outer:]
    if len(inner) == 2:
        o, z = inner
        sch.reorder(z, o)
        sch.unroll(z)
        sch.vectorize(o)
    elif inner:
        sch.vectorize(inner[0])


def _schedule_epilogue(sch: Schedule) -> None:
    """The last correction (+ rescale) streaming over contiguous pixels."""
    core = sch.get_sblock("integer_core")
    consumers = sch.get_consumers(core)
    if consumers:
        sch.compute_inline(core)
        core = consumers[0]
    n, o, y, z = sch.get_loops(core)
    sch.parallel(sch.fuse(n, o))
    pixels = sch.fuse(y, z)
    sch.vectorize(sch.split(pixels, [None, vector_lanes(int(sch.get(pixels).extent))])[1])


def schedule_gemm(sch: Schedule, target: Target) -> None:
    """Packing and the register-tiled popcount GEMM with its act_sum; shared by kernels built on
    `bitserial_conv2d_int` (multipoint), which schedule their own consumer of the integer core; a kernel on
    codes (no packing inside) has only the GEMM."""
    if has_block(sch, "pack_act"):
        _schedule_packing(sch)
    _schedule_dot(sch, target)
    asum = sch.get_sblock("act_sum")
    n, y, *_ = sch.get_loops(asum)
    sch.parallel(sch.fuse(n, y))


def schedule(func: tirx.PrimFunc, target: Target) -> tirx.PrimFunc:
    """Default CPU schedule (no tuning needed): vectorized packing, register-tiled popcount GEMM, 2 threads."""
    sch = Schedule(func)
    schedule_gemm(sch, target)
    _schedule_epilogue(sch)
    return sch.mod["main"]


def build_primfunc(cfg: BitserialConv2dConfig, codes_in: bool = False) -> tirx.PrimFunc:
    """The unscheduled kernel (x, act_inv_scale, act_zero_point, wplanes, wsum, zw2, scale) -> float32 output:
    what MetaSchedule tunes and tuning records are matched against; `schedule()` gives the default kernel.
    `codes_in`: x is the encoder's planes (`planes_shape`, uint64) instead of float NCHW."""
    oc = cfg.out_channels
    x = (te.placeholder(planes_shape(cfg), "uint64", name="x") if codes_in
         else te.placeholder((cfg.batch, cfg.in_channels, cfg.height, cfg.width), "float32", name="x"))
    inv, zp = actquant.te_placeholders()
    wplanes = te.placeholder((*cfg.kernel, cfg.wbits, cfg.words, oc), "uint64", name="wplanes")
    wsum = te.placeholder((oc,), "int32", name="wsum")
    zw2 = te.placeholder((oc,), "int32", name="zw2")
    scale = te.placeholder((oc,), "float32", name="scale")
    out = bitserial_conv2d(x, inv, zp, wplanes, wsum, zw2, scale, cfg)
    return te.create_prim_func([x, inv, zp, wplanes, wsum, zw2, scale, out])


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
    if not half_integers(w.zero_point):
        return "weight zero points are not multiples of 1/2"
    return None


def _config(layer: LayerScheme, geometry: ConvGeometry) -> BitserialConv2dConfig:
    return BitserialConv2dConfig(**vars(geometry), wbits=layer.weight.bits, abits=layer.act.bits)


def compute(layer: LayerScheme, geometry: ConvGeometry, codes_in: bool = False) -> KernelCall:
    """UNIFORM layers: packed bit-planes, code sums, twice the zero points and the output scale."""
    w, cfg = layer.weight, _config(layer, geometry)
    codes = w.codes.reshape(w.out_channels, -1)
    zw2 = np.round(2 * np.asarray(w.zero_point, np.float64)).astype(np.int32)
    code_sums = codes.sum(axis=1, dtype=np.int64).astype(np.int32)
    prim = build_primfunc(cfg, codes_in)
    return kernel_call(prim, layer, [pack_weights(codes, cfg), code_sums, zw2, integer_core(layer).scale])


def pixels_read(geometry: ConvGeometry) -> ConvGeometry:
    """The geometry a kernel on codes runs: a 1x1 conv with stride s and no padding (ResNet's downsample
    convs) reads one input pixel in s*s, so its encoder packs only those and the kernel is the stride-1 1x1
    conv on the (OH, OW) image they form (same products, same order); any other conv runs as it is."""
    if geometry.kernel != (1, 1) or geometry.padding != (0, 0) or geometry.stride == (1, 1):
        return geometry
    oh, ow = geometry.out_hw
    return replace(geometry, height=oh, width=ow, stride=(1, 1))


def build_encoder(cfg: BitserialConv2dConfig, geometry: ConvGeometry) -> tirx.PrimFunc:
    """(x, act_inv_scale, act_zero_point) -> planes: the kernel's own quantize, pad and pack, on their own,
    of the pixels the kernel reads (`cfg` is `pixels_read(geometry)`'s; x has `geometry`'s full input)."""
    n, c, h, w = geometry.batch, geometry.in_channels, geometry.height, geometry.width
    x, (inv, zp) = float_input((n, c, h, w)), actquant.te_placeholders()
    (sh, sw) = geometry.stride
    read = x if (cfg.height, cfg.width) == (h, w) else te.compute(
        (n, c, cfg.height, cfg.width), lambda b, k, y, z: x[b, k, y * sh, z * sw], name="strided_pixels")
    return encoder_func("bitserial", x, inv, zp, encode_activations(read, inv, zp, cfg))


def compute_encoded(layer: LayerScheme, geometry: ConvGeometry) -> Encoded:
    """The layer as (encoder -> bit-planes, kernel on bit-planes): codes between layers."""
    read = pixels_read(geometry)
    return Encoded(build_encoder(_config(layer, read), geometry), compute(layer, read, codes_in=True), PLANES_IO)


PLANES_IO = TensorIO("N,H+2ph,abits,words,W+2pw", "uint64")  # bit-planes, 64 channels per word (strided
# 1x1 convs: N,OH,abits,words,OW, the pixels they read)
ENCODER = EncoderSpec(compute_encoded, "pack_act", {"cpu": _schedule_packing})
FAMILY = Family("bitserial", tunable=True, check=supports, build=compute, schedules={"cpu": schedule},
                encoder=ENCODER)
