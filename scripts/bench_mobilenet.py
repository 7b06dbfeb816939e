"""A depthwise network end to end against ONNX Runtime int8 (static QDQ, per channel) and PyTorch fp32, side by
side in one process, interleaved (`tvmquant bench`'s timing), the same threads each (2 by default), with the
compiled module's per-function profile: the MobileNetV2-shaped net (or EfficientNet-Lite0) at 224², random
weights, compiled untuned for x86 at WxAx (first and last layer W8A8).

    python scripts/bench_mobilenet.py --bits 4 [--model efficientnet_lite0] [--rounds 10] [--threads 1]

On a loaded machine `--threads 1` takes the fork/join barriers out (every one of our kernels and fp32 ops is a
parallel region that waits for its slowest thread's time slice; ORT and PyTorch have fewer regions).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

THREADS = sys.argv[sys.argv.index("--threads") + 1] if "--threads" in sys.argv else "2"
os.environ["TVM_NUM_THREADS"] = THREADS  # read when TVM's pool starts, so before any import of tvm
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle PyTorch threads must not spin against the others

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

from depthwise_models import efficientnet_lite0, mobilenet_v2  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["mobilenet_v2", "efficientnet_lite0"], default="mobilenet_v2")
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--calib", type=int, default=8, help="random calibration images (ours and ORT's)")
    parser.add_argument("--threads", type=int, default=2, help="threads of every variant (ORT takes torch's)")
    args = parser.parse_args()

    import torch

    from tvmquant.bench_cmd import bench, print_bench
    from tvmquant.compile import compile_model
    from tvmquant.quantize import QuantConfig
    from tvmquant.source import load_source
    from tvmquant.target import load_target

    torch.set_num_threads(args.threads)
    model = {"mobilenet_v2": mobilenet_v2, "efficientnet_lite0": efficientnet_lite0}[args.model]()
    calib = np.random.default_rng(0).standard_normal((args.calib, 3, 224, 224)).astype(np.float32)
    source = load_source(model, (1, 3, 224, 224), calib=calib, eval_x=calib[:2])
    with tempfile.TemporaryDirectory() as folder:
        artifact = Path(folder) / f"{args.model}-w{args.bits}a{args.bits}.so"
        result = compile_model(source, QuantConfig(args.bits, args.bits), load_target("x86"), artifact)
        families = {}
        for layer, family in result.kernels.items():
            families[family] = families.get(family, 0) + 1
        print(f"{args.model} 224² W{args.bits}A{args.bits}, {args.threads} thread(s): {families}; "
              f"load average {os.getloadavg()}")
        print_bench(bench(artifact, source, args.rounds), artifact)
        print(f"load average at end {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
