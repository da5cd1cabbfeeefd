"""Noise models that make evaluation data from a clean image (``--noise``): Gaussian, Poisson and impulse.

Each is seeded, so the same command makes the same observation. Gaussian's sigma is on the 0-255 scale (like
``--sigma``); Poisson's peak is the photon count of a white pixel (the observation is counts / peak); impulse sets a
fraction of the pixels (all channels of a pixel alike) to black or white at random (salt and pepper).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import DipError, joined

if TYPE_CHECKING:  # (torch only where noise is applied: the CLI parses --noise without it)
    import torch


class NoiseError(DipError):
    """A noise spec that does not parse or is out of range."""


@dataclass(frozen=True)
class NoiseModel:
    """A ``--noise`` kind: its argument, the values it accepts and how it corrupts a [0, 1] image."""

    arg: str  # the argument's name in specs and messages (SIGMA)
    valid: Callable[[float], bool]
    rule: str  # the accepted values, as messages say them
    corrupt: Callable[[torch.Tensor, float, int], torch.Tensor]  # (image, value, seed) -> noisy (clipped later)
    hint: str = ""  # what --help adds after the spec


def _gaussian(image: torch.Tensor, sigma: float, seed: int) -> torch.Tensor:
    from .problem import add_noise

    return add_noise(image, sigma / 255.0, seed)  # what --sigma has always added


def _poisson(image: torch.Tensor, peak: float, seed: int) -> torch.Tensor:
    import torch

    return torch.poisson(image.clamp(0, 1) * peak, generator=torch.Generator().manual_seed(seed)) / peak


def _impulse(image: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    import torch

    generator = torch.Generator().manual_seed(seed)
    pixels = (*image.shape[:-3], 1, *image.shape[-2:])
    hit = torch.rand(pixels, generator=generator) < fraction
    white = (torch.rand(pixels, generator=generator) < 0.5).to(image.dtype)
    return torch.where(hit, white.expand_as(image), image)


# The noise models of --noise KIND:VALUE, in the style of network.GENERATORS.
MODELS: dict[str, NoiseModel] = {
    "gaussian": NoiseModel(
        "SIGMA", lambda v: 0 < v <= 255, "0 < SIGMA <= 255 (0-255 scale)", _gaussian, hint="(0-255 scale)"
    ),
    "poisson": NoiseModel("PEAK", lambda v: 0 < v <= 1e6, "0 < PEAK <= 1e6 (photons of a white pixel)", _poisson),
    "impulse": NoiseModel("FRACTION", lambda v: 0 < v < 1, "0 < FRACTION < 1", _impulse),
}
SPECS = joined((f"{k}:{m.arg} {m.hint}".rstrip() for k, m in MODELS.items()), "or")


@dataclass(frozen=True)
class Noise:
    kind: str  # a key of MODELS
    value: float  # sigma (0-255), peak, or fraction

    def apply(self, image: torch.Tensor, seed: int = 0) -> torch.Tensor:
        """The noisy observation of ``image`` (any shape ``(..., C, H, W)`` in [0, 1]), clipped to [0, 1]."""
        return MODELS[self.kind].corrupt(image, self.value, seed).clamp(0, 1)

    def __str__(self) -> str:
        return f"{self.kind}:{self.value:g}"


def parse_noise(spec: str) -> Noise:
    kind, sep, arg = spec.partition(":")
    try:
        value = float(arg)
    except ValueError:
        value = math.nan
    model = MODELS.get(kind)
    if not sep or model is None or not math.isfinite(value):
        raise NoiseError(f"--noise {spec!r} does not parse; use {SPECS}")
    if not model.valid(value):
        raise NoiseError(f"{kind}:{model.arg} needs {model.rule}, got {value:g}")
    return Noise(kind, value)
