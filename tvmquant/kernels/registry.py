"""Which kernel family runs which layer: the scheme kind decides (`auto`), or the user's `--kernel`.

DESIGN.md's table: UNIFORM -> bit-serial popcount, POW2 -> shift-add, CODEBOOK -> lookup table, MULTIPOINT ->
sum of bit-serial GEMMs. A family that cannot run a layer on the target (its `supports`, which includes "no
schedule rule for this target") hands it to the next choice, and the dequant fallback runs anything; where
not even dequant has a rule, the adapter's generic scheduling takes its kernel (the note says so).

Registering a family = one line in FAMILIES (and, if it is the first choice for a weight kind, PREFERRED).
"""

from __future__ import annotations

from tvm.target import Target

from ..scheme import LayerScheme, WeightKind
from . import bitserial, dequant, lut, multipoint, shift
from .family import KernelFamily

FAMILIES: dict[str, KernelFamily] = {
    f.name: f for f in (bitserial.FAMILY, shift.FAMILY, lut.FAMILY, multipoint.FAMILY, dequant.FAMILY)
}
FALLBACK = dequant.FAMILY
CHOICES = ("auto", *FAMILIES)
PREFERRED = {
    WeightKind.UNIFORM: "bitserial",
    WeightKind.POW2: "shift",
    WeightKind.CODEBOOK: "lut",
    WeightKind.MULTIPOINT: "multipoint",
}


def choose(layer: LayerScheme, target: Target, requested: str = "auto") -> tuple[KernelFamily, str | None]:
    """(family, why the requested or preferred family was not taken, or None)."""
    if requested not in CHOICES:
        raise ValueError(f"unknown kernel family '{requested}'; known: {', '.join(CHOICES)}")
    wanted = PREFERRED[layer.weight.kind] if requested == "auto" else requested
    family = FAMILIES.get(wanted)
    reason = f"no {wanted} kernel" if family is None else family.supports(layer, target)
    if reason is None:
        return family, None
    if requested != "auto":
        fallback, note = choose(layer, target, "auto")
        return fallback, f"{wanted}: {reason}" + (f"; {note}" if note else "")
    note = f"{wanted}: {reason}"
    if FALLBACK.rule_for(target) is None:
        note += f"; {FALLBACK.name} has no rule either: the target's generic schedule runs it"
    return FALLBACK, note


def family_named(name: str) -> KernelFamily:
    return FAMILIES[name]
