"""The uniform baseline: per-output-channel symmetric weight codes and per-tensor calibrated activations.

Weights: codes q in [0, 2^b - 1] with zero point (2^b - 1)/2, so the levels are symmetric about zero
(2 bits: ±0.5s, ±1.5s; 1 bit: ±0.5s). The clipping range per channel is chosen by a grid search for the least
squared error, which matters most at 1-3 bits where max-abs scaling wastes levels on outliers.
Activations: an integer zero point (0 for non-negative inputs such as ReLU outputs), the clipping range again
by least squared error over the calibration samples.
Options (keyword arguments): per_channel, clip (weights).
"""

from __future__ import annotations

import numpy as np

from ..scheme import ActQuant, WeightKind, WeightQuant

_CLIP_RATIOS = np.linspace(0.05, 1.0, 96)
CLIPS = ("mse", "max")


def quantize_weight(weight: np.ndarray, bits: int, per_channel: bool = True, clip: str = "mse") -> WeightQuant:
    """Uniform codes per output channel (or one grid per layer), clipping range by least squared error
    (`clip="mse"`) or at max|W| (`clip="max"`: the per-layer max-abs grid is the baseline the papers compare with)."""
    if clip not in CLIPS:
        raise ValueError(f"unknown uniform clip rule '{clip}'; known: {', '.join(CLIPS)}")
    out_channels = weight.shape[0]
    flat = weight.reshape(out_channels, -1).astype(np.float64)
    if not per_channel:
        flat = flat.reshape(1, -1)
    qmax = (1 << bits) - 1
    zero_point = qmax / 2
    peak = np.maximum(np.abs(flat).max(axis=1), 1e-12)
    best_err = np.full(len(flat), np.inf)
    best_scale = peak / zero_point
    for ratio in _CLIP_RATIOS if clip == "mse" else ():
        scale = peak * ratio / zero_point
        codes = np.clip(np.rint(flat / scale[:, None] + zero_point), 0, qmax)
        err = ((scale[:, None] * (codes - zero_point) - flat) ** 2).sum(axis=1)
        better = err < best_err
        best_err[better], best_scale[better] = err[better], scale[better]
    best_scale = best_scale * np.ones(out_channels)
    return quantize_with_scale(weight, bits, best_scale)


def quantize_with_scale(weight: np.ndarray, bits: int, scale: np.ndarray) -> WeightQuant:
    """Per-output-channel uniform codes for given per-channel scales (the rounding half of quantize_weight)."""
    out_channels = weight.shape[0]
    flat = weight.reshape(out_channels, -1).astype(np.float64)
    qmax = (1 << bits) - 1
    zero_point = qmax / 2
    codes = np.clip(np.rint(flat / scale[:, None] + zero_point), 0, qmax)
    return WeightQuant(
        kind=WeightKind.UNIFORM,
        bits=bits,
        codes=codes.reshape(weight.shape).astype(np.uint8),
        scale=np.asarray(scale, dtype=np.float64),
        zero_point=np.full(out_channels, zero_point),
    )


def calibrate_activation(samples: np.ndarray, bits: int) -> ActQuant:
    """Scale and integer zero point minimising the squared error on the calibration samples."""
    samples = samples.astype(np.float64)
    qmax = (1 << bits) - 1
    lo, hi = min(float(samples.min()), 0.0), max(float(samples.max()), 0.0)
    if hi - lo <= 1e-12:
        return ActQuant(bits, 1.0, 0)
    best = (np.inf, None)
    for ratio in _CLIP_RATIOS:
        scale = (hi - lo) * ratio / qmax
        zero_point = int(np.clip(np.rint(-lo * ratio / scale), 0, qmax))
        codes = np.clip(np.rint(samples / scale) + zero_point, 0, qmax)
        err = float(((scale * (codes - zero_point) - samples) ** 2).sum())
        if err < best[0]:
            best = (err, ActQuant(bits, scale, zero_point))
    return best[1]
