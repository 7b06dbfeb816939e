"""An instruction-stream builder: VTA instructions, micro-op kernels, and the dependency tokens between modules.

VTA's fetch unit hands each instruction to one of three modules; LOAD of inputs and weights goes to the load
module, STORE to the store module, everything else (GEMM, ALU, FINISH, LOAD of micro-ops and accumulators) to
compute. Modules order each other only through four token queues; an instruction pops (waits for) a token
before it runs and pushes one after. The builder refuses flags a module cannot use and counts tokens, so an
unbalanced program is caught when it is built, not when a board hangs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .config import VtaConfig
from .isa import AluOp, Insn, Mem, Op, encode_stream, encode_uop

MODULES = ("load", "compute", "store")
# (module, flag) -> token queue it pops from / pushes to
QUEUE_OF = {
    ("load", "pop_next"): "compute->load", ("load", "push_next"): "load->compute",
    ("compute", "pop_prev"): "load->compute", ("compute", "pop_next"): "store->compute",
    ("compute", "push_prev"): "compute->load", ("compute", "push_next"): "compute->store",
    ("store", "pop_prev"): "compute->store", ("store", "push_prev"): "store->compute",
}
QUEUES = ("load->compute", "compute->load", "compute->store", "store->compute")


class ProgramError(ValueError):
    """A program that VTA could not run as intended (bad token flags, unbalanced tokens, full buffers)."""


def module_of(insn: Insn) -> str:
    if insn.op is Op.STORE:
        return "store"
    if insn.op is Op.LOAD and insn["mem_type"] in (Mem.INP, Mem.WGT):
        return "load"
    return "compute"


@dataclass
class Program:
    """Instructions plus the micro-op buffer they index; `uop_kernel` deduplicates identical kernels."""

    config: VtaConfig
    insns: list[Insn] = field(default_factory=list)
    uops: list[int] = field(default_factory=list)
    _kernels: dict[tuple, tuple[int, int]] = field(default_factory=dict)

    def add(self, op: Op, **fields: int) -> Insn:
        insn = Insn(op, {k: int(v) for k, v in fields.items()})
        module = module_of(insn)
        for flag in ("pop_prev", "pop_next", "push_prev", "push_next"):
            if insn[flag] and (module, flag) not in QUEUE_OF:
                raise ProgramError(f"{op.name} runs on the {module} module, which has no {flag} queue")
        self.insns.append(insn)
        return insn

    def uop_kernel(self, uops: list[tuple[int, int, int]]) -> tuple[int, int]:
        """[bgn, end) of these (dst, src, wgt) micro-ops in the uop buffer (added once)."""
        key = tuple(uops)
        if key not in self._kernels:
            words = [encode_uop(self.config, *u) for u in uops]
            if len(self.uops) + len(words) > self.config.uop_depth:
                raise ProgramError(f"micro-op buffer overflow: {len(self.uops) + len(words)} > depth {self.config.uop_depth}")
            self._kernels[key] = (len(self.uops), len(self.uops) + len(words))
            self.uops.extend(words)
        return self._kernels[key]

    def load(self, mem: Mem, sram: int, dram: int, y: int, x: int, stride: int,
             pads: tuple[int, int, int, int] = (0, 0, 0, 0), **deps: int) -> Insn:
        y0, y1, x0, x1 = pads
        return self.add(Op.LOAD, mem_type=mem, sram_base=sram, dram_base=dram, y_size=y, x_size=x,
                        x_stride=stride, y_pad_0=y0, y_pad_1=y1, x_pad_0=x0, x_pad_1=x1, **deps)

    def store(self, sram: int, dram: int, y: int, x: int, stride: int, **deps: int) -> Insn:
        return self.add(Op.STORE, mem_type=Mem.OUT, sram_base=sram, dram_base=dram, y_size=y, x_size=x,
                        x_stride=stride, **deps)

    def gemm(self, kernel: tuple[int, int], iters: tuple[int, int], dst: tuple[int, int], src: tuple[int, int],
             wgt: tuple[int, int], reset: bool = False, **deps: int) -> Insn:
        return self.add(Op.GEMM, reset=reset, uop_bgn=kernel[0], uop_end=kernel[1], iter_out=iters[0],
                        iter_in=iters[1], dst_factor_out=dst[0], dst_factor_in=dst[1], src_factor_out=src[0],
                        src_factor_in=src[1], wgt_factor_out=wgt[0], wgt_factor_in=wgt[1], **deps)

    def alu(self, op: AluOp, kernel: tuple[int, int], iters: tuple[int, int], dst: tuple[int, int],
            src: tuple[int, int] = (0, 0), imm: int | None = None, **deps: int) -> Insn:
        return self.add(Op.ALU, uop_bgn=kernel[0], uop_end=kernel[1], iter_out=iters[0], iter_in=iters[1],
                        dst_factor_out=dst[0], dst_factor_in=dst[1], src_factor_out=src[0], src_factor_in=src[1],
                        alu_opcode=op, use_imm=imm is not None, imm=imm or 0, **deps)

    def finish(self) -> None:
        """A no-op LOAD that takes the last STORE's token, then FINISH: nothing can be pending after it."""
        self.add(Op.LOAD, mem_type=Mem.UOP, x_size=0, pop_next=1)
        self.add(Op.FINISH)
        self.check_balanced()

    def link(self, uop_address: int) -> None:
        """Load the micro-op buffer (placed at physical byte address `uop_address`) first, on the compute
        module, before any GEMM/ALU uses it."""
        if self.insns and self.insns[0].op is Op.LOAD and self.insns[0]["mem_type"] == Mem.UOP and self.insns[0]["x_size"]:
            raise ProgramError("program already linked")
        base, n = uop_address // self.config.uop_elem_bytes, len(self.uops)
        self.insns.insert(0, Insn(Op.LOAD, {"mem_type": int(Mem.UOP), "dram_base": base, "y_size": 1,
                                            "x_size": n, "x_stride": n}))

    def token_counts(self) -> dict[str, list[int]]:
        """{queue: [pushed, popped]}"""
        counts = {q: [0, 0] for q in QUEUES}
        for insn in self.insns:
            module = module_of(insn)
            for flag in ("pop_prev", "pop_next", "push_prev", "push_next"):
                if insn[flag]:
                    counts[QUEUE_OF[module, flag]][flag.startswith("pop")] += 1
        return counts

    def check_balanced(self) -> None:
        for queue, (pushed, popped) in self.token_counts().items():
            if pushed != popped:
                raise ProgramError(f"dependency tokens unbalanced on {queue}: {pushed} pushed, {popped} popped")

    def insn_bytes(self) -> bytes:
        return encode_stream(self.config, self.insns)

    def uop_bytes(self) -> bytes:
        return b"".join(w.to_bytes(4, "little") for w in self.uops)
