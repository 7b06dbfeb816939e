"""MobileNetV2- and EfficientNet-Lite0-shaped torch models (random weights, randomized BatchNorm): the depthwise
networks the compile-time goals and the whole-model exactness checks are measured on (torchvision is not
installed; the layer structure follows torchvision's mobilenet_v2 and the EfficientNet-Lite paper's table:
no squeeze-excite, ReLU6). `width` scales every channel count, so the tests can compile a small one."""

from __future__ import annotations

import torch
from torch import nn

# MobileNetV2: (expansion t, output channels c, repeats n, first stride s)
MOBILENET_V2 = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
# EfficientNet-Lite0: (expansion, kernel, first stride, output channels, repeats)
EFFICIENTNET_LITE0 = [(1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3), (6, 5, 1, 112, 3),
                      (6, 5, 2, 192, 4), (6, 3, 1, 320, 1)]


def _scaled(channels: int, width: float) -> int:
    return max(8, int(round(channels * width / 8)) * 8)


def conv_bn(cin: int, cout: int, kernel: int, stride: int, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, *([nn.ReLU6()] if act else []))


class InvertedResidual(nn.Module):
    """1x1 expansion (unless t = 1), k x k depthwise, 1x1 linear projection; a residual add where shapes match."""

    def __init__(self, cin: int, cout: int, stride: int, expansion: int, kernel: int = 3):
        super().__init__()
        hidden = cin * expansion
        layers = [conv_bn(cin, hidden, 1, 1)] if expansion != 1 else []
        layers += [conv_bn(hidden, hidden, kernel, stride, groups=hidden), conv_bn(hidden, cout, 1, 1, act=False)]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x) if self.residual else self.block(x)


class _Net(nn.Module):
    def __init__(self, stem: int, blocks: list[nn.Module], last_in: int, head: int, classes: int):
        super().__init__()
        self.stem = conv_bn(3, stem, 3, 2)
        self.blocks = nn.Sequential(*blocks)
        self.head = conv_bn(last_in, head, 1, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(head, classes)
        _randomize(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.head(self.blocks(self.stem(x)))), 1))


def mobilenet_v2(width: float = 1.0, classes: int = 1000) -> nn.Module:
    cin, blocks = _scaled(32, width), []
    stem = cin
    for t, c, n, s in MOBILENET_V2:
        cout = _scaled(c, width)
        for i in range(n):
            blocks.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
            cin = cout
    return _Net(stem, blocks, cin, _scaled(1280, max(width, 1.0)), classes).eval()


def efficientnet_lite0(width: float = 1.0, classes: int = 1000) -> nn.Module:
    cin, blocks = _scaled(32, width), []
    stem = cin
    for t, k, s, c, n in EFFICIENTNET_LITE0:
        cout = _scaled(c, width)
        for i in range(n):
            blocks.append(InvertedResidual(cin, cout, s if i == 0 else 1, t, k))
            cin = cout
    return _Net(stem, blocks, cin, _scaled(1280, max(width, 1.0)), classes).eval()


def _randomize(model: nn.Module, seed: int = 0) -> None:
    """Kaiming weights and non-trivial BatchNorm statistics, as a trained net would fold them."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
            elif isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) * 0.5 + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
