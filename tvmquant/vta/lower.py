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


@dataclass(frozen=True)
class _TileAxes:
    """One output tile's axes (co, y, x): the micro-op axis `inner` (None: a one-vector tile) and the two
    instruction loops, with each axis' stride in the accumulator tile."""

    sizes: dict[str, int]
    inner: str | None
    loops: tuple[str, str]

    @staticmethod
    def of(tco: int, th: int, tw: int) -> _TileAxes:
        sizes = {"co": tco, "y": th, "x": tw}
        inner = next((d for d in ("x", "y", "co") if sizes[d] >= 2), None)
        return _TileAxes(sizes, inner, tuple(d for d in ("co", "y", "x") if d != (inner or "x")))

    @property
    def acc(self) -> dict[str, int]:
        return {"co": self.sizes["y"] * self.sizes["x"], "y": self.sizes["x"], "x": 1}

    @property
    def iters(self) -> tuple[int, int]:
        return tuple(self.sizes[d] for d in self.loops)

    def factors(self, stride: dict[str, int]) -> tuple[int, int]:
        return tuple(stride[d] for d in self.loops)

    def along(self, stride: dict[str, int]) -> list[int]:
        """Offsets of the inner axis' entries under `stride` ([0] for a one-vector tile)."""
        return [q * stride[self.inner] for q in range(self.sizes[self.inner])] if self.inner else [0]


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
    tiles = [(n, oh, ow, co) for n in range(g.n) for oh in _spans(g.oh, t.th) for ow in _spans(g.ow, t.tw)
             for co in _spans(g.ob, t.tco)]
    steps = _spans(g.cb, t.tci)
    total_steps, step = len(tiles) * len(steps), 0
    for ti, (n, (oh0, th), (ow0, tw), (ob0, tco)) in enumerate(tiles):
        axes = _TileAxes.of(tco, th, tw)
        acc0 = (ti % t.vt) * half["acc"]
        bias0, shift0 = acc0 + _acc_tile(t), acc0 + _acc_tile(t) + t.tco
        p.load(Mem.ACC, bias0, elem["acc"] + ob0, 1, tco, tco, pop_next=int(ti >= t.vt))
        p.load(Mem.ACC, shift0, elem["acc"] + g.ob + ob0, 1, tco, tco)
        dst = [acc0 + d for d in axes.along(axes.acc)]
        reset = [(d, 0, 0) for d in (dst if axes.inner else [acc0, acc0 + 1])]
        p.gemm(p.uop_kernel(reset), axes.iters, axes.factors(axes.acc), (0, 0), (0, 0), reset=True)
        emitted = 0  # micro-ops so far in this tile: a one-vector tile alternates two partial sums across steps
        for ci0, tci in steps:
            inp0, wgt0 = (step % t.vt) * half["inp"], (step % t.vt) * half["wgt"]
            rows, cols = (th - 1) * g.sh + g.kh, (tw - 1) * g.sw + g.kw
            _load_step(p, g, elem, n, oh0, ow0, ob0, ci0, tco, tci, rows, cols, inp0, wgt0, pop=step >= t.vt)
            inp_stride, wgt_stride = {"co": 0, "y": g.sh * cols, "x": g.sw}, {"co": tci * g.kh * g.kw, "y": 0, "x": 0}
            uops = []
            for k, (ci, kh, kw) in enumerate(product(range(tci), range(g.kh), range(g.kw))):
                src, wgt = inp0 + ci * rows * cols + kh * cols + kw, wgt0 + (ci * g.kh + kh) * g.kw + kw
                if axes.inner:
                    uops += list(zip(dst, (src + o for o in axes.along(inp_stride)), (wgt + o for o in axes.along(wgt_stride))))
                else:
                    uops.append((acc0 + (emitted + k) % 2, src, wgt))
            emitted += len(uops)
            p.gemm(p.uop_kernel(uops), axes.iters, axes.factors(axes.acc), axes.factors(inp_stride),
                   axes.factors(wgt_stride), pop_prev=1, push_prev=int(step + t.vt < total_steps))
            step += 1
        _requantize(p, axes, acc0, dst, bias0, shift0, bounds)
        last = ti == len(tiles) - 1
        for c in range(tco):
            p.store(acc0 + c * th * tw, elem["out"] + ((n * g.ob + ob0 + c) * g.oh + oh0) * g.ow + ow0, th, tw, g.ow,
                    pop_prev=int(c == 0), push_prev=int(c == tco - 1 and (ti + t.vt < len(tiles) or last)))
    p.finish()
    plan["uop"] = (plan["uop"][0], 4 * len(p.uops))
    p.link(plan["uop"][0])
    return p, plan


def _requantize(p: Program, axes: _TileAxes, acc0: int, dst: list[int], bias0: int, shift0: int,
                bounds: tuple[int, int]) -> None:
    """[ADD the second partial sum,] ADD bias row, SHR by shift row, MAX lo, MIN hi (then the tile may be stored)."""
    row = {"co": 1, "y": 0, "x": 0}  # bias/shift rows: one per output block
    if axes.inner is None:
        p.alu(AluOp.ADD, p.uop_kernel([(acc0, acc0 + 1, 0)]), (1, 1), (0, 0), (0, 0))
    for op, base in ((AluOp.ADD, bias0), (AluOp.SHR, shift0)):
        kernel = p.uop_kernel([(d, base + o, 0) for d, o in zip(dst, axes.along(row))])
        p.alu(op, kernel, axes.iters, axes.factors(axes.acc), axes.factors(row))
    plain = p.uop_kernel([(d, 0, 0) for d in dst])
    p.alu(AluOp.MAX, plain, axes.iters, axes.factors(axes.acc), imm=bounds[0])
    p.alu(AluOp.MIN, plain, axes.iters, axes.factors(axes.acc), imm=bounds[1], push_next=1)


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
