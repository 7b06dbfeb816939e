"""Per layer inside the model: our compiled ResNet-18 (W2A2, first/last W8A8, `run --profile`'s VM instrument
hook) against ONNX Runtime's static-QDQ int8 model (its node profiler, SessionOptions.enable_profiling), each
quantized conv matched to ORT's node of the same module path. Both with 2 threads, in one process, rounds
interleaved (ours, ORT, ours, ...); medians over rounds.

    PYTHONPATH=. python scripts/bench_profile.py [--rounds 5] [--runs 5] [--kernel auto] [--out docs/profile_resnet18.md]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import warnings
from collections import defaultdict
from pathlib import Path

_THREADS = sys.argv[sys.argv.index("--threads") + 1] if "--threads" in sys.argv else "2"
os.environ["TVM_NUM_THREADS"] = _THREADS  # before TVM's thread pool starts
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench_cases import all_cases  # noqa: E402
from bench_variants import Context, ort_int8  # noqa: E402
from tvmquant import pipeline  # noqa: E402
from tvmquant.passes.lower_quantized import _ident  # noqa: E402
from tvmquant.profile import profile  # noqa: E402
from tvmquant.pipeline import BuildOptions, QuantRequest  # noqa: E402
from tvmquant.quantize import QuantConfig  # noqa: E402
from tvmquant.rpc import DeviceModule  # noqa: E402
from tvmquant.target import load_target  # noqa: E402


def module_path(node: str) -> tuple[str, ...]:
    """torch.onnx names a node of module layer2.0.downsample.0 `/layer2/layer2.0/downsample/downsample.0/Conv`:
    the module path is the last dot-piece of each scope (the op itself is the last component)."""
    return tuple(part.rsplit(".", 1)[-1] for part in node.strip("/").split("/")[:-1])


def ort_node_ms(session, feed, runs: int) -> dict[str, tuple[str, float]]:
    """node name -> (op type, mean ms per run) from ORT's profiler."""
    for _ in range(runs):
        session.run(None, feed)
    trace = json.loads(Path(session.end_profiling()).read_text())
    total, ops = defaultdict(float), {}
    for event in trace:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            name = event["name"][: -len("_kernel_time")]
            total[name] += event["dur"] / 1e3 / runs
            ops[name] = event["args"].get("op_name", "?")
    return {k: (ops[k], v) for k, v in total.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=5, help="model runs per round and side")
    parser.add_argument("--kernel", default="auto")
    parser.add_argument("--bits", type=int, default=2)
    parser.add_argument("--no-codes-between-layers", dest="codes", action="store_false",
                        help="every kernel encodes its float input itself (compare with the default)")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--threads", type=int, default=2, help="for every library (1 on an oversubscribed machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import onnxruntime as ort

    case = next(c for c in all_cases() if c.name == "resnet18")
    workdir = Path(tempfile.mkdtemp(prefix="bench_profile_"))
    x, calib = case.inputs(1, seed=1), case.inputs(8, seed=2)
    with torch.no_grad():
        fp32 = case.module()(torch.from_numpy(x)).numpy()
    target = load_target("x86")
    ctx = Context(case, x, calib, fp32, target, 0, 0, None, workdir, progress=False)
    src = ctx.source
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantized = pipeline.quantize(src, QuantRequest(QuantConfig(args.bits, args.bits, 8)))
    built = pipeline.build(src, quantized, target, BuildOptions(kernel=args.kernel, codes=args.codes))
    ours = DeviceModule.local(built.executable)
    ort_int8(ctx)  # writes the calibrated static QDQ model
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads, options.log_severity_level = args.threads, 1, 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.enable_profiling = True
    feed = {"x": x}

    mine, theirs = defaultdict(list), defaultdict(list)
    for _ in range(args.rounds):
        for row in profile(ours, x, args.runs):
            mine[row.name].append(row.ms)
        options.profile_file_prefix = str(workdir / "ort")
        session = ort.InferenceSession(str(workdir / "resnet18-int8.onnx"), options, providers=["CPUExecutionProvider"])
        session.run(None, feed)  # warm-up (profiled too: a separate session per round keeps it out of the mean)
        for name, (op, ms) in ort_node_ms(session, feed, args.runs).items():
            theirs[(name, op)].append(ms)
    med = lambda v: float(np.median(v))  # noqa: E731

    codes = "codes between layers" if args.codes else "--no-codes-between-layers"
    lines = [f"Per-layer times inside ResNet-18 224² (W{args.bits}A{args.bits}, first/last W8A8, --kernel "
             f"{args.kernel}, {codes}) vs ORT int8 static QDQ; medians of {args.rounds} interleaved rounds of "
             f"{args.runs} runs, {args.threads} thread(s) each; load average at end "
             + " ".join(f"{v:.1f}" for v in os.getloadavg()) + ". `+ encoder`: the kernel and the function that "
             "encodes its input (fused with the bias add / ReLU / residual add before it, where FuseOps could).", "",
             "| layer | scheme | our kernel | our ms | + encoder | ORT node | ORT ms | ORT / ours |",
             "|---|---|---|---|---|---|---|---|"]
    for layer, family in built.lowered.kernels.items():
        key = f"{family}_{_ident(layer)}"
        encoder = sum(med(v) for k, v in mine.items() if k.endswith(f"encode_{key}"))
        path = tuple(layer.split("."))
        matches = [(n, op) for (n, op) in theirs if module_path(n) == path and op != "DequantizeLinear"
                   and op != "QuantizeLinear"]
        ort_ms = sum(med(theirs[m]) for m in matches)
        ops = "+".join(sorted({op for _, op in matches})) or "?"
        ratio = f"{ort_ms / med(mine[key]):.2f}x" if matches and mine.get(key) else "–"
        lines.append(f"| {layer} | {quantized.scheme.layers[layer].describe()} | {family} | {med(mine[key]):.3f} | "
                     f"{med(mine[key]) + encoder:.3f} | {ops} | {ort_ms:.3f} | {ratio} |")
    our_total = sum(med(v) for v in mine.values())
    ort_total = sum(med(v) for v in theirs.values())
    lines += ["", f"Sum of all profiled functions: ours {our_total:.3f} ms, ORT {ort_total:.3f} ms (all nodes).", "",
              "Ours, every function (slowest first):", "", "| function | ms |", "|---|---|"]
    lines += [f"| {k} | {med(v):.3f} |" for k, v in sorted(mine.items(), key=lambda kv: -med(kv[1]))]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
