"""A bit-exact functional simulator of VTA: fetch, the load/compute/store modules, their command queues and
four dependency-token queues, the SRAMs at their configured depths, DRAM as 4 KiB pages.

Semantics follow apache/tvm-vta's sim_driver.cc: LOAD zero-fills its padding, GEMM accumulates
inp · wgtᵀ over the micro-op loops in int32, ALU applies MIN/MAX/ADD/SHR to int32 accumulators (an immediate
or another accumulator row), STORE writes the 8-bit (or narrower) output memory that GEMM/ALU keep as the
truncated low bits of what they wrote. SRAMs start with random contents (as on hardware, uninitialised), so
reading what was never written shows up as a wrong result. The scheduler runs each module as far as its
tokens allow, in a chosen start order; a program must give the same bytes under every order. Timing (cycles.py)
is collected in the same pass: an instruction starts at the later of its module's clock and its tokens' times.
Every violation (token deadlock or imbalance, work pending after FINISH, SRAM overflow, an index past a buffer,
DRAM outside the allocated pages, a hazard the hardware forbids) raises SimulatorError.
"""

from __future__ import annotations

from collections import deque
from itertools import permutations

import numpy as np

from . import bits
from .config import VtaConfig
from .cycles import Counters, cost
from .isa import AluOp, Insn, Mem, Op, uop_layout
from .program import MODULES, QUEUE_OF, QUEUES, ProgramError, module_of

PAGE = 4096
CMD_QUEUE_DEPTH = 512
TOKEN_QUEUE_DEPTH = 1024
START_ORDERS = list(permutations(MODULES))


class SimulatorError(ProgramError):
    """The program did something VTA hardware cannot do, or would hang on."""


class Dram:
    """Physical memory as pages; page 0 (addresses 0-4095) never exists, like the driver's page table."""

    def __init__(self) -> None:
        self.mem = np.zeros(PAGE, np.uint8)

    def alloc(self, nbytes: int) -> int:
        """A fresh page-aligned region; its physical byte address."""
        addr = len(self.mem)
        pages = max(1, -(-nbytes // PAGE))
        self.mem = np.concatenate([self.mem, np.zeros(pages * PAGE, np.uint8)])
        return addr

    def place(self, data: bytes) -> int:
        addr = self.alloc(len(data))
        self.write(addr, data)
        return addr

    def _check(self, addr: int, n: int) -> None:
        if addr < PAGE or addr + n > len(self.mem):
            raise SimulatorError(f"DRAM access [{addr:#x}, {addr + n:#x}) outside the allocated pages")

    def write(self, addr: int, data: bytes | np.ndarray) -> None:
        data = np.frombuffer(bytes(data), np.uint8)
        self._check(addr, len(data))
        self.mem[addr:addr + len(data)] = data

    def read(self, addr: int, n: int) -> np.ndarray:
        self._check(addr, n)
        return self.mem[addr:addr + n]


class Simulator:
    """One VTA core's state; `run` executes a program against a Dram."""

    def __init__(self, config: VtaConfig, dram: Dram | None, seed: int = 0):
        """`dram` None: a timing-only core without SRAM contents."""
        self.config, self.dram = config, dram
        self._last_gemm_dst: int | None = None
        if dram is None:
            return
        c, rng = config, np.random.default_rng(seed)
        lanes = c.batch * c.block

        def garbage(shape, width):
            return rng.integers(-(1 << (width - 1)), 1 << (width - 1), shape, dtype=np.int64).astype(np.int32)

        self.inp = garbage((c.inp_depth, lanes), c.inp_bits)
        self.wgt = garbage((c.wgt_depth, c.block, c.block), c.wgt_bits)
        self.acc = garbage((c.acc_depth, lanes), 32)
        self.out = garbage((c.acc_depth, lanes), c.inp_bits)
        self.uop = rng.integers(0, 1 << 32, c.uop_depth, dtype=np.uint64).astype(np.int64)

    # ---------------------------------------------------------------- scheduling
    def run(self, insns: list[Insn], order: tuple[str, ...] = MODULES, execute: bool = True) -> Counters:
        """Run to FINISH with modules started in `order`; returns the counters and cycle estimate."""
        queues = {m: deque() for m in MODULES}
        tokens = {q: deque() for q in QUEUES}
        clock = {m: 0 for m in MODULES}
        counters, fetched, finished = Counters(), 0, False
        while not finished:
            progress = False
            while fetched < len(insns) and len(queues[module_of(insns[fetched])]) < CMD_QUEUE_DEPTH:
                queues[module_of(insns[fetched])].append(fetched)
                fetched += 1
                progress = True
            for module in order:
                while queues[module] and not finished:
                    insn = insns[queues[module][0]]
                    pops = [QUEUE_OF[module, f] for f in ("pop_prev", "pop_next") if insn[f]]
                    pushes = [QUEUE_OF[module, f] for f in ("push_prev", "push_next") if insn[f]]
                    if any(not tokens[q] for q in pops) or any(len(tokens[q]) >= TOKEN_QUEUE_DEPTH for q in pushes):
                        break
                    start = max([clock[module]] + [tokens[q].popleft() for q in pops])
                    if execute:
                        self._execute(insn, queues[module][0])
                    if module == "compute" and insn.op is not Op.GEMM:
                        self._last_gemm_dst = None
                    counters.count(self.config, insn)
                    took = cost(self.config, insn)
                    clock[module] = start + took
                    counters.busy[module] += took
                    for q in pushes:
                        tokens[q].append(clock[module])
                    queues[module].popleft()
                    progress = True
                    finished = insn.op is Op.FINISH
            if not finished and not progress:
                if fetched == len(insns) and not any(queues.values()):
                    raise SimulatorError("the program ended without FINISH")
                heads = ", ".join(f"{m} waits at #{q[0]} {insns[q[0]].op.name}" for m, q in queues.items() if q)
                raise SimulatorError(f"deadlock: every module waits for a dependency token ({heads})")
        pending = [f"{m}: {len(q)} instruction(s)" for m, q in queues.items() if q]
        pending += [f"{len(insns) - fetched} unfetched"] if fetched < len(insns) else []
        pending += [f"{len(t)} token(s) left on {q}" for q, t in tokens.items() if t]
        if pending:
            raise SimulatorError(f"work pending after FINISH (tokens unbalanced or missing): {'; '.join(pending)}")
        counters.cycles = max(clock.values())
        return counters

    # ---------------------------------------------------------------- instructions
    def _execute(self, insn: Insn, index: int) -> None:
        try:
            {Op.LOAD: self._load, Op.STORE: self._store, Op.GEMM: self._gemm, Op.ALU: self._alu,
             Op.FINISH: lambda _: None}[insn.op](insn)
        except SimulatorError as exc:
            raise SimulatorError(f"instruction #{index} {insn.op.name}: {exc}") from None

    def _buffer(self, mem: Mem) -> tuple[str, np.ndarray | None, int]:
        c = self.config
        return {Mem.UOP: ("uop", self.uop, c.uop_depth), Mem.INP: ("inp", self.inp, c.inp_depth),
                Mem.WGT: ("wgt", self.wgt, c.wgt_depth), Mem.ACC: ("acc", self.acc, c.acc_depth),
                Mem.OUT: ("out", self.out, c.acc_depth)}.get(mem, (None, None, 0))

    def _load(self, insn: Insn) -> None:
        mem = insn["mem_type"]
        if insn["x_size"] == 0:
            return
        name, buf, depth = self._buffer(Mem(mem) if mem in list(Mem) else None)
        if name is None or mem == Mem.OUT:
            raise SimulatorError(f"LOAD cannot read memory type {mem}")
        pads = (insn["y_pad_0"], insn["y_pad_1"], insn["x_pad_0"], insn["x_pad_1"])
        if any(pads) and mem in (Mem.WGT, Mem.UOP):
            raise SimulatorError(f"{name} loads take no padding, got {pads}")
        y, x, stride = insn["y_size"], insn["x_size"], insn["x_stride"]
        cols, rows = x + pads[2] + pads[3], y + pads[0] + pads[1]
        base = insn["sram_base"]
        if base + rows * cols > depth:
            raise SimulatorError(f"SRAM overflow: LOAD writes {name}[{base}..{base + rows * cols - 1}], depth {depth}")
        width = {"uop": 32, "inp": self.config.inp_bits, "wgt": self.config.wgt_bits, "acc": 32}[name]
        elem = self.config.elem_bytes(name)
        lanes = buf[0].size if name != "uop" else 1
        data = np.stack([bits.unpack(self.dram.read((insn["dram_base"] + r * stride) * elem, x * elem), width, x * lanes)
                         for r in range(y)])
        block = np.zeros((rows, cols) + buf.shape[1:], buf.dtype)
        inner = data.reshape((y, x) + buf.shape[1:])
        block[pads[0]:pads[0] + y, pads[2]:pads[2] + x] = inner.astype(np.uint32).astype(np.int64) if name == "uop" else inner
        buf[base:base + rows * cols] = block.reshape((rows * cols,) + buf.shape[1:])

    def _store(self, insn: Insn) -> None:
        if insn["mem_type"] != Mem.OUT:
            raise SimulatorError(f"STORE writes only the output memory (type {int(Mem.OUT)}), got {insn['mem_type']}")
        if any(insn[p] for p in ("y_pad_0", "y_pad_1", "x_pad_0", "x_pad_1")):
            raise SimulatorError("STORE takes no padding")
        y, x, base = insn["y_size"], insn["x_size"], insn["sram_base"]
        if base + x * y > self.config.acc_depth:
            raise SimulatorError(f"SRAM overflow: STORE reads out[{base}..{base + x * y - 1}], depth {self.config.acc_depth}")
        elem = self.config.out_elem_bytes
        for r in range(y):
            rows = self.out[base + r * x: base + (r + 1) * x]
            self.dram.write((insn["dram_base"] + r * insn["x_stride"]) * elem, bits.pack(rows, self.config.inp_bits))

    def _uop_indices(self, insn: Insn, src_depth: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(dst, src, wgt) index of every micro-op execution, in issue order."""
        bgn, end = insn["uop_bgn"], insn["uop_end"]
        if not bgn <= end <= self.config.uop_depth:
            raise SimulatorError(f"micro-op range [{bgn}, {end}) outside the uop buffer (depth {self.config.uop_depth})")
        words = self.uop[bgn:end]
        fields = uop_layout(self.config)

        def field(name):
            lsb, width = fields[name]
            return (words >> lsb) & ((1 << width) - 1)

        o = np.arange(insn["iter_out"])[:, None, None]
        i = np.arange(insn["iter_in"])[None, :, None]

        def index(name, factor):
            base = field(name)[None, None, :]
            return (base + o * insn[f"{factor}_factor_out"] + i * insn[f"{factor}_factor_in"]).ravel()

        dst, src = index("dst", "dst"), index("src", "src")
        wgt = index("wgt", "wgt") if insn.op is Op.GEMM else np.zeros_like(dst)
        for what, idx, depth in (("acc", dst, self.config.acc_depth), ("src", src, src_depth),
                                 ("wgt", wgt, self.config.wgt_depth)):
            if idx.size and idx.max() >= depth:
                raise SimulatorError(f"{what} index {int(idx.max())} out of range (depth {depth})")
        return dst, src, wgt

    def _gemm(self, insn: Insn) -> None:
        dst, src, wgt = self._uop_indices(insn, self.config.inp_depth)
        if not dst.size:
            return
        same = np.flatnonzero(dst[1:] == dst[:-1])
        if same.size or self._last_gemm_dst == dst[0]:
            at = int(dst[same[0]]) if same.size else int(dst[0])
            raise SimulatorError(f"GEMM writes acc[{at}] in two consecutive cycles (a pipeline hazard)")
        self._last_gemm_dst = int(dst[-1])
        if insn["reset"]:
            self.acc[dst] = 0
            self.out[dst] = 0
            return
        acc = self.acc.astype(np.int64)
        order = np.argsort(wgt, kind="stable")
        keys, starts = np.unique(wgt[order], return_index=True)
        bounds = list(starts[1:]) + [len(order)]
        inp = self.inp.astype(np.int64)
        for key, s, e in zip(keys, starts, bounds):
            sel = order[s:e]
            np.add.at(acc, dst[sel], inp[src[sel]] @ self.wgt[key].astype(np.int64).T)
        touched = np.unique(dst)
        self.acc[touched] = bits.wrap32(acc[touched])
        self.out[touched] = bits.truncate(self.acc[touched], self.config.inp_bits)

    def _alu(self, insn: Insn) -> None:
        op = insn["alu_opcode"]
        if op not in list(AluOp):
            raise SimulatorError(f"ALU opcode {op} is not implemented by the VTA hardware (MUL is not)")
        dst, src, _ = self._uop_indices(insn, self.config.acc_depth)
        if not dst.size:
            return
        imm = insn["imm"] if insn["use_imm"] else None
        if op == AluOp.SHR:
            amounts = np.asarray(imm) if imm is not None else self.acc[np.unique(src)]
            if amounts.min() < 0 or amounts.max() > 15:
                raise SimulatorError("SHR amounts must be 0..15")
        fn = {AluOp.MIN: np.minimum, AluOp.MAX: np.maximum, AluOp.ADD: np.add,
              AluOp.SHR: np.right_shift}[AluOp(op)]
        independent = len(np.unique(dst)) == len(dst) and (
            imm is not None or not np.isin(src[src != dst], dst).any())
        if independent:
            b = np.int64(imm) if imm is not None else self.acc[src].astype(np.int64)
            self.acc[dst] = bits.wrap32(fn(self.acc[dst].astype(np.int64), b))
        else:
            for d, s in zip(dst, src):
                b = np.int64(imm) if imm is not None else self.acc[s].astype(np.int64)
                self.acc[d] = bits.wrap32(fn(self.acc[d].astype(np.int64), b))
        self.out[dst] = bits.truncate(self.acc[dst], self.config.inp_bits)


def run_program(config: VtaConfig, insns: list[Insn], dram: Dram, order: tuple[str, ...] = MODULES,
                seed: int = 0) -> Counters:
    return Simulator(config, dram, seed).run(insns, order)


def estimate(config: VtaConfig, insns: list[Insn]) -> Counters:
    """Timing and counters only, without data (for the tuner): the same scheduler and checks on tokens."""
    return Simulator(config, None).run(insns, execute=False)
