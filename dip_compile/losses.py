"""Data fidelity: how the operator's output is compared with the observation, one module per noise model.

``mse`` is the Gaussian log-likelihood (the paper's loss), ``l1`` the Laplacian one (robust to impulse noise),
``poisson`` the Poisson negative log-likelihood of photon counts at ``peak`` photons for a white pixel, divided by the
peak so that its scale stays that of the image, ``rmse`` the root of mse (DRP's). Each is an ``nn.Module`` so the
compiled step traces it. ``TotalVariation`` (``--tv-weight``) is a regulariser of the restored image, added to them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .config import Loss


class MSE(nn.Module):
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(x, y)


class L1(nn.Module):
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.l1_loss(x, y)


class RMSE(nn.Module):
    """The root of mse, the Deep Random Projector's data term: its gradient is mse's over 2 rmse, so the data term
    keeps its pull against the total-variation term as the error shrinks. Clamped away from 0, where the root's
    gradient is infinite."""

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(x, y).clamp_min(1e-12).sqrt()


class PoissonNLL(nn.Module):
    """mean(peak * x - peak * y * log(peak * x)) / peak, up to a constant: the Poisson likelihood of the counts
    ``peak * y`` at the rates ``peak * x``."""

    def __init__(self, peak: float) -> None:
        super().__init__()
        self.peak = float(peak)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        p = self.peak
        return F.poisson_nll_loss(x * p, y * p, log_input=False, full=False, eps=1e-6) / p


def _poisson(peak: float | None) -> nn.Module:
    if peak is None:
        raise ValueError("the Poisson loss needs a peak")
    return PoissonNLL(peak)


# One module factory (from --peak) per config.Loss, in the style of network.GENERATORS.
LOSSES: dict[str, Callable[[float | None], nn.Module]] = {
    Loss.mse: lambda _: MSE(),
    Loss.l1: lambda _: L1(),
    Loss.poisson: _poisson,
    Loss.rmse: lambda _: RMSE(),
}


def make_loss(kind: str, peak: float | None = None) -> nn.Module:
    try:
        make = LOSSES[str(kind)]
    except KeyError:
        raise ValueError(f"unknown loss {kind!r}") from None
    return make(peak)


class TotalVariation(nn.Module):
    """``weight`` times the anisotropic total variation per value, (sum |dy| + sum |dx|) / numel, of the restored
    image: the regulariser the Deep Random Projector adds to its data term (its code's ``tv1_loss``)."""

    def __init__(self, weight: float) -> None:
        super().__init__()
        self.weight = float(weight)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        dy = (image[..., 1:, :] - image[..., :-1, :]).abs().sum()
        dx = (image[..., :, 1:] - image[..., :, :-1]).abs().sum()
        return self.weight * (dy + dx) / image.numel()


def make_regularizer(tv_weight: float) -> nn.Module | None:
    """The term the loss adds on the restored image itself (before the operator): none, or total variation."""
    return TotalVariation(tv_weight) if tv_weight > 0 else None
