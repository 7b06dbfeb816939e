"""One-hot kernel: CODEBOOK weights as one-hot 1-bit planes on the multipoint kernel's popcount GEMM, exact.

A CODEBOOK layer's integer core (`scheme.integer_core`, lut.py's docstring) is one bucket sum per code l,

    S_l[o] = sum_{k: code[o, k] = l} (a_k - z_a)                       (exact integers)
    out[o] = float32(sum_l levels[o, l] * S_l[o]) * s_a                 (float64, l ascending from 0)

S_l is a bit-serial GEMM of the 1-bit plane P_l[o, k] = [code[o, k] == l] against the activation planes. As
bit-serial rows (`multipoint.ExpandedRows`: T = 2 * codes - zw2) a plane with zero point 0 gives I = 2 S_l,
so the row's combination weight is levels[o, l] / 2: (levels / 2) * (2 S) is the same real product as
levels * S, rounded once, as long as halving a level is exact (`supports` checks it; it fails only for
float64 subnormals). Code 0 needs no rows: one all-ones row, shared by every channel, gives 2 W with
W = sum_k (a_k - z_a) the window's centred activation sum, and 2 S_0 = 2 W - sum_{l>=1} 2 S_l exactly (integer
arithmetic, before any rounding; the multipoint kernel's `derived` first slot). Each channel gets one row per
code l >= 1 it uses, ascending; a code it never uses has S_l = 0 and adds exactly +0, so it gets no row (its
slot points at one zero row). The multipoint kernel runs ONE bit-serial GEMM over the rows and the float64
combination through its row map, slot 0 = code 0 then the codes ascending, as the reference sums. A b-bit
layer costs at most 2^b - 1 one-bit rows x abits activation planes of AND + popcount per channel
(`registry.codebook_cost` compares that with lut's lookups).

Codes between layers: the activation planes are bitserial's, so the encoder is bitserial's encoder and its
schedule (`bitserial.build_encoder`, `bitserial.ENCODER`), and the kernel reads its planes.
"""

from __future__ import annotations

import numpy as np

from ..scheme import LayerScheme, WeightKind, integer_core
from . import bitserial, multipoint
from .encoder import Encoded, EncoderSpec
from .family import Family, KernelCall, kernel_call
from .geometry import ConvGeometry

MAX_BITS = 4  # up to 15 rows per channel; wider codebooks have more rows than dequant has work


def expand_rows(layer: LayerScheme, pad: int = multipoint.ROW_PAD) -> multipoint.ExpandedRows:
    """One 1-bit row [code == l] per (channel, used code l >= 1), channel by channel, codes ascending; then a
    zero row (the padding slots) and the window-sum row (all ones, last). Slot 0 of every channel is code 0,
    derived (`MultipointConv2dConfig.derived`); its row map entry is unused."""
    w, core = layer.weight, integer_core(layer)
    codes = w.codes.reshape(w.out_channels, -1)
    used = [np.unique(codes[o]) for o in range(w.out_channels)]
    used = [u[u > 0] for u in used]
    slots = 1 + max(len(u) for u in used)
    order = [(o, int(code)) for o, u in enumerate(used) for code in u]
    rows = -(-(len(order) + 2) // pad) * pad
    zero, window = rows - 2, rows - 1
    rowmap = np.full((w.out_channels, slots), zero, np.int32)
    rowmap[:, 0] = window
    combine = np.zeros((w.out_channels, slots))
    combine[:, 0] = core.combine[0] / 2
    planes = np.zeros((rows, codes.shape[1]), np.uint8)
    planes[window] = 1
    for r, (o, code) in enumerate(order):
        s = 1 + int(np.searchsorted(used[o], code))
        planes[r], rowmap[o, s], combine[o, s] = codes[o] == code, r, core.combine[code, o] / 2
    return multipoint.ExpandedRows(planes, np.zeros(rows, np.int32), rowmap, combine, core.scale)


def supports(layer: LayerScheme) -> str | None:
    w = layer.weight
    if w.kind is not WeightKind.CODEBOOK:
        return f"{w.kind.value} weights are not a codebook"
    if w.bits > MAX_BITS:
        return f"{w.bits}-bit codebook: up to {(1 << w.bits) - 1} one-hot rows per channel cost more than dequant"
    levels = integer_core(layer).combine
    if not np.isfinite(levels).all():
        return "non-finite codebook levels"
    if not np.array_equal(levels / 2 * 2, levels):
        return "a codebook level is not exactly halvable (float64 subnormal)"
    return None


def _config(layer: LayerScheme, geometry: ConvGeometry, rows: multipoint.ExpandedRows) -> multipoint.MultipointConv2dConfig:
    return multipoint.MultipointConv2dConfig(**vars(geometry), wbits=1, abits=layer.act.bits, rows=len(rows.codes),
                                             slots=rows.rowmap.shape[1], derived=True)


def compute(layer: LayerScheme, geometry: ConvGeometry, codes_in: bool = False) -> KernelCall:
    """CODEBOOK layers: the one-hot rows (and the window-sum row) packed as 1-bit planes, the row map and
    levels / 2."""
    rows = expand_rows(layer)
    cfg = _config(layer, geometry, rows)
    return kernel_call(multipoint.build_primfunc(cfg, codes_in), layer, multipoint.kernel_consts(rows, cfg))


def compute_encoded(layer: LayerScheme, geometry: ConvGeometry) -> Encoded:
    """The layer as (bitserial's encoder -> activation planes, kernel on planes): codes between layers."""
    read = bitserial.pixels_read(geometry)
    gemm = bitserial.BitserialConv2dConfig(**vars(read), wbits=1, abits=layer.act.bits)
    return Encoded(bitserial.build_encoder(gemm, geometry), compute(layer, read, codes_in=True), bitserial.PLANES_IO)


ENCODER = EncoderSpec(compute_encoded, bitserial.ENCODER.block, bitserial.ENCODER.schedules)
FAMILY = Family("onehot", tunable=True, check=supports, build=compute, schedules={"cpu": multipoint.schedule},
                encoder=ENCODER)
