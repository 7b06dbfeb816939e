"""Lower one VtaLayer to a VTA program: NCHW1n16c inputs, OIHW16o16i weights, output tiles within the SRAMs.

Tiles: `th` x `tw` output pixels of `tco` output-channel blocks per output tile, accumulated over input-channel
steps of `tci` blocks; `vt` = 2 double-buffers inputs/weights (per step) and accumulators (per tile) through
the dependency tokens, so the load module fetches step g+1 while compute works on g and the store module
drains tile t-1 while compute fills t. A dense layer is a 1x1 convolution over a 1 x batch image.

GEMM micro-ops run over (input block, kh, kw) x one "inner" output axis, and the instruction's two loops
cover the other two axes; the inner axis is the first of x, y, co with two or more entries, so consecutive
micro-ops never write the same accumulator (a hardware hazard). A tile of a single vector alternates two
partial accumulators and adds them with ALU ADD.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from itertools import product

import numpy as np

from . import bits
from .arith import VtaLayer
from .config import VtaConfig
from .isa import AluOp, Mem
from .program import Program, ProgramError
from .simulator import PAGE

MEMS = ("uop", "wgt", "acc", "inp", "out")


@dataclass(frozen=True)
class Tiling:
    th: int
    tw: int
    tco: int
    tci: int
    vt: int = 2

    def key(self) -> str:
        return f"th{self.th}-tw{self.tw}-tco{self.tco}-tci{self.tci}-vt{self.vt}"


@dataclass(frozen=True)
class Geometry:
    """The layer's shape as the core sees it (channels in blocks)."""

    n: int
    cb: int
    h: int
    w: int
    ob: int
    kh: int
    kw: int
    sh: int
    sw: int
    ph: int
    pw: int

    @property
    def oh(self) -> int:
        return (self.h + 2 * self.ph - self.kh) // self.sh + 1

    @property
    def ow(self) -> int:
        return (self.w + 2 * self.pw - self.kw) // self.sw + 1

    def key(self) -> str:
        return "-".join(f"{k}{v}" for k, v in asdict(self).items())


def geometry(layer: VtaLayer, input_shape: tuple[int, ...], block: int) -> Geometry:
    o, c, kh, kw = layer.weight.shape
    cb, ob = -(-c // block), -(-o // block)
    if layer.op == "linear":
        return Geometry(1, cb, 1, input_shape[0], ob, 1, 1, 1, 1, 0, 0)
    n, _, h, w = input_shape
    return Geometry(n, cb, h, w, ob, kh, kw, *layer.stride, *layer.padding)


def fits(g: Geometry, t: Tiling, config: VtaConfig) -> str | None:
    """Why the tiling does not fit the SRAMs, or None."""
    if t.vt not in (1, 2) or min(t.th, t.tw, t.tco, t.tci) < 1:
        return "tile sizes must be positive and vt 1 or 2"
    rows, cols = (t.th - 1) * g.sh + g.kh, (t.tw - 1) * g.sw + g.kw
    need = {"inp": t.tci * rows * cols, "wgt": t.tco * t.tci * g.kh * g.kw, "acc": _acc_tile(t) + 2 * t.tco}
    for mem, n in need.items():
        depth = getattr(config, f"{mem}_depth") // t.vt
        if n > depth:
            return f"{mem} tile of {n} elements exceeds {depth} ({getattr(config, f'{mem}_depth')} / vt {t.vt})"
    if max(g.ph, g.pw) > 15:
        return "padding above 15 does not fit the 4-bit pad fields"
    return None


def _acc_tile(t: Tiling) -> int:
    return max(2, t.tco * t.th * t.tw)


def default_tiling(g: Geometry, config: VtaConfig) -> Tiling:
    """Whole output rows and all channels if they fit, else halve rows, input blocks, output blocks, columns."""
    t = [min(g.oh, 64), g.ow, g.ob, g.cb]
    while True:
        tiling = Tiling(*t, vt=2)
        if fits(g, tiling, config) is None:
            try:
                build(g, tiling, config)
                return tiling
            except ProgramError:
                pass
        for i in (0, 3, 2, 1):
            if t[i] > 1:
                t[i] = -(-t[i] // 2)
                break
        else:
            raise ProgramError(f"no tiling of {g.key()} fits this VTA configuration")


def dram_plan(g: Geometry, config: VtaConfig) -> dict[str, tuple[int, int]]:
    """{buffer: (physical byte address, bytes)}: page-aligned from 4096 in MEMS order; the micro-op region is
    reserved at the buffer's full depth, since the program's addresses are fixed before its uops are counted."""
    sizes = {"uop": 4 * config.uop_depth, "wgt": g.ob * g.cb * g.kh * g.kw * config.wgt_elem_bytes,
             "acc": 2 * g.ob * config.acc_elem_bytes, "inp": g.n * g.cb * g.h * g.w * config.inp_elem_bytes,
             "out": g.n * g.ob * g.oh * g.ow * config.out_elem_bytes}
    plan, addr = {}, PAGE
    for mem in MEMS:
        plan[mem] = (addr, sizes[mem])
        addr += max(1, -(-sizes[mem] // PAGE)) * PAGE
    return plan


def _spans(total: int, tile: int) -> list[tuple[int, int]]:
    return [(s, min(tile, total - s)) for s in range(0, total, tile)]


def build(g: Geometry, t: Tiling, config: VtaConfig, bounds: tuple[int, int] = (-128, 127)
          ) -> tuple[Program, dict[str, tuple[int, int]]]:
    """The program (linked: its first instruction loads the micro-ops) and its DRAM plan; `bounds` is the
    clip (lo, hi) of the output codes."""
    reason = fits(g, t, config)
    if reason:
        raise ProgramError(f"tiling {t.key()} does not fit: {reason}")
    p = Program(config)
    plan = dram_plan(g, config)
    elem = {m: plan[m][0] // config.elem_bytes(m) for m in MEMS}
    half = {m: getattr(config, f"{m}_depth") // t.vt for m in ("inp", "wgt", "acc")}
    khw = g.kh * g.kw
    tiles = [(n, oh, ow, co) for n in range(g.n) for oh in _spans(g.oh, t.th) for ow in _spans(g.ow, t.tw)
             for co in _spans(g.ob, t.tco)]
    steps = _spans(g.cb, t.tci)
    total_steps = len(tiles) * len(steps)
    step = 0
    for ti, (n, (oh0, th), (ow0, tw), (ob0, tco)) in enumerate(tiles):
        acc0 = (ti % t.vt) * half["acc"]
        bias0, shift0 = acc0 + _acc_tile(t), acc0 + _acc_tile(t) + t.tco
        split = th * tw * tco == 1
        sizes = {"co": tco, "y": th, "x": tw}
        acc_stride = {"co": th * tw, "y": tw, "x": 1}
        inner = next((d for d in ("x", "y", "co") if sizes[d] >= 2), None)
        loops = [d for d in ("co", "y", "x") if d != (inner or "x")]
        iters = tuple(sizes[d] for d in loops)
        p.load(Mem.ACC, bias0, elem["acc"] + ob0, 1, tco, tco, pop_next=int(ti >= t.vt))
        p.load(Mem.ACC, shift0, elem["acc"] + g.ob + ob0, 1, tco, tco)
        qs = range(sizes[inner]) if inner else range(1)
        reset = [(acc0 + q * acc_stride[inner], 0, 0) for q in qs] if inner else [(acc0, 0, 0), (acc0 + 1, 0, 0)]
        p.gemm(p.uop_kernel(reset), iters, tuple(acc_stride[d] for d in loops), (0, 0), (0, 0), reset=True)
        emitted = 0  # micro-ops so far in this tile: a split tile alternates partial accumulators across steps
        for ci0, tci in steps:
            buf = step % t.vt
            inp0, wgt0 = buf * half["inp"], buf * half["wgt"]
            rows, cols = (th - 1) * g.sh + g.kh, (tw - 1) * g.sw + g.kw
            _load_step(p, g, elem, n, oh0, ow0, ob0, ci0, tco, tci, rows, cols, inp0, wgt0,
                       pop=step >= t.vt)
            inp_stride = {"co": 0, "y": g.sh * cols, "x": g.sw}
            wgt_stride = {"co": tci * khw, "y": 0, "x": 0}
            uops = []
            for k, (ci, kh, kw) in enumerate(product(range(tci), range(g.kh), range(g.kw))):
                src = inp0 + ci * rows * cols + kh * cols + kw
                wgt = wgt0 + ci * khw + kh * g.kw + kw
                if inner:
                    uops += [(acc0 + q * acc_stride[inner], src + q * inp_stride[inner], wgt + q * wgt_stride[inner])
                             for q in qs]
                else:
                    uops.append((acc0 + (emitted + k) % 2, src, wgt))
            emitted += tci * khw
            p.gemm(p.uop_kernel(uops), iters, tuple(acc_stride[d] for d in loops),
                   tuple(inp_stride[d] for d in loops), tuple(wgt_stride[d] for d in loops),
                   pop_prev=1, push_prev=int(step + t.vt < total_steps))
            step += 1
        dst = [acc0 + q * acc_stride[inner] for q in qs] if inner else [acc0]
        row = {"co": 1, "y": 0, "x": 0}
        src_q = (lambda base: [(d, base + q * row[inner], 0) for d, q in zip(dst, qs)]) if inner else (lambda base: [(acc0, base, 0)])
        dst_f, src_f = tuple(acc_stride[d] for d in loops), tuple(row[d] for d in loops)
        if split:
            p.alu(AluOp.ADD, p.uop_kernel([(acc0, acc0 + 1, 0)]), (1, 1), (0, 0), (0, 0))
        p.alu(AluOp.ADD, p.uop_kernel(src_q(bias0)), iters, dst_f, src_f)
        p.alu(AluOp.SHR, p.uop_kernel(src_q(shift0)), iters, dst_f, src_f)
        plain = p.uop_kernel([(d, 0, 0) for d in dst])
        p.alu(AluOp.MAX, plain, iters, dst_f, imm=bounds[0])
        p.alu(AluOp.MIN, plain, iters, dst_f, imm=bounds[1], push_next=1)
        last = ti == len(tiles) - 1
        for c in range(tco):
            p.store(acc0 + c * th * tw, elem["out"] + ((n * g.ob + ob0 + c) * g.oh + oh0) * g.ow + ow0, th, tw, g.ow,
                    pop_prev=int(c == 0), push_prev=int(c == tco - 1 and (ti + t.vt < len(tiles) or last)))
    p.finish()
    plan["uop"] = (plan["uop"][0], 4 * len(p.uops))
    p.link(plan["uop"][0])
    return p, plan


def _load_step(p: Program, g: Geometry, elem: dict[str, int], n: int, oh0: int, ow0: int, ob0: int, ci0: int,
               tco: int, tci: int, rows: int, cols: int, inp0: int, wgt0: int, pop: bool) -> None:
    """Input windows (with zero padding at the image border) of `tci` blocks, then their weights."""
    r0, c0 = oh0 * g.sh - g.ph, ow0 * g.sw - g.pw
    top, left = max(0, -r0), max(0, -c0)
    y = min(g.h, r0 + rows) - max(0, r0)
    x = min(g.w, c0 + cols) - max(0, c0)
    for ci in range(tci):
        dram = elem["inp"] + ((n * g.cb + ci0 + ci) * g.h + max(0, r0)) * g.w + max(0, c0)
        p.load(Mem.INP, inp0 + ci * rows * cols, dram, y, x, g.w, (top, rows - top - y, left, cols - left - x),
               pop_next=int(pop and ci == 0))
    khw = g.kh * g.kw
    p.load(Mem.WGT, wgt0, elem["wgt"] + (ob0 * g.cb + ci0) * khw, tco, tci * khw, g.cb * khw, push_next=1)
