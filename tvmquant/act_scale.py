"""`--act-scale pow2`: activation quantizers with a power-of-two scale and signed symmetric codes.

Accelerators without a multiplier (VTA) requantize by shifting, which needs power-of-two scales, and take
signed inputs, so the zero point is 2^(bits-1) (codes - zero point is a signed `bits`-bit integer). The scale is
the power of two with the least squared error on the calibration samples.
"""

from __future__ import annotations

import numpy as np

from .scheme import ActQuant

ACT_SCALES = ("mse", "pow2")


def calibrate_activation_pow2(samples: np.ndarray, bits: int) -> ActQuant:
    samples = samples.astype(np.float64)
    zero_point = 1 << (bits - 1)
    peak = float(np.abs(samples).max()) if samples.size else 0.0
    if peak <= 1e-12:
        return ActQuant(bits, 1.0, zero_point)
    top = int(np.ceil(np.log2(peak / max(zero_point - 1, 1))))
    best = (np.inf, None)
    for e in range(top - 8, top + 1):
        scale = 2.0 ** e
        codes = np.clip(np.rint(samples / scale), -zero_point, zero_point - 1)
        err = float(((codes * scale - samples) ** 2).sum())
        if err < best[0]:
            best = (err, ActQuant(bits, scale, zero_point))
    return best[1]
