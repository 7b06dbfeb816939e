"""The conv2d geometry every kernel family shares (dense = a 1x1 conv on a 1x1 image)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ConvGeometry:
    """Input (N, C, H, W), O output channels, kernel, stride and padding of one layer instance; `conv_groups`
    (keyword only, so that families' configs can add fields) splits C and O into groups that see only their own."""

    batch: int
    in_channels: int
    height: int
    width: int
    out_channels: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    conv_groups: int = field(default=1, kw_only=True)

    @property
    def reduction(self) -> int:
        """K: the length of each output's dot product (C / conv_groups * KH * KW)."""
        return self.in_channels // self.conv_groups * self.kernel[0] * self.kernel[1]

    @property
    def out_hw(self) -> tuple[int, int]:
        (kh, kw), (sh, sw), (ph, pw) = self.kernel, self.stride, self.padding
        return (self.height + 2 * ph - kh) // sh + 1, (self.width + 2 * pw - kw) // sw + 1
