"""Non-learned baselines the Deep Image Prior must beat: diffusion fill for inpainting (bicubic for SR is in Problem)."""

from __future__ import annotations

from typing import Literal

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


def _padded_otf(kernel: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The kernel's transfer function on a grid of ``shape``, centred at the origin (what ``Blur`` applies)."""
    kh, kw = kernel.shape
    psf = np.zeros(shape)
    psf[:kh, :kw] = kernel
    psf = np.roll(psf, (-((kh - 1) // 2), -((kw - 1) // 2)), axis=(0, 1))
    return np.fft.rfft2(psf)


def wiener_deconvolve(observation: torch.Tensor, kernel: torch.Tensor, nsr: float) -> torch.Tensor:
    """Wiener deconvolution with a constant noise-to-signal ratio ``nsr``. The image is padded by reflection (the
    boundary the ``Blur`` operator assumes) before the FFT, so the circular wrap falls in the padding.

    ``observation`` is (C, H, W) or (1, C, H, W) in [0, 1]; returns the same shape, clipped to [0, 1]."""
    shape = observation.shape
    y = observation.reshape(-1, *shape[-2:]).detach().cpu().double().numpy()
    k = kernel.detach().cpu().double().numpy()
    pad = max(k.shape)
    mode: Literal["reflect", "edge"] = "reflect" if pad < min(shape[-2:]) else "edge"
    padded = np.pad(y, ((0, 0), (pad, pad), (pad, pad)), mode=mode)
    otf = _padded_otf(k, padded.shape[-2:])
    filt = np.conj(otf) / (np.abs(otf) ** 2 + nsr)
    x = np.fft.irfft2(np.fft.rfft2(padded) * filt, s=padded.shape[-2:])[:, pad:-pad, pad:-pad]
    return torch.from_numpy(np.clip(x, 0, 1)).float().reshape(shape)


def richardson_lucy(observation: torch.Tensor, kernel: torch.Tensor, iterations: int = 30) -> torch.Tensor:
    """Richardson-Lucy deconvolution (the maximum-likelihood iteration for Poisson noise), with the fit's own
    ``Blur`` operator and its adjoint (the flipped kernel), starting from the observation."""
    from .degradations import Blur

    shape = observation.shape
    y = observation.reshape(1, -1, *shape[-2:]).float().clamp_min(1e-6)
    blur, adjoint = Blur(kernel, y.shape[1]), Blur(kernel.flip(-2, -1), y.shape[1])
    x = y.clone()
    with torch.no_grad():
        for _ in range(iterations):
            x = x * adjoint(y / blur(x).clamp_min(1e-6))
    return x.clamp(0, 1).reshape(shape)


def gaussian_filter(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian smoothing (cut at 3 sigma, reflection at the borders); the shape of ``image`` is kept."""
    from .kernels import gaussian

    shape = image.shape
    x = image.reshape(1, -1, *shape[-2:]).float()
    g = torch.from_numpy(gaussian(sigma).sum(axis=0)).float()
    half = len(g) // 2
    mode = "reflect" if half < min(shape[-2:]) else "replicate"
    c = x.shape[1]
    x = torch.nn.functional.conv2d(
        torch.nn.functional.pad(x, (half, half, 0, 0), mode=mode), g.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c
    )
    x = torch.nn.functional.conv2d(
        torch.nn.functional.pad(x, (0, 0, half, half), mode=mode), g.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c
    )
    return x.reshape(shape)


def median_filter(image: torch.Tensor, size: int = 3) -> torch.Tensor:
    """The median of each ``size`` x ``size`` neighbourhood per channel (reflection at the borders): the classic
    baseline for impulse (salt-and-pepper) noise."""
    shape = image.shape
    x = image.reshape(1, -1, *shape[-2:]).float()
    half = size // 2
    padded = torch.nn.functional.pad(x, (half, half, half, half), mode="reflect")
    patches = padded.unfold(2, size, 1).unfold(3, size, 1)
    return patches.reshape(*patches.shape[:4], -1).median(dim=-1).values.reshape(shape)


def anscombe_filter(observation: torch.Tensor, peak: float, sigma: float) -> torch.Tensor:
    """Poisson denoising by variance stabilisation: the Anscombe transform of the counts (noise becomes nearly
    Gaussian with unit variance), Gaussian smoothing, and the asymptotically unbiased inverse."""
    counts = observation.float().clamp_min(0) * peak
    stabilised = 2.0 * torch.sqrt(counts + 3.0 / 8.0)
    smoothed = gaussian_filter(stabilised, sigma)
    return ((smoothed / 2.0) ** 2 - 1.0 / 8.0).clamp_min(0).div(peak).clamp(0, 1)
