"""What attacks exist and their defaults, without importing them (no torch): the command line
lists and checks attacks from here before any of them is loaded.

Default rates are the CIFAR-10 settings of the CT paper's reproduction guide.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AttackInfo:
    """Registry entry: defaults the CLI shows and checks options against."""

    name: str
    kind: str
    default_rate: float
    default_cover_rate: float | None = None
    custom_trigger: bool = False
    has_source: bool = False
    all_to_all: bool = False  # takes all_to_all=True: every class's samples, label y -> y + 1 mod C
    trains_model: bool = False  # trains what it needs here (takes surrogate=, see attacks.surrogate)
    summary: str = ""


ATTACK_INFO: dict[str, AttackInfo] = {
    info.name: info
    for info in (
        AttackInfo("badnet", "dirty label", 0.003, custom_trigger=True, all_to_all=True,
                   summary="black/white corner patch, relabelled"),
        AttackInfo("blend", "dirty label", 0.003, custom_trigger=True, all_to_all=True,
                   summary="noise image blended at 20 %, relabelled"),
        AttackInfo("trojan", "dirty label", 0.003, custom_trigger=True, all_to_all=True,
                   summary="opaque colour square, relabelled"),
        AttackInfo("sig", "clean label", 0.02, summary="sinusoid added to target-class images, labels kept"),
        AttackInfo("wanet", "dirty label + cover", 0.05, 0.1,
                   summary="smooth warp, relabelled; jittered-warp covers keep labels"),
        AttackInfo("tact", "source-specific", 0.003, 0.003, custom_trigger=True, has_source=True,
                   summary="trigger on source-class images, relabelled; covers from classes 5, 7"),
        AttackInfo("adap-blend", "adaptive", 0.003, 0.003, custom_trigger=True,
                   summary="half-masked 15 % blend on poison and covers; full 20 % at test"),
        AttackInfo("adap-patch", "adaptive", 0.003, 0.006,
                   summary="four partial-opacity patches on poison and covers; all four at test"),
        AttackInfo("cl", "clean label", 0.003, trains_model=True,
                   summary="target-class images made hard by PGD (8/255), four corner patches, labels kept"),
        AttackInfo("dynamic", "input-specific", 0.003, 0.003, trains_model=True,
                   summary="trigger generated per image by a network trained here; cross-trigger covers"),
        AttackInfo("issba", "invisible (dirty label)", 0.02, trains_model=True,
                   summary="a bit string hidden by a steganography encoder trained here, relabelled"),
        AttackInfo("narcissus", "clean label", 0.005, trains_model=True,
                   summary="optimised 16/255 trigger on target-class images, labels kept; x3 at test"),
    )
}

# Other names users know an attack by (ASSET's code calls the label-consistent attack "lc").
ATTACK_ALIASES: dict[str, str] = {"lc": "cl"}


def canonical_attack(name: str) -> str:
    """The registered name of ``name`` (case-insensitive; aliases resolved; unknown names as given)."""
    name = name.lower()
    return ATTACK_ALIASES.get(name, name)

# Attacks on feature rows (sanitize.data.rows.FeatureDataset), kept apart from the image attacks
# above because they take other options (``constrained``, ``trigger_size``) and other inputs.
FEATURE_ATTACK_INFO: dict[str, AttackInfo] = {
    "ember-explanation": AttackInfo("ember-explanation", "clean label (features)", 0.01,
                                    summary="explanation-guided trigger on benign EMBER rows, labels kept"),
}

# How the bench and the benchmarks name an attack's all-to-all variant: ``badnet-all-to-all``.
ALL_TO_ALL_SUFFIX = "-all-to-all"


def attack_variant(name: str) -> tuple[str, bool]:
    """``(attack, all_to_all)`` of a name such as ``blend`` or ``blend-all-to-all`` (as given when
    the attack has no all-to-all variant, so that the caller's unknown-name check reports it)."""
    name = canonical_attack(name)
    base = name.removesuffix(ALL_TO_ALL_SUFFIX)
    if base != name and base in ATTACK_INFO and ATTACK_INFO[base].all_to_all:
        return base, True
    return name, False


def variant_names() -> list[str]:
    """Every image attack and the all-to-all variants (what ``sanitize bench --attacks`` takes)."""
    return [*ATTACK_INFO, *(n + ALL_TO_ALL_SUFFIX for n, i in ATTACK_INFO.items() if i.all_to_all)]

