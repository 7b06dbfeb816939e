"""VTA instruction and micro-op encoding: 128-bit little-endian instruction words, 32-bit micro-ops.

Field widths follow include/vta/hw_spec.h and depend on the configuration (index fields are log2 of the buffer
depths). The C structs are uint64_t bit-fields, so a field that would straddle a 64-bit boundary starts the
next word (GCC's rule); `layout` reproduces that, and for the default config gives exactly shared/VTA.md's
bit positions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from functools import lru_cache

from .config import LOOP_ITER_WIDTH, SRAM_ADDR_WIDTH, VtaConfig


class Op(IntEnum):
    LOAD = 0
    STORE = 1
    GEMM = 2
    FINISH = 3
    ALU = 4


class Mem(IntEnum):
    UOP = 0
    WGT = 1
    INP = 2
    ACC = 3
    OUT = 4
    ACC_8BIT = 5


class AluOp(IntEnum):
    MIN = 0
    MAX = 1
    ADD = 2
    SHR = 3


DEP_FIELDS = ("pop_prev", "pop_next", "push_prev", "push_next")
SIGNED_FIELDS = {"imm"}


@dataclass
class Insn:
    """One instruction: its opcode and named fields (names as in hw_spec.h, see `layout`)."""

    op: Op
    fields: dict[str, int] = field(default_factory=dict)

    def __getitem__(self, name: str) -> int:
        return self.fields.get(name, 0)

    def __setitem__(self, name: str, value: int) -> None:
        self.fields[name] = int(value)


def _pack(widths: list[tuple[str, int]], unit: int) -> dict[str, tuple[int, int]]:
    """{field: (lsb, width)} for C bit-fields in `unit`-bit storage units."""
    out, pos = {}, 0
    for name, width in widths:
        if pos // unit != (pos + width - 1) // unit:
            pos = (pos // unit + 1) * unit
        out[name] = (pos, width)
        pos += width
    return out


@lru_cache(maxsize=None)
def layout(config: VtaConfig, op: Op) -> dict[str, tuple[int, int]]:
    """Bit positions of every field of an instruction of kind `op` (FINISH: the generic header only)."""
    d = config.log_depths
    head = [("opcode", 3)] + [(name, 1) for name in DEP_FIELDS]
    if op in (Op.LOAD, Op.STORE):
        body = [("mem_type", 3), ("sram_base", SRAM_ADDR_WIDTH), ("dram_base", 32), ("y_size", 16),
                ("x_size", 16), ("x_stride", 16), ("y_pad_0", 4), ("y_pad_1", 4), ("x_pad_0", 4), ("x_pad_1", 4)]
    elif op in (Op.GEMM, Op.ALU):
        body = [("reset", 1), ("uop_bgn", d["uop"]), ("uop_end", d["uop"] + 1), ("iter_out", LOOP_ITER_WIDTH),
                ("iter_in", LOOP_ITER_WIDTH), ("dst_factor_out", d["acc"]), ("dst_factor_in", d["acc"])]
        src = d["inp"] if op is Op.GEMM else d["acc"]
        body += [("src_factor_out", src), ("src_factor_in", src)]
        body += ([("wgt_factor_out", d["wgt"]), ("wgt_factor_in", d["wgt"])] if op is Op.GEMM
                 else [("alu_opcode", 3), ("use_imm", 1), ("imm", 16)])
    else:
        body = []
    return _pack(head + body, 64)


@lru_cache(maxsize=None)
def uop_layout(config: VtaConfig) -> dict[str, tuple[int, int]]:
    """Micro-op fields: dst (acc index), src (inp or acc index), wgt."""
    d = config.log_depths
    return _pack([("dst", d["acc"]), ("src", max(d["acc"], d["inp"])), ("wgt", d["wgt"])], 32)


def _put(word: int, name: str, value: int, lsb: int, width: int) -> int:
    if name in SIGNED_FIELDS:
        if not -(1 << (width - 1)) <= value < 1 << (width - 1):
            raise ValueError(f"field {name}={value} does not fit a signed {width}-bit field")
        value &= (1 << width) - 1
    elif not 0 <= value < 1 << width:
        raise ValueError(f"field {name}={value} does not fit {width} bits")
    return word | value << lsb


def encode(config: VtaConfig, insn: Insn) -> bytes:
    """16 little-endian bytes."""
    fields = layout(config, insn.op)
    unknown = set(insn.fields) - set(fields)
    if unknown:
        raise ValueError(f"{insn.op.name} has no field(s) {sorted(unknown)}")
    word = 0
    for name, (lsb, width) in fields.items():
        value = int(insn.op) if name == "opcode" else insn[name]
        word = _put(word, name, value, lsb, width)
    return word.to_bytes(16, "little")


def decode(config: VtaConfig, data: bytes) -> Insn:
    word = int.from_bytes(data, "little")
    opcode = word & 7
    try:
        op = Op(opcode)
    except ValueError:
        raise ValueError(f"unknown opcode {opcode}") from None
    insn = Insn(op)
    for name, (lsb, width) in layout(config, op).items():
        if name == "opcode":
            continue
        value = word >> lsb & (1 << width) - 1
        if name in SIGNED_FIELDS and value >> (width - 1):
            value -= 1 << width
        insn[name] = value
    return insn


def encode_uop(config: VtaConfig, dst: int, src: int, wgt: int = 0) -> int:
    word = 0
    for name, value in (("dst", dst), ("src", src), ("wgt", wgt)):
        lsb, width = uop_layout(config)[name]
        word = _put(word, name, value, lsb, width)
    return word


def decode_uop(config: VtaConfig, word: int) -> tuple[int, int, int]:
    fields = uop_layout(config)
    return tuple(word >> lsb & (1 << width) - 1 for lsb, width in (fields["dst"], fields["src"], fields["wgt"]))


def encode_stream(config: VtaConfig, insns: list[Insn]) -> bytes:
    return b"".join(encode(config, insn) for insn in insns)


def decode_stream(config: VtaConfig, data: bytes) -> list[Insn]:
    if len(data) % 16:
        raise ValueError(f"an instruction stream is a multiple of 16 bytes, got {len(data)}")
    return [decode(config, data[i:i + 16]) for i in range(0, len(data), 16)]
