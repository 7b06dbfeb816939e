"""What `scripts/bench.py` measures: the layers and models (one torch module each, seeded weights), and their
work counts for the ceilings.

torchvision is not installed here (and no wheel on the mirror matches torch 2.13), so ResNet-18 is written
out below; it is torchvision's architecture (BasicBlock, [2, 2, 2, 2], 1x1 stride-2 downsample) with random
weights, which is all a speed measurement needs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class Geometry:
    """One conv (a linear layer is a 1x1 conv on a 1x1 image with batch = rows): enough to count the work."""

    batch: int
    in_channels: int
    height: int
    width: int
    out_channels: int
    kernel: int = 1
    stride: int = 1
    padding: int = 0

    @property
    def out_hw(self) -> tuple[int, int]:
        size = lambda n: (n + 2 * self.padding - self.kernel) // self.stride + 1  # noqa: E731
        return size(self.height), size(self.width)

    @property
    def macs(self) -> int:
        oh, ow = self.out_hw
        return self.batch * self.out_channels * oh * ow * self.in_channels * self.kernel**2

    def popcount_words(self, wbits: int, abits: int) -> int:
        """64-bit AND+popcount operations of the bit-serial core (dot product plus the activation sums)."""
        oh, ow = self.out_hw
        words = -(-self.in_channels // 64)
        taps = self.batch * oh * ow * self.kernel**2 * words * abits
        return taps * (self.out_channels * wbits + 1)


@dataclass(frozen=True)
class Case:
    """One benchmarked layer or model: `kind` is conv, linear or model."""

    name: str
    title: str
    kind: str
    input_shape: tuple[int, ...]
    make: Callable[[], nn.Module]
    geometry: Geometry | None = None  # single layers only
    int8_fusion: tuple[tuple[str, ...], ...] = ()  # module groups PyTorch eager int8 fuses (conv, bn[, relu])

    def module(self) -> nn.Module:
        """The module with the same weights every time it is asked for (seeded), in eval mode."""
        torch.manual_seed(0)
        return self.make().eval()

    def inputs(self, count: int, seed: int) -> np.ndarray:
        """Random inputs: standard normal, or the digits' own scale for the digits model."""
        rng = np.random.default_rng(seed)
        shape = (count, *self.input_shape[1:])
        if self.name == "digits":
            return rng.uniform(0, 16, shape).astype(np.float32) / 16
        return rng.standard_normal(shape, dtype=np.float32)


class BasicBlock(nn.Module):
    """ReLU as modules and the residual add as a FloatFunctional, so PyTorch's eager int8 can quantize it."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.add = torch.ao.nn.quantized.FloatFunctional()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.add.add_relu(out, x if self.downsample is None else self.downsample(x))


class ResNet18(nn.Module):
    """torchvision.models.resnet18's layer structure and names."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        widths, cin, stages = [64, 128, 256, 512], 64, []
        for i, width in enumerate(widths):
            stride = 1 if i == 0 else 2
            stages.append(nn.Sequential(BasicBlock(cin, width, stride), BasicBlock(width, width, 1)))
            cin = width
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        self._randomize_batchnorm()

    def _randomize_batchnorm(self) -> None:
        """Non-trivial BatchNorm statistics, so folding them into the convs is exercised like a trained net."""
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                with torch.no_grad():
                    m.running_mean.uniform_(-0.1, 0.1)
                    m.running_var.uniform_(0.5, 1.5)
                    m.weight.uniform_(0.5, 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _resnet18_fusion() -> tuple[tuple[str, ...], ...]:
    groups: list[tuple[str, ...]] = [("conv1", "bn1", "relu")]
    for stage in range(1, 5):
        for block in range(2):
            p = f"layer{stage}.{block}."
            groups += [(p + "conv1", p + "bn1", p + "relu"), (p + "conv2", p + "bn2")]
            if stage > 1 and block == 0:
                groups.append((p + "downsample.0", p + "downsample.1"))
    return tuple(groups)


def _conv_case(size: int, channels: int) -> Case:
    geometry = Geometry(1, channels, size, size, channels, 3, 1, 1)
    return Case(
        f"conv{size}", f"conv 3x3 {channels}->{channels} @{size}x{size}", "conv", (1, channels, size, size),
        lambda: nn.Conv2d(channels, channels, 3, 1, 1, bias=False), geometry,
    )


def _linear_case(name: str, rows: int, k: int, n: int) -> Case:
    return Case(name, f"{name} {rows}x{k}x{n}", "linear", (rows, k), lambda: nn.Linear(k, n, bias=False),
                Geometry(rows, k, 1, 1, n))


def _digits() -> nn.Module:
    from tvmquant.models import digits

    return digits.load_model()


def all_cases() -> list[Case]:
    """ResNet-18's four 3x3 conv shapes, a dense and a GEMV layer, ResNet-18 and the built-in digits CNN."""
    from tvmquant.models import digits

    return [
        _conv_case(56, 64), _conv_case(28, 128), _conv_case(14, 256), _conv_case(7, 512),
        _linear_case("dense", 64, 1024, 1024), _linear_case("gemv", 1, 4096, 4096),
        Case("resnet18", "ResNet-18 224x224 (random weights)", "model", (1, 3, 224, 224), ResNet18,
             int8_fusion=_resnet18_fusion()),
        Case("digits", "digits CNN (built-in, 8x8)", "model", tuple(digits.INPUT_SHAPE), _digits,
             int8_fusion=(("conv1", "bn1"), ("conv2", "bn2"))),
    ]


QUICK = ("conv7", "dense", "digits")  # --quick: one of each kind, the small ones
