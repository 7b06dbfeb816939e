"""Grouped and depthwise conv2d (MobileNet, EfficientNet-Lite) with exact integer multiply-accumulates.

A grouped conv with g groups reads, for output channel o, only the C/g input channels of its group
g(o) = o // (O/g); depthwise is C/g = 1, where each output is a sum of KH*KW products only, so that neither
popcount (64 channels per word) nor 4-wide dot products (int8) has a reduction to fill. What vectorises is the
output row: for one (image, channel, output row) every tap multiplies a contiguous run of input pixels by one
broadcast weight. The layer's integer core (`scheme.integer_core`, one matrix T, combine 1: UNIFORM with
half-integer zero points, POW2 up to span 24)

    I[n, o, y, z] = sum_{c < C/g, r, s} T[o, c, r, s] * (a[n, g(o) C/g + c, y sh + r, z sw + s] - z_a)

is accumulated in int32 lanes (int64 where the bound says int32 could overflow), the output row held in
registers, and out = float32(I) * scale[o], the reference's arithmetic exactly.

Layout: activations are quantized once into spatially padded, centred codes (N, C, H+2ph, W+2pw) int16
(the padding holds 0 = real zero, |a - z_a| <= 255); weights stay (O, C/g, KH, KW) in the narrowest of
int8/int16/int32 that holds T. Output NCHW float32, as every family. With codes between layers the codes are
the output of an encoder of their own, which FuseOps fuses into the bias add and ReLU6 in front of the layer:
one pass over the floats instead of the graph's float pass and the kernel's quantize pass.

The module is the compute (TE), the default schedule and a numpy reference of I, each its own section.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tvm import te, tirx
from tvm.s_tir import Schedule
from tvm.target import Target

from .. import actquant
from ..scheme import LayerScheme, integer_core, narrowest_int
from .encoder import Encoded, EncoderSpec, encoder_func, float_input, has_block
from .family import Family, KernelCall, TensorIO, kernel_call
from .geometry import ConvGeometry

INT32_MAX = 2**31 - 1


@dataclass(frozen=True)
class DepthwiseConfig(ConvGeometry):
    """Shapes and dtypes that decide one kernel instance."""

    abits: int
    weight_dtype: str  # of T: the narrowest signed type that holds it
    acc_dtype: str  # of I

    @property
    def group_in(self) -> int:
        """Input channels per group."""
        return self.in_channels // self.conv_groups

    @property
    def group_out(self) -> int:
        """Output channels per group."""
        return self.out_channels // self.conv_groups


def integer_matrix(layer: LayerScheme) -> np.ndarray | str:
    """T (O, K) int64 of a one-matrix core, or why the layer has none."""
    core = integer_core(layer)
    if core.matrices is None or core.terms != 1 or not np.all(core.combine == 1):
        return f"{layer.weight.kind.value} weights need more than one integer matrix"
    return core.matrices[0]


def config(layer: LayerScheme, geometry: ConvGeometry, t: np.ndarray) -> DepthwiseConfig:
    """The bound on |I| (255 * sum_k |T[o, k]|, |a - z_a| <= 255) picks the accumulator."""
    bound = 255 * int(np.abs(t).sum(axis=1).max(initial=0))
    return DepthwiseConfig(**vars(geometry), abits=layer.act.bits, weight_dtype=narrowest_int(t),
                           acc_dtype="int32" if bound <= INT32_MAX else "int64")


# --- the compute (TE) -----------------------------------------------------------------------------------

def centred_codes(x: te.Tensor, inv: te.Tensor, zp: te.Tensor, cfg: DepthwiseConfig) -> te.Tensor:
    """(N, C, H+2ph, W+2pw) int16: a - z_a inside, 0 (real zero) in the padding."""
    q = actquant.te_codes(x, inv, zp, cfg.abits)
    (ph, pw), h, w = cfg.padding, cfg.height, cfg.width

    def code(n, c, hp, wp):
        inside = tirx.all(hp >= ph, hp < h + ph, wp >= pw, wp < w + pw)
        return tirx.if_then_else(inside, q[n, c, hp - ph, wp - pw] - zp[0], 0).astype("int16")

    return te.compute((cfg.batch, cfg.in_channels, h + 2 * ph, w + 2 * pw), code, name="centred")


def grouped_conv2d(x: te.Tensor, inv: te.Tensor, zp: te.Tensor, weight: te.Tensor, scale: te.Tensor,
                   cfg: DepthwiseConfig) -> te.Tensor:
    """float32 output (N, O, OH, OW) = float32(I) * scale[o]; bias is left to the graph.
    x: float NCHW, or its `centred_codes` (codes between layers)."""
    acc, (sh, sw), (kh, kw) = cfg.acc_dtype, cfg.stride, cfg.kernel
    codes = centred_codes(x, inv, zp, cfg) if x.dtype == "float32" else x  # else encoded already
    c = te.reduce_axis((0, cfg.group_in), name="c")
    r, s = te.reduce_axis((0, kh), name="r"), te.reduce_axis((0, kw), name="s")
    first = lambda o: (o // cfg.group_out) * cfg.group_in  # noqa: E731  (the group's first input channel)
    dot = te.compute(
        (cfg.batch, cfg.out_channels, *cfg.out_hw),
        lambda n, o, y, z: te.sum(
            codes[n, first(o) + c, y * sh + r, z * sw + s].astype(acc) * weight[o, c, r, s].astype(acc),
            axis=[c, r, s],
        ),
        name="dot",
    )
    return te.compute(dot.shape, lambda n, o, y, z: dot[n, o, y, z].astype("float32") * scale[o], name="rescale")


# --- the default schedule -------------------------------------------------------------------------------

def schedule(func: tirx.PrimFunc, target: Target) -> tirx.PrimFunc:
    """Threads over (image, channel, output row); each row's OW accumulators are one vector (LLVM splits it
    into registers) that every tap updates with one broadcast weight times a run of input pixels, then is
    rescaled and stored while still in registers."""
    sch = Schedule(func)
    if has_block(sch, "centred"):  # else a kernel on codes (codes between layers): the encoder has them
        _schedule_codes(sch)
    dot = sch.get_sblock("dot")
    n, o, y, z, c, r, s = sch.get_loops(dot)
    sch.reorder(n, o, y, c, r, s, z)
    row = sch.fuse(n, o, y)
    sch.parallel(row)
    sch.set_scope(dot, 0, "local")
    sch.unroll(r)
    sch.unroll(s)
    sch.vectorize(z)
    init = sch.decompose_reduction(dot, c)
    rescale = sch.get_sblock("rescale")
    sch.reverse_compute_at(rescale, row)
    for block in (init, rescale):
        inner = sch.get_loops(block)[1:]  # the row's pixels (none when OW = 1)
        if inner:
            sch.vectorize(inner[-1])
    return sch.mod["main"]


def _schedule_codes(sch: Schedule, _target: Target | None = None) -> None:
    """Quantize inline into the centred codes (with the fused bias add and ReLU6 of codes between layers),
    threads over (image, channel), a padded row in lanes (16-lane pieces with a tail predicate measured up
    to 6x slower in the fused encoders)."""
    sch.compute_inline(sch.get_sblock("quantize"))
    n, c, _, wp = sch.get_loops(sch.get_sblock("centred"))
    sch.parallel(sch.fuse(n, c))
    sch.vectorize(wp)


# --- the numpy reference of I ---------------------------------------------------------------------------

def reference_int(x: np.ndarray, t: np.ndarray, cfg: ConvGeometry, inv_scale: float, zero_point: int,
                  abits: int) -> np.ndarray:
    """I (N, O, OH, OW) int64, group by group with numpy: checks the kernel independently of the PyTorch
    reference's grouped float64 convolution."""
    q = actquant.numpy_codes(x, inv_scale, zero_point, abits)
    (kh, kw), (sh, sw), (ph, pw) = cfg.kernel, cfg.stride, cfg.padding
    centred = np.pad(q.astype(np.int64) - zero_point, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    cin, cout = cfg.in_channels // cfg.conv_groups, cfg.out_channels // cfg.conv_groups
    weight = t.reshape(cfg.out_channels, cin, kh, kw)
    oh, ow = cfg.out_hw
    out = np.zeros((cfg.batch, cfg.out_channels, oh, ow), np.int64)
    for g in range(cfg.conv_groups):
        ins, outs = slice(g * cin, (g + 1) * cin), slice(g * cout, (g + 1) * cout)
        for r in range(kh):
            for s in range(kw):
                patch = centred[:, ins, r : r + sh * oh : sh, s : s + sw * ow : sw]
                out[:, outs] += np.einsum("nchw,oc->nohw", patch, weight[outs, :, r, s])
    return out


# --- the family protocol --------------------------------------------------------------------------------

def supports(layer: LayerScheme) -> str | None:
    if layer.groups == 1:
        return "not a grouped convolution (dense layers have faster families)"
    t = integer_matrix(layer)
    return t if isinstance(t, str) else None


def codes_shape(cfg: DepthwiseConfig) -> tuple[int, ...]:
    (ph, pw) = cfg.padding
    return (cfg.batch, cfg.in_channels, cfg.height + 2 * ph, cfg.width + 2 * pw)


def build_primfunc(cfg: DepthwiseConfig, codes_in: bool = False) -> tirx.PrimFunc:
    """The unscheduled kernel (x, act_inv_scale, act_zero_point, weight, scale) -> float32 output;
    `codes_in`: x is `centred_codes` (codes_shape, int16) and the quantizer inputs go unread."""
    shape = (cfg.batch, cfg.in_channels, cfg.height, cfg.width)
    x = te.placeholder(codes_shape(cfg), "int16", name="x") if codes_in else te.placeholder(shape, "float32", name="x")
    inv, zp = actquant.te_placeholders()
    weight = te.placeholder((cfg.out_channels, cfg.group_in, *cfg.kernel), cfg.weight_dtype, name="weight")
    scale = te.placeholder((cfg.out_channels,), "float32", name="scale")
    return te.create_prim_func([x, inv, zp, weight, scale, grouped_conv2d(x, inv, zp, weight, scale, cfg)])


def _config(layer: LayerScheme, geometry: ConvGeometry) -> tuple[np.ndarray, DepthwiseConfig]:
    t = integer_matrix(layer)
    if isinstance(t, str):
        raise ValueError(f"layer {layer.name}: {t}")
    return t, config(layer, geometry, t)


def compute(layer: LayerScheme, geometry: ConvGeometry, codes_in: bool = False) -> KernelCall:
    """Grouped convs whose core is one integer matrix: T in its narrowest dtype and the output scale."""
    t, cfg = _config(layer, geometry)
    weight = t.reshape(cfg.out_channels, cfg.group_in, *cfg.kernel).astype(cfg.weight_dtype)
    return kernel_call(build_primfunc(cfg, codes_in), layer, [weight, integer_core(layer).scale])


def compute_encoded(layer: LayerScheme, geometry: ConvGeometry) -> Encoded:
    """The layer as (encoder -> padded centred int16 codes, kernel on codes): codes between layers."""
    _, cfg = _config(layer, geometry)
    x, (inv, zp) = float_input((cfg.batch, cfg.in_channels, cfg.height, cfg.width)), actquant.te_placeholders()
    encoder = encoder_func("depthwise", x, inv, zp, centred_codes(x, inv, zp, cfg))
    return Encoded(encoder, compute(layer, geometry, codes_in=True), TensorIO("N,C,H+2ph,W+2pw", "int16"))


# One default schedule; MetaSchedule's CPU space is not needed for a KH*KW reduction: not tunable.
FAMILY = Family("depthwise", tunable=False, check=supports, build=compute, schedules={"cpu": schedule},
                grouped=True, encoder=EncoderSpec(compute_encoded, "centred", {"cpu": _schedule_codes}))
