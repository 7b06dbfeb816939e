"""Bit-plane packing of integer codes: the layout the bit-serial kernels read.

A (rows, K) array of b-bit codes becomes (rows, b, ceil(K/64)) uint64 words: bit t of word w in plane i is
bit i of code[row, 64*w + t]. The K tail is zero-padded; a zero bit contributes nothing to AND + popcount.
"""

from __future__ import annotations

import numpy as np

WORD_BITS = 64


def num_words(k: int) -> int:
    return -(-k // WORD_BITS)


def pack_bitplanes(codes: np.ndarray, bits: int) -> np.ndarray:
    """Pack (rows, K) codes into (rows, bits, ceil(K/64)) uint64 bit-planes."""
    codes = np.asarray(codes)
    rows, k = codes.shape
    padded = np.zeros((rows, num_words(k) * WORD_BITS), dtype=np.uint64)
    padded[:, :k] = codes
    planes = (padded[:, None, :] >> np.arange(bits, dtype=np.uint64)[None, :, None]) & np.uint64(1)
    planes = planes.reshape(rows, bits, -1, WORD_BITS)
    weights = np.left_shift(np.uint64(1), np.arange(WORD_BITS, dtype=np.uint64))
    return (planes * weights).sum(axis=-1, dtype=np.uint64)


def unpack_bitplanes(planes: np.ndarray, k: int) -> np.ndarray:
    """Inverse of pack_bitplanes: (rows, bits, words) uint64 -> (rows, k) int64 codes."""
    rows, bits, words = planes.shape
    bit_of = (planes[..., None] >> np.arange(WORD_BITS, dtype=np.uint64)) & np.uint64(1)
    bit_of = bit_of.reshape(rows, bits, words * WORD_BITS)[:, :, :k].astype(np.int64)
    return (bit_of << np.arange(bits)[None, :, None]).sum(axis=1)
