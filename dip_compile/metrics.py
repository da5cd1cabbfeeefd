"""Image quality: PSNR and SSIM on tensors in [0, 1], computed where the tensors live (no host copy)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """PSNR in dB for signals in [0, 1]; returns a 0-d tensor so callers decide when to sync."""
    mse = F.mse_loss(x.float(), y.float())
    return -10.0 * torch.log10(mse.clamp_min(1e-12))


SSIM_WINDOW = 11


def ssim_defined(x: torch.Tensor, window: int = SSIM_WINDOW) -> bool:
    """Whether SSIM is defined for images of ``x``'s size: its window must fit inside (not for an 8x8 image)."""
    return min(x.shape[-2:]) >= window


def ssim(x: torch.Tensor, y: torch.Tensor, window: int = SSIM_WINDOW, sigma: float = 1.5) -> torch.Tensor:
    """Mean SSIM (Wang et al. 2004, Gaussian window) over channels; inputs (N, C, H, W) or (C, H, W). Images smaller
    than the window have no SSIM (``ssim_defined``): a ValueError rather than a convolution's error.

    It is scikit-image's ``structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
    data_range=1)``: the mean over the pixels whose window lies inside the image. It computes in float64 (a 0-d
    float64 tensor) because the variances are E[x^2] - E[x]^2: in float32 their rounding (~1e-7) is not small next to
    C2 = 9e-4 on flat regions, which moved a near-identical pair's SSIM by up to 2e-4 (tests/test_metrics.py)."""
    if not ssim_defined(x, window):
        raise ValueError(f"SSIM is not defined below {window}x{window} pixels, got {x.shape[-1]}x{x.shape[-2]}")
    if x.dim() == 3:
        x, y = x.unsqueeze(0), y.unsqueeze(0)
    x, y = x.double(), y.double()
    c = x.shape[1]
    coords = torch.arange(window, dtype=torch.float64, device=x.device) - (window - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    kernel = (g[:, None] * g[None, :]).expand(c, 1, window, window)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, kernel, groups=c)

    mx, my = blur(x), blur(y)
    sxx, syy, sxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx**2 + my**2 + c1) * (sxx + syy + c2))
    return s.mean()
