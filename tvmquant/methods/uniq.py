"""UNIQ (Baskin et al. 2018): k-quantile weight codebooks and uniform noise injected in the CDF domain.

Inference quantizer: with F the CDF of a layer's weights and K = 2^b, thresholds t_i = F^-1(i/K) make every bin
equiprobable and the levels q_i = F^-1((i - 1/2)/K) are the bins' probability medians. F is a Gaussian fit per
tensor (mean, std floored at 1e-5) as in the authors' code; `fit="empirical"` uses the weights' own quantiles
instead. Deviation: `fit="auto"` (the default) takes, for each fit of one channel (or tensor), whichever of the
Gaussian and the empirical quantiles has the smaller weight error. At 8 bits the Gaussian fit's outermost level
sits at 2.89 sigma and clips a heavy-tailed layer's largest weights; at 2-4 bits BatchNorm-folded channels are
not Gaussian either. Measured (PTQ, real digits), Gaussian below 8 bits -> the smaller error at every width:
reproduce.py MNIST CNN (fold 0) W4A8 99.48 -> 99.60 %, W3A8 99.36 -> 99.44 %, W2A2 97.92 -> 98.00 %; built-in
digits CNN W2A2 95.56 -> 95.83 %, W2A8/W3A8/W4A8 unchanged (97.78/98.61/98.89 %). The empirical fit alone is
not better: digits CNN W4A8 99.17 % but W2A2 91.67 %, MNIST CNN W2A2 97.24 %.
The result is a CODEBOOK, one table per output channel.

Deviation: the fit is per output channel (`per_channel=True`, the default; `False` is the authors' per-tensor
fit, one table repeated for every channel), for training noise and inference alike. BatchNorm is folded into
the convolutions before quantization, which scales each output channel by its own gamma/sigma; one Gaussian
for the whole tensor then puts the levels of narrow channels far apart. Measured (PTQ, real digits): built-in
digits CNN (BatchNorm folded) W2A8 87.50 -> 97.78 %, W4A8 98.06 -> 98.89 %, W2A2 73.06 -> 95.56 %; the
reproduce.py MNIST CNN (no BatchNorm) W2A8 98.84 -> 98.72 %, W4A8 99.52 -> 99.48 %, W2A2 98.24 -> 97.92 %.

Choices recorded here (METHODS.md leaves them open or the shared representation forces them):
- biases stay float32 (the authors quantize them too; our representation has no bias codes);
- training noise uses the authors' straight-through form: the forward sees F^-1(F(w) + e), the gradient is
  applied to w as if the noise map were the identity;
- activations: the shared representation has only uniform activation descriptors, so UNIQ's inference
  activations are the calibrated uniform ActQuant (fixed statistics, not per-batch); during training the
  activation of the stage being trained gets uniform noise of one code step (UNIQ's idea on that grid) and the
  other quantized activations are rounded, all with a ReLU-masked straight-through gradient (train.py).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.special import ndtri

from ..scheme import WeightKind, WeightQuant

FITS = ("auto", "gaussian", "empirical")
PER_CHANNEL = True
_EPS = 1e-5


def gaussian_fit(weight: np.ndarray) -> tuple[float, float]:
    """(mu, sigma) of all of `weight` (one channel's rows, or the whole tensor as the authors fit it)."""
    return float(weight.mean()), max(float(weight.std()), _EPS)


def thresholds_and_levels(weight: np.ndarray, bits: int, fit: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """(K-1 thresholds, K levels): equiprobable bins under the fitted CDF, levels at the bins' medians."""
    if fit == "auto":
        fit = min(FITS[1:], key=lambda f: fit_error(weight, bits, f))
    k = 1 << bits
    edges, mids = np.arange(1, k) / k, (np.arange(k) + 0.5) / k
    if fit == "gaussian":
        mu, sigma = gaussian_fit(weight)
        return mu + sigma * ndtri(edges), mu + sigma * ndtri(mids)
    if fit == "empirical":
        flat = weight.ravel().astype(np.float64)
        return np.quantile(flat, edges), np.quantile(flat, mids)
    raise ValueError(f"unknown UNIQ fit '{fit}'; known: {', '.join(FITS)}")


def fit_error(weight: np.ndarray, bits: int, fit: str) -> float:
    """Squared weight error of the k-quantile quantizer under one fit of all of `weight`."""
    return float(((quantize_weight(weight, bits, fit, per_channel=False).dequantize() - weight) ** 2).sum())


def quantize_weight(weight: np.ndarray, bits: int, fit: str = "auto", per_channel: bool = PER_CHANNEL) -> WeightQuant:
    """CODEBOOK codes: the index of the equiprobable bin each weight falls in; `per_channel`: one fit and
    table per output channel (module docstring), else one per layer as the authors fit it."""
    if per_channel:
        parts = [quantize_weight(row[None], bits, fit, per_channel=False) for row in weight]
        codes = np.concatenate([q.codes for q in parts])
        return WeightQuant(WeightKind.CODEBOOK, bits, codes, levels=np.concatenate([q.levels for q in parts]))
    thresholds, levels = thresholds_and_levels(weight, bits, fit)
    codes = np.searchsorted(thresholds, weight.astype(np.float64), side="right")
    table = np.tile(levels, (weight.shape[0], 1))
    return WeightQuant(WeightKind.CODEBOOK, bits, codes.astype(np.uint8), levels=table)


def noisy_weight(weight: torch.Tensor, bits: int, per_channel: bool = PER_CHANNEL) -> torch.Tensor:
    """w~ = F^-1(clip(F(w) + e)), e ~ U[-1/2K, 1/2K] fresh per call; straight-through to w. F is fitted as
    quantize_weight fits it (per output channel or per layer)."""
    with torch.no_grad():
        if per_channel:
            dims = tuple(range(1, weight.dim()))
            mu, sigma = weight.mean(dims, keepdim=True), weight.std(dims, keepdim=True).clamp_min(_EPS)
        else:
            mu, sigma = weight.mean(), weight.std().clamp_min(_EPS)
        u = torch.special.ndtr((weight - mu) / sigma)
        u = u + (torch.rand_like(u) - 0.5) / (1 << bits)
        noisy = mu + sigma * torch.special.ndtri(u.clamp(_EPS, 1 - _EPS))
    return weight + (noisy - weight).detach()

