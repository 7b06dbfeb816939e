"""Where a whole-model compile's seconds go, stage by stage (and, with --profile, the slowest functions of the
build): MobileNetV2-, EfficientNet-Lite0- and ResNet-18-shaped nets at 224², x86, untuned, random weights.
With --check the compiled module is run on the evaluation inputs and compared with the quantized PyTorch
reference bit for bit.

    python scripts/compile_time.py mobilenet_v2 --bits 4 --check
    python scripts/compile_time.py resnet18 --bits 2 --profile 25
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from depthwise_models import efficientnet_lite0, mobilenet_v2  # noqa: E402

MODELS = {"mobilenet_v2": mobilenet_v2, "efficientnet_lite0": efficientnet_lite0}


def _model(name: str):
    if name == "resnet18":
        from bench_cases import ResNet18

        return ResNet18().eval()
    return MODELS[name]()


def _print_profile(artifact: Path, x: np.ndarray, runs: int) -> None:
    """The per-function table, then its sum per kind: each kernel family, and the fp32 ops TVM compiled."""
    from tvmquant.kernels.registry import FAMILIES
    from tvmquant.profile import print_profile, profile
    from tvmquant.rpc import DeviceModule

    rows = profile(DeviceModule.local(artifact), x, runs)
    print_profile(rows[:25], runs)
    kinds: dict[str, list[float]] = {}
    for row in rows:
        kind = next((f for f in FAMILIES if row.name.startswith(f"{f}_")), "fp32 ops (TVM)")
        kinds.setdefault(kind, []).append(row.ms)
    print("  by kind: " + ", ".join(f"{k} {sum(v):.2f} ms in {len(v)}" for k, v in sorted(kinds.items())))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", choices=[*MODELS, "resnet18"])
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--profile", type=int, default=0, help="print the N slowest functions of the build")
    parser.add_argument("--check", action="store_true", help="compiled == reference bit for bit")
    parser.add_argument("--run-profile", type=int, default=0, metavar="RUNS",
                        help="time every function of the compiled model (VM instrument hook, as `run --profile`)")
    args = parser.parse_args()

    from tvmquant import pipeline
    from tvmquant.batching import run_batched
    from tvmquant.quantize import QuantConfig, quantize_model
    from tvmquant.reference import ReferenceModel
    from tvmquant.rpc import DeviceModule
    from tvmquant.source import load_source
    from tvmquant.target import load_target

    stages: list[tuple[str, float]] = []

    def stage(name: str, start: float) -> float:
        now = time.perf_counter()
        stages.append((name, now - start))
        return now

    shape = (1, 3, args.size, args.size)
    calib = np.random.default_rng(0).standard_normal((4, *shape[1:])).astype(np.float32)
    t = time.perf_counter()
    source = load_source(_model(args.model), shape, calib=calib, eval_x=calib[:2])
    t = stage("export + fold BatchNorm", t)
    scheme = quantize_model(source.gm, source.layers, source.calib, QuantConfig(args.bits, args.bits), 1)
    t = stage("quantize (calibrate + weights)", t)
    target = load_target("x86")
    quantized = pipeline.Quantized(scheme, source.gm)
    profiler = cProfile.Profile() if args.profile else None
    if profiler:
        profiler.enable()
    built = pipeline.build(source, quantized, target)
    if profiler:
        profiler.disable()
    t = stage("build (Relax, lower, tvm.compile)", t)
    with tempfile.TemporaryDirectory() as folder:
        artifact = Path(folder) / "model.so"
        pipeline.export(built.executable, target, artifact)
        t = stage("export library (link)", t)
        total = sum(s for _, s in stages)
        families = sorted(set(built.lowered.kernels.values()))
        print(f"{args.model} {args.size}² W{args.bits}A{args.bits}, x86 untuned, {os.cpu_count()} cores, "
              f"load {os.getloadavg()[0]:.2f}: {total:.1f} s; {len(built.lowered.kernels)} quantized layers "
              f"({', '.join(families)}), {len(scheme.kept_float)} float")
        for name, seconds in stages:
            print(f"  {name:<34} {seconds:7.1f} s")
        if args.check:
            compiled = DeviceModule.local(artifact)
            got = np.concatenate([compiled(x[None]) for x in source.eval_x])
            want = run_batched(ReferenceModel(source.gm, source.layers, scheme), source.eval_x, 1)
            np.testing.assert_array_equal(got, want)
            print(f"  compiled == reference bit for bit on {len(got)} inputs (max |out| {np.abs(got).max():.3g})")
        if args.run_profile:
            _print_profile(artifact, source.eval_x[:1], args.run_profile)
    if profiler:
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(args.profile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
