"""Quantization Networks (Yang et al. 2019): a sum of sigmoids that anneals into a step function.

Q(w) = α (Σ_i s_i σ(T(β w - b_i)) - o), with a preset level set Y = {y_0 < ... < y_n}, gaps s_i = y_i - y_(i-1),
o = ½ Σ s_i (Y is symmetric), T the temperature. At inference σ(T·) becomes the unit step, so the value is
α y_j with j = #{i : β w > b_i}.

Level sets as in the released code: 2 bits -> ternary {-1, 0, 1}; 3 bits -> {0, ±1, ±2, ±4} (power of two,
a POW2 layer); 4+ bits -> the integers ±(2^(b-1) - 1) (UNIFORM; `levels="uniform"` also gives 3 bits as ±3).
1 bit uses {-1, 0, 1} with both thresholds at 0, i.e. ±α.

Initialisation as in the released code: β = 1.25 y_n / max|W|, thresholds b_i from 1-D k-means with n + 1
clusters on β W, each b_i the midpoint between the last member of one cluster and the first of the next.

Deviations from the paper / released code, each measured on the reproduce.py model (docs/RESULTS.md):
- α starts at the least-squares scale of the starting assignment, <W, y_j>/<y_j, y_j>, not at 1/β (1/β was
  3.4-4.3x too large, and training could not shrink it in a short run);
- k-means runs on the weights and their mirror image, so the thresholds are symmetric about zero: Y is symmetric
  and has no offset, and a layer whose weights have a nonzero mean otherwise gets off-centre clusters;
- `init="lloyd"` (the default) then refines α and the thresholds by Lloyd iterations (thresholds at the midpoints
  of α·Y, α by least squares), so the step function is the MSE-optimal quantizer on Y: this is what a user gets
  without training, and the start of QAT. `init="kmeans"` keeps the k-means thresholds (with least-squares α);
- layers of `uniform_bits` or more bits (the 8-bit first/last layers) use the uniform quantizer: the paper keeps
  those layers in float, and β = 1.25 y_n / max|W| would clip their largest weights;
- training: the sigmoid's forward is σ(T z) with no clamp; its backward is T σ(z)(1 - σ(z)), σ at temperature 1
  scaled by T, as the released code does (`grad="exact"` uses the true derivative of σ(T z)); α and β are
  learned (log-parameterised), the thresholds b_i stay fixed buffers as in the released code;
- the temperature follows the run's progress p in [0, 1): T = t_start + p (t_end - t_start), not (epoch+1)·ΔT,
  so a short run still ends near a step function (qat.QNTrainer; α, β get their own, larger learning rate).

Options (keyword arguments): levels, init, uniform_bits; training: grad, t_start, t_end (qat.QNTrainer).
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.cluster import KMeans

from ..scheme import WeightKind, WeightQuant
from . import uniform

LEVEL_SETS = ("paper", "uniform")
INITS = ("lloyd", "kmeans")
GRADS = ("released", "exact")
UNIFORM_BITS = 8
T_START, T_END = 10.0, 500.0
KMEANS_MAX_LEVELS = 16
_LLOYD_STEPS = 30


def level_set(bits: int, levels: str = "paper") -> np.ndarray:
    """The preset Y for a bit width."""
    if levels not in LEVEL_SETS:
        raise ValueError(f"unknown QN level set '{levels}'; known: {', '.join(LEVEL_SETS)}")
    if bits == 3 and levels == "paper":
        return np.array([-4.0, -2.0, -1.0, 0.0, 1.0, 2.0, 4.0])
    top = max((1 << (bits - 1)) - 1, 1)
    return np.arange(-top, top + 1, dtype=np.float64)


def initial_thresholds(scaled: np.ndarray, y: np.ndarray, bits: int) -> np.ndarray:
    """len(Y) - 1 thresholds between sorted 1-D k-means clusters of ±βW (0 for the 1-bit ±α case).

    Level sets larger than KMEANS_MAX_LEVELS, or layers with too few weights for the clusters, start from the
    midpoints of Y instead: k-means there is slow and adds nothing over rounding.
    """
    count = len(y)
    if bits == 1:
        return np.zeros(count - 1)
    if count > KMEANS_MAX_LEVELS or scaled.size < 4 * count:
        return (y[1:] + y[:-1]) / 2
    flat = np.sort(scaled.ravel())
    half = flat[:: max(1, len(flat) // 10000)]
    sample = np.sort(np.concatenate([half, -half]))  # mirrored: symmetric clusters for a symmetric Y
    km = KMeans(n_clusters=count, n_init=3, random_state=0).fit(sample[:, None])
    order = np.argsort(km.cluster_centers_.ravel())
    rank = np.empty(count, dtype=np.int64)
    rank[order] = np.arange(count)
    labels = rank[km.labels_]
    cuts = np.array([(sample[labels == i].max() + sample[labels == i + 1].min()) / 2 for i in range(count - 1)])
    return (cuts - cuts[::-1]) / 2  # exactly antisymmetric


def least_squares_alpha(weight: np.ndarray, values: np.ndarray) -> float:
    """α minimising ||W - α y||² for the assigned levels y."""
    return max(float(weight.ravel() @ values.ravel() / max(values.ravel() @ values.ravel(), 1e-30)), 1e-12)


def lloyd(weight: np.ndarray, y: np.ndarray, alpha: float, steps: int = _LLOYD_STEPS) -> float:
    """Alternate nearest-level assignment on α·Y and least-squares α; returns the final α."""
    flat = weight.ravel().astype(np.float64)
    mids = (y[1:] + y[:-1]) / 2
    for _ in range(steps):
        values = y[np.searchsorted(alpha * mids, flat, side="right")]
        new = least_squares_alpha(flat, values)
        if abs(new - alpha) <= 1e-9 * alpha:
            break
        alpha = new
    return alpha


class _ScaledSigmoid(torch.autograd.Function):
    """σ(T z) forward; backward T σ(z)(1 - σ(z)), σ at temperature 1 scaled by T (the released code's form)."""

    @staticmethod
    def forward(ctx, z: torch.Tensor, temperature: float) -> torch.Tensor:
        ctx.save_for_backward(z)
        ctx.temperature = temperature
        return torch.sigmoid(temperature * z)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (z,) = ctx.saved_tensors
        s = torch.sigmoid(z)
        return grad * ctx.temperature * s * (1 - s), None


class QNQuantizer(torch.nn.Module):
    """One layer's quantizer: learned α, β (log-parameterised to stay positive), fixed thresholds."""

    def __init__(self, weight: np.ndarray, bits: int, levels: str = "paper", init: str = "lloyd", grad: str = "released"):
        super().__init__()
        if init not in INITS:
            raise ValueError(f"unknown QN init '{init}'; known: {', '.join(INITS)}")
        if grad not in GRADS:
            raise ValueError(f"unknown QN gradient '{grad}'; known: {', '.join(GRADS)}")
        self.bits, self.grad = bits, grad
        y = level_set(bits, levels)
        beta = 1.25 * y[-1] / max(float(np.abs(weight).max()), 1e-12)
        thresholds = initial_thresholds(beta * weight, y, bits)
        j = np.searchsorted(thresholds, beta * weight.ravel(), side="right")
        alpha = least_squares_alpha(weight, y[j])
        if init == "lloyd" and bits > 1:
            alpha = lloyd(weight, y, alpha)
            thresholds = beta * alpha * (y[1:] + y[:-1]) / 2
        self.register_buffer("y", torch.tensor(y))
        self.register_buffer("thresholds", torch.tensor(thresholds))
        self.log_beta = torch.nn.Parameter(torch.tensor(np.log(beta)))
        self.log_alpha = torch.nn.Parameter(torch.tensor(np.log(alpha)))

    def soft(self, weight: torch.Tensor, temperature: float) -> torch.Tensor:
        """The training-time sum of sigmoids."""
        z = (torch.exp(self.log_beta) * weight.double()).unsqueeze(-1) - self.thresholds
        steps = _ScaledSigmoid.apply(z, temperature) if self.grad == "released" else torch.sigmoid(temperature * z)
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
        if np.abs(self.y.numpy()).max() == 4.0:
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


def temperature(progress: float, t_start: float = T_START, t_end: float = T_END) -> float:
    """T at progress p in [0, 1] through the run: linear from t_start to t_end."""
    return t_start + min(max(progress, 0.0), 1.0) * (t_end - t_start)


def quantize_weight(
    weight: np.ndarray, bits: int, levels: str = "paper", init: str = "lloyd", uniform_bits: int = UNIFORM_BITS,
) -> WeightQuant:
    """Post-training use: the initialised quantizer's unit-step form, no training (uniform at >= uniform_bits)."""
    if bits >= uniform_bits:
        return uniform.quantize_weight(weight, bits)
    return QNQuantizer(weight, bits, levels, init).export(torch.from_numpy(weight))
