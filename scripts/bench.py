"""Benchmark (issue 4): tvmquant's low-bit kernels vs TVM fp32 (MetaSchedule-tuned), PyTorch fp32 / int8 and
ONNX Runtime int8 / 4-bit, on ResNet-18's 3x3 convs, a dense and a GEMV layer, ResNet-18 and the digits CNN.

All variants of a case run in this one process, interleaved: each round times every variant once (in a
rotated order), and the report gives medians over rounds and ratios of medians. Every timed variant's output
is checked first (ours against tvmquant's quantized PyTorch reference of the same scheme, peers against
PyTorch fp32); a failed check is reported loudly, that variant is not timed, and the exit code is 1.
Peak memory comes from a second pass: one child process per variant loads the saved artifact and runs it.

    PYTHONPATH=. python scripts/bench.py [--rounds 15] [--threads 2] [--trials 64] [--e2e-trials 4xTRIALS]
        [--only conv56 gemv ...] [--quick] [--tuning-log DIR] [--no-memory] [--out docs]

Writes OUT/BENCHMARKS.md, OUT/benchmarks.json and OUT/benchmarks.png.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds (one timing per variant each)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--trials", type=int, default=64,
                        help="MetaSchedule trials per task for TVM fp32 on single layers; 0 = untuned")
    parser.add_argument("--e2e-trials", type=int,
                        help="MetaSchedule trials in total for TVM fp32 on each whole model (default 4 x --trials); "
                             "0 = untuned")
    parser.add_argument("--min-time", type=float, default=0.05, help="seconds of calls per timing (>= 1 call)")
    parser.add_argument("--only", nargs="+", metavar="CASE", help="cases to run (default: all)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: conv7, dense and digits, 3 rounds, two of our variants, no memory pass")
    parser.add_argument("--tuning-log", type=Path, help="a `tvmquant tune` folder whose records schedule our kernels")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory pass")
    parser.add_argument("--skip", nargs="+", default=[], metavar="VARIANT",
                        help="variant keys not to build or time (e.g. tvm_fp32: its tuning takes long)")
    parser.add_argument("--out", type=Path, default=Path("docs"))
    parser.add_argument("--spin-wait", action="store_true",
                        help="keep PyTorch's and ORT's default spin-waiting thread pools (default: they wait passively)")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--from-json", type=Path, metavar="JSON",
                        help="only re-render the report (md, png) from a benchmarks.json of an earlier run")
    parser.add_argument("--memory-child", nargs=3, metavar=("KIND", "ARTIFACT", "INPUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.e2e_trials is None:
        args.e2e_trials = 4 * args.trials
    if args.quick:
        args.rounds = min(args.rounds, 3)
        args.no_memory = True
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Thread counts and wait policies must be set before TVM's thread pool and torch's OpenMP start. Idle pool
    # threads that busy-spin steal the cores from the next variant in an interleaved round (and, on a shared
    # machine, from each other): measured here, PyTorch's 3x3 conv ran 5x slower with OpenMP's default spinning.
    # TVM's pool is left alone: its spin loop yields the core, and TVM_THREAD_POOL_SPIN_COUNT=0 made TVM 0.27's
    # pool lose a wake-up here (a worker asleep, the caller yielding forever).
    os.environ["TVM_NUM_THREADS"] = str(args.threads)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    if not args.spin_wait:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
        os.environ["TVMQUANT_BENCH_ORT_NO_SPIN"] = "1"
    sys.path.insert(0, str(SCRIPTS))
    import torch

    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    if args.memory_child:
        return memory_child(*args.memory_child)
    if args.from_json:
        import bench_report

        bench_report.write(json.loads(args.from_json.read_text()), args.out)
        return 0
    import bench_run

    return bench_run.run(args, " ".join(["python", "scripts/bench.py", *(argv if argv is not None else sys.argv[1:])]))


def memory_child(kind: str, artifact: str, input_path: str) -> int:
    """Load one saved variant, run it a few times, print peak RSS before and after (MB) as JSON."""
    import numpy as np

    import torch  # noqa: F401  (imported by every variant's child alike, so the baselines match)
    import tvm
    from tvm import relax

    try:
        import onnxruntime
    except ImportError:
        onnxruntime = None
    x = np.load(input_path)
    baseline = _reset_peak_rss()
    if kind in ("torch", "torchscript"):
        module = torch.load(artifact, weights_only=False) if kind == "torch" else torch.jit.load(artifact)
        tensor = torch.from_numpy(x)
        run = lambda: module(tensor)  # noqa: E731
    elif kind == "onnx":
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        if os.environ.get("TVMQUANT_BENCH_ORT_NO_SPIN"):
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = onnxruntime.InferenceSession(artifact, options, providers=["CPUExecutionProvider"])
        run = lambda: session.run(None, {"x": x})  # noqa: E731
    else:
        vm = relax.VirtualMachine(tvm.runtime.load_module(artifact), tvm.cpu())
        arg = tvm.runtime.tensor(x)
        run = lambda: vm["main"](arg)  # noqa: E731
    with torch.no_grad():
        for _ in range(5):
            run()
    print(json.dumps({"baseline_mb": baseline / 1024, "peak_mb": _status_kb("VmHWM") / 1024}))
    return 0


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak_rss() -> int:
    """Reset the kernel's peak-RSS mark (Linux clear_refs 5) so the imports' transient peak does not hide what
    loading and running the variant adds; returns the current RSS in kB, the baseline."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status_kb("VmRSS")


if __name__ == "__main__":
    sys.exit(main())
