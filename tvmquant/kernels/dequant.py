"""The fallback every kernel family must beat: the layer's IntegerCore evaluated in float64, any weight kind.

The integer matrices T_j of `scheme.integer_core` reach the module in the narrowest signed integer type that holds
them (int8 for codes up to 7 bits, int16 for 8-bit codes and 2 u - z_w: never more bytes than the fp32
weights) and become float64 in the kernel (exact); the input is quantized
with the layer's uniform ActQuant exactly as the bit-serial kernel does (shared code), centred on the zero
point, convolved with each T_j in float64 (exact: integers far below 2^53) and combined in j order:

    out[n, o, y, x] = float32(sum_j combine[j, o] * sum_{c,r,s} (a - z_a) * T_j[o, c, r, s]) * scale[o]

which is the reference's arithmetic (reference.py) step for step, so the two agree exactly; in a grouped conv
c runs over the C/groups input channels of o's group. It is the correct
fallback for every kind and the baseline of the benchmarks, not a fast path.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tvm import te, tirx
from tvm.s_tir import Schedule
from tvm.target import Target

from .. import actquant
from ..scheme import LayerScheme, integer_core, narrowest_int
from .family import Family, KernelCall, kernel_call
from .geometry import ConvGeometry


@dataclass(frozen=True)
class DequantConv2dConfig(ConvGeometry):
    """Shapes that decide one kernel instance."""

    abits: int
    terms: int = 1
    onehot: bool = False  # terms arrive as the weight codes plus the code of each term (CODEBOOK layers)
    term_dtype: str = "int8"  # of the stored integer terms (float64 in the kernel)


def dequant_conv2d(
    x: te.Tensor, inv_scale: te.Tensor, zero_point: te.Tensor, terms: te.Tensor, combine: te.Tensor,
    scale: te.Tensor, cfg: DequantConv2dConfig, term_codes: te.Tensor | None = None,
) -> te.Tensor:
    """float32 output (N, O, OH, OW) from float32 x (N, C, H, W), integer terms (J, O, C, KH, KW),
    float64 combine (J, O) and float32 scale (O,). With `term_codes` (J,), `terms` are the uint8 codes
    (O, C, KH, KW) and term j is the 0/1 matrix [code == term_codes[j]], formed here instead of stored (an
    8-bit codebook layer would otherwise store up to 256 float64 matrices)."""
    q = actquant.te_codes(x, inv_scale, zero_point, cfg.abits)
    (kh, kw), (sh, sw), (ph, pw) = cfg.kernel, cfg.stride, cfg.padding
    zp = zero_point[0]

    def centred(n, c, h, w):
        inside = tirx.all(h >= ph, h < cfg.height + ph, w >= pw, w < cfg.width + pw)
        return tirx.if_then_else(inside, (q[n, c, h - ph, w - pw] - zp).astype("float64"), tirx.const(0.0, "float64"))

    padded = te.compute((cfg.batch, cfg.in_channels, cfg.height + 2 * ph, cfg.width + 2 * pw), centred, name="centred")

    def term(j, o, c, r, s):
        if term_codes is None:
            return terms[j, o, c, r, s].astype("float64")
        one, zero = tirx.const(1.0, "float64"), tirx.const(0.0, "float64")
        return tirx.Select(terms[o, c, r, s].astype("int32") == term_codes[j], one, zero)

    cin, cout = cfg.in_channels // cfg.conv_groups, cfg.out_channels // cfg.conv_groups
    c = te.reduce_axis((0, cin), name="c")
    r, s = te.reduce_axis((0, kh), name="r"), te.reduce_axis((0, kw), name="s")
    oh, ow = cfg.out_hw
    acc = te.compute(
        (cfg.batch, cfg.terms, cfg.out_channels, oh, ow),
        lambda n, j, o, y, z: te.sum(
            padded[n, (o // cout) * cin + c, y * sh + r, z * sw + s] * term(j, o, c, r, s), axis=[c, r, s]
        ),
        name="dense_acc",
    )
    # products stored before they are summed: one stage would let LLVM contract them into FMAs, which round
    # differently from the reference's multiply-then-add
    weighted = te.compute(acc.shape, lambda n, j, o, y, z: combine[j, o] * acc[n, j, o, y, z], name="weighted")
    j = te.reduce_axis((0, cfg.terms), name="j")
    core = te.compute(
        (cfg.batch, cfg.out_channels, oh, ow), lambda n, o, y, z: te.sum(weighted[n, j, o, y, z], axis=j), name="combine"
    )
    return te.compute(core.shape, lambda n, o, y, z: core[n, o, y, z].astype("float32") * scale[o], name="rescale")


def schedule(func: tirx.PrimFunc, target: Target) -> tirx.PrimFunc:
    """Default CPU schedule: threads over (batch, output channel) everywhere, quantization inlined."""
    sch = Schedule(func)
    sch.compute_inline(sch.get_sblock("quantize"))
    for block in ("centred", "combine", "rescale"):
        n, c, *_ = sch.get_loops(sch.get_sblock(block))
        sch.parallel(sch.fuse(n, c))
    for block in ("dense_acc", "weighted"):
        n, j, o, *_ = sch.get_loops(sch.get_sblock(block))
        sch.reorder(n, o, j)
        sch.parallel(sch.fuse(n, o))
    return sch.mod["main"]


def build_primfunc(cfg: DequantConv2dConfig) -> tirx.PrimFunc:
    """The unscheduled kernel (x, act_inv_scale, act_zero_point, terms, combine, scale) -> float32 output;
    one-hot configurations take (x, act_inv_scale, act_zero_point, codes, term_codes, combine, scale)."""
    x = te.placeholder((cfg.batch, cfg.in_channels, cfg.height, cfg.width), "float32", name="x")
    inv, zp = actquant.te_placeholders()
    weights = (cfg.out_channels, cfg.in_channels // cfg.conv_groups, *cfg.kernel)
    if cfg.onehot:
        terms = te.placeholder(weights, "uint8", name="codes")
        term_codes = te.placeholder((cfg.terms,), "int32", name="term_codes")
    else:
        terms, term_codes = te.placeholder((cfg.terms, *weights), cfg.term_dtype, name="terms"), None
    combine = te.placeholder((cfg.terms, cfg.out_channels), "float64", name="combine")
    scale = te.placeholder((cfg.out_channels,), "float32", name="scale")
    out = dequant_conv2d(x, inv, zp, terms, combine, scale, cfg, term_codes)
    inputs = [x, inv, zp, terms] + ([term_codes] if term_codes is not None else [])
    return te.create_prim_func([*inputs, combine, scale, out])


def supports(layer: LayerScheme) -> str | None:
    return None


def compute(layer: LayerScheme, geometry: ConvGeometry) -> KernelCall:
    """Every kind; the terms that are zero everywhere are dropped (they add exactly +0). One-hot cores
    (CODEBOOK) store their codes once, not one float64 matrix per code."""
    core = integer_core(layer)
    kept = core.nonzero_terms()
    onehot = core.onehot is not None
    shape = (geometry.out_channels, geometry.in_channels // geometry.conv_groups, *geometry.kernel)
    if onehot:
        terms = [core.onehot.reshape(shape).astype(np.uint8), np.asarray(kept, np.int32)]
    else:
        matrices = np.stack([core.term(j).reshape(shape) for j in kept]).astype(np.int64)
        terms = [matrices.astype(narrowest_int(matrices))]
    cfg = DequantConv2dConfig(**vars(geometry), abits=layer.act.bits, terms=len(kept), onehot=onehot,
                              term_dtype=str(terms[0].dtype))
    return kernel_call(build_primfunc(cfg), layer, [*terms, core.combine[kept], core.scale])


def reference(
    x: np.ndarray, terms: np.ndarray, combine: np.ndarray, scale: np.ndarray, cfg: DequantConv2dConfig,
    inv_scale: float, zero_point: int,
) -> np.ndarray:
    """numpy reference: quantize x as the kernel does, convolve each term in float64, combine, scale in float32."""
    q = actquant.numpy_codes(x, inv_scale, zero_point, cfg.abits)
    (kh, kw), (sh, sw), (ph, pw) = cfg.kernel, cfg.stride, cfg.padding
    centred = np.pad(q.astype(np.float64) - zero_point, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    oh, ow = cfg.out_hw
    cin, cout = cfg.in_channels // cfg.conv_groups, cfg.out_channels // cfg.conv_groups
    core = np.zeros((cfg.batch, cfg.out_channels, oh, ow))
    for j in range(cfg.terms):
        acc = np.zeros_like(core)
        for g, r, s in np.ndindex(cfg.conv_groups, kh, kw):
            patch = centred[:, g * cin : (g + 1) * cin, r : r + sh * oh : sh, s : s + sw * ow : sw]
            outs = slice(g * cout, (g + 1) * cout)
            acc[:, outs] += np.einsum("nchw,oc->nohw", patch, terms[j, outs, :, r, s].astype(np.float64))
        core = core + combine[j][None, :, None, None] * acc
    return core.astype(np.float32) * scale[None, :, None, None]


FAMILY = Family("dequant", tunable=False, check=supports, build=compute, schedules={"cpu": schedule},
                grouped=True)
