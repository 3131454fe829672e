"""Frozen pretrained encoders (transfer learning): read the user's network, never download one.

An encoder is given as a file (``--encoder FILE``) in one of three forms:

* a TorchScript file (``torch.jit.save``): no Python class needed to read it;
* a whole pickled ``torch.nn.Module`` (``torch.save(model, FILE)``, timm models included): reading
  it runs the pickle, so it must come from someone you trust, like any code you run;
* ``ARCH:FILE``: a torchvision architecture name and a ``state_dict`` file (read with
  ``weights_only=True``); the classification layer is replaced by the identity.

The encoder is frozen and in eval mode. Its features of every image are computed once, with its
own preprocessing: images resized to ``input_size`` and normalised by ImageNet's statistics (what
torchvision and timm checkpoints expect) or by the data's own. A grayscale set is repeated to
three channels when the encoder wants three.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import SanitizeError
from .engine import autocast

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NORMALIZATIONS = ("imagenet", "data")
HEAD_NAMES = ("fc", "classifier", "head", "heads")  # torchvision's names for the classification layer
STATE_DICT_WRAPPERS = ("state_dict", "model", "model_state_dict", "net")  # common checkpoint layouts


@dataclass
class Encoder:
    """A frozen encoder and where it came from (``sha256`` of its file(s); None for an in-memory module)."""

    module: nn.Module
    source: str
    kind: str  # "torchscript", "module", "state_dict" or "in-memory"
    sha256: str | None

    def describe(self) -> dict[str, Any]:
        return {"source": self.source, "kind": self.kind, "sha256": self.sha256}


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_encoder(spec: str | Path | nn.Module) -> Encoder:
    """Read ``spec`` (a module, a file, or ``ARCH:FILE``) as a frozen encoder on the CPU.

    Anything that is not a usable network is one :class:`SanitizeError` line naming the file.
    """
    if isinstance(spec, nn.Module):
        return _frozen(Encoder(spec, type(spec).__name__, "in-memory", None))
    text = str(spec)
    arch, sep, rest = text.partition(":")
    if sep and arch and _is_torchvision_arch(arch):
        return _frozen(_from_state_dict(arch, Path(rest), text))
    path = Path(text)
    if not path.is_file():
        raise SanitizeError(f"--encoder {text}: no such file")
    try:
        module = torch.jit.load(str(path), map_location="cpu")
        return _frozen(Encoder(module, text, "torchscript", file_sha256(path)))
    except (RuntimeError, ValueError, OSError):
        pass  # not TorchScript: a pickled module?
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # a corrupt or foreign file fails in many ways inside the unpickler
        raise SanitizeError(f"--encoder {text}: cannot read it as a PyTorch file ({_first_line(exc)})") from None
    if isinstance(obj, nn.Module):
        return _frozen(Encoder(obj, text, "module", file_sha256(path)))
    if isinstance(obj, dict):
        raise SanitizeError(f"--encoder {text}: holds a dict (a state_dict?), not a network: name its architecture, "
                            f"e.g. --encoder resnet18:{text}")
    raise SanitizeError(f"--encoder {text}: holds a {type(obj).__name__}, not a torch.nn.Module")


def _is_torchvision_arch(name: str) -> bool:
    from torchvision import models

    return name in models.list_models(module=models)


def _from_state_dict(arch: str, path: Path, source: str) -> Encoder:
    from torchvision import models

    if not path.is_file():
        raise SanitizeError(f"--encoder {source}: no such file {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise SanitizeError(f"--encoder {source}: cannot read a state_dict ({_first_line(exc)})") from None
    for key in STATE_DICT_WRAPPERS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise SanitizeError(f"--encoder {source}: {path} is not a state_dict (a mapping of names to tensors)")
    state = {k.removeprefix("module."): v for k, v in state.items()}  # saved from DistributedDataParallel
    model = models.get_model(arch, weights=None)
    head = next((name for name in HEAD_NAMES if name in state_head_names(state) and hasattr(model, name)), None)
    try:
        if head is not None:
            _fit_head(model, head, state)
        model.load_state_dict(state)
    except (RuntimeError, ValueError) as exc:
        raise SanitizeError(f"--encoder {source}: the weights do not fit {arch} ({_first_line(exc)})") from None
    for name in HEAD_NAMES:
        if hasattr(model, name):
            setattr(model, name, nn.Identity())
            break
    return Encoder(model, source, "state_dict", file_sha256(path))


def state_head_names(state: dict[str, torch.Tensor]) -> set[str]:
    return {k.split(".")[0] for k in state}


def _fit_head(model: nn.Module, head: str, state: dict[str, torch.Tensor]) -> None:
    """Resize the classification layer to the checkpoint's class count (a fine-tuned head has its own)."""
    layer = getattr(model, head)
    linears = [m for m in layer.modules() if isinstance(m, nn.Linear)] if not isinstance(layer, nn.Linear) else [layer]
    weights = [v for k, v in state.items() if k.startswith(f"{head}.") and k.endswith("weight") and v.ndim == 2]
    if not linears or not weights:
        return
    last, out = linears[-1], weights[-1].shape[0]
    if last.out_features != out:
        replacement = nn.Linear(last.in_features, out, bias=last.bias is not None)
        if isinstance(layer, nn.Linear):
            setattr(model, head, replacement)
        else:
            for name, module in layer.named_modules():
                if module is last:
                    parent = layer.get_submodule(name.rpartition(".")[0]) if "." in name else layer
                    setattr(parent, name.rpartition(".")[2], replacement)


def _frozen(encoder: Encoder) -> Encoder:
    encoder.module.eval()
    for p in encoder.module.parameters():
        p.requires_grad_(False)
    return encoder


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


@dataclass
class EncoderInput:
    """How images become the encoder's input: channels, side and normalisation."""

    channels: int  # what the encoder takes (a grayscale set is repeated to 3 when it takes 3)
    side: int
    mean: torch.Tensor  # per channel, on [0, 1] pixels
    std: torch.Tensor

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float().div_(255.0)
        if x.shape[1] != self.channels:
            x = x.expand(-1, self.channels, -1, -1)
        if x.shape[-1] != self.side or x.shape[-2] != self.side:
            x = F.interpolate(x, size=(self.side, self.side), mode="bilinear", antialias=True, align_corners=False)
        return (x - self.mean.to(x.device).view(1, -1, 1, 1)) / self.std.to(x.device).view(1, -1, 1, 1)


def encoder_input(images: torch.Tensor, channels: int, side: int, normalize: str) -> EncoderInput:
    """The preprocessing for ``images`` (uint8 N x C x H x W): ImageNet's statistics or the data's own."""
    if normalize not in NORMALIZATIONS:
        raise SanitizeError(f"--normalize {normalize!r}: expected one of {', '.join(NORMALIZATIONS)}")
    if normalize == "imagenet":
        mean, std = torch.tensor(IMAGENET_MEAN[:channels]), torch.tensor(IMAGENET_STD[:channels])
        if channels == 1:
            mean, std = mean.mean().view(1), std.mean().view(1)
    else:
        pixels = images.float().div(255.0).transpose(0, 1).reshape(images.shape[1], -1)
        mean, std = pixels.mean(1).cpu(), pixels.std(1).clamp_min(1e-3).cpu()
        if channels != len(mean):
            mean, std = mean.mean().repeat(channels), std.mean().repeat(channels)
    return EncoderInput(channels, side, mean, std)


@torch.no_grad()
def embed(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The encoder's features of a batch, flattened to N x d (a feature map is average-pooled).

    A sanitize ``Classifier`` gives its penultimate features; any other module its output (the
    first element of a tuple or the ``"features"``/first entry of a dict, as some backbones return).
    """
    out = module.features_and_logits(x)[0] if hasattr(module, "features_and_logits") else module(x)
    if isinstance(out, (tuple, list)):
        out = out[0]
    if isinstance(out, dict):
        out = out.get("features", next(iter(out.values())))
    if not isinstance(out, torch.Tensor):
        raise SanitizeError(f"the encoder returned a {type(out).__name__}, not a tensor of features")
    if out.ndim == 4:
        out = out.mean(dim=(2, 3))
    return out.flatten(1).float()


def encode(encoder: Encoder, images: torch.Tensor, *, side: int | None = None, normalize: str = "imagenet",
           prep: EncoderInput | None = None, batch_size: int = 512) -> tuple[torch.Tensor, EncoderInput]:
    """Features of every image (uint8 N x C x H x W, on its device) and the preprocessing used.

    The encoder is moved to the images' device. A first batch of two images probes it: an
    encoder that cannot take these images (channels, size) is one line, before the whole pass.
    ``prep``: reuse another set's preprocessing (the reserve is read as the data is).
    """
    device = images.device
    module = encoder.module.to(device)
    if prep is None:
        side = side or int(images.shape[-1])
        channels = _probe_channels(encoder, module, images[:2], side, normalize)
        prep = encoder_input(images, channels, side, normalize)
    out = []
    for start in range(0, len(images), batch_size):
        with autocast(device):
            out.append(embed(module, prep(images[start:start + batch_size])))
    feats = torch.cat(out)
    if not torch.isfinite(feats).all():
        raise SanitizeError(f"--encoder {encoder.source}: gave non-finite features (NaN or infinity)")
    return feats, prep


def _probe_channels(encoder: Encoder, module: nn.Module, sample: torch.Tensor, side: int, normalize: str) -> int:
    """The channel count the encoder accepts: the data's own, else 3 for a grayscale set."""
    tried = [int(sample.shape[1])] + ([3] if sample.shape[1] == 1 else [])
    error = ""
    for channels in tried:
        try:
            embed(module, encoder_input(sample, channels, side, normalize)(sample))
            return channels
        except SanitizeError:
            raise
        except Exception as exc:  # the user's network may fail with any error on a wrong shape
            error = _first_line(exc)
    raise SanitizeError(f"--encoder {encoder.source}: does not take {sample.shape[1]}-channel {side}x{side} images "
                        f"({error}); set --input-size to the size it was trained at")
