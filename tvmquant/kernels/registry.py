"""Which kernel family runs which layer: the scheme kind decides (`auto`), or the user's `--kernel`.

DESIGN.md's table: UNIFORM -> bit-serial popcount, POW2 -> shift-add, CODEBOOK -> lookup table, MULTIPOINT ->
sum of bit-serial GEMMs. A family that cannot run a layer (see its `supports`) hands it to the next choice,
and the dequant fallback runs anything.
"""

from __future__ import annotations

from types import ModuleType

from ..scheme import LayerScheme, WeightKind
from . import bitserial, dequant, lut, multipoint, shift

FAMILIES: dict[str, ModuleType] = {m.FAMILY: m for m in (bitserial, shift, lut, multipoint, dequant)}
CHOICES = ("auto", *FAMILIES)
PREFERRED = {
    WeightKind.UNIFORM: "bitserial",
    WeightKind.POW2: "shift",
    WeightKind.CODEBOOK: "lut",
    WeightKind.MULTIPOINT: "multipoint",
}


def choose(layer: LayerScheme, requested: str = "auto") -> tuple[ModuleType, str | None]:
    """(family, why the requested or preferred family was not taken, or None)."""
    if requested not in CHOICES:
        raise ValueError(f"unknown kernel family '{requested}'; known: {', '.join(CHOICES)}")
    wanted = PREFERRED[layer.weight.kind] if requested == "auto" else requested
    family = FAMILIES.get(wanted)
    reason = f"no {wanted} kernel" if family is None else family.supports(layer)
    if reason is None:
        return family, None
    if requested != "auto":
        fallback, _ = choose(layer, "auto")
        return fallback, f"{wanted}: {reason}"
    return dequant, f"{wanted}: {reason}"


def tunable_family(func_name: str) -> ModuleType | None:
    """The tunable family whose kernel this PrimFunc is (named `<family>_<layer>` by the pass), if any."""
    for name, family in FAMILIES.items():
        if family.TUNABLE and func_name.startswith(f"{name}_"):
            return family
    return None
