"""The cycle model: what each instruction costs on its module, and the counters a run collects.

GEMM issues one micro-op per cycle and ALU one per two (shared/VTA.md); a DMA transfer costs a fixed setup
latency plus its bytes at the configuration's DMA_BYTES_PER_CYCLE, and each padding element one SRAM write
cycle. Modules overlap as far as the dependency tokens allow: the simulator's scheduler starts an instruction at
the later of its module's clock and the times its popped tokens were pushed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .config import VtaConfig
from .isa import Insn, Mem, Op

DMA_LATENCY = 32  # cycles to start an AXI burst: the fixed part of every LOAD/STORE that moves data
PIPELINE_FILL = 4  # cycles before a GEMM/ALU instruction's first micro-op retires
MEM_NAMES = {Mem.UOP: "uop", Mem.WGT: "wgt", Mem.INP: "inp", Mem.ACC: "acc", Mem.OUT: "out"}


def uop_count(insn: Insn) -> int:
    return insn["iter_out"] * insn["iter_in"] * (insn["uop_end"] - insn["uop_bgn"])


def dram_bytes(config: VtaConfig, insn: Insn) -> int:
    return insn["x_size"] * insn["y_size"] * config.elem_bytes(MEM_NAMES[Mem(insn["mem_type"])])


def cost(config: VtaConfig, insn: Insn) -> int:
    """Cycles `insn` occupies its module."""
    if insn.op in (Op.LOAD, Op.STORE):
        if insn["x_size"] == 0:
            return 1
        rows = insn["y_size"] + insn["y_pad_0"] + insn["y_pad_1"]
        cols = insn["x_size"] + insn["x_pad_0"] + insn["x_pad_1"]
        pads = rows * cols - insn["x_size"] * insn["y_size"]
        return DMA_LATENCY + math.ceil(dram_bytes(config, insn) / config.dma_bytes_per_cycle) + pads
    if insn.op is Op.GEMM:
        return PIPELINE_FILL + uop_count(insn)
    if insn.op is Op.ALU:
        return PIPELINE_FILL + 2 * uop_count(insn)
    return 1


@dataclass
class Counters:
    """What one run moved and computed, and when it ended."""

    cycles: int = 0
    load_bytes: dict[str, int] = field(default_factory=lambda: {"uop": 0, "wgt": 0, "inp": 0, "acc": 0})
    store_bytes: int = 0
    gemm_uops: int = 0
    alu_uops: int = 0
    busy: dict[str, int] = field(default_factory=lambda: {"load": 0, "compute": 0, "store": 0})

    def count(self, config: VtaConfig, insn: Insn) -> None:
        if insn.op is Op.LOAD and insn["x_size"]:
            self.load_bytes[MEM_NAMES[Mem(insn["mem_type"])]] += dram_bytes(config, insn)
        elif insn.op is Op.STORE:
            self.store_bytes += dram_bytes(config, insn)
        elif insn.op is Op.GEMM and not insn["reset"]:
            self.gemm_uops += uop_count(insn)
        elif insn.op is Op.ALU:
            self.alu_uops += uop_count(insn)

    @property
    def utilisation(self) -> float:
        """Fraction of cycles in which the GEMM core did a full BATCH x BLOCK x BLOCK product."""
        return self.gemm_uops / self.cycles if self.cycles else 0.0

    def latency_ms(self, config: VtaConfig) -> float:
        return self.cycles / (config.freq_mhz * 1e3)

    def add(self, other: Counters) -> None:
        """Accumulate another (sequential) run: cycles add up."""
        self.cycles += other.cycles
        for k, v in other.load_bytes.items():
            self.load_bytes[k] += v
        self.store_bytes += other.store_bytes
        self.gemm_uops += other.gemm_uops
        self.alu_uops += other.alu_uops
        for k, v in other.busy.items():
            self.busy[k] += v

    def as_dict(self) -> dict:
        return {"cycles": self.cycles, "load_bytes": dict(self.load_bytes), "store_bytes": self.store_bytes,
                "gemm_uops": self.gemm_uops, "alu_uops": self.alu_uops, "busy": dict(self.busy),
                "utilisation": round(self.utilisation, 4)}
