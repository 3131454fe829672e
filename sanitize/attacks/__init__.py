"""Poisoning attacks for self-tests: each returns a :class:`PoisonedSet` with ground truth."""

from .base import PoisonedSet, choose_poison_indices
from .patch import badnet

__all__ = ["PoisonedSet", "badnet", "choose_poison_indices"]
