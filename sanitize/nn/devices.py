"""Device selection and reproducibility switches shared by every detector."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

from ..errors import ParameterError, SanitizeError


def resolve_device(spec: str | torch.device = "auto") -> torch.device:
    """Turn ``auto|cpu|cuda|cuda:N`` into a usable device, or fail with a clear message."""
    if isinstance(spec, torch.device):
        return spec
    spec = spec.strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ParameterError("device", spec, "CUDA is not available on this machine")
        index = spec.partition(":")[2]
        if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
            raise SanitizeError(
                f"--device {spec}: no such GPU (this machine has {torch.cuda.device_count()})"
            )
        return torch.device(spec)
    raise ParameterError("device", spec, "expected auto, cpu, cuda or cuda:N")


def seed_everything(seed: int) -> torch.Generator:
    """Seed every RNG a run touches and return a CPU generator for index sampling.

    Index permutations are drawn on the CPU from this generator so that the same seed gives the
    same batches on every device; on the CPU the whole run is then bit-for-bit repeatable.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def describe(device: torch.device) -> str:
    """A human-readable device name for reports ("cuda:0 (NVIDIA H100 80GB HBM3)")."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return "cpu"


class PhaseTimer:
    """Wall-clock seconds per named phase, summed over repeats (``with timer("round 0"): ...``).

    On CUDA the clock stops only after the device has finished the phase's queued work, so a
    phase is not credited with time the GPU spends on it later.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.timings: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - start
