import pytest
import torch

from conftest import smooth_image, tiny_config
from dip_compile.errors import DipError
from dip_compile.problem import CenterCrop, add_noise, downsample_reference, make_problem


def test_canvas_rounds_up_to_the_hourglass_multiple_and_crop_restores_the_size():
    cfg = tiny_config("denoise")
    problem = make_problem(cfg, smooth_image(33, 17))
    assert problem.canvas == (40, 24)
    assert CenterCrop(problem.canvas, problem.size)(torch.zeros(1, 3, 40, 24)).shape == (1, 3, 33, 17)


def test_super_resolution_restores_factor_times_the_input_size():
    cfg = tiny_config("super-resolve", factor=4)
    problem = make_problem(cfg, smooth_image(10, 12))
    assert problem.size == (40, 48) and problem.corrupted_view().shape == (1, 3, 40, 48)


def test_inpainting_observation_is_the_masked_image():
    cfg = tiny_config("inpaint")
    mask = torch.ones(16, 16)
    mask[4:8] = 0
    problem = make_problem(cfg, smooth_image(16, 16), mask=mask)
    assert problem.observation[0, :, 4:8].abs().sum() == 0 and problem.observation[0, :, :4].min() > 0


@pytest.mark.parametrize("case", ["no mask", "mask size", "reference size", "channels"])
def test_inconsistent_problems_are_user_errors(case):
    cfg = tiny_config("inpaint")
    image = smooth_image(16, 16)
    kwargs = {"mask": torch.ones(16, 16)}
    if case == "no mask":
        kwargs = {}
    elif case == "mask size":
        kwargs = {"mask": torch.ones(8, 16)}
    elif case == "reference size":
        kwargs["reference"] = smooth_image(8, 8)
    else:
        image = smooth_image(16, 16, channels=1)
    with pytest.raises(DipError):
        make_problem(cfg, image, **kwargs)


def test_added_noise_has_the_asked_strength_and_is_seeded():
    flat = torch.full((3, 64, 64), 0.5)
    noisy = add_noise(flat, 25 / 255, seed=1)
    assert abs(float((noisy - flat).std()) - 25 / 255) < 0.005
    assert torch.equal(noisy, add_noise(flat, 25 / 255, seed=1))


def test_downsampled_reference_is_cropped_to_a_multiple_of_the_factor():
    low, high = downsample_reference(smooth_image(35, 42), 4)
    assert high.shape == (3, 32, 40) and low.shape == (3, 8, 10)
