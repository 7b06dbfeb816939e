"""Multipoint PTQ (Liu et al. 2021): w_c ≈ Σ_i a_i q_i per output channel, points added where output error is
largest, under a global budget of extra rows.

Grid: q ∈ {-(2^(b-1)-1), ..., 2^(b-1)-1}, i.e. the paper's Q_b scaled by 2^(b-1)-1 (the factor goes into a_i).
Greedy point: for the residual r, a is searched on a grid of 256 candidates in (0, 2 max|r| / m] (m the grid's top
code, so small a are included, as later points need), q = clip(round(r/a)), then a is refined once by least
squares <r, q>/<q, q> and q re-rounded. Each point can only lower ||r|| (a candidate a -> 0 keeps it), which the
tests check.

Adaptive points: every channel starts with one point. Its output error is e_c² = r_cᵀ G r_c, with G = XᵀX over
calibration input patches X of the layer (quantized with the layer's own ActQuant, taken from the float network:
the paper leaves this open), relative to ||w_cᵀ X||. While the budget allows (Σ n_c ≤ (1 + budget)·Σ channels,
over all layers), the channel with the largest relative error gets one more point, up to `max_points`.
Representation: MULTIPOINT with scale[p, o] = a_p, zero point m, coeffs 1 for used points and 0 for unused ones
(their codes are the zero point).
"""

from __future__ import annotations

import heapq

import numpy as np

from ..errors import UserError
from ..scheme import WeightKind, WeightQuant

_CANDIDATES = 256


def top_code(bits: int) -> int:
    if bits < 2:
        raise UserError("multipoint needs at least 2 weight bits (its grid is symmetric with a zero)")
    return (1 << (bits - 1)) - 1


def best_point(residual: np.ndarray, bits: int) -> tuple[float, np.ndarray]:
    """(a, q) minimising ||r - a q||² over a > 0 and integer q in the grid."""
    m = top_code(bits)
    peak = float(np.abs(residual).max())
    if peak == 0.0:
        return 0.0, np.zeros_like(residual)
    cands = np.linspace(2 * peak / m / _CANDIDATES, 2 * peak / m, _CANDIDATES)
    q = np.clip(np.rint(residual[None, :] / cands[:, None]), -m, m)
    err = ((residual[None, :] - cands[:, None] * q) ** 2).sum(axis=1)
    a, qa = float(cands[err.argmin()]), q[err.argmin()]
    refined = float(residual @ qa / max(qa @ qa, 1e-30))
    if refined > 0:
        q2 = np.clip(np.rint(residual / refined), -m, m)
        if ((residual - refined * q2) ** 2).sum() < err.min():
            a, qa = refined, q2
    return a, qa


class ChannelPoints:
    """Greedy points of one layer, per output channel; `residuals` are what is still unexplained."""

    def __init__(self, weight: np.ndarray, bits: int, gram: np.ndarray):
        self.shape, self.bits = weight.shape, bits
        self.flat = weight.reshape(weight.shape[0], -1).astype(np.float64)
        self.gram = gram
        self.residuals = self.flat.copy()
        self.points: list[list[tuple[float, np.ndarray]]] = [[] for _ in range(len(self.flat))]
        self.base = np.sqrt(np.maximum(np.einsum("ok,kl,ol->o", self.flat, gram, self.flat), 1e-30))

    def add_point(self, channel: int) -> None:
        a, q = best_point(self.residuals[channel], self.bits)
        self.points[channel].append((a, q))
        self.residuals[channel] = self.residuals[channel] - a * q

    def relative_error(self, channel: int) -> float:
        r = self.residuals[channel]
        return float(np.sqrt(max(r @ self.gram @ r, 0.0)) / self.base[channel])

    def to_weight_quant(self) -> WeightQuant:
        m = top_code(self.bits)
        npts, out = max(len(p) for p in self.points), len(self.points)
        codes = np.full((npts, *self.flat.shape), m, dtype=np.int64)
        scale, coeffs = np.ones((npts, out)), np.zeros((npts, out))
        for c, pts in enumerate(self.points):
            for p, (a, q) in enumerate(pts):
                codes[p, c], scale[p, c], coeffs[p, c] = q + m, max(a, 1e-30), 1.0
        return WeightQuant(
            WeightKind.MULTIPOINT, self.bits, codes.reshape(npts, *self.shape).astype(np.uint8),
            scale=scale, zero_point=np.full((npts, out), float(m)), coeffs=coeffs,
        )


def quantize_layers(
    weights: dict[str, np.ndarray], bits: dict[str, int], grams: dict[str, np.ndarray],
    budget: float, max_points: int = 4,
) -> dict[str, WeightQuant]:
    """All layers at once, sharing the budget: Σ n_c ≤ (1 + budget)·Σ channels."""
    if budget < 0:
        raise UserError(f"--budget must be >= 0 (extra rows as a fraction of channels), got {budget}")
    layers = {name: ChannelPoints(w, bits[name], grams[name]) for name, w in weights.items()}
    heap = []
    for name, layer in layers.items():
        for c in range(len(layer.points)):
            layer.add_point(c)
            heapq.heappush(heap, (-layer.relative_error(c), name, c))
    extra = int(np.floor(budget * sum(len(layer.points) for layer in layers.values())))
    while extra > 0 and heap:
        neg_err, name, c = heapq.heappop(heap)
        layer = layers[name]
        if len(layer.points[c]) >= max_points or neg_err == 0.0:
            continue
        layer.add_point(c)
        extra -= 1
        heapq.heappush(heap, (-layer.relative_error(c), name, c))
    return {name: layer.to_weight_quant() for name, layer in layers.items()}
