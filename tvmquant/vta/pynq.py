"""Deploying the same bytes to a Pynq-Z1 with a VTA bitstream, through the `pynq` package (on the board).

NOT RUN HERE: there is no board (and no VTA bitstream) in this environment, so this path is untested beyond
`relocate`, which the tests check on the simulator. On the board, `pip install pynq` and:

    runner = PynqRunner(Path("m.so"), "vta.bit")
    codes_out = runner.run_layer(runner.programs["conv1"], codes_in)

Each buffer is allocated in contiguous memory (`pynq.allocate`), the instructions' DRAM addresses are rebased
onto those physical addresses (`relocate`), and the four VTA modules are started as apache/tvm-vta's
pynq_driver.cc does (register map from its config/pkg_config.py).
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np

from ..errors import UserError
from .config import VtaConfig
from .isa import Insn, Mem, Op, encode_stream
from .runtime import VtaProgram, pack_input, unpack_output

# Pynq-Z1 register map (pkg_config.py): module base addresses and register offsets
FETCH, LOAD, COMPUTE, STORE = 0x43C00000, 0x43C01000, 0x43C02000, 0x43C03000
FETCH_INSN_COUNT, FETCH_INSN_ADDR = 0x10, 0x18
LOAD_INP_ADDR, LOAD_WGT_ADDR = 0x10, 0x18
COMPUTE_DONE_RD, COMPUTE_UOP_ADDR, COMPUTE_BIAS_ADDR = 0x18, 0x20, 0x28
STORE_OUT_ADDR = 0x10
START, AUTORESTART, DONE = 0x1, 0x81, 0x1
MEM_BUFFER = {Mem.UOP: "uop", Mem.WGT: "wgt", Mem.INP: "inp", Mem.ACC: "acc", Mem.OUT: "out"}


def relocate(insns: list[Insn], plan: dict[str, tuple[int, int]], config: VtaConfig,
             addresses: dict[str, int]) -> list[Insn]:
    """The instructions with every LOAD/STORE rebased from the manifest's addresses to `addresses`."""
    out = []
    for insn in insns:
        insn = copy.deepcopy(insn)
        if insn.op in (Op.LOAD, Op.STORE) and insn["x_size"]:
            name = MEM_BUFFER[Mem(insn["mem_type"])]
            elem = config.elem_bytes(name)
            if addresses[name] % elem:
                raise ValueError(f"{name} buffer at {addresses[name]:#x} is not aligned to its {elem}-byte elements")
            insn["dram_base"] += (addresses[name] - plan[name][0]) // elem
        out.append(insn)
    return out


class PynqRunner:
    """Runs an artifact's VTA programs on a Pynq board (see the module docstring; not run here)."""

    def __init__(self, artifact: Path, bitstream: str):
        try:
            import pynq
        except ImportError:
            raise UserError("deploying to a Pynq board needs the `pynq` package, which runs on the board itself "
                            "(pip install pynq there); this machine can only simulate") from None
        from .artifact import read

        self.pynq = pynq
        self.config, self.programs = read(artifact)
        self.overlay = pynq.Overlay(bitstream)
        self.mmio = {m: pynq.MMIO(base, 0x1000) for m, base in
                     (("fetch", FETCH), ("load", LOAD), ("compute", COMPUTE), ("store", STORE))}

    def run_layer(self, prog: VtaProgram, codes: np.ndarray, wait: int = 10_000_000) -> np.ndarray:
        images = prog.images | {"inp": pack_input(codes, prog.host.op, self.config)}
        buffers = {name: self.pynq.allocate(shape=(max(size, 1),), dtype=np.uint8) for name, (_, size) in prog.plan.items()}
        for name, data in images.items():
            buffers[name][: len(data)] = np.frombuffer(data, np.uint8)
            buffers[name].flush()
        insns = relocate(prog.insns, prog.plan, self.config, {n: int(b.device_address) for n, b in buffers.items()})
        stream = encode_stream(self.config, insns)
        insn_buf = self.pynq.allocate(shape=(len(stream),), dtype=np.uint8)
        insn_buf[:] = np.frombuffer(stream, np.uint8)
        insn_buf.flush()
        m = self.mmio
        m["fetch"].write(FETCH_INSN_COUNT, len(insns))
        m["fetch"].write(FETCH_INSN_ADDR, int(insn_buf.device_address))
        for module, offset in (("load", LOAD_INP_ADDR), ("load", LOAD_WGT_ADDR), ("compute", COMPUTE_UOP_ADDR),
                               ("compute", COMPUTE_BIAS_ADDR), ("store", STORE_OUT_ADDR)):
            m[module].write(offset, 0)  # instructions carry absolute addresses
        m["fetch"].write(0, START)
        for module in ("load", "compute", "store"):
            m[module].write(0, AUTORESTART)
        for _ in range(wait):
            if m["compute"].read(COMPUTE_DONE_RD) == DONE:
                break
        else:
            raise UserError(f"VTA did not finish layer {prog.name} within {wait} polls")
        buffers["out"].invalidate()
        return unpack_output(np.asarray(buffers["out"]), prog.host, prog.geometry, self.config)
