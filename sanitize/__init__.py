"""sanitize — find and remove backdoor-poisoned samples before training.

Python API (the CLI is a thin layer over it)::

    from sanitize import load_image_folder, load_reserve, ct
    data = load_image_folder("data/")
    reserve = load_reserve("clean/", data)
    result = ct(data, reserve, seed=0)      # DetectionResult: scores, flagged, suspected classes
"""

__version__ = "0.1.0"

from .data import ImageDataset, from_arrays, load_image_folder, load_reserve  # noqa: E402
from .detectors.asset import ASSET, asset  # noqa: E402
from .detectors.ct import ConfusionTraining, ct  # noqa: E402
from .result import DetectionResult  # noqa: E402

__all__ = ["ASSET", "ConfusionTraining", "asset", "DetectionResult", "ImageDataset", "ct", "from_arrays",
           "load_image_folder", "load_reserve", "__version__"]
