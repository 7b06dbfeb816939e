"""The `eval` and `bench` subcommands' flags and entry points (the work is in sweep.py and bench_cmd.py);
nothing heavy is imported until a command runs, so `--help` stays instant."""

from __future__ import annotations

import argparse
from pathlib import Path

from .errors import UserError
from .names import METHODS

EVAL_EXAMPLES = """examples:
  python -m tvmquant eval                                   built-in digits CNN, all methods, 2/3/4/8 bits
  python -m tvmquant eval --model net.onnx --calib x.npy --eval-data xt.npy --eval-labels yt.npy \\
      --methods uniform,uniq --bits 2,4 --out sweep/
  python -m tvmquant eval --methods uniform --bits 2,4 --compile-target x86   also compile and check each point
"""

BENCH_EXAMPLES = """examples:
  python -m tvmquant compile --target x86 --bits 2 && \\
  python -m tvmquant bench tvmquant_out/digits_cnn-x86-w2a2-uniform.so
  python -m tvmquant bench net.so --model net.pt2 --calib x.npy --rounds 20
"""


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 2,3,4, got '{text}'") from None
    if not values or any(not 1 <= v <= 8 for v in values):
        raise argparse.ArgumentTypeError(f"bit widths must be integers from 1 to 8, got '{text}'")
    return sorted(set(values))


def _methods(text: str) -> list[str]:
    methods = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise argparse.ArgumentTypeError(f"unknown method(s) {', '.join(unknown) or '(none)'}; known: {', '.join(METHODS)}")
    return methods


def add_parsers(sub, first_last: callable, shape: callable) -> None:
    """Register `eval` and `bench` on the subparsers of the main parser."""
    ev = sub.add_parser(
        "eval", help="sweep methods x bit widths: accuracy table (CSV, Markdown) and plot",
        description="Quantize the model with every method at every bit width (weights and activations alike, "
        "first and last layer at --first-last-bits), evaluate the quantized PyTorch reference on the evaluation data "
        "and write sweep.csv, sweep.md and sweep.png. The reference is what the compiled module computes exactly; "
        "--compile-target also compiles each point and checks it.",
        epilog=EVAL_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ev.add_argument("--model", help="a .pt2 (torch.export) or .onnx model (default: built-in digits CNN)")
    ev.add_argument("--input-shape", type=shape, help="input shape, e.g. 1,3,224,224 (default: from the model)")
    ev.add_argument("--calib", help="calibration inputs, .npy (default: the built-in model's calibration digits)")
    ev.add_argument("--eval-data", help="evaluation inputs, .npy (default: built-in test digits, else the calibration data)")
    ev.add_argument("--eval-labels", help="integer labels for --eval-data, .npy (without them: agreement with fp32)")
    ev.add_argument("--methods", type=_methods, default=list(METHODS), help=f"comma-separated (default: {','.join(METHODS)})")
    ev.add_argument("--bits", type=_int_list, default=[2, 3, 4, 8], help="comma-separated bit widths (default: 2,3,4,8)")
    ev.add_argument("--first-last-bits", type=first_last, default=8, metavar="{1..8,fp32}",
                    help="precision of the first and last layer (default: 8)")
    ev.add_argument("--compile-target", metavar="TARGET", help="also compile every point for this local target and run it")
    ev.add_argument("--out", type=Path, help="output folder (default: tvmquant_out/eval-MODEL/)")

    bench = sub.add_parser(
        "bench", help="time a compiled artifact against PyTorch fp32 (and ONNX Runtime int8) here, with a per-layer profile",
        description="Run the artifact on this machine against the model it was compiled from in PyTorch fp32 and, when "
        "onnxruntime is installed, ONNX Runtime's static int8 of the same graph; interleaved rounds, medians, ratios "
        "to fp32, each variant's outputs checked first; then the artifact's per-function profile (Relax VM instrument).",
        epilog=BENCH_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    bench.add_argument("artifact", type=Path, help="the .so written by tvmquant compile (for a target that runs here)")
    bench.add_argument("--model", help="the model it was compiled from (default: built-in digits CNN, if it was)")
    bench.add_argument("--input-shape", type=shape, help="input shape, if the model's is dynamic")
    bench.add_argument("--calib", help="calibration inputs for ONNX Runtime int8, .npy (default: the built-in model's)")
    bench.add_argument("--rounds", type=int, default=10, help="interleaved rounds (default: 10)")
    bench.add_argument("--min-time", type=float, default=0.05, help="seconds of calls per timing (default: 0.05)")


def run_eval(args: argparse.Namespace) -> int:
    from .compile import BUILTIN, load_source
    from .validate import load_npy
    from .sweep import markdown_table, sweep, write_outputs
    from .target import load_target

    target = None
    if args.compile_target:
        target = load_target(args.compile_target)
        if target.runs == "rpc":
            raise UserError(f"--compile-target runs each point here; '{target.name}' runs over RPC (use a local target)")
    calib = load_npy(args.calib, "calibration") if args.calib else None
    eval_x = load_npy(args.eval_data, "evaluation data") if args.eval_data else None
    eval_y = load_npy(args.eval_labels, "evaluation labels") if args.eval_labels else None
    source = load_source(args.model, args.input_shape, calib, eval_x, eval_y)
    out = args.out or Path("tvmquant_out") / f"eval-{source.name if args.model else BUILTIN}"
    fp32, points = sweep(source, args.methods, args.bits, args.first_last_bits, target, out)
    print()
    print(markdown_table(fp32, points, source.eval_label))
    print("wrote " + ", ".join(str(p) for p in write_outputs(out, fp32, points, source.eval_label)))
    return 0


def run_bench(args: argparse.Namespace) -> int:
    import os

    # Before torch loads OpenMP: idle threads that busy-spin steal the cores from the next variant of an
    # interleaved round (scripts/bench.py measured PyTorch 5x slower with OpenMP's default spinning).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from .bench_cmd import bench, print_bench
    from .compile import BUILTIN, load_source, read_sidecar
    from .validate import load_npy
    from .target import load_target

    if args.rounds < 1 or args.min_time <= 0:
        raise UserError("--rounds must be at least 1 and --min-time positive")
    meta, _ = read_sidecar(args.artifact)
    target = load_target(meta["target"])
    if target.runs == "rpc":
        raise UserError(f"bench times on this machine; {args.artifact} is for '{target.name}' (use run or deploy there)")
    if args.model is None and meta["model"] != BUILTIN:
        raise UserError(f"{args.artifact} was compiled from '{meta['model']}': pass it with --model (and --calib)")
    calib = load_npy(args.calib, "calibration") if args.calib else None
    source = load_source(args.model, args.input_shape or tuple(meta["input_shape"]), calib)
    print_bench(bench(args.artifact, source, args.rounds, args.min_time), args.artifact)
    return 0
