"""Load: the first stage. Every kind of input becomes one :class:`~sanitize.data.protocol.Dataset`.

* :mod:`.images` -- image folders (``root/<class>/<file>``) decoded once into a uint8 tensor;
* :mod:`.decoding` -- reading image files (header probe, the set's common format, pixels);
* :mod:`.decode_cache` -- large folders decoded once to a memory-mapped file that later runs map;
* :mod:`.rows` -- feature rows (EMBER's vectorised files, ``.npz``/``.npy``, raw ``.jsonl``);
* :mod:`.protocol` -- what both offer the pipeline (write the kept part back, report evidence,
  check a reserve), and :func:`~sanitize.data.protocol.load_inputs`, which picks the reader;
* :mod:`.reserve_fit` -- does the trusted reserve fit the data? (checked before any training);
* :mod:`.examples` -- small real sets that ship offline (the demo and the tests).

Later stages import from these modules; nothing here imports a detector, a report or the
command line.
"""

from __future__ import annotations

from .images import ImageDataset, from_arrays, load_image_folder, load_reserve
from .protocol import Dataset, load_inputs
from .rows import FeatureDataset, load_features

__all__ = ["Dataset", "FeatureDataset", "ImageDataset", "from_arrays", "load_features", "load_image_folder",
           "load_inputs", "load_reserve"]
