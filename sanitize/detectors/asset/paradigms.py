"""ASSET's three learning paradigms: what the offset loop runs on, and what it pushes.

ASSET's claim (Pan et al. 2023, title and Section 5) is that one idea, minimise a loss on the
trusted reserve and maximise it on the poison-rich part of the data, serves however the data is
used for training. What changes between paradigms is the model the loop trains, the loss it
pushes and where the concentration features come from; the loop, the selection, the threshold
and the canaries are shared (:mod:`.offset`, :mod:`.selection`, :mod:`.threshold`).

* ``supervised``: a fresh CNN on pixels; ``l_min`` the variance of its logits on the reserve,
  ``l_max`` cross-entropy under the dataset labels, score cross-entropy; concentration features
  from a classifier trained on the data (:mod:`.detector`).
* ``transfer``: the data trains a new head on a frozen pretrained encoder (``--encoder``). Its
  features of every image are computed once; the offset model is a fresh head (one hidden layer
  of 256) on them; losses and score as supervised; the concentration features are the frozen
  features joined with the label (:func:`transfer_features`). No model is trained on the data
  before the loop, so the data and the reserve are exchangeable for the selection and the
  canaries by construction.
* ``self-supervised``: no labels. An encoder learnt on the data by SimCLR
  (:mod:`sanitize.nn.contrastive`), or the ``--encoder`` given, gives the concentration features;
  the offset model is a fresh CNN with :data:`SSL_OUTPUTS` outputs on pixels; ``l_min`` and
  ``l_max`` are both the variance of its outputs (flat on the reserve, pushed apart on the
  selected samples) and the score is each sample's output variance. The threshold and the canary
  test are the supervised ones over a single pseudo-class: one global calibration, canaries
  drawn from the unlabelled reserve.

The ASSET authors did not release the code of the two new paradigms; the choices above (the head's
width, SimCLR's settings, the output count) are ours and measured in ``docs/asset.md``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ...data.images import ImageDataset, check_labelled
from ...errors import SanitizeError
from ...nn.contrastive import ContrastiveSpec, train_simclr
from ...nn.devices import describe
from ...nn.encoders import Encoder, encode, encoder_input, load_encoder
from ...nn.engine import Preprocess
from ...nn.models import build_model, default_arch
from ...progress import Progress
from .inputs import Inputs, _fitted, extractor_inputs, penultimate
from .offset import Objective, cross_entropy

PARADIGMS = ("supervised", "self-supervised", "transfer")
SSL_OUTPUTS = 10  # outputs of the self-supervised offset model (its variance is the loss)
HEAD_HIDDEN = 256  # the transfer offset head: features -> 256 -> classes
SSL_CANARY_FRACTION = 0.5  # of the unlabelled reserve, as canaries (see fewest_findable)
MIN_UNLABELLED = 20  # fewest inspected images of an unlabelled set
MIN_UNLABELLED_RESERVE = 10


def output_variance_objective(outputs: torch.Tensor, _labels: torch.Tensor) -> torch.Tensor:
    """Per-sample variance of the outputs: the label-free loss (self-supervised)."""
    return outputs.float().var(dim=1)


OBJECTIVES: dict[str, Objective] = {"supervised": cross_entropy, "transfer": cross_entropy,
                                    "self-supervised": output_variance_objective}


def check_paradigm(paradigm: str, encoder: object, data_kind_rows: bool = False) -> None:
    """The paradigm's own rules, before any data is read."""
    if paradigm not in PARADIGMS:
        raise SanitizeError(f"paradigm {paradigm!r}: expected one of {', '.join(PARADIGMS)}")
    if paradigm == "transfer" and encoder is None:
        raise SanitizeError("--paradigm transfer needs --encoder FILE (the frozen pretrained network)")
    if paradigm == "supervised" and encoder is not None:
        raise SanitizeError("--encoder applies to --paradigm transfer or self-supervised")
    if paradigm != "supervised" and data_kind_rows:
        raise SanitizeError(f"--paradigm {paradigm} inspects images; feature rows use the supervised paradigm")


class FeatureStandardise:
    """``(f - mean) / std`` of the frozen features, with the inspected set's statistics."""

    def __init__(self, feats: torch.Tensor):
        self.mean = feats.mean(0, keepdim=True)
        self.std = feats.std(0, keepdim=True).clamp_min(1e-4)

    def __call__(self, feats: torch.Tensor) -> torch.Tensor:
        return (feats.float() - self.mean) / self.std


def transfer_features(inp: Inputs) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Concentration features of the transfer paradigm: the frozen features joined with the label.

    In transfer learning the encoder is fixed, so what poison brings is a *pair* the reserve never
    shows: an image's features with a label they do not carry (the trigger's direction in a
    dirty-label attack). The concentration step therefore reads the standardised features with
    the label's one-hot appended, scaled by sqrt(dim) so that the label weighs as much as the
    whole feature vector (whose norm is about sqrt(dim) once standardised). Measured on digits
    (docs/asset.md): the frozen features alone, or the hidden layer of a head trained on them,
    let the per-batch selection pick almost no poison; with the label it picks more than the
    supervised extractor does.
    """
    d_feats, r_feats = inp.prep(inp.x), inp.prep(inp.reserve_x)
    weight = math.sqrt(d_feats.shape[1])
    d_lab = F.one_hot(inp.y, inp.num_classes).float() * weight
    r_lab = F.one_hot(inp.reserve_y, inp.num_classes).float() * weight
    return (torch.cat([d_feats, d_lab], 1), torch.cat([r_feats, r_lab], 1),
            {"concentration_features": "frozen features (standardised) + label one-hot x sqrt(dim)"})


def transfer_head(dim: int, classes: int, device: torch.device) -> nn.Module:
    """The offset model of the transfer paradigm: a fresh head on the frozen features."""
    return nn.Sequential(nn.Linear(dim, HEAD_HIDDEN), nn.ReLU(inplace=True), nn.Linear(HEAD_HIDDEN, classes)).to(device)


def transfer_inputs(data: ImageDataset, reserve: ImageDataset, encoder: Encoder, device: torch.device, *,
                    input_size: int | None, normalize: str, reserve_check: bool) -> Inputs:
    """Frozen features of the data and the reserve (computed once), a fresh head, labels as given."""
    if not isinstance(data, ImageDataset):
        raise SanitizeError("--paradigm transfer inspects image folders")
    check_labelled(data, "asset --paradigm transfer")
    data.check_reserve(reserve)
    reserve, fit_settings, notes, groups = _fitted(data, reserve, "images", reserve_check)
    data, reserve = data.to(device), reserve.to(device)
    feats, prep_in = encode(encoder, data.images, side=input_size, normalize=normalize)
    reserve_feats, _ = encode(encoder, reserve.images, side=input_size, normalize=normalize, prep=prep_in)
    classes = data.num_classes
    dim = int(feats.shape[1])
    settings = {"encoder": {**encoder.describe(), "feature_dim": dim, "input_size": prep_in.side,
                            "input_channels": prep_in.channels, "normalize": normalize},
                "offset_model": f"head {dim} -> {HEAD_HIDDEN} -> {classes} on the frozen features", **fit_settings}
    if prep_in.channels != data.channels:
        notes.append(f"grayscale images repeated to {prep_in.channels} channels for the encoder")
    return Inputs(feats, data.labels, reserve_feats, reserve.labels, classes,
                  lambda: transfer_head(dim, classes, device), FeatureStandardise(feats), "transfer-head",
                  np.arange(len(data)), len(data), None, notes=notes, settings=settings, reserve_groups=groups)


def unlabelled_inputs(data: ImageDataset, reserve: ImageDataset, arch: str, device: torch.device, *,
                      reserve_check: bool) -> Inputs:
    """Pixels of an image set whose labels are ignored (one pseudo-class), and a fresh CNN."""
    if not isinstance(data, ImageDataset) or not isinstance(reserve, ImageDataset):
        raise SanitizeError("--paradigm self-supervised inspects image folders")
    if reserve.size != data.size or reserve.channels != data.channels:
        raise SanitizeError(f"reserve images are {reserve.channels}x{reserve.size[0]}x{reserve.size[1]}, "
                            f"dataset images {data.channels}x{data.size[0]}x{data.size[1]}")
    if len(data) < MIN_UNLABELLED:
        raise SanitizeError(f"dataset has {len(data)} images: too few to inspect (at least {MIN_UNLABELLED})")
    if len(reserve) < MIN_UNLABELLED_RESERVE:
        raise SanitizeError(f"reserve has {len(reserve)} images: need at least {MIN_UNLABELLED_RESERVE}; "
                            f"a few hundred or more is recommended")
    data = _as_unlabelled(data)
    reserve = _as_unlabelled(reserve)
    reserve, fit_settings, notes, groups = _fitted(data, reserve, "images", reserve_check)
    side = min(data.size)
    chosen = default_arch(device, side) if arch == "auto" else arch
    if arch == "auto":
        notes.append(f"--arch auto chose {chosen} for {describe(device)} at {data.size[0]}x{data.size[1]} px")
    data, reserve = data.to(device), reserve.to(device)

    def factory() -> nn.Module:
        model = build_model(chosen, SSL_OUTPUTS, data.channels, side).to(device)
        return model.to(memory_format=torch.channels_last) if device.type == "cuda" else model

    return Inputs(data.images, data.labels, reserve.images, reserve.labels, 1, factory, Preprocess.fit(data.images),
                  chosen, np.arange(len(data)), len(data), side, notes=notes, reserve_groups=groups,
                  settings={"offset_model": f"{chosen} with {SSL_OUTPUTS} outputs", **fit_settings})


def _as_unlabelled(data: ImageDataset) -> ImageDataset:
    """The same images as one pseudo-class (a labelled folder's labels are ignored, not trusted)."""
    if not data.labelled:
        return data
    return ImageDataset(data.images, torch.zeros_like(data.labels), ["unlabelled"], data.paths, data.root,
                        list(data.notes), labelled=False)


def ssl_features(inp: Inputs, encoder: Encoder | None, spec: ContrastiveSpec, with_reserve: bool,
                 gen: torch.Generator, progress: Progress, *, input_size: int | None, normalize: str
                 ) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Concentration features of the self-supervised paradigm: a SimCLR encoder learnt on the data
    (and, with ``with_reserve``, on the reserve too, for the reason :func:`extractor_inputs`
    gives), or the given frozen encoder."""
    if encoder is not None:
        d_feats, prep_in = encode(encoder, inp.x, side=input_size, normalize=normalize)
        r_feats, _ = encode(encoder, inp.reserve_x, side=input_size, normalize=normalize, prep=prep_in)
        return d_feats, r_feats, {"encoder": {**encoder.describe(), "feature_dim": int(d_feats.shape[1]),
                                              "input_size": prep_in.side, "normalize": normalize}}
    train_x, _ = extractor_inputs(inp, with_reserve)
    with progress.phase("self-supervised encoder (SimCLR)", spec.planned_epochs(len(train_x))) as adv:
        model = train_simclr(train_x, arch=inp.arch, spec=spec, prep=inp.prep, generator=gen, on_epoch=adv)
    d_feats, r_feats = penultimate(model, inp.x, inp.prep), penultimate(model, inp.reserve_x, inp.prep)
    return d_feats, r_feats, {"encoder": {"source": "SimCLR on the inspected set", "arch": inp.arch,
                                          "epochs": spec.planned_epochs(len(train_x)),
                                          "temperature": spec.temperature, "trained_on_reserve": with_reserve}}


def resolve_encoder(encoder: str | Path | nn.Module | Encoder | None) -> Encoder | None:
    if encoder is None or isinstance(encoder, Encoder):
        return encoder
    return load_encoder(encoder)


__all__ = ["OBJECTIVES", "PARADIGMS", "SSL_CANARY_FRACTION", "SSL_OUTPUTS", "FeatureStandardise", "check_paradigm",
           "encoder_input", "output_variance_objective", "resolve_encoder",
           "ssl_features", "transfer_head", "transfer_inputs", "unlabelled_inputs"]
