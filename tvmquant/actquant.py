"""The activation quantizer, defined once and instantiated for numpy, torch and TE (the kernels).

    code = clip(round_half_even(float32(x) * float32(inv_scale)) + zero_point, 0, 2^bits - 1)

Kernels, the PyTorch reference and the numpy references must agree bit for bit, so every form is `_codes`
applied to that backend's operands: one float32 multiply by the stored float32 `inv_scale` (never a division
by the scale), round half to even (numpy rint, torch round, TE nearbyint), then the zero point and the clip in
float32. tests/test_actquant.py checks the forms against each other on ties and clip edges.

In kernels the scale and zero point are runtime inputs (one-element buffers), not constants, so a kernel's
workload (what a tuning record matches) does not depend on calibration.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from tvm import te, tirx

from .scheme import ActQuant


def _codes(x: Any, inv_scale: Any, zero_point: Any, qmax: Any, rint: Callable, clip: Callable) -> Any:
    """The one definition; every backend below supplies float32 operands, its rint and its clip."""
    return clip(rint(x * inv_scale) + zero_point, 0, qmax)


def numpy_codes(x: np.ndarray, inv_scale: float, zero_point: int, bits: int) -> np.ndarray:
    """Codes as float32 (callers cast); `inv_scale` as the kernel holds it (ActQuant.inv_scale)."""
    return _codes(np.asarray(x, np.float32), np.float32(inv_scale), np.float32(zero_point),
                  np.float32((1 << bits) - 1), np.rint, np.clip)


def torch_codes(x: torch.Tensor, act: ActQuant) -> torch.Tensor:
    """Codes as float32; differentiable nowhere (training wraps it, see qat.fake_quant)."""
    inv = torch.tensor(act.inv_scale, dtype=torch.float32)
    return _codes(x.float(), inv, float(act.zero_point), act.qmax, torch.round, torch.clamp)


def torch_dequantized(x: torch.Tensor, act: ActQuant) -> torch.Tensor:
    """The real value of x after activation quantization."""
    return (torch_codes(x, act) - act.zero_point) * np.float32(act.scale)


def te_placeholders() -> tuple[te.Tensor, te.Tensor]:
    """The kernel inputs that carry a layer's activation quantizer: (inv_scale (1,) float32, zero_point (1,) int32)."""
    return te.placeholder((1,), "float32", name="act_inv_scale"), te.placeholder((1,), "int32", name="act_zero_point")


def operands(act: ActQuant) -> list[np.ndarray]:
    """The values of te_placeholders() for one layer."""
    return [np.array([act.inv_scale], np.float32), np.array([act.zero_point], np.int32)]


def te_codes(x: te.Tensor, inv_scale: te.Tensor, zero_point: te.Tensor, bits: int) -> te.Tensor:
    """Codes as int32, a TE stage named "quantize" that schedules inline."""
    lo, hi = tirx.const(0.0, "float32"), tirx.const(float((1 << bits) - 1), "float32")

    def code(*idx):
        value = _codes(x(*idx), inv_scale[0], zero_point[0].astype("float32"), hi, te.nearbyint,
                       lambda v, _lo, top: te.max(te.min(v, top), lo))
        return value.astype("int32")

    return te.compute(x.shape, code, name="quantize")
