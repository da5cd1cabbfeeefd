"""Non-learned baselines the Deep Image Prior must beat: diffusion fill for inpainting (bicubic for SR is in Problem)."""

from __future__ import annotations

import numpy as np
import torch


def diffusion_fill(image: torch.Tensor, mask: torch.Tensor, iterations: int = 20000, tol: float = 1e-5) -> torch.Tensor:
    """Fills the holes (mask 0) by harmonic interpolation: Jacobi averaging of the 4 neighbours, known pixels fixed.

    ``image`` is (C, H, W) or (1, C, H, W) in [0, 1], ``mask`` (H, W) with 1 = known. Stops when no hole pixel
    moves by more than ``tol`` in one sweep. Returns the same shape as ``image``.
    """
    shape = image.shape
    x = image.reshape(-1, *shape[-2:]).detach().cpu().double().numpy().copy()
    known = mask.detach().cpu().numpy().astype(bool)
    if known.all():
        return image.clone()
    hole = ~known
    x[:, hole] = x[:, known].mean(axis=1, keepdims=True)  # a neutral start speeds up convergence
    for _ in range(iterations):
        p = np.pad(x, ((0, 0), (1, 1), (1, 1)), mode="edge")
        avg = 0.25 * (p[:, :-2, 1:-1] + p[:, 2:, 1:-1] + p[:, 1:-1, :-2] + p[:, 1:-1, 2:])
        change = np.abs(avg[:, hole] - x[:, hole]).max()
        x[:, hole] = avg[:, hole]
        if change < tol:
            break
    return torch.from_numpy(x).float().reshape(shape)
