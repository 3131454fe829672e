"""Samples addressed as one sequence without being one tensor: memory maps, concatenations, streaming.

The engine and the detectors index their samples (``x[idx]``, ``x[a:b]``, ``len(x)``,
``x.device``). A plain tensor answers that for a set that sits on the device in one piece; a
:class:`Samples` answers it for

* a set that stays on the host and is sent to the device a batch at a time (streaming: a
  memory-mapped decoded folder larger than the device's memory, see :func:`stream_images`),
* rows drawn from a memory-mapped feature matrix (never copied out whole), and
* a concatenation (inspected samples followed by canaries) that is never materialised.

Each part is ``(X, index)``: the part's samples are ``X[index]``. ``device`` is where a gathered
batch is delivered (the parts' own device unless told otherwise); a host part is gathered on
the host and copied from pinned memory without making the host wait.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

STREAM_SHARE = 0.5  # auto: stream when the set would take more than this share of the device's free memory


class Samples:
    """Samples ``X[index]`` drawn from one or more tensors, addressed as one sequence."""

    def __init__(self, *parts: tuple[torch.Tensor, torch.Tensor], device: torch.device | str | None = None,
                 streamed: bool = False):
        self.parts = [(X, index.to(X.device)) for X, index in parts]
        self.starts = np.cumsum([0] + [len(index) for _, index in self.parts]).tolist()
        self._device = torch.device(device) if device is not None else None
        self.streamed = streamed  # made by stream_images: batches are gathered ahead (see prefetched)

    def __len__(self) -> int:
        return self.starts[-1]

    @property
    def device(self) -> torch.device:
        """Where a gathered batch is delivered."""
        return self._device or self.parts[0][0].device

    @property
    def dtype(self) -> torch.dtype:
        return self.parts[0][0].dtype

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self), *self.parts[0][0].shape[1:]))

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __getitem__(self, idx: slice | torch.Tensor | np.ndarray) -> torch.Tensor:
        if isinstance(idx, slice):
            idx = torch.arange(len(self))[idx]
        idx = torch.as_tensor(idx)
        if len(self.parts) == 1:
            X, index = self.parts[0]
            return self._deliver(X[index[idx.to(index.device)]])
        out = None
        for (X, index), start, stop in zip(self.parts, self.starts, self.starts[1:], strict=False):
            mine = (idx >= start) & (idx < stop)
            rows = self._deliver(X[index[(idx[mine] - start).to(index.device)]])
            if out is None:
                out = rows.new_empty((len(idx), *rows.shape[1:]))
            out[mine.to(out.device)] = rows
        return out

    def _deliver(self, rows: torch.Tensor) -> torch.Tensor:
        if rows.device == self.device:
            return rows
        if self.device.type == "cuda":
            return rows.pin_memory().to(self.device, non_blocking=True)
        return rows.to(self.device)

    def take(self, idx: torch.Tensor | np.ndarray) -> Samples:
        """The samples at ``idx`` as a new view (nothing gathered). With several parts, ``idx``
        must be increasing (a subset), so that the view keeps the parts' order."""
        idx = torch.as_tensor(idx).cpu()
        if len(self.parts) > 1 and len(idx) > 1 and bool((idx[1:] < idx[:-1]).any()):
            raise ValueError("a view of several parts takes increasing indices only")
        parts = []
        for (X, index), start, stop in zip(self.parts, self.starts, self.starts[1:], strict=False):
            mine = idx[(idx >= start) & (idx < stop)] - start
            if len(mine):
                parts.append((X, index[mine.to(index.device)]))
        if not parts:
            parts = [(self.parts[0][0], idx[:0])]
        return Samples(*parts, device=self.device, streamed=self.streamed)

    def to(self, device: torch.device | str) -> Samples:
        """The same samples, delivered to ``device``."""
        return Samples(*self.parts, device=device, streamed=self.streamed)


def as_parts(x: torch.Tensor | Samples) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``x`` as :class:`Samples` parts."""
    if isinstance(x, Samples):
        return list(x.parts)
    return [(x, torch.arange(len(x), device=x.device))]


def take_rows(x: torch.Tensor | Samples, idx: torch.Tensor | np.ndarray) -> torch.Tensor | Samples:
    """``x[idx]`` for a tensor; a view (nothing gathered) for :class:`Samples`."""
    if isinstance(x, Samples):
        return x.take(idx)
    return x[torch.as_tensor(idx, device=x.device)]


def concat_rows(*xs: torch.Tensor | Samples) -> torch.Tensor | Samples:
    """``xs`` one after the other: ``torch.cat`` for tensors, a view when any is :class:`Samples`
    (delivered where the first one delivers)."""
    if all(isinstance(x, torch.Tensor) for x in xs):
        return torch.cat(list(xs))
    return Samples(*(part for x in xs for part in as_parts(x)), device=xs[0].device,
                   streamed=any(isinstance(x, Samples) and x.streamed for x in xs))


def should_stream(nbytes: int, device: torch.device) -> bool:
    """Auto: stream when a set of ``nbytes`` would take more than :data:`STREAM_SHARE` of the
    device's free memory (training needs the rest); the host's own memory is never "full" here,
    because a mapped file is paged in and out by the OS."""
    if device.type != "cuda":
        return False
    free, _ = torch.cuda.mem_get_info(device)
    return nbytes > STREAM_SHARE * free


def stream_images(images: torch.Tensor | Samples, device: torch.device | str) -> Samples:
    """``images`` kept where they are (the host, usually a memory map), delivered to ``device`` per batch."""
    if isinstance(images, Samples):
        return Samples(*images.parts, device=device, streamed=True)
    return Samples((images, torch.arange(len(images))), device=device, streamed=True)


def prefetched(x: torch.Tensor | Samples, batches: Iterable[torch.Tensor]
               ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(idx, x[idx])`` for each index batch; for streamed samples the next batch is gathered on a
    background thread while the caller works on this one (same batches, same order)."""
    if not (isinstance(x, Samples) and x.streamed):
        for idx in batches:
            yield idx, x[idx]
        return
    with ThreadPoolExecutor(1) as pool:
        pending = None
        for idx in batches:
            future = pool.submit(x.__getitem__, idx)
            if pending is not None:
                yield pending[0], pending[1].result()
            pending = (idx, future)
        if pending is not None:
            yield pending[0], pending[1].result()
