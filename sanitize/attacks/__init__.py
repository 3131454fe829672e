"""Poisoning attacks for self-tests: each returns a :class:`PoisonedSet` with ground truth.

Every entry of :data:`ATTACKS` has the signature ``attack(dataset, rate, target, seed, **params)``
(``rate`` defaults to the attack's CIFAR-10 setting from the CT paper's reproduction guide) and is
deterministic for a given seed. :data:`ATTACK_INFO` holds the defaults and which options apply;
:func:`apply_trigger_to_test` makes the triggered test copy used to measure the attack success
rate. Constructions and size rules are documented in each module and in ``docs/attacks.md``.
"""

from collections.abc import Callable

from .base import (
    AttackInfo,
    PoisonedSet,
    Stamp,
    apply_trigger_to_test,
    choose_cover_indices,
    choose_poison_indices,
    load_trigger,
)
from .blend import adap_blend, blend
from .ember_explanation import ember_explanation
from .patch import adap_patch, badnet, trojan
from .sig import sig
from .tact import tact
from .wanet import wanet

Attack = Callable[..., PoisonedSet]

ATTACKS: dict[str, Attack] = {
    "badnet": badnet,
    "blend": blend,
    "trojan": trojan,
    "sig": sig,
    "wanet": wanet,
    "tact": tact,
    "adap-blend": adap_blend,
    "adap-patch": adap_patch,
}

ATTACK_INFO: dict[str, AttackInfo] = {
    info.name: info
    for info in (
        AttackInfo("badnet", "dirty label", 0.003, custom_trigger=True,
                   summary="black/white corner patch, relabelled"),
        AttackInfo("blend", "dirty label", 0.003, custom_trigger=True,
                   summary="noise image blended at 20 %, relabelled"),
        AttackInfo("trojan", "dirty label", 0.003, custom_trigger=True,
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
    )
}

# Attacks on feature rows (sanitize.features.FeatureDataset), kept apart from the image attacks
# above because they take other options (``constrained``, ``trigger_size``) and other inputs.
FEATURE_ATTACKS: dict[str, Attack] = {"ember-explanation": ember_explanation}
FEATURE_ATTACK_INFO: dict[str, AttackInfo] = {
    "ember-explanation": AttackInfo("ember-explanation", "clean label (features)", 0.01,
                                    summary="explanation-guided trigger on benign EMBER rows, labels kept"),
}

__all__ = ["ATTACKS", "ATTACK_INFO", "FEATURE_ATTACKS", "FEATURE_ATTACK_INFO", "Attack", "AttackInfo",
           "PoisonedSet", "Stamp", "adap_blend", "adap_patch", "apply_trigger_to_test", "badnet", "blend",
           "choose_cover_indices", "choose_poison_indices", "ember_explanation", "load_trigger", "sig", "tact",
           "trojan", "wanet"]
