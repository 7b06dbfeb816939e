"""VTA instruction encoding and the functional simulator, on hand-made programs."""

import numpy as np
import pytest

from tvmquant.errors import UserError
from tvmquant.vta import bits
from tvmquant.vta.config import from_dict, load_config, to_dict
from tvmquant.vta.isa import AluOp, Insn, Mem, Op, decode, decode_uop, encode, encode_uop
from tvmquant.vta.program import Program, ProgramError
from tvmquant.vta.simulator import START_ORDERS, Dram, Simulator, SimulatorError, estimate

CFG = load_config("default")

# shared/VTA.md's bit layout, typed in from the document (inclusive [msb:lsb]), independent of isa.layout
MEM_FIELDS = {"mem_type": (9, 7), "sram_base": (25, 10), "dram_base": (57, 26), "y_size": (79, 64),
              "x_size": (95, 80), "x_stride": (111, 96), "y_pad_0": (115, 112), "y_pad_1": (119, 116),
              "x_pad_0": (123, 120), "x_pad_1": (127, 124)}
GEMM_FIELDS = {"reset": (7, 7), "uop_bgn": (20, 8), "uop_end": (34, 21), "iter_out": (48, 35), "iter_in": (62, 49),
               "dst_factor_out": (74, 64), "dst_factor_in": (85, 75), "src_factor_out": (96, 86),
               "src_factor_in": (107, 97), "wgt_factor_out": (117, 108), "wgt_factor_in": (127, 118)}
ALU_FIELDS = dict(list(GEMM_FIELDS.items())[:9], alu_opcode=(110, 108), use_imm=(111, 111), imm=(127, 112))
DEPS = {"pop_prev": (3, 3), "pop_next": (4, 4), "push_prev": (5, 5), "push_next": (6, 6)}


@pytest.mark.parametrize("op, table", [(Op.LOAD, MEM_FIELDS), (Op.STORE, MEM_FIELDS), (Op.GEMM, GEMM_FIELDS),
                                       (Op.ALU, ALU_FIELDS), (Op.FINISH, {})])
def test_every_field_sits_where_vta_md_says(op, table):
    for name, (msb, lsb) in (table | DEPS).items():
        width = msb - lsb + 1
        value = -1 if name == "imm" else (1 << width) - 1
        word = int.from_bytes(encode(CFG, Insn(op, {name: value})), "little")
        assert word == ((1 << width) - 1) << lsb | int(op), name
        assert decode(CFG, word.to_bytes(16, "little"))[name] == value


@pytest.mark.parametrize("op, table", [(Op.LOAD, MEM_FIELDS), (Op.GEMM, GEMM_FIELDS), (Op.ALU, ALU_FIELDS)])
def test_random_instructions_round_trip(op, table):
    rng = np.random.default_rng(1)
    for _ in range(50):
        fields = {}
        for name, (msb, lsb) in (table | DEPS).items():
            width = msb - lsb + 1
            fields[name] = int(rng.integers(-(1 << width - 1), 1 << width - 1)) if name == "imm" else int(rng.integers(0, 1 << width))
        back = decode(CFG, encode(CFG, Insn(op, dict(fields))))
        assert back.op is op and back.fields == fields


def test_uop_layout_and_overflow():
    word = encode_uop(CFG, 2047, 1234, 1023)
    assert word == 2047 | 1234 << 11 | 1023 << 22
    assert decode_uop(CFG, word) == (2047, 1234, 1023)
    with pytest.raises(ValueError, match="does not fit"):
        encode_uop(CFG, 2048, 0, 0)
    with pytest.raises(ValueError, match="does not fit"):
        encode(CFG, Insn(Op.ALU, {"imm": 40000}))


def test_configs_load_and_bad_ones_name_the_rule():
    for name in ("default", "w4", "w2", "i4w4"):
        c = load_config(name)
        assert c.wgt_depth <= 1024 and c.acc_depth == 2048
    good = to_dict(CFG)
    for change, rule in [({"LOG_WGT_WIDTH": 2}, "micro-op must fit 32 bits"),
                         ({"LOG_ACC_BUFF_SIZE": 18}, "micro-op must fit"),
                         ({"LOG_ACC_WIDTH": 4}, "LOG_ACC_WIDTH must be 5"),
                         ({"LOG_INP_BUFF_SIZE": 2}, "at least one element"),
                         ({"LOG_BLOCK": "4"}, "must be an integer"),
                         ({"HW_FREQ_MHZ": 0}, "HW_FREQ_MHZ")]:
        with pytest.raises(UserError, match=rule):
            from_dict(good | change)
    with pytest.raises(UserError, match="missing field"):
        from_dict({k: v for k, v in good.items() if k != "LOG_BLOCK"})
    with pytest.raises(UserError, match="not found"):
        load_config("nonexistent")


def test_bit_packing_is_lsb_first():
    assert bits.pack([1, -1, -8, 7], 4) == bytes([0xF1, 0x78])
    assert bits.pack([1, -2, 0, -1], 2) == bytes([0b11001001])
    for b in (1, 2, 4, 8):
        v = np.random.default_rng(b).integers(-(1 << b - 1), 1 << b - 1, 64)
        np.testing.assert_array_equal(bits.unpack(bits.pack(v, b), b, 64), v)


def _gemm_program(cfg, dram, x, w, shift, lo, hi, rows):
    """inp rows x (rows, 16) and one weight block w (16, 16): out = clip((x @ w.T) >> shift, lo, hi)."""
    ib = dram.place(bits.pack(x, cfg.inp_bits)) // cfg.inp_elem_bytes
    wb = dram.place(bits.pack(w, cfg.wgt_bits)) // cfg.wgt_elem_bytes
    out_addr = dram.alloc(rows * cfg.out_elem_bytes)
    p = Program(cfg)
    p.load(Mem.INP, 0, ib, 1, rows, rows)
    p.load(Mem.WGT, 0, wb, 1, 1, 1, push_next=1)
    zero = p.uop_kernel([(r, 0, 0) for r in range(rows)])
    mac = p.uop_kernel([(r, r, 0) for r in range(rows)])
    p.gemm(zero, (1, 1), (0, 0), (0, 0), (0, 0), reset=True, pop_prev=1)
    p.gemm(mac, (1, 1), (0, 0), (0, 0), (0, 0))
    p.alu(AluOp.SHR, zero, (1, 1), (0, 0), imm=shift)
    p.alu(AluOp.MAX, zero, (1, 1), (0, 0), imm=lo)
    p.alu(AluOp.MIN, zero, (1, 1), (0, 0), imm=hi, push_next=1)
    p.store(0, out_addr // cfg.out_elem_bytes, 1, rows, rows, pop_prev=1, push_prev=1)
    p.finish()
    p.link(dram.place(p.uop_bytes()))
    return p, out_addr


@pytest.mark.parametrize("name", ["default", "w2", "i4w4"])
def test_gemm_alu_store_semantics_under_every_start_order(name):
    cfg = load_config(name)
    rng = np.random.default_rng(0)
    rows = 5
    x = rng.integers(-(1 << cfg.inp_bits - 1), 1 << cfg.inp_bits - 1, (rows, 16))
    w = rng.integers(-(1 << cfg.wgt_bits - 1), 1 << cfg.wgt_bits - 1, (16, 16))
    lo, hi = -(1 << cfg.inp_bits - 1), (1 << cfg.inp_bits - 1) - 1
    expect = np.clip((x @ w.T) >> 2, lo + 1, hi - 1)
    for order in START_ORDERS:
        dram = Dram()
        p, out_addr = _gemm_program(cfg, dram, x, w, 2, lo + 1, hi - 1, rows)
        counters = Simulator(cfg, dram, seed=hash(order) % 1000).run(p.insns, order)
        got = bits.unpack(dram.read(out_addr, rows * cfg.out_elem_bytes), cfg.inp_bits, rows * 16).reshape(rows, 16)
        np.testing.assert_array_equal(got, expect)
    assert counters.gemm_uops == rows and counters.alu_uops == 3 * rows
    assert counters.load_bytes["inp"] == rows * cfg.inp_elem_bytes and counters.load_bytes["wgt"] == cfg.wgt_elem_bytes
    assert estimate(cfg, p.insns).cycles == counters.cycles > 0


def test_load_padding_fills_zeros_and_alu_tensor_operands():
    dram = Dram()
    x = np.arange(2 * 3 * 16).reshape(6, 16) % 100 - 50
    base = dram.place(bits.pack(x, 8)) // 16
    acc_rows = np.array([[7] * 16, [3] * 16, [-9] * 16], np.int64)
    abase = dram.place(bits.pack(acc_rows, 32)) // 64
    p = Program(CFG)
    p.load(Mem.INP, 10, base, 2, 3, 3, pads=(1, 2, 1, 0))
    p.load(Mem.ACC, 0, abase, 1, 3, 3)
    k = p.uop_kernel([(0, 1, 0)])
    p.alu(AluOp.SHR, k, (1, 1), (0, 0))  # acc[0] >>= acc[1] (tensor operand)
    p.alu(AluOp.ADD, p.uop_kernel([(2, 0, 0)]), (1, 1), (0, 0))  # acc[2] += acc[0]
    p.add(Op.FINISH)
    p.link(dram.place(p.uop_bytes()))
    sim = Simulator(CFG, dram)
    sim.run(p.insns)
    block = sim.inp[10:10 + 5 * 4].reshape(5, 4, 16)
    expect = np.zeros((5, 4, 16), np.int64)
    expect[1:3, 1:4] = x.reshape(2, 3, 16)
    np.testing.assert_array_equal(block, expect)
    assert sim.acc[0, 0] == 7 >> 3 and sim.acc[2, 0] == -9 + (7 >> 3)


def _bad(program_edit):
    cfg, dram = CFG, Dram()
    rng = np.random.default_rng(0)
    p, _ = _gemm_program(cfg, dram, rng.integers(-5, 5, (4, 16)), rng.integers(-5, 5, (16, 16)), 0, -128, 127, 4)
    program_edit(p)
    return lambda: Simulator(cfg, dram).run(p.insns)


def test_token_errors_are_loud():
    p = Program(CFG)
    p.load(Mem.INP, 0, 1 << 8, 1, 1, 1, push_next=1)
    with pytest.raises(ProgramError, match="unbalanced on load->compute"):
        p.finish()
    with pytest.raises(ProgramError, match="no pop_prev queue"):
        Program(CFG).load(Mem.INP, 0, 256, 1, 1, 1, pop_prev=1)
    # the STORE no longer hands its token back: FINISH's no-op LOAD waits forever
    with pytest.raises(SimulatorError, match="deadlock"):
        _bad(lambda p: p.insns[-3].fields.update(push_prev=0))()
    # the GEMM does not wait for the loads' token: it stays behind after FINISH
    with pytest.raises(SimulatorError, match="pending after FINISH"):
        _bad(lambda p: p.insns[3].fields.update(pop_prev=0))()


def test_overflow_range_and_hazard_errors():
    with pytest.raises(SimulatorError, match="SRAM overflow"):
        _bad(lambda p: p.insns[1].fields.update(sram_base=2046))()
    with pytest.raises(SimulatorError, match="acc index 2050 out of range"):
        _bad(lambda p: p.insns[4].fields.update(iter_out=2, dst_factor_out=2047))()
    with pytest.raises(SimulatorError, match="two consecutive cycles"):
        _bad(lambda p: p.insns[4].fields.update(iter_in=2, uop_end=p.insns[4]["uop_bgn"] + 1))()
    with pytest.raises(SimulatorError, match="not implemented"):
        _bad(lambda p: p.insns[5].fields.update(alu_opcode=4))()
    with pytest.raises(SimulatorError, match="outside the allocated pages"):
        _bad(lambda p: p.insns[1].fields.update(dram_base=3))()
    with pytest.raises(ProgramError, match="micro-op buffer overflow"):
        Program(CFG).uop_kernel([(i % 2048, 0, 0) for i in range(8193)])
