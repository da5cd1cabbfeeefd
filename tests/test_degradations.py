import math

import numpy as np
import pytest
import torch

from dip_compile.degradations import Downsampler, Mask, box_mask, lanczos2_kernel, random_holes_mask, text_mask


def paper_lanczos_kernel(factor: int) -> np.ndarray:
    """A literal transcription of the original get_kernel(factor, 'lanczos', 0.5, 4*factor+1, support=2)."""
    kernel_width, support = 4 * factor + 1, 2
    kernel = np.zeros([kernel_width - 1, kernel_width - 1])
    center = (kernel_width + 1) / 2.0
    for i in range(1, kernel.shape[0] + 1):
        for j in range(1, kernel.shape[1] + 1):
            di = abs(i + 0.5 - center) / factor
            dj = abs(j + 0.5 - center) / factor
            val = 1
            if di != 0:
                val = val * support * np.sin(np.pi * di) * np.sin(np.pi * di / support) / (np.pi * np.pi * di * di)
            if dj != 0:
                val = val * support * np.sin(np.pi * dj) * np.sin(np.pi * dj / support) / (np.pi * np.pi * dj * dj)
            kernel[i - 1][j - 1] = val
    return kernel / kernel.sum()


@pytest.mark.parametrize("factor", [2, 4, 8])
def test_lanczos_kernel_matches_the_papers_construction(factor):
    np.testing.assert_allclose(lanczos2_kernel(factor), paper_lanczos_kernel(factor), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("factor", [2, 4, 8])
def test_downsampler_maps_size_to_size_over_factor_and_keeps_constants(factor):
    x = torch.full((1, 3, 64, 48), 0.3)
    y = Downsampler(factor)(x)
    assert y.shape == (1, 3, 64 // factor, 48 // factor)
    torch.testing.assert_close(y, torch.full_like(y, 0.3))


def test_downsampler_of_an_impulse_samples_the_kernel():
    factor = 4
    x = torch.zeros(1, 1, 64, 64)
    x[0, 0, 32, 32] = 1.0
    y = Downsampler(factor, channels=1)(x)[0, 0]
    kernel = lanczos2_kernel(factor)
    pad = (kernel.shape[0] - factor) // 2
    # output[i, j] = sum_k kernel[k] * x_padded[i*f + k]; the impulse sits at padded index 32 + pad
    for i in range(6, 10):
        for j in range(6, 10):
            ki, kj = 32 + pad - i * factor, 32 + pad - j * factor
            expected = kernel[ki, kj] if 0 <= ki < kernel.shape[0] and 0 <= kj < kernel.shape[1] else 0.0
            assert math.isclose(float(y[i, j]), expected, abs_tol=1e-6)


def test_mask_operator_zeroes_unknown_pixels():
    mask = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    out = Mask(mask)(torch.ones(1, 3, 2, 2))
    assert torch.equal(out[0, 1], mask)


def test_random_holes_drop_about_the_asked_fraction():
    mask = random_holes_mask(100, 100, 0.5, seed=1)
    assert abs(float(mask.mean()) - 0.5) < 0.03
    assert torch.equal(mask, random_holes_mask(100, 100, 0.5, seed=1))


def test_box_and_text_masks_hide_part_of_the_image():
    assert abs(float(1 - box_mask(64, 64, 0.25).mean()) - 0.25) < 0.01
    text = text_mask(64, 96)
    assert text.shape == (64, 96) and 0.02 < float(1 - text.mean()) < 0.6
