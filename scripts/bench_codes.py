"""Codes between layers on vs off, inside the compiled ResNet-18 (W2A2, first/last W8A8), interleaved in one
process: per layer, the kernel alone with codes off (it quantizes, pads and packs its float input) against the
kernel on codes plus the encoder that feeds it (fused with the bias add / ReLU before it where FuseOps could),
and the elementwise functions that are left; end to end, the VM's time evaluator for both. Rounds alternate
(on, off, on, ...); medians over rounds.

    PYTHONPATH=. python scripts/bench_codes.py [--rounds 5] [--runs 3] [--threads 1] [--out FILE.md]
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections import defaultdict
from pathlib import Path

_THREADS = sys.argv[sys.argv.index("--threads") + 1] if "--threads" in sys.argv else "1"
os.environ["TVM_NUM_THREADS"] = _THREADS  # before TVM's thread pool starts
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

from bench_cases import all_cases  # noqa: E402
from tvmquant import pipeline  # noqa: E402
from tvmquant.compile import load_source  # noqa: E402
from tvmquant.passes.lower_quantized import _ident  # noqa: E402
from tvmquant.pipeline import BuildOptions, QuantRequest  # noqa: E402
from tvmquant.profile import profile  # noqa: E402
from tvmquant.quantize import QuantConfig  # noqa: E402
from tvmquant.rpc import DeviceModule  # noqa: E402
from tvmquant.target import load_target  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=3, help="model runs per round and side")
    parser.add_argument("--bits", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    case = next(c for c in all_cases() if c.name == "resnet18")
    x, calib = case.inputs(1, seed=1), case.inputs(8, seed=2)
    src = load_source(case.module(), case.input_shape, calib, x)
    target = load_target("x86")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantized = pipeline.quantize(src, QuantRequest(QuantConfig(args.bits, args.bits, 8)))
    built = {codes: pipeline.build(src, quantized, target, BuildOptions(codes=codes)) for codes in (True, False)}
    modules = {codes: DeviceModule.local(b.executable) for codes, b in built.items()}
    same = np.array_equal(modules[True](x), modules[False](x))

    funcs: dict[bool, dict[str, list[float]]] = {True: defaultdict(list), False: defaultdict(list)}
    e2e: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(args.rounds):
        for codes in (True, False):
            for row in profile(modules[codes], x, args.runs):
                funcs[codes][row.name].append(row.ms)
            e2e[codes].append(modules[codes].latency_ms(x, number=args.runs, repeat=1))
    med = lambda v: float(np.median(v)) if v else 0.0  # noqa: E731
    on, off = ({k: med(v) for k, v in funcs[c].items()} for c in (True, False))

    lines = [f"Codes between layers on vs off, ResNet-18 224² W{args.bits}A{args.bits} (first/last W8A8), x86, "
             f"{args.threads} thread(s); medians of {args.rounds} interleaved rounds of {args.runs} runs (VM "
             "instrument hook per function; end to end: the VM's time evaluator); load average at end "
             + " ".join(f"{v:.1f}" for v in os.getloadavg()) + f". Outputs on == off bit for bit: {same}.", "",
             "| layer | kernel | off: kernel ms | on: kernel ms | on: encoder ms | on: kernel + encoder | off / on |",
             "|---|---|---|---|---|---|---|"]
    for layer, family in built[True].lowered.kernels.items():
        key = f"{family}_{_ident(layer)}"
        encoder = sum(ms for name, ms in on.items() if name.endswith(f"encode_{key}"))
        both = on.get(key, 0.0) + encoder
        lines.append(f"| {layer} | {family} | {off.get(key, 0.0):.3f} | {on.get(key, 0.0):.3f} | {encoder:.3f} | "
                     f"{both:.3f} | {off.get(key, 0.0) / both:.2f}x |")
    totals = {c: sum(t.values()) for c, t in ((True, on), (False, off))}
    lines += ["", f"Sum of profiled functions: off {totals[False]:.3f} ms, on {totals[True]:.3f} ms "
              f"({totals[False] / totals[True]:.2f}x). End to end: off {med(e2e[False]):.3f} ms, on "
              f"{med(e2e[True]):.3f} ms ({med(e2e[False]) / med(e2e[True]):.2f}x).", "",
              "| function (on) | ms | | function (off) | ms |", "|---|---|---|---|---|"]
    rows_on = sorted(on.items(), key=lambda kv: -kv[1])
    rows_off = sorted(off.items(), key=lambda kv: -kv[1])
    for i in range(max(len(rows_on), len(rows_off))):
        a = f"{rows_on[i][0]} | {rows_on[i][1]:.3f}" if i < len(rows_on) else " | "
        b = f"{rows_off[i][0]} | {rows_off[i][1]:.3f}" if i < len(rows_off) else " | "
        lines.append(f"| {a} | | {b} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
