"""int8 dot-product conv2d (dense = 1x1 conv on a 1x1 image) for layers where popcount is the wrong tool.

Bit-serial costs wbits * abits plane pairs per 64 channels of a tap, so 5-8-bit layers and layers with few
channels (the RGB stem: 3 of every 64 bits used) are faster as 8-bit dot products: AVX-512 VNNI `vpdpbusd`
(u8 x s8, 4 products summed into each int32 lane, no saturation) on x86, `sdot` (s8 x s8) with `+dotprod` on
aarch64, and plain widening multiplies elsewhere. Exact like every family: the layer's integer core
(`scheme.integer_core`, one matrix T, combine 1) is rewritten as

    I[o] = sum_k T[o, k] * (a_k - z_a) = m * sum_k W[o, k] * A_k + d[o] * sum_k a_k + e[o]

with int8 weights W, T = m * W + d (m = 1, d = 0 when T fits int8: UNIFORM up to 6 bits, POW2 spans up to 6;
m = 2, W = u - 2^(b-1), d = 2^b - 2 z_w for 7/8-bit UNIFORM codes u), A = the u8 activation codes a (x86,
fallback) or a - 128 as s8 (sdot), and e[o] = -z_a * sum_k T[o, k] (+ 128 m sum_k W[o, k] for sdot). The
activation sum is only computed when some d is nonzero. out = float32(I) * scale[o], scale from integer_core.

Layout: activations are quantized once into padded channel-last codes (N, H+2ph, W+2pw, C4) with C4 = C
rounded up to 4 (spatial padding holds z_a, i.e. real zero; padded channels hold code 0 and zero weights);
weights are (O/16, KH, KW, C4/4, 16, 4) int8, so that one 64-byte vector holds 4 consecutive k of 16 output
channels: exactly one `vpdpbusd` operand (four `sdot` operands). Output channels are padded to 16.

The module is the decomposition (numpy), the compute (TE), the default schedule and a numpy reference of the
decomposed arithmetic, each its own section.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tvm import te, tirx
from tvm.s_tir import Schedule, TensorIntrin
from tvm.script import tirx as T
from tvm.target import Target, codegen

from .. import actquant
from ..scheme import LayerScheme, WeightKind, half_integers, integer_core
from .bitserial import vector_lanes
from .encoder import Encoded, EncoderSpec, encoder_func, float_input, has_block
from .family import Family, KernelCall, TensorIO, kernel_call
from .geometry import ConvGeometry

LANES = 16  # output channels per block: one zmm of int32 (four NEON q registers)
GROUP = 4  # consecutive k per dot instruction
INT32_MAX = 2**31 - 1


# --- the instruction ------------------------------------------------------------------------------------

def _dot_intrin(lanes: int, a_dtype: str, llvm_name: str) -> tuple[tirx.PrimFunc, tirx.PrimFunc]:
    """(description, implementation) of C[lanes] += sum_k A[k] * B[lanes, k] over 4 k, C a register tile.

    TVM's own x86 and ARM dot intrinsics describe C in global memory, which the register-resident
    accumulators of this kernel are not; and its dot_16x4_vnni passes <16 x i32> operands, which LLVM 22's
    vpdpbusd (<64 x i8>) rejects."""
    vec = f"int8x{4 * lanes}"

    @T.prim_func(s_tir=True)
    def desc(
        A: T.Buffer((4,), a_dtype, offset_factor=1),
        B: T.Buffer((lanes, 4), "int8", offset_factor=1),
        C: T.Buffer((lanes,), "int32", offset_factor=1, scope="local"),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:4], B[0:lanes, 0:4])
            T.writes(C[0:lanes])
            for i, k in T.grid(lanes, 4):
                with T.sblock("update"):
                    vi, vk = T.axis.remap("SR", [i, k])
                    C[vi] = C[vi] + T.Cast("int32", A[vk]) * T.Cast("int32", B[vi, vk])

    @T.prim_func(s_tir=True)
    def impl(
        A: T.Buffer((4,), a_dtype, offset_factor=1),
        B: T.Buffer((lanes, 4), "int8", offset_factor=1),
        C: T.Buffer((lanes,), "int32", offset_factor=1, scope="local"),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:4], B[0:lanes, 0:4])
            T.writes(C[0:lanes])
            a = T.reinterpret(A.vload([0], f"{a_dtype}x4"), dtype="int32")
            C[T.ramp(T.int32(0), 1, lanes)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id(llvm_name),
                C.vload([0], dtype=f"int32x{lanes}"),
                T.reinterpret(T.broadcast(a, lanes), dtype=vec),
                B.vload([0, 0], dtype=vec),
                dtype=f"int32x{lanes}",
            )

    return desc, impl


INTRINS = {  # isa -> (tensor intrinsic, output lanes per instruction)
    "vnni": ("tvmquant_dot_16x4_u8i8_vnni", 16),
    "sdot": ("tvmquant_dot_4x4_i8i8_sdot", 4),
}
TensorIntrin.register(INTRINS["vnni"][0], *_dot_intrin(16, "uint8", "llvm.x86.avx512.vpdpbusd.512"), override=True)
TensorIntrin.register(INTRINS["sdot"][0], *_dot_intrin(4, "int8", "llvm.aarch64.neon.sdot.v4i32.v16i8"),
                      override=True)


def dot_isa(target: Target | None) -> str:
    """'vnni' (x86 AVX-512 VNNI), 'sdot' (aarch64 +dotprod) or 'widen' (widening multiplies, also for None and
    non-LLVM targets): what `target` offers for 8-bit dot products."""
    if target is None or target.kind.name != "llvm":
        return "widen"
    if codegen.target_has_features("avx512vnni", target):
        return "vnni"
    if codegen.target_has_features("dotprod", target):
        return "sdot"
    return "widen"


# --- the decomposition (numpy) --------------------------------------------------------------------------

@dataclass
class Int8Weights:
    """T = multiplier * w8 + offset[:, None], with w8 in int8 (O, K), K in (C, KH, KW) order."""

    w8: np.ndarray
    multiplier: int
    offset: np.ndarray  # d: (O,) int64, the activation sum's coefficient


def decompose(layer: LayerScheme) -> Int8Weights | str:
    """The int8 form of the layer's integer core, or why there is none."""
    w = layer.weight
    if w.kind not in (WeightKind.UNIFORM, WeightKind.POW2):
        return f"{w.kind.value} weights have no single integer matrix"
    if w.kind is WeightKind.UNIFORM and not half_integers(w.zero_point):
        return "weight zero points are not multiples of 1/2"
    core = integer_core(layer)
    if core.matrices is None or core.terms != 1:
        return "exponent span too wide for one integer matrix"
    t = core.matrices[0]
    zeros = np.zeros(len(t), np.int64)
    if np.abs(t).max(initial=0) <= 127:
        return Int8Weights(t.astype(np.int8), 1, zeros)
    if w.kind is WeightKind.UNIFORM:  # T = 2u - zw2 = 2 (u - c) + (2c - zw2), c = 2^(bits-1)
        c = 1 << (w.bits - 1)
        zw2 = np.round(2 * np.asarray(w.zero_point, np.float64)).astype(np.int64)
        codes = w.codes.reshape(w.out_channels, -1).astype(np.int64)
        return Int8Weights((codes - c).astype(np.int8), 2, 2 * c - zw2)
    return f"powers of two up to 2^{int(np.abs(t).max()).bit_length() - 1} do not fit int8"


@dataclass(frozen=True)
class Int8Conv2dConfig(ConvGeometry):
    """Shapes and choices that decide one int8 kernel instance."""

    abits: int
    signed_act: bool  # sdot: activations enter as a - 128 (s8)
    with_asum: bool  # some d[o] != 0
    acc_dtype: str  # of I and its corrections (the dot itself is int32)

    @property
    def channels4(self) -> int:
        return -(-self.in_channels // GROUP) * GROUP

    @property
    def blocks(self) -> int:
        return -(-self.out_channels // LANES)


def _bounds(layer: LayerScheme, parts: Int8Weights) -> tuple[int, int]:
    """(largest |sum_k W A|, largest |m * dot| + |d * asum| + |e|): what the int32 dot and the epilogue's
    accumulator must hold (A is at most 255 in magnitude, u8 or s8 alike)."""
    w8 = np.abs(parts.w8.astype(np.int64))
    t = np.abs(parts.multiplier * parts.w8.astype(np.int64) + parts.offset[:, None])
    dot = int(w8.sum(axis=1).max(initial=0)) * 255
    asum = int(np.abs(parts.offset).max(initial=0)) * w8.shape[1] * 255
    e = layer.act.zero_point * int(t.sum(axis=1).max(initial=0)) + 128 * parts.multiplier * dot // 255
    return dot, parts.multiplier * dot + asum + e


def _config(layer: LayerScheme, geometry: ConvGeometry, parts: Int8Weights, target: Target | None) -> Int8Conv2dConfig:
    _, epilogue = _bounds(layer, parts)
    return Int8Conv2dConfig(
        **vars(geometry), abits=layer.act.bits, signed_act=dot_isa(target) == "sdot",
        with_asum=bool(parts.offset.any()), acc_dtype="int32" if epilogue <= INT32_MAX else "int64",
    )


def pack_weights(w8: np.ndarray, cfg: Int8Conv2dConfig) -> np.ndarray:
    """(O, K) int8 -> (O/16, KH, KW, C4/4, 16, 4) int8, padded channels and outputs zero."""
    (kh, kw), o, c = cfg.kernel, cfg.out_channels, cfg.in_channels
    padded = np.zeros((cfg.blocks * LANES, cfg.channels4, kh, kw), np.int8)
    padded[:o, :c] = w8.reshape(o, c, kh, kw)
    blocked = padded.reshape(cfg.blocks, LANES, cfg.channels4 // GROUP, GROUP, kh, kw)
    return np.ascontiguousarray(blocked.transpose(0, 4, 5, 2, 1, 3))


def constants(layer: LayerScheme, parts: Int8Weights, cfg: Int8Conv2dConfig) -> list[np.ndarray]:
    """[packed weights, e, (d,) scale]: e folds the zero point (and sdot's -128) into one per-channel integer."""
    w8 = parts.w8.astype(np.int64)
    t = parts.multiplier * w8 + parts.offset[:, None]
    e = -layer.act.zero_point * t.sum(axis=1)
    if cfg.signed_act:
        e = e + 128 * parts.multiplier * w8.sum(axis=1)
    ints = [e] + ([parts.offset] if cfg.with_asum else [])
    return [pack_weights(parts.w8, cfg), *(v.astype(cfg.acc_dtype) for v in ints), integer_core(layer).scale]


# --- the compute (TE) -----------------------------------------------------------------------------------

def act_codes(x: te.Tensor, cfg: Int8Conv2dConfig, inv_scale: te.Tensor, zero_point: te.Tensor) -> te.Tensor:
    """Padded channel-last codes (N, Hp, Wp, C4): u8 codes, or code - 128 as s8 under sdot; the quantizer's
    scale and zero point are the kernel's runtime inputs (actquant.te_placeholders)."""
    q = actquant.te_codes(x, inv_scale, zero_point, cfg.abits)
    (ph, pw), h, w, c = cfg.padding, cfg.height, cfg.width, cfg.in_channels
    dtype, offset = ("int8", 128) if cfg.signed_act else ("uint8", 0)

    def code(n, hp, wp, cp):
        inside = tirx.all(hp >= ph, hp < h + ph, wp >= pw, wp < w + pw, cp < c)
        pad = tirx.if_then_else(cp < c, zero_point[0], 0)
        return (tirx.if_then_else(inside, q[n, tirx.min(cp, c - 1), hp - ph, wp - pw], pad) - offset).astype(dtype)

    return te.compute((cfg.batch, h + 2 * ph, w + 2 * pw, cfg.channels4), code, name="act_codes")


def int8_conv2d(
    x: te.Tensor, inv_scale: te.Tensor, zero_point: te.Tensor, wpack: te.Tensor, e: te.Tensor, d: te.Tensor | None,
    scale: te.Tensor, cfg: Int8Conv2dConfig, multiplier: int,
) -> te.Tensor:
    """float32 output (N, O, OH, OW) = float32(m * dot + d * asum + e) * scale[o]; bias is left to the graph.
    x: float NCHW, or its `act_codes` (codes between layers)."""
    acc, (sh, sw), (kh, kw) = cfg.acc_dtype, cfg.stride, cfg.kernel
    codes = act_codes(x, cfg, inv_scale, zero_point) if x.dtype == "float32" else x  # else encoded already
    oh, ow = cfg.out_hw
    r, s = te.reduce_axis((0, kh), name="r"), te.reduce_axis((0, kw), name="s")
    c = te.reduce_axis((0, cfg.channels4), name="c")
    dot = te.compute(
        (cfg.batch, oh, ow, cfg.blocks * LANES),
        lambda n, y, z, o: te.sum(
            codes[n, y * sh + r, z * sw + s, c].astype("int32")
            * wpack[o // LANES, r, s, c // GROUP, o % LANES, c % GROUP].astype("int32"),
            axis=[r, s, c],
        ),
        name="dot",
    )
    m = tirx.const(multiplier, acc)
    out_shape = (cfg.batch, cfg.out_channels, oh, ow)
    partial = lambda n, o, y, z: m * dot[n, y, z, o].astype(acc) + e[o]  # noqa: E731
    if d is not None:  # a block of its own: the tile epilogue may read only the tile's accumulators
        asum = activation_sum(codes, cfg)
        tile = te.compute(out_shape, partial, name="dot_epilogue")
        partial = lambda n, o, y, z: tile[n, o, y, z] + d[o] * asum[n, y, z]  # noqa: E731
    return te.compute(out_shape, lambda n, o, y, z: partial(n, o, y, z).astype("float32") * scale[o], name="rescale")


def activation_sum(codes: te.Tensor, cfg: Int8Conv2dConfig) -> te.Tensor:
    """sum_k a_k per output pixel: per-pixel channel sums first, then the window (K/C4 of the work)."""
    acc, (sh, sw), (kh, kw) = cfg.acc_dtype, cfg.stride, cfg.kernel
    offset = 128 if cfg.signed_act else 0
    c = te.reduce_axis((0, cfg.channels4), name="c")
    csum = te.compute(
        codes.shape[:3], lambda n, y, z: te.sum(codes[n, y, z, c].astype(acc) + offset, axis=c), name="channel_sum"
    )
    r, s = te.reduce_axis((0, kh), name="r"), te.reduce_axis((0, kw), name="s")
    return te.compute(
        (cfg.batch, *cfg.out_hw), lambda n, y, z: te.sum(csum[n, y * sh + r, z * sw + s], axis=[r, s]), name="asum"
    )


# --- the default schedule -------------------------------------------------------------------------------

def _pixel_tile(pixels: int, widest: int) -> int:
    return max(t for t in range(1, min(pixels, widest) + 1) if pixels % t == 0)


def _widest_tile(isa: str) -> int:
    """Pixels per register tile: up to 8 under AVX-512 (32 registers); NEON holds a 16-channel block in 4 q
    registers, so 4 pixels (16 registers) leave room for weights."""
    return 8 if isa == "vnni" else 4


def register_tile(pixels: int, blocks: int, steps: int, isa: str) -> tuple[int, int]:
    """(P pixels, B 16-channel blocks) per register tile, P dividing `pixels` and B dividing `blocks`. Under
    VNNI a tile of P x B zmm accumulators reuses each activation broadcast B times and each weight vector P
    times: the widest P, then the most blocks within 24 accumulators (the rest of the 32 zmm hold broadcasts
    and weights; 7 x 4 = 28 spilled), or 16 where the reduction has at most 4 dot `steps` (taps x channel
    groups): there the epilogue dominates (B x 16 output channels, each an NCHW row of its own, per tile) and
    wider tiles measured slower (16 -> 96 channels at 112x112: 0.40 ms at 8 x 2, 0.72 at 8 x 3). Elsewhere a
    block spans 4 registers (NEON) or none is resident (widening multiplies): one block, as many pixels as
    `_widest_tile`."""
    p = _pixel_tile(pixels, _widest_tile(isa))
    if isa != "vnni":
        return p, 1
    accumulators = 24 if steps > 4 else 16
    return p, max(b for b in range(1, blocks + 1) if blocks % b == 0 and p * b <= max(accumulators, p))


def schedule(func: tirx.PrimFunc, target: Target) -> tirx.PrimFunc:
    """Threads over (pixel tiles, channel-block tiles); per tile, P x B x 16 int32 accumulators stay in
    registers while the whole reduction (taps, channel groups) runs inside, each weight vector is loaded once
    per tap and group and reused for P pixels, and each 4-byte activation group is one broadcast reused for B
    blocks (`register_tile`); the 16x4 step is one `vpdpbusd` (x86 VNNI) or four `sdot` (aarch64
    +dotprod), else vectorised widening multiplies."""
    isa = dot_isa(target)
    sch = Schedule(func)
    if has_block(sch, "act_codes"):  # else a kernel on codes (codes between layers): the encoder has them
        _schedule_codes(sch)
    with_asum = has_block(sch, "asum")
    if with_asum:
        _schedule_streaming(sch, "channel_sum", 1)

    dot = sch.get_sblock("dot")
    n, y, z, o, r, s, c = sch.get_loops(dot)
    dense = int(sch.get(y).extent) == 1 and int(sch.get(z).extent) == 1
    tiled = n if dense else z
    steps = int(sch.get(r).extent) * int(sch.get(s).extent) * int(sch.get(c).extent) // GROUP
    pixels, blocks = register_tile(int(sch.get(tiled).extent), int(sch.get(o).extent) // LANES, steps, isa)
    po, pi = sch.split(tiled, [None, pixels])
    ob, bi, ol = sch.split(o, [None, blocks, LANES])
    cb, c4 = sch.split(c, [None, GROUP])
    outer = [po, y, z, ob] if dense else [n, y, po, ob]
    oq, ol = sch.split(ol, [None, INTRINS.get(isa, ("", LANES))[1]])
    sch.reorder(*outer, r, s, cb, pi, bi, oq, ol, c4)
    fused = sch.fuse(*outer)
    sch.parallel(fused)
    sch.set_scope(dot, 0, "local")
    if isa not in INTRINS:  # k outside the lanes: a broadcast activation times 16 widened weights per step
        sch.reorder(c4, ol)
        sch.unroll(c4)
        sch.vectorize(ol)
    init = sch.decompose_reduction(dot, r)
    sch.vectorize(sch.get_loops(init)[-1])
    epilogue = sch.get_sblock("dot_epilogue" if with_asum else "rescale")
    sch.reverse_compute_at(epilogue, fused)  # (the tensorized block can no longer be analysed for this)
    if isa in INTRINS:
        sch.tensorize(ol, INTRINS[isa][0])
    sch.unroll(oq)
    sch.unroll(bi)
    sch.unroll(pi)
    _vectorize_epilogue(sch, epilogue, dense)
    if with_asum:
        _schedule_streaming(sch, "asum", 1)
        _schedule_streaming(sch, "rescale", 1)
    return sch.mod["main"]


def _schedule_codes(sch: Schedule, _target: Target | None = None) -> None:
    """Quantize inline into the padded channel-last codes, threads over (batch, padded rows)."""
    sch.compute_inline(sch.get_sblock("quantize"))
    n, hp, *_ = sch.get_loops(sch.get_sblock("act_codes"))
    sch.parallel(sch.fuse(n, hp))


def _schedule_streaming(sch: Schedule, name: str, outer: int) -> None:
    """Threads over the first `outer` + 1 loops of a block, pixels (the rest of its spatial loops) in lanes."""
    block = sch.get_sblock(name)
    spatial = [lp for lp, iv in zip(sch.get_loops(block), sch.get(block).iter_vars) if iv.iter_type == 0]
    sch.parallel(sch.fuse(*spatial[: outer + 1]))
    rest = spatial[outer + 1 :]
    if rest and len(rest) == len(sch.get(block).iter_vars) - outer - 1:  # no reduction inside: vectorise
        pixels = sch.fuse(*rest)
        lanes = vector_lanes(int(sch.get(pixels).extent))
        if lanes > 1:
            sch.vectorize(sch.split(pixels, [None, lanes])[1])


def _vectorize_epilogue(sch: Schedule, rescale, dense: bool) -> None:
    """Under a tile, rescale's loops are (channels, pixels) for convs and (rows, channels) for dense layers
    (unit loops dropped): read the accumulators as whole vectors (channels in lanes), one store per pixel."""
    loops = sch.get_loops(rescale)[1:]
    channels = loops[-1] if dense else loops[0]
    if not dense and len(loops) == 2:
        sch.reorder(loops[1], loops[0])
    lanes = vector_lanes(int(sch.get(channels).extent))
    if lanes > 1:
        sch.vectorize(sch.split(channels, [None, lanes])[1])


# --- the numpy reference of the decomposition -----------------------------------------------------------

def reference_int(
    x: np.ndarray, parts: Int8Weights, e: np.ndarray, cfg: ConvGeometry, inv_scale: float, zero_point: int,
    abits: int,
) -> np.ndarray:
    """I (N, O, OH, OW) = m * sum W a + d * sum a + e, computed from u8 codes with numpy int64: checks the
    decomposition (and e) independently of the PyTorch reference's sum T (a - z_a)."""
    q = actquant.numpy_codes(x, inv_scale, zero_point, abits)
    (kh, kw), (sh, sw), (ph, pw) = cfg.kernel, cfg.stride, cfg.padding
    padded = np.pad(q.astype(np.int64), ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=zero_point)
    w8 = parts.w8.astype(np.int64).reshape(cfg.out_channels, cfg.in_channels, kh, kw)
    oh, ow = cfg.out_hw
    dot = np.zeros((cfg.batch, cfg.out_channels, oh, ow), np.int64)
    asum = np.zeros((cfg.batch, 1, oh, ow), np.int64)
    for r in range(kh):
        for s in range(kw):
            patch = padded[:, :, r : r + sh * oh : sh, s : s + sw * ow : sw]
            dot += np.einsum("nchw,oc->nohw", patch, w8[:, :, r, s])
            asum += patch.sum(axis=1, keepdims=True)
    return parts.multiplier * dot + parts.offset[None, :, None, None] * asum + e[None, :, None, None]


# --- the family protocol --------------------------------------------------------------------------------

def supports(layer: LayerScheme) -> str | None:
    parts = decompose(layer)
    if isinstance(parts, str):
        return parts
    dot, _ = _bounds(layer, parts)
    return None if dot <= INT32_MAX else "the int8 dot could overflow int32"


def codes_shape(cfg: Int8Conv2dConfig) -> tuple[int, ...]:
    (ph, pw) = cfg.padding
    return (cfg.batch, cfg.height + 2 * ph, cfg.width + 2 * pw, cfg.channels4)


def build_primfunc(cfg: Int8Conv2dConfig, multiplier: int, codes_in: bool = False) -> tirx.PrimFunc:
    """The unscheduled kernel (x, act_inv_scale, act_zero_point, wpack, e, [d,] scale) -> float32 output;
    `codes_in`: x is `act_codes` (codes_shape; u8, or s8 under sdot) and the quantizer inputs go unread."""
    dtype = "int8" if cfg.signed_act else "uint8"
    shape = (cfg.batch, cfg.in_channels, cfg.height, cfg.width)
    x = te.placeholder(codes_shape(cfg), dtype, name="x") if codes_in else te.placeholder(shape, "float32", name="x")
    inv, zp = actquant.te_placeholders()
    wpack = te.placeholder((cfg.blocks, *cfg.kernel, cfg.channels4 // GROUP, LANES, GROUP), "int8", name="wpack")
    e = te.placeholder((cfg.out_channels,), cfg.acc_dtype, name="e")
    d = te.placeholder((cfg.out_channels,), cfg.acc_dtype, name="d") if cfg.with_asum else None
    scale = te.placeholder((cfg.out_channels,), "float32", name="scale")
    out = int8_conv2d(x, inv, zp, wpack, e, d, scale, cfg, multiplier)
    return te.create_prim_func([x, inv, zp, wpack, e, *([d] if d is not None else []), scale, out])


def _decomposed(layer: LayerScheme, geometry: ConvGeometry, target: Target | None) -> tuple[Int8Weights, Int8Conv2dConfig]:
    parts = decompose(layer)
    if isinstance(parts, str):
        raise ValueError(f"layer {layer.name}: {parts}")
    return parts, _config(layer, geometry, parts, target)


def compute(layer: LayerScheme, geometry: ConvGeometry, target: Target | None, codes_in: bool = False) -> KernelCall:
    """UNIFORM / small-span POW2 layers: packed int8 weights, the folded corrections and the output scale; the
    activation encoding (u8, or s8 for sdot) follows the target's dot instruction."""
    parts, cfg = _decomposed(layer, geometry, target)
    return kernel_call(build_primfunc(cfg, parts.multiplier, codes_in), layer, constants(layer, parts, cfg))


def compute_encoded(layer: LayerScheme, geometry: ConvGeometry, target: Target | None) -> Encoded:
    """The layer as (encoder -> padded NHWC codes, kernel on codes): codes between layers."""
    _, cfg = _decomposed(layer, geometry, target)
    x, (inv, zp) = float_input((cfg.batch, cfg.in_channels, cfg.height, cfg.width)), actquant.te_placeholders()
    encoder = encoder_func("int8", x, inv, zp, act_codes(x, cfg, inv, zp))
    io = TensorIO("N,H+2ph,W+2pw,C4", "int8" if cfg.signed_act else "uint8")
    return Encoded(encoder, compute(layer, geometry, target, codes_in=True), io)


# The dot instructions come from tensorization, which MetaSchedule's CPU space does not do: not tunable.
FAMILY = Family("int8", tunable=False, check=supports, build=compute, schedules={"cpu": schedule}, targeted=True,
                encoder=EncoderSpec(compute_encoded, "act_codes", {"cpu": _schedule_codes}))
