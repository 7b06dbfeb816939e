"""Static throughput of every kernel family's inner loop on aarch64 (qemu's timings mean nothing).

Each family compiles one 3x3 64->64 conv at 14x14 for aarch64 through the public CLI
(`python -m tvmquant compile --target T --kernel F`), its artifact is disassembled (llvm-objdump), the
innermost loop of the kernel that does the most products is cut out, and `llvm-mca` estimates cycles per
iteration for a core model. The products per iteration are counted from the instructions themselves:

    bitserial, multipoint  cnt vD.16b             = 128 bit products; / (wbits * abits) MACs
    int8                   sdot/udot vD.4s        = 16 MACs; smlal/umlal/smull/umull/mla/mul vD.T = lanes of T
    shift                  add/sub vD.T           = one product per lane (conv: a pre-shifted activation row
                                                    added per nonzero weight, zero weights skipped; dense:
                                                    the shifted activation added or subtracted)
    lut                    ldrb/ldrsh (gather)    = one lookup; tbl vD.16b = 16 byte lookups (4 outputs x 4 tables);
                           one lookup covers G=4 weights of one code: MACs = lookups * 4 / (2^wbits - 1)
    dequant                fmla vD.T = lanes, fmadd = 1

so MACs/cycle is an estimate of the loop at steady state (no cache misses, no loop overhead outside it).
Core models: `cortex-a72` (the default arm_cpu target, a Raspberry Pi 4) and `neoverse-n1` for a
Cortex-A76-class core with +dotprod (LLVM has no Cortex-A76 scheduling model of its own: `-mcpu=cortex-a76`
falls back to the A57 model; Neoverse N1 is the server core built on the A76 pipeline).

    python scripts/bench_mca.py [--out docs/mca_arm.md] [--only lut]     # needs Debian llvm-19 (llvm-mca-19)
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

_ADDR_LINE = re.compile(r"^\s*([0-9a-f]+):\s+(\S+)\s*(.*)$")
_FUNC_LINE = re.compile(r"^[0-9a-f]+ <(.+)>:$")
_BRANCH = re.compile(r"^(b\.\w+|b|cbz|cbnz|tbz|tbnz)$")
_TARGET = re.compile(r"0x([0-9a-f]+)")
_ARRANGEMENT = re.compile(r"v\d+\.(\d+)([bhsd])")


@dataclass(frozen=True)
class Case:
    family: str
    method: str
    bits: int


CASES = [
    Case("bitserial", "uniform", 2),
    Case("bitserial", "uniform", 1),
    Case("int8", "uniform", 8),
    Case("int8", "uniform", 4),
    Case("shift", "inq", 4),
    Case("shift", "inq", 2),
    Case("lut", "uniq", 2),
    Case("multipoint", "multipoint", 2),
    Case("dequant", "uniform", 4),
]

CORES = {
    "cortex-a72": {"mcpu": "cortex-a72", "mattr": ["+neon"]},
    "neoverse-n1": {"mcpu": "neoverse-n1", "mattr": ["+neon", "+dotprod"]},
}

Instr = tuple[int, str, str]  # address, mnemonic, operands


def disassemble(path: Path) -> dict[str, list[Instr]]:
    """Function name -> its instructions, from `llvm-objdump -d` of a shared library."""
    text = subprocess.run([_tool("llvm-objdump"), "-d", "--no-show-raw-insn", str(path)],
                          capture_output=True, text=True, check=True).stdout
    functions: dict[str, list[Instr]] = {}
    current = None
    for line in text.splitlines():
        if m := _FUNC_LINE.match(line):
            if m.group(1) != "$x":  # mapping symbols mark code inside the current function
                current = functions.setdefault(m.group(1), [])
        elif (m := _ADDR_LINE.match(line)) and current is not None:
            current.append((int(m.group(1), 16), m.group(2), m.group(3).split("//")[0].strip()))
    return functions


def innermost_loops(instrs: list[Instr]) -> list[list[Instr]]:
    """Bodies [target .. backward branch] of the loops that contain no other loop."""
    index = {addr: i for i, (addr, _, _) in enumerate(instrs)}
    loops = []
    for i, (addr, op, args) in enumerate(instrs):
        target = _TARGET.search(args) if _BRANCH.match(op) else None
        if target and int(target.group(1), 16) <= addr and int(target.group(1), 16) in index:
            loops.append((index[int(target.group(1), 16)], i))
    inner = [a for a in loops if not any(b != a and a[0] <= b[0] and b[1] <= a[1] for b in loops)]
    return [instrs[s:e + 1] for s, e in inner]


def _lanes(args: str) -> int:
    m = _ARRANGEMENT.search(args)
    return int(m.group(1)) if m else 1


def macs(family: str, op: str, args: str, bits: int) -> float:
    """Multiply-accumulates (W x A products) one instruction does for `family` at `bits` (W = A bits)."""
    vector = _ARRANGEMENT.search(args) is not None
    if family in ("bitserial", "multipoint"):
        return _lanes(args) * 8 / (bits * bits) if op == "cnt" else 0
    if family == "int8":
        if op in ("sdot", "udot"):
            return 4 * _lanes(args)
        if op.rstrip("2") in ("smlal", "umlal", "smull", "umull") or (op in ("mla", "mul") and vector):
            return _lanes(args)
        return 1 if op in ("madd", "smaddl") else 0
    if family == "shift":
        return _lanes(args) if op in ("add", "sub") and vector else 0
    if family == "lut":
        lookups = {"ldrb": 1, "ldrsh": 1, "ldrh": 1}.get(op, _lanes(args) if op == "tbl" else 0)
        return lookups * 4 / (2 ** bits - 1)
    if family == "dequant":
        if op in ("fmla", "fmls"):
            return _lanes(args)
        return 1 if op in ("fmadd", "fmsub") else 0
    raise ValueError(f"no MAC count for family {family!r}")


def mca_source(body: list[Instr]) -> str:
    """The loop as assembly llvm-mca reads: one label, the backward branch pointed at it."""
    lines = [".Lloop:"]
    for _, op, args in body:
        if _BRANCH.match(op):
            args = re.sub(r"0x[0-9a-f]+\s*<[^>]*>", ".Lloop", args)
        lines.append(f"  {op} {args}")
    return "\n".join(lines) + "\n"


def mca_cycles(source: str, core: str, iterations: int = 200) -> float:
    """llvm-mca's simulated cycles per loop iteration on `core`."""
    spec = CORES[core]
    with tempfile.NamedTemporaryFile("w", suffix=".s") as f:
        f.write(source)
        f.flush()
        out = subprocess.run([_tool("llvm-mca"), "-mtriple=aarch64-linux-gnu", f"-mcpu={spec['mcpu']}",
                              f"-mattr={','.join(spec['mattr'])}", f"-iterations={iterations}", f.name],
                             capture_output=True, text=True, check=True).stdout
    return int(re.search(r"Total Cycles:\s+(\d+)", out).group(1)) / iterations


def _tool(name: str) -> str:
    for candidate in (f"{name}-19", f"/usr/lib/llvm-19/bin/{name}"):
        if shutil.which(candidate):
            return shutil.which(candidate)
    sys.exit(f"error: {name} from LLVM 19 not found (Debian: apt install llvm-19)")


def compile_case(case: Case, core: str, work: Path, model: Path, calib: Path) -> Path:
    """The conv compiled for aarch64 `core` through the CLI; the family must be the one asked for."""
    target = work / f"{core}.json"
    base = json.loads(Path(__file__).resolve().parents[1].joinpath("targets", "arm_cpu.json").read_text())
    base["tvm"].update(CORES[core])
    target.write_text(json.dumps(base))
    out = work / f"{case.family}-{case.method}-w{case.bits}-{core}.so"
    cmd = [sys.executable, "-m", "tvmquant", "compile", "--model", str(model), "--calib", str(calib),
           "--target", str(target), "--method", case.method, "--bits", str(case.bits),
           "--first-last-bits", str(case.bits), "--kernel", case.family, "-o", str(out), "--json"]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"compile failed: {' '.join(cmd)}\n{result.stderr[-2000:]}")
    kernels = {layer["kernel"] for layer in json.loads(result.stdout)["layers"]}
    if kernels != {case.family}:
        sys.exit(f"{case}: compiled with {kernels}, not {case.family}")
    return out


def hot_loop(artifact: Path, case: Case) -> tuple[list[Instr], float]:
    """The kernel's innermost loop with the most MACs, and its MACs per iteration."""
    best, best_macs = None, 0.0
    for name, instrs in disassemble(artifact).items():
        if not name.startswith(f"{case.family}_"):
            continue
        for body in innermost_loops(instrs):
            n = sum(macs(case.family, op, args, case.bits) for _, op, args in body)
            if n > best_macs:
                best, best_macs = body, n
    if best is None:
        sys.exit(f"{artifact}: no loop of the {case.family} kernel does a product this script counts")
    return best, best_macs


def write_inputs(work: Path) -> tuple[Path, Path]:
    import numpy as np
    import torch

    conv = torch.nn.Sequential(torch.nn.Conv2d(64, 64, 3, padding=1), torch.nn.ReLU()).eval()
    x = torch.randn(1, 64, 14, 14)
    model, calib = work / "conv.pt2", work / "calib.npy"
    torch.export.save(torch.export.export(conv, (x,)), model)
    np.save(calib, np.random.default_rng(0).standard_normal((8, 64, 14, 14)).astype("float32"))
    return model, calib


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="also write the table as markdown here")
    parser.add_argument("--keep", type=Path, help="keep artifacts and loop assembly in this folder")
    parser.add_argument("--only", nargs="+", metavar="FAMILY", help="only these families' rows")
    args = parser.parse_args()
    rows = ["| family | weights | core model | loop instrs | product instrs | cycles/iter | MACs/iter | MACs/cycle |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        model, calib = write_inputs(work)
        for case in [c for c in CASES if not args.only or c.family in args.only]:
            for core in CORES:
                body, n = hot_loop(compile_case(case, core, work, model, calib), case)
                source = mca_source(body)
                (work / f"{case.family}-w{case.bits}-{core}.s").write_text(source)
                cycles = mca_cycles(source, core)
                products = Counter(op for _, op, a in body if macs(case.family, op, a, case.bits))
                rows.append(f"| {case.family} | {case.method} W{case.bits}A{case.bits} | {core} | {len(body)} | "
                            f"{', '.join(f'{k} x{v}' for k, v in products.items())} | {cycles:.1f} | {n:g} | "
                            f"{n / cycles:.2f} |")
                print(rows[-1], flush=True)
    if args.out:
        args.out.write_text("\n".join(rows) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
