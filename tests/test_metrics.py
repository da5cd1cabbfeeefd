import math

import numpy as np
import pytest
import torch

from conftest import smooth_image
from dip_compile.metrics import psnr, ssim, ssim_defined


def test_psnr_of_a_known_error():
    x = torch.zeros(1, 3, 8, 8)
    assert math.isclose(float(psnr(x, x + 0.1)), 20.0, rel_tol=1e-5)


def test_ssim_is_one_for_identical_images_and_lower_for_noisy_ones():
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert math.isclose(float(ssim(x, x)), 1.0, rel_tol=1e-5)
    assert float(ssim(x, (x + 0.2 * torch.randn_like(x)).clamp(0, 1))) < 0.9


def test_ssim_is_refused_below_its_window_and_computed_at_it():
    small, fits = torch.rand(1, 3, 8, 8), torch.rand(1, 3, 11, 11)
    assert not ssim_defined(small) and ssim_defined(fits)
    assert float(ssim(fits, fits)) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="not defined below 11x11 pixels, got 8x8"):
        ssim(small, small)


def _pairs() -> list:
    """Params (x, y), named, as (C, H, W) float32 in [0, 1]: random, smooth and flat bright pairs, grayscale and RGB, from the
    smallest size SSIM is defined at (one window) up."""
    rng = np.random.default_rng(0)
    pairs = []
    for channels in (1, 3):
        for h, w in ((11, 11), (13, 24), (32, 32)):
            x = rng.random((channels, h, w), dtype=np.float32)
            noisy = np.clip(x + 0.2 * rng.standard_normal(x.shape), 0, 1).astype(np.float32)
            pairs.append(pytest.param(x, noisy, id=f"random-{channels}x{h}x{w}"))
            smooth = smooth_image(h, w, channels, seed=h).numpy()
            other = 0.7 * smooth + 0.3 * smooth_image(h, w, channels, seed=h + 1).numpy()
            pairs.append(pytest.param(smooth, other, id=f"smooth-{channels}x{h}x{w}"))
            # nearly identical flat bright patches: the case float32 variances got wrong by up to 2e-4
            flat = (0.9 + 0.001 * rng.standard_normal((2, channels, h, w))).astype(np.float32)
            pairs.append(pytest.param(flat[0], flat[1], id=f"flat-{channels}x{h}x{w}"))
    return pairs


@pytest.mark.parametrize(("x", "y"), _pairs())
def test_ssim_is_scikit_images_structural_similarity(x: np.ndarray, y: np.ndarray):
    """The reference: skimage's Gaussian SSIM (sigma 1.5, truncated at 3.5 sigma: the same 11 taps), population
    covariances, C1/C2 from data_range 1, the mean over the valid region (it crops (11 - 1) / 2 pixels per side, the
    pixels our unpadded convolution never produces) and over channels. Computed in float64 on both sides: they agree
    to rounding (~1e-13 seen; 1e-10 allowed)."""
    from skimage.metrics import structural_similarity

    expected = structural_similarity(
        x.astype(np.float64),
        y.astype(np.float64),
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        data_range=1.0,
        channel_axis=0,
    )
    got = ssim(torch.from_numpy(x), torch.from_numpy(y))
    assert got.dtype == torch.float64
    assert float(got) == pytest.approx(expected, abs=1e-10)
    # batched (N, C, H, W) is the same mean
    assert float(ssim(torch.from_numpy(x)[None], torch.from_numpy(y)[None])) == pytest.approx(expected, abs=1e-10)
