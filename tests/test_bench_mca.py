"""scripts/bench_mca.py's counting: loops found from the branches, products counted per instruction."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import bench_mca  # noqa: E402

# an outer loop (0x10..0x30) around an inner one (0x14..0x20), plus a forward branch that is not a loop
CODE = [
    (0x10, "mov", "x1, #0"),
    (0x14, "sdot", "v0.4s, v1.16b, v2.16b"),
    (0x18, "cnt", "v3.16b, v4.16b"),
    (0x1C, "subs", "x0, x0, #0x1"),
    (0x20, "b.ne", "0x14 <f+0x4>"),
    (0x24, "cbz", "x2, 0x34 <f+0x24>"),
    (0x28, "fmadd", "s0, s1, s2, s0"),
    (0x2C, "add", "x1, x1, #1"),
    (0x30, "b.lt", "0x10 <f>"),
]


def test_innermost_loop_is_the_nested_one():
    loops = bench_mca.innermost_loops(CODE)
    assert [[addr for addr, _, _ in body] for body in loops] == [[0x14, 0x18, 0x1C, 0x20]]


@pytest.mark.parametrize("family, op, args, bits, expected", [
    ("int8", "sdot", "v0.4s, v1.16b, v2.16b", 8, 16),
    ("int8", "smlal2", "v0.4s, v1.8h, v2.8h", 8, 4),
    ("int8", "mul", "x0, x1, x2", 8, 0),  # scalar index arithmetic is not a product
    ("bitserial", "cnt", "v3.16b, v4.16b", 2, 32),
    ("bitserial", "cnt", "v3.8b, v4.8b", 1, 64),
    ("shift", "add", "v0.8h, v0.8h, v2.8h", 2, 8),  # int16 lanes: one pre-shifted row added per weight
    ("shift", "add", "x0, x1, x2", 2, 0),  # scalar address arithmetic is not a product
    ("lut", "ldrsh", "w0, [x1, x2, lsl #1]", 2, 4 / 3),
    ("lut", "tbl", "v0.16b, { v1.16b, v2.16b, v3.16b, v4.16b }, v5.16b", 2, 16 * 4 / 3),
    ("dequant", "fmla", "v0.4s, v1.4s, v2.4s", 4, 4),
    ("dequant", "fmadd", "s0, s1, s2, s0", 4, 1),
])
def test_macs_per_instruction(family, op, args, bits, expected):
    assert bench_mca.macs(family, op, args, bits) == pytest.approx(expected)


def test_mca_source_points_the_branch_at_the_label():
    source = bench_mca.mca_source(bench_mca.innermost_loops(CODE)[0])
    assert source.splitlines()[0] == ".Lloop:" and source.splitlines()[-1] == "  b.ne .Lloop"
