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
            index, negative = pow2_fields(self.codes, self.bits)
            sign = np.where(negative, -1.0, 1.0)
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
    """One quantized conv2d or linear layer: its weights, its input activations and its geometry (`groups`:
    a grouped conv's weight is (O, C/groups, KH, KW), each output channel's codes cover its group only)."""

    name: str
    op: str  # "conv2d" or "linear"
    weight: WeightQuant
    act: ActQuant
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    groups: int = 1

    def describe(self) -> str:
        return f"{self.weight.kind.value} W{self.weight.bits}A{self.act.bits}"


@dataclass
class QuantScheme:
    """The quantized model: per-layer schemes keyed by layer name, plus layers kept in float and why."""

    layers: dict[str, LayerScheme] = field(default_factory=dict)
    kept_float: dict[str, str] = field(default_factory=dict)


@dataclass
class IntegerCore:
    """The exact arithmetic of one quantized layer, shared by the reference and every kernel family.

    With a_k the activation codes and z_a their zero point, J integer weight matrices T_j give exact integers

        I_j[o] = sum_k T_j[o, k] * (a_k - z_a)
        out[o] = float32(sum_j combine[j, o] * I_j[o]) * scale[o]      (sum in float64, j ascending, from 0)

    UNIFORM and POW2 need one matrix with combine = 1, so out = float32(I) * scale, integer all the way.
    CODEBOOK needs one 0/1 matrix per code (T_l = [code == l], combine = the level values) and MULTIPOINT one
    matrix per point. One-hot matrices are not stored: `onehot` holds the codes and `term(j)` builds them.
    """

    combine: np.ndarray  # (J, O) float64
    scale: np.ndarray  # (O,) float32
    matrices: np.ndarray | None = None  # (J, O, K) int64, K flattened in (C, KH, KW) order
    onehot: np.ndarray | None = None  # (O, K) codes; T_j = (codes == j)

    @property
    def terms(self) -> int:
        return len(self.combine)

    def nonzero_terms(self) -> list[int]:
        """The j whose T_j is not all zero (the others add exactly +0), or [0] if every T_j is zero."""
        return [j for j in range(self.terms) if self.term(j).any()] or [0]

    def term(self, j: int) -> np.ndarray:
        """T_j as an (O, K) int64 matrix."""
        if self.matrices is not None:
            return self.matrices[j]
        return (self.onehot == j).astype(np.int64)


POW2_MAX_SPAN = 24  # exponent range held as integer shifts; wider POW2 layers use the one-hot (codebook) form


def integer_core(layer: LayerScheme) -> IntegerCore:
    """The IntegerCore of any layer (see there); kinds map to it as DESIGN.md's kernel table describes."""
    w, s_a = layer.weight, layer.act.scale
    out = w.out_channels
    ones = np.ones((1, out))
    if w.kind is WeightKind.UNIFORM:
        codes = w.codes.reshape(out, -1).astype(np.int64)
        zw2 = 2 * np.asarray(w.zero_point, np.float64)
        if half_integers(w.zero_point):
            matrix = 2 * codes - np.round(zw2).astype(np.int64)[:, None]
            return IntegerCore(ones, (s_a * np.asarray(w.scale, np.float64) / 2).astype(np.float32), matrix[None])
        sw = np.asarray(w.scale, np.float64)
        combine = np.stack([sw, -sw * np.asarray(w.zero_point, np.float64)])
        return IntegerCore(combine, np.full(out, s_a, np.float32), np.stack([codes, np.ones_like(codes)]))
    if w.kind is WeightKind.POW2:
        codes = w.codes.reshape(out, -1)
        index, negative = pow2_fields(codes, w.bits)
        exponent = np.asarray(w.exp_max, np.int64)[:, None] - (index - 1)
        used = np.where(index > 0, exponent, np.iinfo(np.int64).max)
        emin = np.minimum(used.min(axis=1), np.asarray(w.exp_max, np.int64))
        shift = np.where(index > 0, exponent - emin[:, None], 0)
        if int(shift.max(initial=0)) <= POW2_MAX_SPAN:
            matrix = np.where(index > 0, np.where(negative, -1, 1) << shift, 0)
            scale = (s_a * np.asarray(w.scale, np.float64) * np.exp2(emin.astype(np.float64))).astype(np.float32)
            return IntegerCore(ones, scale, matrix[None])
    if w.kind in (WeightKind.POW2, WeightKind.CODEBOOK):
        levels = _code_levels(w)
        return IntegerCore(levels.T.copy(), np.full(out, s_a, np.float32), onehot=w.codes.reshape(out, -1))
    if w.kind is WeightKind.MULTIPOINT:
        points = len(w.codes)
        codes = w.codes.reshape(points, out, -1).astype(np.int64)
        zw2 = 2 * np.asarray(w.zero_point, np.float64)
        if not half_integers(w.zero_point):
            raise ValueError(f"layer {layer.name}: multipoint zero points must be multiples of 1/2")
        matrices = 2 * codes - np.round(zw2).astype(np.int64)[:, :, None]
        combine = np.asarray(w.coeffs, np.float64) * np.asarray(w.scale, np.float64) / 2
        return IntegerCore(combine, np.full(out, s_a, np.float32), matrices)
    raise AssertionError(w.kind)


def narrowest_int(values: np.ndarray) -> str:
    """int8, int16 or int32: the narrowest signed type that holds every value of an integer core's matrix, so
    that kernels store its entries in as few bytes as they need (int32 where a value passes int16)."""
    peak = int(np.abs(values).max(initial=0))
    return next(t for t, bound in (("int8", 127), ("int16", 2**15 - 1), ("int32", 2**31 - 1)) if peak <= bound)


def half_integers(zero_point: np.ndarray) -> bool:
    """Whether weight zero points are multiples of 1/2, so that 2 * (code - zero point) is an integer."""
    twice = 2 * np.asarray(zero_point, np.float64)
    return bool(np.allclose(twice, np.round(twice)))


def pow2_fields(codes: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """(exponent index, negative) of POW2 codes: the top bit is the sign, index 0 stands for zero."""
    sign_bit = 1 << (bits - 1)
    return (codes & (sign_bit - 1)).astype(np.int64), (codes & sign_bit) != 0


def _code_levels(w: WeightQuant) -> np.ndarray:
    """(O, 2^bits) float64: the value of every code in every output channel."""
    probe = np.broadcast_to(np.arange(1 << w.bits, dtype=np.uint8), (w.out_channels, 1 << w.bits))
    return WeightQuant(w.kind, w.bits, probe, w.scale, w.zero_point, w.levels, w.exp_max, w.coeffs).dequantize()
