"""Noise models that make evaluation data from a clean image (``--noise``): Gaussian, Poisson and impulse.

Each is seeded, so the same command makes the same observation. Gaussian's sigma is on the 0-255 scale (like
``--sigma``); Poisson's peak is the photon count of a white pixel (the observation is counts / peak); impulse sets a
fraction of the pixels (all channels of a pixel alike) to black or white at random (salt and pepper).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import DipError

if TYPE_CHECKING:  # (torch only where noise is applied: the CLI parses --noise without it)
    import torch

SPECS = "gaussian:SIGMA (0-255 scale), poisson:PEAK or impulse:FRACTION"


class NoiseError(DipError):
    """A noise spec that does not parse or is out of range."""


@dataclass(frozen=True)
class Noise:
    kind: str  # gaussian, poisson or impulse
    value: float  # sigma (0-255), peak, or fraction

    def apply(self, image: torch.Tensor, seed: int = 0) -> torch.Tensor:
        """The noisy observation of ``image`` (any shape ``(..., C, H, W)`` in [0, 1]), clipped to [0, 1]."""
        import torch

        from .problem import add_noise

        if self.kind == "gaussian":
            return add_noise(image, self.value / 255.0, seed)  # what --sigma has always added
        generator = torch.Generator().manual_seed(seed)
        if self.kind == "poisson":
            noisy = torch.poisson(image.clamp(0, 1) * self.value, generator=generator) / self.value
        else:
            pixels = (*image.shape[:-3], 1, *image.shape[-2:])
            hit = torch.rand(pixels, generator=generator) < self.value
            white = (torch.rand(pixels, generator=generator) < 0.5).to(image.dtype)
            noisy = torch.where(hit, white.expand_as(image), image)
        return noisy.clamp(0, 1)

    def __str__(self) -> str:
        return f"{self.kind}:{self.value:g}"


def parse_noise(spec: str) -> Noise:
    kind, sep, arg = spec.partition(":")
    try:
        value = float(arg)
    except ValueError:
        value = math.nan
    if not sep or kind not in ("gaussian", "poisson", "impulse") or not math.isfinite(value):
        raise NoiseError(f"--noise {spec!r} does not parse; use {SPECS}")
    if kind == "gaussian" and not 0 < value <= 255:
        raise NoiseError(f"gaussian:SIGMA needs 0 < SIGMA <= 255 (0-255 scale), got {value:g}")
    if kind == "poisson" and not 0 < value <= 1e6:
        raise NoiseError(f"poisson:PEAK needs 0 < PEAK <= 1e6 (photons of a white pixel), got {value:g}")
    if kind == "impulse" and not 0 < value < 1:
        raise NoiseError(f"impulse:FRACTION needs 0 < FRACTION < 1, got {value:g}")
    return Noise(kind, value)
