"""ResNet-18-shaped net on VTA: compile (host part + VTA programs), run the artifact on the simulator, check it
bit for bit against the reference, print per-layer cycles, bytes and GEMM utilisation.

Random weights with randomized BatchNorm (folded) and random calibration inputs: the point is the shapes
(a 7x7/2 RGB stem, 3x3 convs, strided 1x1 shortcuts, the 512 -> 1000 dense), not the accuracy.

    python scripts/vta_resnet18.py [--size 224] [--config default|w4|w2|i4w4] [--bits 8] [--tune-log DIR]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from models_for_tests import randomize_bn  # noqa: E402

from tvmquant.compile import load_source  # noqa: E402
from tvmquant.quantize import QuantConfig  # noqa: E402
from tvmquant.target import load_target  # noqa: E402
from tvmquant.vta.commands import report_run  # noqa: E402
from tvmquant.vta.config import load_config  # noqa: E402
from tvmquant.vta.pipeline import compile_vta  # noqa: E402


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + (self.down(x) if self.down is not None else x))


class ResNet18(nn.Module):
    def __init__(self, classes: int = 1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        layers, cin = [], 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers += [Block(cin, cout, stride), Block(cout, cout, 1)]
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(512, classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        x = self.layers(x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--config", default="default")
    parser.add_argument("--bits", type=int, default=8)
    parser.add_argument("--samples", type=int, default=1, help="inputs run on the simulator")
    parser.add_argument("--tune-log", type=Path, help="a VTA tuning log folder to apply (default: none)")
    parser.add_argument("-o", "--output", type=Path, default=Path("tvmquant_out/resnet18-vta.so"))
    args = parser.parse_args()
    torch.manual_seed(0)
    shape = (1, 3, args.size, args.size)
    calib = np.random.default_rng(0).standard_normal((4,) + shape[1:]).astype(np.float32)
    source = load_source(randomize_bn(ResNet18()), shape, calib=calib, eval_x=calib[: args.samples])
    vta = load_config(args.config)
    start = time.perf_counter()
    out = compile_vta(source, QuantConfig(args.bits, args.bits, args.bits), load_target("vta"), vta, args.output,
                      [args.tune_log] if args.tune_log else [])
    print(f"compiled {len(out.programs)} VTA layers ({len(out.host_reasons)} on the host: {out.host_reasons}) "
          f"in {time.perf_counter() - start:.0f} s")
    start = time.perf_counter()
    code = report_run(args.output)
    print(f"simulated {args.samples} input(s) in {time.perf_counter() - start:.0f} s")
    return code


if __name__ == "__main__":
    sys.exit(main())
