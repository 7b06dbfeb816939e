"""Which kernel family runs which layer: the scheme kind and a stated cost rule decide (`auto`), or the
user's `--kernel`; where `tune` measured several exact families for a layer (`candidates`), `auto` takes the
fastest instead (passes/family_choice.py, family_times.py), and the summary says which reason held.

DESIGN.md's table: UNIFORM -> bit-serial popcount, POW2 -> shift-add, CODEBOOK -> lookup table, MULTIPOINT ->
sum of bit-serial GEMMs; refined by `auto_family` for UNIFORM and POW2 layers, which the int8 dot-product family
(kernels/int8.py) runs too, and for CODEBOOK layers, which the one-hot popcount family (kernels/onehot.py) runs
too. A family that cannot run a layer (its `supports`) or has no schedule rule for the
target (not in the target's rule table, family.rule_table) hands it to the next choice, and the dequant
fallback runs anything; where not even dequant has a rule, the adapter's generic scheduling takes its kernel
(the note says so). Grouped and depthwise convs run on `depthwise` (kernels/depthwise.py: no other family has
a grouped form; the dequant fallback has) and the summary says so.

Registering a family = one line in FAMILIES (and, if it is the first choice for a weight kind, PREFERRED).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from tvm.s_tir.dlight import ScheduleRule
from tvm.target import Target

from ..scheme import LayerScheme, WeightKind
from . import bitserial, depthwise, dequant, int8, lut, multipoint, onehot, shift
from .family import KernelFamily, rule_table

FAMILIES: dict[str, KernelFamily] = {
    f.name: f for f in (bitserial.FAMILY, int8.FAMILY, shift.FAMILY, lut.FAMILY, onehot.FAMILY,
                        multipoint.FAMILY, depthwise.FAMILY, dequant.FAMILY)
}
FALLBACK = dequant.FAMILY
CHOICES = ("auto", *FAMILIES)
PREFERRED = {
    WeightKind.UNIFORM: "bitserial",
    WeightKind.POW2: "shift",
    WeightKind.CODEBOOK: "lut",
    WeightKind.MULTIPOINT: "multipoint",
}
ALTERNATIVE = {WeightKind.UNIFORM: "int8", WeightKind.POW2: "int8", WeightKind.CODEBOOK: "onehot"}  # auto_family's


# The cost of one int8 dot-product byte-lane relative to one bit of a bit-serial AND + popcount, per dot ISA.
# vnni: measured (kernels side by side on this Zen 4, 3x3 convs C = 16..128 at W2A2 and 64 at W4A4: 4.9-7.2);
# sdot and widen are instruction-count estimates (qemu's timings mean nothing): NEON sdot does 16 byte-MACs
# per instruction where AND + CNT + UADALP do 128 bit-MACs in 3; widening multiplies need ~4x the sdot count.
INT8_COST = {"vnni": 6, "sdot": 6, "widen": 24}
# The cost of one lut lookup (one 4-channel group of one code and one byte plane) relative to one bit of a
# bit-serial AND + popcount (codebook_cost): measured on this Zen 4, UNIQ W2A2 conv56 (3x3, 64 -> 64 at 56x56)
# side by side (load 7 on 2 cores, 1 and 2 threads alike), lut 2.81 ms for 48 lookups vs onehot 1.24 ms for
# 384 bit-ops per tap and channel: 18.
LUT_COST = 18


def codebook_cost(layer: LayerScheme) -> tuple[int, int]:
    """(one-hot bit-ops, lut lookups) per kernel tap and output channel of a CODEBOOK layer:

        one-hot work = codes * abits * 64 * ceil(C / 64)   codes = the most codes > 0 one channel uses (its
                                                           rows: code 0's bucket is derived, onehot.py)
        lut work     = (2^b - 1) * planes * ceil(C / 4)     planes = lut's byte planes (1 up to 6-bit activations)
    """
    w, abits = layer.weight, layer.act.bits
    channels = w.codes.shape[1]
    codes = max(int((np.unique(row) > 0).sum()) for row in w.codes.reshape(w.out_channels, -1))
    planes = 1 if 4 * ((1 << abits) - 1) <= 255 else 2
    return codes * abits * 64 * -(-channels // 64), ((1 << w.bits) - 1) * planes * -(-channels // 4)


def auto_family(layer: LayerScheme, isa: str) -> str:
    """The stated cost rule for UNIFORM and POW2 layers, per kernel tap and output channel:

        bit-serial work  = wbits * abits * 64 * ceil(C / 64)   bits ANDed and popcounted (C packed per word)
        int8 work        = 4 * ceil(C / 4)                      byte products (C in groups of 4)

    UNIFORM runs on int8 when bit-serial work > INT8_COST[isa] * int8 work, else on bitserial: 5-8-bit layers
    and layers with few channels (the RGB stem, C = 3: 3 of 64 bits used) go to int8, W1/W2 layers with many
    channels stay bit-serial. POW2 runs on int8 where the target has a dot-product instruction (the same exact
    integers, measured faster than shift-add), and on multiplier-free shift-add elsewhere. C is the input
    channels of a conv, K of a linear layer; `isa` is the target's (`int8.dot_isa`).

    CODEBOOK runs on onehot when its bit-ops <= LUT_COST * lut lookups (`codebook_cost`), else on lut.
    """
    w = layer.weight
    if w.kind is WeightKind.POW2:
        return "int8" if isa != "widen" else "shift"
    if w.kind is WeightKind.CODEBOOK:
        serial, lookups = codebook_cost(layer)
        return "onehot" if serial <= LUT_COST * lookups else "lut"
    channels = w.codes.shape[1]
    serial = w.bits * layer.act.bits * 64 * -(-channels // 64)
    return "int8" if serial > INT8_COST[isa] * 4 * -(-channels // 4) else "bitserial"


def rule_why(layer: LayerScheme, isa: str) -> str:
    """The cost rule's reason for `auto_family`'s answer, in the compile summary's words."""
    w = layer.weight
    if w.kind is WeightKind.POW2:
        return ("cost rule: POW2 on int8, the target has a dot instruction" if isa != "widen"
                else "cost rule: POW2 on shift-add, no dot instruction")
    if w.kind is WeightKind.CODEBOOK:
        serial, lookups = codebook_cost(layer)
        return (f"cost rule: one-hot {serial} bit-ops {'<=' if serial <= LUT_COST * lookups else '>'} "
                f"{LUT_COST} x lut {lookups} lookups per tap")
    channels = w.codes.shape[1]
    serial = w.bits * layer.act.bits * 64 * -(-channels // 64)
    dot = INT8_COST[isa] * 4 * -(-channels // 4)
    return f"cost rule: bit-serial {serial} bit-ops {'>' if serial > dot else '<='} {INT8_COST[isa]} x int8 {dot // INT8_COST[isa]} per tap"


def candidates(layer: LayerScheme, target: Target, rules: Mapping[str, ScheduleRule] | None = None) -> list[str]:
    """The exact families `auto` may pick between for `layer` by measurement: the kind's own and int8 (UNIFORM,
    POW2) or onehot (CODEBOOK), where each supports the layer and has a rule on `target`; one name (or none)
    for every other layer."""
    rules = rule_table(FAMILIES.values(), target) if rules is None else rules
    kind = layer.weight.kind
    if layer.groups != 1 or kind not in ALTERNATIVE:
        return []
    names = (PREFERRED[kind], ALTERNATIVE[kind])
    return [n for n in names if n in rules and FAMILIES[n].supports(layer, target) is None]


def _wanted(layer: LayerScheme, target: Target, requested: str, rules: Mapping[str, ScheduleRule]) -> str:
    if requested != "auto":
        return requested
    if layer.groups != 1:
        return depthwise.FAMILY.name
    kind = layer.weight.kind
    if kind in (WeightKind.UNIFORM, WeightKind.POW2) and int8.supports(layer) is None:
        return auto_family(layer, int8.dot_isa(target))
    # LUT_COST was measured against onehot's own (CPU) schedule: where it has only a generic one (CUDA), lut stays
    if (kind is WeightKind.CODEBOOK and onehot.FAMILY.rule_for(target) is not None
            and onehot.FAMILY.name in candidates(layer, target, rules)):
        return auto_family(layer, int8.dot_isa(target))
    return PREFERRED[layer.weight.kind]


def choose(
    layer: LayerScheme, target: Target, requested: str = "auto", rules: Mapping[str, ScheduleRule] | None = None
) -> tuple[KernelFamily, str | None]:
    """(family, why the requested or preferred family was not taken, or None). `rules`: the target's rule
    table (family.rule_table; default: the families' own rules for `target`)."""
    if requested not in CHOICES:
        raise ValueError(f"unknown kernel family '{requested}'; known: {', '.join(CHOICES)}")
    rules = rule_table(FAMILIES.values(), target) if rules is None else rules
    wanted = _wanted(layer, target, requested, rules)
    family = FAMILIES.get(wanted)
    reason = f"no {wanted} kernel" if family is None else family.supports(layer, target)
    if reason is None and wanted not in rules:
        reason = f"no schedule rule for target keys {list(target.keys)}"
    if reason is None:
        return family, _grouped_note(layer) if wanted == depthwise.FAMILY.name and requested == "auto" else None
    if requested != "auto":
        fallback, note = choose(layer, target, "auto", rules)
        return fallback, f"{wanted}: {reason}" + (f"; {note}" if note else "")
    note = f"{wanted}: {reason}"
    if FALLBACK.name not in rules:
        note += f"; {FALLBACK.name} has no rule either: the target's generic schedule runs it"
    return FALLBACK, note


def _grouped_note(layer: LayerScheme) -> str:
    """Why `auto` sent a grouped conv to the depthwise family, for the summary."""
    per_group = layer.weight.codes.shape[1]
    kind = "depthwise" if per_group == 1 else f"{per_group} channels per group"
    return f"grouped conv, groups={layer.groups} ({kind}): int32 MACs over output rows, no family packs a group"
