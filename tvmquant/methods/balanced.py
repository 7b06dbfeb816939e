"""Balanced Quantization (Zhou et al. 2017): recursive percentile partition into 2^b equal-count bins,
histogram equalisation onto [0, 1], then a uniform grid.

Edges: split the layer's weights at their median, each half at its own median, b levels deep
(`approx="mean"` splits at sub-population means instead: b masked mean reductions, no sort). The bin index is the
code, code = min(floor(2^b h(w)), 2^b - 1) with h the piecewise-linear equaliser, i.e. simply the bin a weight
falls in, so code usage is exactly balanced (the paper's rounding is unverified; DoReFa rounding would give the
end levels half the mass). Value = s * (2 code - (2^b - 1)) / (2^b - 1): a symmetric UNIFORM grid, per layer,
with s the least-squares scale <W, u>/<u, u> (the paper's scale rule is unverified). There is no inverse map
through h, which is why inference needs no extra work: the codes run on the bit-serial kernel.
Training: the edges and s are recomputed from the float weights at every step; straight-through gradient.
"""

from __future__ import annotations

import numpy as np
import torch

from ..scheme import WeightKind, WeightQuant

APPROX = ("exact", "mean")


def balanced_edges(flat: np.ndarray, bits: int, approx: str = "exact") -> np.ndarray:
    """The 2^b - 1 inner edges, found by recursive splitting (medians, or means when approx="mean")."""
    if approx not in APPROX:
        raise ValueError(f"unknown balanced approximation '{approx}'; known: {', '.join(APPROX)}")
    split = np.median if approx == "exact" else np.mean
    groups, edges = [np.sort(flat.astype(np.float64))], []
    for _ in range(bits):
        next_groups = []
        for group in groups:
            cut = float(split(group)) if len(group) else 0.0
            edges.append(cut)
            next_groups += [group[group < cut], group[group >= cut]]
        groups = next_groups
    return np.sort(np.array(edges))


def codes_and_scale(weight: np.ndarray, bits: int, approx: str = "exact") -> tuple[np.ndarray, float]:
    """Bin index per weight and the least-squares scale of the symmetric grid."""
    flat = weight.ravel().astype(np.float64)
    codes = np.searchsorted(balanced_edges(flat, bits, approx), flat, side="right")
    qmax = (1 << bits) - 1
    unit = (2.0 * codes - qmax) / qmax
    scale = float(flat @ unit / max(unit @ unit, 1e-30))
    return codes.reshape(weight.shape), max(scale, 1e-12)


def quantize_weight(weight: np.ndarray, bits: int, approx: str = "exact") -> WeightQuant:
    """UNIFORM codes: scale 2s/(2^b - 1) and zero point (2^b - 1)/2, the same for every output channel."""
    codes, s = codes_and_scale(weight, bits, approx)
    qmax = (1 << bits) - 1
    out = weight.shape[0]
    return WeightQuant(
        WeightKind.UNIFORM, bits, codes.astype(np.uint8),
        scale=np.full(out, 2.0 * s / qmax), zero_point=np.full(out, qmax / 2),
    )


def ste_weight(weight: torch.Tensor, bits: int, approx: str = "exact") -> torch.Tensor:
    """Training forward: balanced-quantized values, edges recomputed now; gradient straight through."""
    quant = quantize_weight(weight.detach().numpy(), bits, approx).dequantize()
    return weight + (torch.from_numpy(quant).to(weight.dtype) - weight).detach()
