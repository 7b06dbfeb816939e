"""Compare VTA configurations on one model: weight bytes moved, estimated cycles (default and tuned tilings)
and GEMM utilisation, from the cycle model over each layer's real program (no host build, no data).

    python scripts/vta_configs.py [--model digits|resnet18] [--size 64] [--bits 8] [--tune TRIALS]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from tvmquant.compile import load_source  # noqa: E402
from tvmquant.quantize import QuantConfig, quantize_model  # noqa: E402
from tvmquant.resources import shipped_tuning_dir  # noqa: E402
from tvmquant.vta.config import load_config  # noqa: E402
from tvmquant.vta.lower import geometry  # noqa: E402
from tvmquant.vta.model import plan_model  # noqa: E402
from tvmquant.vta.pipeline import _input_shapes, vta_quant_config  # noqa: E402
from tvmquant.vta.runtime import compile_layer  # noqa: E402
from tvmquant.vta.simulator import estimate  # noqa: E402
from tvmquant.vta.tune import load_tilings, save, tune_layer  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="digits", choices=("digits", "resnet18"))
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--bits", type=int, default=8)
    parser.add_argument("--log", type=Path, default=shipped_tuning_dir("vta"))
    parser.add_argument("--configs", default="default,w4,w2,i4w4", help="comma-separated VTA configs")
    parser.add_argument("--tune", type=int, metavar="TRIALS", help="first tune every layer (TRIALS each) into --log")
    args = parser.parse_args()
    if args.model == "digits":
        source = load_source(None)
    else:
        from vta_resnet18 import ResNet18, randomize_bn

        shape = (1, 3, args.size, args.size)
        calib = np.random.default_rng(0).standard_normal((4,) + shape[1:]).astype(np.float32)
        source = load_source(randomize_bn(ResNet18()), shape, calib=calib)
    print(f"{args.model}: {'config':28s} {'bits':>6s} {'wgt bytes':>10s} {'cycles':>10s} {'tuned':>10s} {'util':>6s} {'ms':>7s}")
    for name in args.configs.split(","):
        vta = load_config(name)
        qc, _ = vta_quant_config(QuantConfig(args.bits, args.bits, args.bits), vta)
        scheme = quantize_model(source.gm, source.layers, source.calib, qc, source.batch_size)
        layers, _ = plan_model(source.gm, source.layers, scheme, vta, source.calib)
        shapes = _input_shapes(source, set(layers))
        if args.tune:
            save(args.log, vta, [tune_layer(geometry(layer, shapes[n], vta.block), vta, args.tune) for n, layer in layers.items()])
        tilings = load_tilings([args.log], vta)
        wgt = cycles = tuned = gemm = 0
        for lname, layer in layers.items():
            base = estimate(vta, compile_layer(layer, shapes[lname], vta).insns)
            tiling = tilings.get(geometry(layer, shapes[lname], vta.block).key())
            best = estimate(vta, compile_layer(layer, shapes[lname], vta, tiling).insns) if tiling else base
            wgt, cycles, tuned, gemm = wgt + base.load_bytes["wgt"], cycles + base.cycles, tuned + best.cycles, gemm + best.gemm_uops
        print(f"{'':9s}{vta.label:28s} W{qc.wbits}A{qc.abits} {wgt:10d} {cycles:10d} {tuned:10d} {gemm / tuned:6.1%} "
              f"{tuned / (vta.freq_mhz * 1e3):7.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
