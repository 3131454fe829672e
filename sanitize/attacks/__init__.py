"""Poisoning attacks for self-tests: each returns a :class:`PoisonedSet` with ground truth.

Every entry of :data:`ATTACKS` has the signature ``attack(dataset, rate, target, seed, **params)``
(``rate`` defaults to the attack's CIFAR-10 setting from the CT paper's reproduction guide) and is
deterministic for a given seed. :data:`ATTACK_INFO` holds the defaults and which options apply;
:func:`apply_trigger_to_test` makes the triggered test copy used to measure the attack success
rate. Constructions and size rules are documented in each module and in ``docs/attacks.md``.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from typing import Any

from .catalog import ATTACK_ALIASES, ATTACK_INFO, FEATURE_ATTACK_INFO, AttackInfo, canonical_attack

# name -> module; loaded on first use (PEP 562), so that the catalog above (all the command line
# needs for --help and option checks) does not import torch.
_LAZY = {
    "PoisonedSet": "base", "Stamp": "base", "apply_trigger_to_test": "base", "choose_cover_indices": "base",
    "choose_poison_indices": "base", "load_trigger": "base",
    "adap_blend": "blend", "blend": "blend", "ember_explanation": "ember_explanation",
    "adap_patch": "patch", "badnet": "patch", "trojan": "patch", "sig": "sig", "tact": "tact", "wanet": "wanet",
    "cl": "cl", "dynamic": "dynamic", "issba": "issba", "narcissus": "narcissus",
    "Surrogate": "surrogate",
}
# attack name -> function name, for ATTACKS and FEATURE_ATTACKS
_IMAGE_ATTACKS = {"badnet": "badnet", "blend": "blend", "trojan": "trojan", "sig": "sig", "wanet": "wanet",
                  "tact": "tact", "adap-blend": "adap_blend", "adap-patch": "adap_patch", "cl": "cl",
                  "dynamic": "dynamic", "issba": "issba", "narcissus": "narcissus"}
_FEATURE_ATTACKS = {"ember-explanation": "ember_explanation"}

Attack = Callable[..., Any]


def run_attack(name: str, dataset: Any, rate: float, target: int = 0, seed: int = 0, *, surrogate: Any = None,
               **params: Any) -> Any:
    """``ATTACKS[name](dataset, rate, target, seed, **params)``, handing ``surrogate`` (a
    :class:`~.surrogate.Surrogate`: device, cache, progress) to the attacks that train a model."""
    name = canonical_attack(name)
    if ATTACK_INFO[name].trains_model and surrogate is not None:
        params["surrogate"] = surrogate
    return __getattr__("ATTACKS")[name](dataset, rate, target=target, seed=seed, **params)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
    elif name == "ATTACKS":
        value = {key: __getattr__(fn) for key, fn in _IMAGE_ATTACKS.items()}
    elif name == "FEATURE_ATTACKS":
        value = {key: __getattr__(fn) for key, fn in _FEATURE_ATTACKS.items()}
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


__all__ = ["ATTACKS", "ATTACK_ALIASES", "ATTACK_INFO", "FEATURE_ATTACKS", "FEATURE_ATTACK_INFO", "Attack",
           "AttackInfo", "PoisonedSet", "Stamp", "Surrogate", "adap_blend", "adap_patch", "apply_trigger_to_test",
           "badnet", "blend", "canonical_attack", "choose_cover_indices", "choose_poison_indices", "cl",
           "dynamic", "ember_explanation", "issba", "load_trigger", "narcissus", "run_attack", "sig", "tact", "trojan",
           "wanet"]
