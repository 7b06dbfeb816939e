"""Quantization Networks (Yang et al. 2019): a sum of sigmoids that anneals into a step function.

Q(w) = α (Σ_i s_i σ(T(β w - b_i)) - o), with a preset level set Y = {y_0 < ... < y_n}, gaps s_i = y_i - y_(i-1),
o = ½ Σ s_i (Y is symmetric), T the temperature. At inference σ(T·) becomes the unit step, so the value is
α y_j with j = #{i : β w > b_i}.

Level sets as in the released code: 2 bits -> ternary {-1, 0, 1}; 3 bits -> {0, ±1, ±2, ±4} (power of two,
a POW2 layer); 4+ bits -> the integers ±(2^(b-1) - 1) (UNIFORM; `levels="uniform"` also gives 3 bits as ±3).
1 bit uses {-1, 0, 1} with both thresholds at 0, i.e. ±α.
Initialisation: β = 1.25 y_n / max|W|, α = 1/β; thresholds b_i from 1-D k-means with n + 1 clusters on β W,
each b_i the midpoint between the last member of one cluster and the first of the next.
Choices recorded here: α and β are learned (autograd through the sigmoids, T·z clamped to ±10 as in the code);
the thresholds b_i stay fixed buffers, as in the released code. The temperature follows T_e = (e + 1) ΔT, capped.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.cluster import KMeans

from ..scheme import WeightKind, WeightQuant

LEVEL_SETS = ("paper", "uniform")
T_CAP = 2000.0


def level_set(bits: int, levels: str = "paper") -> np.ndarray:
    """The preset Y for a bit width."""
    if levels not in LEVEL_SETS:
        raise ValueError(f"unknown QN level set '{levels}'; known: {', '.join(LEVEL_SETS)}")
    if bits == 3 and levels == "paper":
        return np.array([-4.0, -2.0, -1.0, 0.0, 1.0, 2.0, 4.0])
    top = max((1 << (bits - 1)) - 1, 1)
    return np.arange(-top, top + 1, dtype=np.float64)


KMEANS_MAX_LEVELS = 16


def initial_thresholds(scaled: np.ndarray, y: np.ndarray, bits: int) -> np.ndarray:
    """len(Y) - 1 thresholds between sorted 1-D k-means clusters of βW (0 for the 1-bit ±α case).

    Level sets larger than KMEANS_MAX_LEVELS (8-bit edge layers), or layers with too few weights for the
    clusters, start from the midpoints of Y instead: k-means there is slow and adds nothing over rounding.
    """
    count = len(y)
    if bits == 1:
        return np.zeros(count - 1)
    if count > KMEANS_MAX_LEVELS or scaled.size < 4 * count:
        return (y[1:] + y[:-1]) / 2
    flat = np.sort(scaled.ravel())
    sample = flat[:: max(1, len(flat) // 20000)]
    km = KMeans(n_clusters=count, n_init=3, random_state=0).fit(sample[:, None])
    order = np.argsort(km.cluster_centers_.ravel())
    rank = np.empty(count, dtype=np.int64)
    rank[order] = np.arange(count)
    labels = rank[km.labels_]
    cuts = [(sample[labels == i].max() + sample[labels == i + 1].min()) / 2 for i in range(count - 1)]
    return np.array(cuts)


class QNQuantizer(torch.nn.Module):
    """One layer's quantizer: learned α, β (log-parameterised to stay positive), fixed thresholds."""

    def __init__(self, weight: np.ndarray, bits: int, levels: str = "paper"):
        super().__init__()
        self.bits = bits
        y = level_set(bits, levels)
        beta = 1.25 * y[-1] / max(float(np.abs(weight).max()), 1e-12)
        self.register_buffer("y", torch.tensor(y))
        self.register_buffer("thresholds", torch.tensor(initial_thresholds(beta * weight, y, bits)))
        self.log_beta = torch.nn.Parameter(torch.tensor(np.log(beta)))
        self.log_alpha = torch.nn.Parameter(torch.tensor(-np.log(beta)))

    def soft(self, weight: torch.Tensor, temperature: float) -> torch.Tensor:
        """The training-time sum of sigmoids."""
        z = (torch.exp(self.log_beta) * weight.double()).unsqueeze(-1) - self.thresholds
        steps = torch.sigmoid(torch.clamp(temperature * z, -10.0, 10.0))
        gaps = self.y[1:] - self.y[:-1]
        return (torch.exp(self.log_alpha) * (self.y[0] + (steps * gaps).sum(-1))).to(weight.dtype)

    def level_index(self, weight: torch.Tensor) -> torch.Tensor:
        """Unit-step form: how many thresholds β w exceeds."""
        with torch.no_grad():
            z = (torch.exp(self.log_beta) * weight.double()).unsqueeze(-1) - self.thresholds
            return (z > 0).sum(-1)

    def hard(self, weight: torch.Tensor) -> torch.Tensor:
        return (torch.exp(self.log_alpha) * self.y[self.level_index(weight)]).to(weight.dtype)

    def export(self, weight: torch.Tensor) -> WeightQuant:
        """UNIFORM for integer Y, POW2 for {0, ±1, ±2, ±4}; α is the per-layer scale."""
        y = self.y.numpy()[self.level_index(weight).numpy()]
        out, alpha = weight.shape[0], float(torch.exp(self.log_alpha.detach()))
        if np.abs(y).max() == 4.0:
            mag = np.abs(y)
            index = np.where(mag > 0, 2 - np.log2(np.where(mag > 0, mag, 1.0)) + 1, 0).astype(np.int64)
            codes = index | np.where(y < 0, 1 << (self.bits - 1), 0)
            return WeightQuant(WeightKind.POW2, self.bits, codes.astype(np.uint8),
                               scale=np.full(out, alpha), exp_max=np.full(out, 2))
        top = float(self.y[-1])
        if self.bits == 1:  # Y = {-1, 0, 1} with coinciding thresholds: only ±1 occur
            codes = (y > 0).astype(np.uint8)
            return WeightQuant(WeightKind.UNIFORM, 1, codes, scale=np.full(out, 2 * alpha), zero_point=np.full(out, 0.5))
        return WeightQuant(WeightKind.UNIFORM, self.bits, (y + top).astype(np.uint8),
                           scale=np.full(out, alpha), zero_point=np.full(out, top))


def temperature(epoch: int, delta: float = 10.0) -> float:
    """T_e = (e + 1) ΔT, capped at 2000."""
    return min((epoch + 1) * delta, T_CAP)


def quantize_weight(weight: np.ndarray, bits: int, levels: str = "paper") -> WeightQuant:
    """Post-training use: the initialised quantizer's unit-step form, no training."""
    return QNQuantizer(weight, bits, levels).export(torch.from_numpy(weight))
