import numpy as np
import pytest

from tvmquant.packing import pack_bitplanes, unpack_bitplanes


@pytest.mark.parametrize("bits,k", [(1, 1), (2, 63), (3, 64), (4, 65), (8, 200)])
def test_pack_roundtrip_and_bit_layout(bits, k):
    rng = np.random.default_rng(bits * 1000 + k)
    codes = rng.integers(0, 1 << bits, (5, k))
    planes = pack_bitplanes(codes, bits)
    assert planes.shape == (5, bits, -(-k // 64)) and planes.dtype == np.uint64
    np.testing.assert_array_equal(unpack_bitplanes(planes, k), codes)
    # bit t of word w in plane i is bit i of code[64*w + t]
    assert int(planes[0, 0, 0]) & 1 == codes[0, 0] & 1


def test_padding_bits_are_zero():
    planes = pack_bitplanes(np.full((1, 3), 7), 3)
    assert all(int(w) == 0b111 for w in planes[0, :, 0])
