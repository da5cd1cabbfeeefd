import math

import pytest
import torch

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
