"""Why a layer's deployed bytes differ from its bits x weights: each kernel family's storage layout, in words
a summary can print next to a size that looks wrong (an 8-bit first layer larger than its fp32 weights)."""

from __future__ import annotations

import math

WORD_BITS = 64  # packing.WORD_BITS (not imported: this module stays free of the kernel stack)


def code_bytes(numel: int, bits: int) -> int:
    """The weights' information content: bits per weight x weights, rounded up to bytes."""
    return math.ceil(numel * bits / 8)


def layout_reason(kernel: str, op: str, weight_shape: tuple[int, ...], bits: int) -> str:
    """One phrase on how `kernel` stores a layer of this shape, naming what inflates it."""
    if kernel in ("bitserial", "multipoint"):
        reduced = weight_shape[1]  # conv: input channels per kernel tap; linear: K
        words = -(-reduced // WORD_BITS)
        what = "input channel(s) of each kernel tap" if op == "conv2d" else "inputs"
        used = 100 * reduced / (words * WORD_BITS)
        extra = ", plus the extra rows of the multipoint split" if kernel == "multipoint" else ""
        return (f"{bits} bit-plane(s) of 64-bit words; its {reduced} {what} fill {words} word(s) per plane "
                f"({used:.0f} % of the bits used){extra}")
    if kernel == "shift":
        return "one int8 code per weight, output channels padded to 16"
    if kernel == "lut":
        return "one uint8 table index per 4 input channels and code, plus float64 levels"
    if kernel == "dequant":
        return "the exact float64 fallback: 8 bytes per weight and term"
    return f"the {kernel} kernel's layout"


def size_note(name: str, kernel: str, op: str, weight_shape: tuple[int, ...], bits: int,
              fp32_bytes: int, deployed: int) -> str | None:
    """A note when the deployed constants are larger than the fp32 weights (the codes column shows the rest)."""
    if deployed <= fp32_bytes:
        return None
    codes = code_bytes(math.prod(weight_shape), bits)
    return (f"{name} deploys {deployed} B, more than its {fp32_bytes} B of fp32 weights ({codes} B of {bits}-bit codes): "
            f"{layout_reason(kernel, op, weight_shape, bits)}")


def ratio_text(fp32_bytes: int, deployed: int) -> str:
    """'6.5x smaller', or '1.8x larger' (never '0.0x smaller')."""
    if deployed == 0:
        return "nothing deployed"
    if deployed <= fp32_bytes:
        return f"{fp32_bytes / deployed:.1f}x smaller"
    return f"{deployed / fp32_bytes:.1f}x larger"
