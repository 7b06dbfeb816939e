"""The exact arithmetic of one VTA layer, shared by the reference and the compiled program's host side.

    a      = activation codes - zero point                         (signed, fits the core's input width)
    acc    = int32( sum_k T[o, k] * a_k ) + bias[o]                 (GEMM, then ALU ADD)
    y      = min(max(acc >> shift[o], lo), hi)                      (ALU SHR, MAX, MIN: the clip before STORE)
    output = float32(y) * step[o],   step[o] = float32(scale[o] * 2^shift[o])

T and scale are the scheme's IntegerCore (one integer matrix, so UNIFORM with half-integer zero points and POW2
within the shift span). bias[o] = round(b[o] / scale[o]) + 2^(shift[o]-1) (the rounding of the SHR folded in);
shift[o] is the least power of two that brings the channel's calibrated accumulator peak into the output code
range, so each channel's output step is a power of two times its accumulator step (no multiplier on VTA).
ReLU after the layer is lo = 0 (MAX). The host dequantizes with the per-channel step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..scheme import LayerScheme, integer_core
from .bits import wrap32
from .config import VtaConfig

MAX_SHIFT = 15


@dataclass
class VtaLayer:
    """One layer as VTA runs it (see the module docstring); weight is (O, C, KH, KW), linear has KH = KW = 1."""

    name: str
    op: str
    weight: np.ndarray
    bias: np.ndarray
    shift: np.ndarray
    step: np.ndarray
    lo: int
    hi: int
    stride: tuple[int, int]
    padding: tuple[int, int]
    act_inv_scale: np.float32
    act_zero_point: int
    act_qmax: int


@dataclass
class HostQuant:
    """What the host needs around a VTA layer: quantize its input, dequantize its output codes."""

    op: str
    act_inv_scale: np.float32
    act_zero_point: int
    act_qmax: int
    step: np.ndarray

    @staticmethod
    def of(layer: VtaLayer) -> HostQuant:
        return HostQuant(layer.op, layer.act_inv_scale, layer.act_zero_point, layer.act_qmax, layer.step)


def unsupported(layer: LayerScheme, config: VtaConfig) -> str | None:
    """Why VTA cannot run this layer exactly, or None."""
    act = layer.act
    if layer.groups != 1:
        return f"grouped convolution (groups={layer.groups}): the GEMM core has no grouped form"
    if act.bits > config.inp_bits:
        return f"{act.bits}-bit activations exceed the core's {config.inp_bits}-bit inputs"
    if act.zero_point != 1 << (act.bits - 1) or not float(np.log2(act.scale)).is_integer():
        return "activations are not signed power-of-two codes (quantize with --act-scale pow2)"
    core = integer_core(layer)
    if core.matrices is None or core.terms != 1 or not np.all(core.combine == 1):
        return f"{layer.weight.kind.value} weights need more than one integer matrix"
    t = core.matrices[0]
    lim = 1 << (config.wgt_bits - 1)
    if t.min() < -lim or t.max() > lim - 1:
        return f"integer weights span [{t.min()}, {t.max()}], wider than the core's {config.wgt_bits}-bit weights"
    return None


def input_codes(x: np.ndarray, layer: VtaLayer | HostQuant) -> np.ndarray:
    """Signed activation codes, quantized exactly as the reference does (float32 multiply, round half even)."""
    scaled = np.rint(np.asarray(x, np.float32) * layer.act_inv_scale)
    return (np.clip(scaled + np.float32(layer.act_zero_point), 0, layer.act_qmax) - layer.act_zero_point).astype(np.int64)


def accumulate(a: np.ndarray, layer: VtaLayer) -> np.ndarray:
    """int32 sum_k T a_k (float64 convolution: exact, every partial sum is far below 2^53)."""
    w = torch.from_numpy(layer.weight.astype(np.float64))
    x = torch.from_numpy(a.astype(np.float64))
    if layer.op == "linear":
        out = x @ w.reshape(len(w), -1).T
    else:
        out = F.conv2d(x, w, stride=layer.stride, padding=layer.padding)
    return wrap32(out.numpy().astype(np.int64))


def _per_channel(v: np.ndarray, ndim: int) -> np.ndarray:
    return v.reshape((1, -1) + (1,) * (ndim - 2))


def requantize(acc: np.ndarray, layer: VtaLayer) -> np.ndarray:
    """The ALU sequence: ADD bias, SHR shift, MAX lo, MIN hi."""
    total = wrap32(acc.astype(np.int64) + _per_channel(layer.bias, acc.ndim)).astype(np.int64)
    return np.minimum(np.maximum(total >> _per_channel(layer.shift, acc.ndim), layer.lo), layer.hi)


def dequantize(y: np.ndarray, layer: VtaLayer | HostQuant) -> np.ndarray:
    return y.astype(np.float32) * _per_channel(layer.step, y.ndim)


def reference(x: np.ndarray, layer: VtaLayer) -> np.ndarray:
    """The layer's float32 output, as the compiled program must produce it bit for bit."""
    return dequantize(requantize(accumulate(input_codes(x, layer), layer), layer), layer)


def plan_layer(layer: LayerScheme, bias: np.ndarray | None, relu: bool, config: VtaConfig,
               calib_input: np.ndarray) -> VtaLayer:
    """The VtaLayer of a quantized layer: integer weights from the scheme, bias and shifts from calibration."""
    core = integer_core(layer)
    t = core.matrices[0]
    w = layer.weight.codes
    weight = t.reshape(w.shape if layer.op == "conv2d" else (w.shape[0], -1, 1, 1))
    scale = np.asarray(core.scale, np.float32)
    out = len(scale)
    bias_int = np.zeros(out, np.int64) if bias is None else np.rint(np.asarray(bias, np.float64) / scale.astype(np.float64)).astype(np.int64)
    hi = (1 << (config.inp_bits - 1)) - 1
    act = layer.act
    vl = VtaLayer(layer.name, layer.op, weight, bias_int, np.zeros(out, np.int64), np.ones(out, np.float32),
                  0 if relu else -hi - 1, hi, tuple(layer.stride), tuple(layer.padding),
                  act.inv_scale, act.zero_point, act.qmax)
    acc = accumulate(input_codes(calib_input, vl), vl).astype(np.int64) + _per_channel(bias_int, 4 if layer.op == "conv2d" else 2)
    axes = tuple(i for i in range(acc.ndim) if i != 1)
    peak = np.abs(acc).max(axis=axes) if acc.size else np.zeros(out, np.int64)
    shift = np.zeros(out, np.int64)
    while np.any((peak >> shift) > hi) and shift.max() < MAX_SHIFT:
        shift = np.where(((peak >> shift) > hi) & (shift < MAX_SHIFT), shift + 1, shift)
    vl.shift = shift
    vl.bias = bias_int + np.where(shift > 0, 1 << np.maximum(shift - 1, 0), 0)
    vl.step = (scale.astype(np.float64) * np.exp2(shift)).astype(np.float32)
    return vl
