"""Dequantize-then-dense conv2d (dense = 1x1 conv on a 1x1 image) for weight kinds without an integer kernel.

POW2, CODEBOOK and MULTIPOINT weights reach the compiled module as their dequantized values; the input is
quantized with the layer's uniform ActQuant exactly as the bit-serial kernel does (shared code), centred on the
zero point, convolved and scaled once by the activation scale:

    out[n, o, y, x] = float32(sum_{c,r,s} (a - z_a) * W[o, c, r, s]) * s_a

The weight constant and the accumulation are float64, like the reference (reference.py): with float32 sums the
last-bit differences flip the next layer's activation rounding now and then, and whole-model outputs drifted by
up to 3e-3 relative on the digits CNN; in float64 the two agree to float32 rounding. It is the correct fallback
every dedicated kernel (shift-add, LUT, sum of bit-serial GEMMs) must beat, not a fast path.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tvm import te, tirx
from tvm.s_tir import Schedule

from .bitserial import quantize_activations
from .geometry import ConvGeometry


@dataclass(frozen=True)
class DequantConv2dConfig(ConvGeometry):
    """Shapes that decide one kernel instance."""

    abits: int


def dequant_conv2d(
    x: te.Tensor, weight: te.Tensor, cfg: DequantConv2dConfig, inv_scale: float, zero_point: int, scale: float
) -> te.Tensor:
    """float32 output (N, O, OH, OW) from float32 input x (N, C, H, W) and float64 weight (O, C, KH, KW)."""
    q = quantize_activations(x, inv_scale, zero_point, cfg.abits)
    (kh, kw), (sh, sw), (ph, pw) = cfg.kernel, cfg.stride, cfg.padding
    zp = tirx.const(zero_point, "int32")

    def centred(n, c, h, w):
        inside = tirx.all(h >= ph, h < cfg.height + ph, w >= pw, w < cfg.width + pw)
        return tirx.if_then_else(inside, (q[n, c, h - ph, w - pw] - zp).astype("float64"), tirx.const(0.0, "float64"))

    padded = te.compute((cfg.batch, cfg.in_channels, cfg.height + 2 * ph, cfg.width + 2 * pw), centred, name="centred")
    c = te.reduce_axis((0, cfg.in_channels), name="c")
    r, s = te.reduce_axis((0, kh), name="r"), te.reduce_axis((0, kw), name="s")
    oh, ow = cfg.out_hw
    acc = te.compute(
        (cfg.batch, cfg.out_channels, oh, ow),
        lambda n, o, y, z: te.sum(padded[n, c, y * sh + r, z * sw + s] * weight[o, c, r, s], axis=[c, r, s]),
        name="dense_acc",
    )
    sa = tirx.const(float(np.float32(scale)), "float32")
    return te.compute(acc.shape, lambda n, o, y, z: acc[n, o, y, z].astype("float32") * sa, name="rescale")


def schedule(func: tirx.PrimFunc) -> tirx.PrimFunc:
    """Default CPU schedule: threads over (batch, output channel) everywhere, quantization inlined."""
    sch = Schedule(func)
    sch.compute_inline(sch.get_sblock("quantize"))
    centred = sch.get_sblock("centred")
    n, c, *_ = sch.get_loops(centred)
    sch.parallel(sch.fuse(n, c))
    acc = sch.get_sblock("dense_acc")
    n, o, *_ = sch.get_loops(acc)
    sch.parallel(sch.fuse(n, o))
    n, o, *_ = sch.get_loops(sch.get_sblock("rescale"))
    sch.parallel(sch.fuse(n, o))
    return sch.mod["main"]


def build_primfunc(cfg: DequantConv2dConfig, inv_scale: float, zero_point: int, scale: float) -> tirx.PrimFunc:
    """The scheduled kernel: (x, weight) -> float32 output, for one layer instance."""
    x = te.placeholder((cfg.batch, cfg.in_channels, cfg.height, cfg.width), "float32", name="x")
    w = te.placeholder((cfg.out_channels, cfg.in_channels, *cfg.kernel), "float64", name="weight")
    out = dequant_conv2d(x, w, cfg, inv_scale, zero_point, scale)
    return schedule(te.create_prim_func([x, w, out]))


def reference(
    x: np.ndarray, weight: np.ndarray, cfg: DequantConv2dConfig, inv_scale: float, zero_point: int, scale: float
) -> np.ndarray:
    """numpy reference: quantize x as the kernel does, convolve in float64, scale in float32."""
    qmax = (1 << cfg.abits) - 1
    q = np.clip(np.rint(x.astype(np.float32) * np.float32(inv_scale)) + zero_point, 0, qmax)
    (kh, kw), (sh, sw), (ph, pw) = cfg.kernel, cfg.stride, cfg.padding
    centred = np.pad(q.astype(np.float64) - zero_point, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    oh, ow = cfg.out_hw
    out = np.zeros((cfg.batch, cfg.out_channels, oh, ow))
    for r in range(kh):
        for s in range(kw):
            patch = centred[:, :, r : r + sh * oh : sh, s : s + sw * ow : sw]
            out += np.einsum("nchw,oc->nohw", patch, weight[:, :, r, s].astype(np.float64))
    return out.astype(np.float32) * np.float32(scale)
