"""Signed low-bit values packed LSB-first into bytes, as VTA's BitPacker lays out 1/2/4/8-bit lanes."""

from __future__ import annotations

import numpy as np


def pack(values: np.ndarray, bits: int) -> bytes:
    """Signed integers (any shape, row-major) -> bytes; value k occupies bits [k*bits, (k+1)*bits)."""
    v = np.asarray(values, np.int64).ravel()
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    if v.size and (v.min() < lo or v.max() > hi):
        raise ValueError(f"values outside the signed {bits}-bit range [{lo}, {hi}]")
    if bits == 8:
        return v.astype(np.int8).tobytes()
    if bits == 32:
        return v.astype("<i4").tobytes()
    u = (v & ((1 << bits) - 1)).astype(np.uint8)
    planes = ((u[:, None] >> np.arange(bits, dtype=np.uint8)) & 1).astype(np.uint8)
    return np.packbits(planes.ravel(), bitorder="little").tobytes()


def unpack(data: bytes | np.ndarray, bits: int, count: int) -> np.ndarray:
    """bytes -> `count` signed integers (int32)."""
    raw = np.frombuffer(bytes(data), np.uint8) if not isinstance(data, np.ndarray) else data
    if bits == 8:
        return raw[:count].view(np.int8).astype(np.int32)
    if bits == 32:
        return raw[: 4 * count].view("<i4").astype(np.int32)
    planes = np.unpackbits(raw, bitorder="little")[: count * bits].reshape(count, bits).astype(np.int32)
    u = (planes << np.arange(bits, dtype=np.int32)).sum(axis=1)
    return np.where(u >= 1 << (bits - 1), u - (1 << bits), u).astype(np.int32)


def truncate(values: np.ndarray, bits: int) -> np.ndarray:
    """The low `bits` bits of int values, sign-extended: what a STORE of an accumulator keeps."""
    u = np.asarray(values, np.int64) & ((1 << bits) - 1)
    return np.where(u >= 1 << (bits - 1), u - (1 << bits), u).astype(np.int32)


def wrap32(values: np.ndarray) -> np.ndarray:
    """int64 -> int32 with two's-complement wrap-around, as the int32 accumulators behave."""
    return np.asarray(values, np.int64).astype(np.int32)
