"""Which kernel family runs which layer: the scheme kind and a stated cost rule decide (`auto`), or the
user's `--kernel`.

DESIGN.md's table: UNIFORM -> bit-serial popcount, POW2 -> shift-add, CODEBOOK -> lookup table, MULTIPOINT ->
sum of bit-serial GEMMs; refined by `auto_family` for UNIFORM and POW2 layers, which the int8 dot-product family
(kernels/int8.py) runs too. A family that cannot run a layer (see its `supports`) hands it to the next choice,
and the dequant fallback runs anything. Grouped and depthwise convs run on `depthwise` (kernels/depthwise.py:
no other family has a grouped form; the dequant fallback has) and the summary says so.
"""

from __future__ import annotations

from types import ModuleType

from ..scheme import LayerScheme, WeightKind
from . import bitserial, depthwise, dequant, int8, lut, multipoint, shift

FAMILIES: dict[str, ModuleType] = {
    m.FAMILY: m for m in (bitserial, int8, shift, lut, multipoint, depthwise, dequant)
}
GROUPED = (depthwise.FAMILY, dequant.FAMILY)  # the families with a grouped-conv form
CHOICES = ("auto", *FAMILIES)
PREFERRED = {
    WeightKind.UNIFORM: "bitserial",
    WeightKind.POW2: "shift",
    WeightKind.CODEBOOK: "lut",
    WeightKind.MULTIPOINT: "multipoint",
}


# The cost of one int8 dot-product byte-lane relative to one bit of a bit-serial AND + popcount, per dot ISA.
# vnni: measured (kernels side by side on this Zen 4, 3x3 convs C = 16..128 at W2A2 and 64 at W4A4: 4.9-7.2);
# sdot and widen are instruction-count estimates (qemu's timings mean nothing): NEON sdot does 16 byte-MACs
# per instruction where AND + CNT + UADALP do 128 bit-MACs in 3; widening multiplies need ~4x the sdot count.
INT8_COST = {"vnni": 6, "sdot": 6, "widen": 24}


def auto_family(layer: LayerScheme, isa: str | None = None) -> str:
    """The stated cost rule for UNIFORM and POW2 layers, per kernel tap and output channel:

        bit-serial work  = wbits * abits * 64 * ceil(C / 64)   bits ANDed and popcounted (C packed per word)
        int8 work        = 4 * ceil(C / 4)                      byte products (C in groups of 4)

    UNIFORM runs on int8 when bit-serial work > INT8_COST[isa] * int8 work, else on bitserial: 5-8-bit layers
    and layers with few channels (the RGB stem, C = 3: 3 of 64 bits used) go to int8, W1/W2 layers with many
    channels stay bit-serial. POW2 runs on int8 where the target has a dot-product instruction (the same exact
    integers, measured faster than shift-add), and on multiplier-free shift-add elsewhere. C is the input
    channels of a conv, K of a linear layer; `isa` defaults to the current target's (`int8.dot_isa`).
    """
    w = layer.weight
    isa = isa or int8.dot_isa()
    if w.kind is WeightKind.POW2:
        return "int8" if isa != "widen" else "shift"
    channels = w.codes.shape[1]
    serial = w.bits * layer.act.bits * 64 * -(-channels // 64)
    return "int8" if serial > INT8_COST[isa] * 4 * -(-channels // 4) else "bitserial"


def choose(layer: LayerScheme, requested: str = "auto") -> tuple[ModuleType, str | None]:
    """(family, why the requested or preferred family was not taken, or None)."""
    if requested not in CHOICES:
        raise ValueError(f"unknown kernel family '{requested}'; known: {', '.join(CHOICES)}")
    if requested == "auto":
        wanted = PREFERRED[layer.weight.kind]
        if layer.groups != 1:
            wanted = depthwise.FAMILY
        elif layer.weight.kind in (WeightKind.UNIFORM, WeightKind.POW2) and int8.supports(layer) is None:
            wanted = auto_family(layer)
    else:
        wanted = requested
    family = FAMILIES.get(wanted)
    reason = f"no {wanted} kernel" if family is None else family.supports(layer)
    if reason is None and layer.groups != 1 and wanted not in GROUPED:
        reason = f"grouped convolution (groups={layer.groups})"
    if reason is None:
        return family, _grouped_note(layer) if family is depthwise and requested == "auto" else None
    if requested != "auto":
        fallback, _ = choose(layer, "auto")
        return fallback, f"{wanted}: {reason}"
    return dequant, f"{wanted}: {reason}"


def _grouped_note(layer: LayerScheme) -> str:
    """Why `auto` sent a grouped conv to the depthwise family, for the summary."""
    per_group = layer.weight.codes.shape[1]
    kind = "depthwise" if per_group == 1 else f"{per_group} channels per group"
    return f"grouped conv, groups={layer.groups} ({kind}): int32 MACs over output rows, no family packs a group"


def fixed_kernel(func_name: str) -> bool:
    """Whether this PrimFunc is the kernel of a family MetaSchedule does not tune (it keeps its default schedule)."""
    return any(not family.TUNABLE and func_name.startswith(f"{name}_") for name, family in FAMILIES.items())


def tunable_family(func_name: str) -> ModuleType | None:
    """The tunable family whose kernel this PrimFunc is (named `<family>_<layer>` by the pass), if any."""
    for name, family in FAMILIES.items():
        if family.TUNABLE and func_name.startswith(f"{name}_"):
            return family
    return None
