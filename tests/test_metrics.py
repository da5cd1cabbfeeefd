import math

import torch

from dip_compile.metrics import psnr, ssim


def test_psnr_of_a_known_error():
    x = torch.zeros(1, 3, 8, 8)
    assert math.isclose(float(psnr(x, x + 0.1)), 20.0, rel_tol=1e-5)


def test_ssim_is_one_for_identical_images_and_lower_for_noisy_ones():
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert math.isclose(float(ssim(x, x)), 1.0, rel_tol=1e-5)
    assert float(ssim(x, (x + 0.2 * torch.randn_like(x)).clamp(0, 1))) < 0.9
