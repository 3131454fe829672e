"""ISSBA: the invisible sample-specific backdoor of Li et al. (ICCV 2021).

The trigger is a bit string hidden in each image by a steganography encoder (StegaStamp, Tancik
et al. 2020): the residual it adds depends on the image, so no two poison images share a
pattern, and it is small enough not to be seen. ``sanitize`` trains the encoder and its decoder
here, on the clean set:

* the encoder reads the image and the secret (a dense layer spreads the bits over one extra
  image plane) through a small U-Net and outputs a residual; the decoder, a small CNN, reads the
  bits back from the encoded image;
* training draws random secrets and minimises the decoder's bit cross-entropy plus
  ``lambda_image`` (20) times the residual's mean square; the image weight is 0 for the first
  quarter of training, while the decoder learns to read bits at all, and ramps up to its full
  value at three quarters (StegaStamp likewise ramps its image losses up from 0; its perceptual
  and adversarial terms are left out: they need pretrained networks). Gaussian noise (2/255) on
  the decoder's input keeps the bits readable after rounding to uint8;
* ``floor(N * rate)`` random images are encoded with one fixed, seeded secret of ``bits`` bits and
  relabelled to the target (dirty label); the test-time trigger is the same encoding.

``params`` records the poison residuals' PSNR (mean and minimum, in dB) and the share of secret
bits the decoder recovers from them. Deviations, stated in ``docs/attacks.md``: StegaStamp hides
100 bits in 400x400 images and ISSBA encodes a BCH-coded string; here the secret is
``max(8, H*W // 32)`` bits (32 at 32 px) drawn from the seed, and training is short (``steps``,
by default 2,000 Adam steps at lr 1e-3). The networks are cached by data, seed and settings.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..data.images import ImageDataset
from ..errors import ParameterError
from ..nn.devices import seed_everything
from .base import PoisonedSet, check_target, choose_poison_indices, derived_rng, dirty_labels, rebuild, to_uint8
from .surrogate import Surrogate

ISSBA_STEPS = 2000
LAMBDA_IMAGE = 20.0
LEARNING_RATE = 1e-3
BATCH = 64
WIDTH = 32
NOISE = 2 / 255  # Gaussian noise on the decoder's input while training: the bits must survive uint8 rounding


def secret_bits(size: tuple[int, int]) -> int:
    return max(8, min(size[0] * size[1] // 32, 100))


class Encoder(nn.Module):
    """(image in [0, 1], bits) -> residual, through a two-level U-Net."""

    def __init__(self, channels: int, size: tuple[int, int], bits: int) -> None:
        super().__init__()
        self.size = size
        self.secret = nn.Linear(bits, size[0] * size[1])
        self.inner = nn.Sequential(conv(channels + 1, WIDTH), conv(WIDTH, WIDTH))
        self.down = nn.Sequential(nn.Conv2d(WIDTH, 2 * WIDTH, 3, stride=2, padding=1), nn.ReLU(inplace=True),
                                  conv(2 * WIDTH, 2 * WIDTH))
        self.up = nn.Sequential(conv(3 * WIDTH, WIDTH), conv(WIDTH, WIDTH))
        self.out = nn.Conv2d(WIDTH, channels, 1)

    def forward(self, x: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
        plane = self.secret(bits * 2 - 1).view(-1, 1, *self.size)
        skip = self.inner(torch.cat([x - 0.5, plane], dim=1))
        deep = F.interpolate(self.down(skip), size=self.size, mode="bilinear", align_corners=False)
        return self.out(self.up(torch.cat([skip, deep], dim=1)))


class Decoder(nn.Module):
    """encoded image -> one logit per secret bit."""

    def __init__(self, channels: int, bits: int) -> None:
        super().__init__()
        self.net = nn.Sequential(conv(channels, WIDTH), nn.Conv2d(WIDTH, 2 * WIDTH, 3, stride=2, padding=1),
                                 nn.ReLU(inplace=True), conv(2 * WIDTH, 2 * WIDTH), nn.AdaptiveAvgPool2d(2),
                                 nn.Flatten(), nn.Linear(8 * WIDTH, bits))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x - 0.5)


def conv(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(inplace=True))


def encode(encoder: Encoder, images: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """Pixels in [0, 1] carrying ``bits`` (one row, or one per image)."""
    x = images.float() / 255 if images.dtype == torch.uint8 else images
    return (x + encoder(x, bits.expand(len(x), -1))).clamp(0, 1)


def train_stegastamp(data: ImageDataset, seed: int, surrogate: Surrogate, steps: int
                     ) -> dict[str, torch.Tensor]:
    """Encoder and decoder trained together on random secrets; their state dicts, prefixed."""
    device = surrogate.torch_device
    generator = seed_everything(seed)
    bits = secret_bits(data.size)
    encoder = Encoder(data.channels, data.size, bits).to(device)
    decoder = Decoder(data.channels, bits).to(device)
    opt = torch.optim.Adam([*encoder.parameters(), *decoder.parameters()], lr=LEARNING_RATE)
    images = data.images.to(device)
    batch = min(BATCH, len(data))
    with surrogate.progress.phase("train steganography encoder", steps) as advance:
        for step in range(steps):
            idx = torch.randint(0, len(data), (batch,), generator=generator).to(device)
            secret = torch.randint(0, 2, (batch, bits), generator=generator).float().to(device)
            x = images[idx].float() / 255
            residual = encoder(x, secret)
            noise = torch.randn(x.shape, generator=generator).to(device) * NOISE
            decoded = decoder((x + residual + noise).clamp(0, 1))
            weight = LAMBDA_IMAGE * min(1.0, max(0.0, (step - steps / 4) / (steps / 2)))
            loss = F.binary_cross_entropy_with_logits(decoded, secret) + weight * residual.pow(2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            advance()
    state = {f"encoder.{k}": v for k, v in encoder.state_dict().items()}
    state.update({f"decoder.{k}": v for k, v in decoder.state_dict().items()})
    return state


def load_stegastamp(state: dict[str, torch.Tensor], data: ImageDataset, device: torch.device
                    ) -> tuple[Encoder, Decoder]:
    bits = secret_bits(data.size)
    encoder, decoder = Encoder(data.channels, data.size, bits), Decoder(data.channels, bits)
    encoder.load_state_dict({k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")})
    decoder.load_state_dict({k.removeprefix("decoder."): v for k, v in state.items() if k.startswith("decoder.")})
    return encoder.to(device).eval(), decoder.to(device).eval()


def psnr(clean: torch.Tensor, encoded: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of uint8 images (inf where nothing changed)."""
    mse = (clean.float() - encoded.float()).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(255.0 ** 2 / mse)


def issba(dataset: ImageDataset, rate: float = 0.02, target: int = 0, seed: int = 0, *, steps: int = ISSBA_STEPS,
          surrogate: Surrogate | None = None) -> PoisonedSet:
    """Hide one seeded bit string in ``floor(N * rate)`` random images and relabel them ``target``."""
    check_target(dataset, target)
    if not isinstance(steps, int) or steps < 1:
        raise ParameterError("steps", steps, "expected a whole number of training steps >= 1")
    surrogate = surrogate or Surrogate()
    device = surrogate.torch_device
    index = choose_poison_indices(len(dataset), len(dataset), rate, seed)
    state = surrogate.cached("issba", dataset, seed, {"steps": steps},
                             lambda: train_stegastamp(dataset, seed, surrogate, steps))
    encoder, decoder = load_stegastamp(state, dataset, device)
    bits = secret_bits(dataset.size)
    secret = torch.from_numpy(derived_rng(seed, "issba-secret").integers(0, 2, size=(1, bits))).float().to(device)

    @torch.no_grad()
    def trigger(images: torch.Tensor) -> torch.Tensor:
        out = [to_uint8(encode(encoder, images[s:s + 512].to(device), secret) * 255).to(images.device)
               for s in range(0, len(images), 512)]
        return torch.cat(out) if out else images.clone()

    images, labels = dataset.images.clone(), dataset.labels.clone()
    params: dict = {"rate": rate, "steps": steps, "bits": bits, "secret": "".join(map(str, secret.int()[0].tolist()))}
    if len(index):
        rows = torch.from_numpy(index)
        images[rows] = trigger(dataset.images[rows])
        quality = psnr(dataset.images[rows], images[rows])
        with torch.no_grad():
            read = decoder(images[rows].to(device).float() / 255) > 0
        params.update({"psnr_mean": float(quality[torch.isfinite(quality)].mean()) if torch.isfinite(quality).any()
                       else math.inf, "psnr_min": float(quality.min()),
                       "bits_recovered": float((read == secret.bool()).float().mean())})
    return PoisonedSet(
        dataset=rebuild(dataset, images, dirty_labels(dataset, labels, index, target, False)),
        poison_indices=np.asarray(index, dtype=np.int64), target=target, attack="issba", params=params, seed=seed,
        test_trigger=trigger)
