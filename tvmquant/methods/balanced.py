"""Balanced Quantization (Zhou et al. 2017): recursive percentile partition into 2^b equal-count bins,
histogram equalisation onto [0, 1], then a uniform grid.

Edges: split the layer's weights at their median, each half at its own median, b levels deep
(`approx="mean"` splits at sub-population means instead: b masked mean reductions, no sort). The bin index is the
code, code = min(floor(2^b h(w)), 2^b - 1) with h the piecewise-linear equaliser, i.e. simply the bin a weight
falls in, so code usage is exactly balanced (the paper's rounding is unverified; DoReFa rounding would give the
end levels half the mass). Value = s * (2 code - (2^b - 1)) / (2^b - 1): a symmetric UNIFORM grid, with s the
least-squares scale <W, u>/<u, u> (the paper's scale rule is unverified). There is no inverse map through h,
which is why inference needs no extra work: the codes run on the bit-serial kernel (where the zero point is
a multiple of 1/2, see below).
Training: the edges and s are recomputed from the float weights at every step; straight-through gradient.

Deviations (measured on the reproduce.py model, docs/RESULTS.md):
- the partition and the scale are per output channel (`per_channel=True`, the default); one partition per layer
  pushes the weights of low-variance channels onto ±s/3 (W2A2 PTQ 47 % -> 93 %);
- a channel's grid may have an offset (a zero point other than (2^b - 1)/2): equal-count codes on a symmetric
  grid have mean exactly 0, which drops every channel's mean, and the next layer's post-ReLU inputs (all >= 0)
  turn the lost mean into an offset of every output. From OFFSET_BITS (3) bits the zero point is the multiple of
  1/2 nearest the least-squares offset (the bit-serial and int8 kernels need that; W4A8 PTQ 97.6 % -> 99.4 % on
  the reproduce.py model). At 2 bits a half step is too coarse (it ties the mean to the scale: W2A8 97.2 % ->
  90.7 % there), so 2-bit grids take the exact least-squares offset, which keeps each channel's mean exactly
  (the residuals of a least-squares line sum to zero). This was the cause of the built-in digits CNN's 2-bit
  collapse: its conv2 channels' means reach 0.3 of their std; restoring only conv2's channel means took W2A8 PTQ
  from 10 % to 98.6 %. Measured: digits CNN W2A8 PTQ 18.06 % -> 99.17 % (= fp32), W2A2 12.22 % -> 97.78 %, W2A2
  QAT (36 steps) 92.50 % -> 98.89 %; reproduce.py model (fold 0) W2A8 97.20 % -> 98.80 %, W2A2 92.96 % ->
  98.36 %. Cost: such a zero point is no multiple of 1/2, so these layers run on the exact dequant kernel
  (digits CNN W2A2 deployed 95.4 KB against 24.6 KB on the integer kernels, and far slower) until a bit-serial
  kernel takes a fractional zero point; `zero_points="half"`
  keeps every grid on the integer kernels (2-bit grids then symmetric, as before). Tried and rejected (digits
  CNN W2A8 PTQ): a first split at zero instead of the median (55.6 %); scale and half-step zero point fitted to
  the layer's output error on the calibration inputs (95.8 %, but reproduce.py model 87.4 %);
- layers of `uniform_bits` (8) or more bits, i.e. the 8-bit first/last layers, use the uniform quantizer: rank
  mapping does not approach the float weights at any width (relative error 0.18-0.41 at 8 bits), and the paper
  keeps first/last layers at higher precision (METHODS.md 3.5).
A limit that remains: without training, rank mapping flattens every channel's distribution onto an evenly used
grid (relative weight error about 0.38 at any width), so Balanced as PTQ stays below the uniform baseline; it is
meant to be trained (QAT rows in docs/RESULTS.md).

Options (keyword arguments): approx, per_channel, offset, zero_points, uniform_bits.
"""

from __future__ import annotations

import numpy as np

from ..scheme import WeightKind, WeightQuant
from . import uniform

APPROX = ("exact", "mean")
UNIFORM_BITS = 8
OFFSET_BITS = 3
ZERO_POINTS = ("auto", "half")


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


def codes_and_grid(
    flat: np.ndarray, bits: int, approx: str = "exact", offset: bool = True, zero_points: str = "auto",
) -> tuple[np.ndarray, float, float]:
    """Bin index per weight of one partition (a channel), and the least-squares scale and zero point of its grid,
    value = scale (code - zero point). The zero point is (2^b - 1)/2 (symmetric) or, with `offset`, whichever of
    that and the least-squares offset has the smaller weight error; the offset is exact below OFFSET_BITS
    (`zero_points="auto"`, module docstring), else the multiple of 1/2 nearest it (the bit-serial and int8
    kernels need 2 (code - zero point) integral); `zero_points="half"` rounds it at every width (and, as
    before, leaves 2-bit grids symmetric)."""
    flat = flat.astype(np.float64)
    codes = np.searchsorted(balanced_edges(flat, bits, approx), flat, side="right").astype(np.float64)
    candidates = [((1 << bits) - 1) / 2]
    if offset and codes.var() > 0 and (bits >= OFFSET_BITS or zero_points == "auto"):
        slope, intercept = np.polyfit(codes, flat, 1)
        if slope > 0:
            exact = -intercept / slope
            candidates.append(exact if zero_points == "auto" and bits < OFFSET_BITS else np.round(2 * exact) / 2)
    best = (np.inf, 1e-12, candidates[0])
    for zero_point in candidates:
        unit = codes - zero_point
        scale = max(float(flat @ unit / max(unit @ unit, 1e-30)), 1e-12)
        err = float(((flat - scale * unit) ** 2).sum())
        if err < best[0]:
            best = (err, scale, float(zero_point))
    return codes, best[1], best[2]


def quantize_weight(
    weight: np.ndarray, bits: int, approx: str = "exact", per_channel: bool = True, offset: bool = True,
    uniform_bits: int = UNIFORM_BITS, zero_points: str = "auto",
) -> WeightQuant:
    """UNIFORM codes with a scale and zero point per partition (output channel, or the whole layer); layers of
    `uniform_bits` or more bits use the uniform quantizer."""
    if zero_points not in ZERO_POINTS:
        raise ValueError(f"unknown balanced zero points '{zero_points}'; known: {', '.join(ZERO_POINTS)}")
    if bits >= uniform_bits:
        return uniform.quantize_weight(weight, bits)
    out = weight.shape[0]
    parts = weight.reshape(out, -1) if per_channel else weight.reshape(1, -1)
    results = [codes_and_grid(part, bits, approx, offset, zero_points) for part in parts]
    codes = np.stack([c for c, _, _ in results]).reshape(weight.shape)
    scale, zero_point = (np.array([r[i] for r in results]) * np.ones(out) for i in (1, 2))
    return WeightQuant(WeightKind.UNIFORM, bits, codes.astype(np.uint8), scale=scale, zero_point=zero_point)
