"""The shared representation every quantization method produces and every kernel consumes.

One layer's weights are b-bit integer codes per output channel plus a *kind* that says how a code maps to a
real value (DESIGN.md, "One shared representation"). Activations have their own descriptor. Everything
downstream (reference evaluation, the Relax rewrite, kernel selection) reads only these classes, so a new
method needs no compiler changes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

import numpy as np


class WeightKind(str, Enum):
    """How integer codes map to weight values; decides the kernel family."""

    UNIFORM = "uniform"  # value = scale[o] * (code - zero_point[o])
    POW2 = "pow2"  # value = ±scale[o] * 2^e: sign bit + exponent index, index 0 is zero
    CODEBOOK = "codebook"  # value = levels[o, code]
    MULTIPOINT = "multipoint"  # value = sum_p coeffs[p, o] * scale[p, o] * (codes[p] - zero_point[p, o])


def _per_channel(values: np.ndarray, ndim: int) -> np.ndarray:
    """Reshape a per-output-channel vector (O,) to broadcast against a weight of `ndim` dims."""
    return values.reshape((-1,) + (1,) * (ndim - 1))


@dataclass
class WeightQuant:
    """Low-bit weights of one layer, per output channel (axis 0 of the weight; per-tensor = equal rows).

    `codes` has the weight's shape (O, ...) with values in [0, 2^bits); MULTIPOINT adds a leading axis of
    P points: (P, O, ...). The other fields are filled according to `kind` (see WeightKind).
    """

    kind: WeightKind
    bits: int
    codes: np.ndarray
    scale: np.ndarray | None = None
    zero_point: np.ndarray | None = None
    levels: np.ndarray | None = None
    exp_max: np.ndarray | None = None
    coeffs: np.ndarray | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.bits <= 8:
            raise ValueError(f"weight bits must be in 1..8, got {self.bits}")
        self.codes = np.asarray(self.codes, dtype=np.uint8)
        if int(self.codes.max(initial=0)) >= 1 << self.bits:
            raise ValueError(f"codes exceed {self.bits} bits")

    @property
    def out_channels(self) -> int:
        return self.codes.shape[1] if self.kind is WeightKind.MULTIPOINT else self.codes.shape[0]

    def dequantize(self) -> np.ndarray:
        """The real-valued weight this representation stands for (float64)."""
        codes = self.codes.astype(np.float64)
        if self.kind is WeightKind.UNIFORM:
            nd = codes.ndim
            return _per_channel(self.scale, nd) * (codes - _per_channel(self.zero_point, nd))
        if self.kind is WeightKind.POW2:
            nd = codes.ndim
            sign_bit = 1 << (self.bits - 1)
            index = (self.codes & (sign_bit - 1)).astype(np.int64)
            sign = np.where(self.codes & sign_bit, -1.0, 1.0)
            exponent = _per_channel(self.exp_max, nd) - (index - 1)
            magnitude = np.where(index == 0, 0.0, np.exp2(exponent.astype(np.float64)))
            return sign * magnitude * _per_channel(self.scale, nd)
        if self.kind is WeightKind.CODEBOOK:
            flat = self.codes.reshape(self.codes.shape[0], -1)
            rows = np.take_along_axis(np.asarray(self.levels, np.float64), flat.astype(np.int64), axis=1)
            return rows.reshape(self.codes.shape)
        if self.kind is WeightKind.MULTIPOINT:
            nd = codes.ndim
            shape = self.scale.shape + (1,) * (nd - 2)
            per_point = self.scale.reshape(shape) * (codes - self.zero_point.reshape(shape))
            return (self.coeffs.reshape(shape) * per_point).sum(axis=0)
        raise AssertionError(self.kind)


@dataclass
class ActQuant:
    """Uniform activation quantizer: code = clip(round(x * inv_scale) + zero_point, 0, 2^bits - 1).

    `zero_point` is an integer so that zero padding is exactly representable (padding = zero_point code).
    `inv_scale` is stored (float32) because kernels and reference must multiply by the very same number.
    """

    bits: int
    scale: float
    zero_point: int

    def __post_init__(self) -> None:
        if not 1 <= self.bits <= 8:
            raise ValueError(f"activation bits must be in 1..8, got {self.bits}")
        if not (self.scale > 0 and np.isfinite(self.scale)):
            raise ValueError(f"activation scale must be positive, got {self.scale}")
        self.zero_point = int(self.zero_point)
        if not 0 <= self.zero_point < 1 << self.bits:
            raise ValueError(f"zero point {self.zero_point} outside the {self.bits}-bit code range")

    @property
    def inv_scale(self) -> np.float32:
        return np.float32(1.0 / self.scale)

    @property
    def qmax(self) -> int:
        return (1 << self.bits) - 1


@dataclass
class LayerScheme:
    """One quantized conv2d or linear layer: its weights, its input activations and its geometry."""

    name: str
    op: str  # "conv2d" or "linear"
    weight: WeightQuant
    act: ActQuant
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)

    def describe(self) -> str:
        return f"{self.weight.kind.value} W{self.weight.bits}A{self.act.bits}"


@dataclass
class QuantScheme:
    """The quantized model: per-layer schemes keyed by layer name, plus layers kept in float and why."""

    layers: dict[str, LayerScheme] = field(default_factory=dict)
    kept_float: dict[str, str] = field(default_factory=dict)


@dataclass
class IntegerForm:
    """A UNIFORM layer as the integer kernels see it: out = float32(I) * scale, with
    I = sum_k (2*codes[o, k] - zw2[o]) * (a_k - z_a) exactly (see kernels/bitserial.py)."""

    codes: np.ndarray  # (O, K) unsigned weight codes, K flattened in (C, KH, KW) order
    zw2: np.ndarray  # (O,) int32, twice the weight zero point
    scale: np.ndarray  # (O,) float32, s_a * s_w / 2

    @property
    def code_sums(self) -> np.ndarray:
        return self.codes.sum(axis=1, dtype=np.int64).astype(np.int32)


def integer_form(layer: LayerScheme) -> IntegerForm | None:
    """The integer decomposition of a layer, or None if its kind has none (it needs another kernel)."""
    w = layer.weight
    if w.kind is not WeightKind.UNIFORM:
        return None
    zw2 = 2 * np.asarray(w.zero_point, np.float64)
    if not np.allclose(zw2, np.round(zw2)):
        return None
    codes = w.codes.reshape(w.codes.shape[0], -1)
    scale = (layer.act.scale * np.asarray(w.scale, np.float64) / 2).astype(np.float32)
    return IntegerForm(codes, np.round(zw2).astype(np.int32), scale)
