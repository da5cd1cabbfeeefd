"""The input perturbation (--reg-noise) and its ramp (--reg-noise-ramp)."""

import pytest
import torch

from conftest import dipc, smooth_image, tiny_config
from dip_compile.config import ConfigError
from dip_compile.fitting import Fitter
from dip_compile.problem import add_noise, make_problem

CLEAN = smooth_image(32, 32)
NOISY = add_noise(CLEAN, 25 / 255, seed=0)


def fitter(**changes) -> Fitter:
    cfg = tiny_config("denoise", stop="fixed", log_every=2, **changes)
    return Fitter(cfg, make_problem(cfg, NOISY, reference=CLEAN))


def test_the_ramp_grows_the_perturbation_linearly_from_zero_to_reg_noise():
    fit = fitter(iterations=20, reg_noise_std=0.1, reg_noise_ramp=4)
    scales = []
    for i in (0, 1, 2, 4, 15):
        fit.iteration = i
        scales.append(fit.perturbation())
    assert scales == pytest.approx([0.0, 0.025, 0.05, 0.1, 0.1])
    fit.iteration = 0
    assert torch.equal(fit.perturbed_input(), fit.net_input)  # the first step sees the fixed input itself
    assert fitter(iterations=20, reg_noise_std=0.1).perturbation() == 0.1  # no ramp: all of it from the first


def test_after_the_ramp_the_perturbations_are_those_of_a_fit_without_it():
    """The ramp scales the same draws, so the stream of perturbations (and a resume's) stays the fit's own."""
    ramped, plain = fitter(iterations=6, reg_noise_std=0.1, reg_noise_ramp=3), fitter(iterations=6, reg_noise_std=0.1)
    for i in range(5):
        ramped.iteration = plain.iteration = i
        a, b = ramped.perturbed_input() - ramped.net_input, plain.perturbed_input() - plain.net_input
        torch.testing.assert_close(a, b * min(1.0, i / 3), rtol=0, atol=1e-7)


def test_a_ramped_fit_differs_from_a_plain_one():
    """(It resumes exactly mid-ramp: test_fitting's resume test.)"""
    ramped = fitter(iterations=10, reg_noise_std=0.1, reg_noise_ramp=8).run(10).image
    assert not torch.equal(ramped, fitter(iterations=10, reg_noise_std=0.1).run(10).image)


@pytest.mark.parametrize("value", [-1, 1.5, "ten"])
def test_a_nonsense_ramp_is_rejected(value):
    with pytest.raises(ConfigError, match="--reg-noise-ramp"):
        tiny_config("denoise", reg_noise_ramp=value)


def test_the_cli_refuses_a_bad_ramp_in_one_line(tmp_path, image_png):
    code, err = dipc("fit", "denoise", image_png, "-o", tmp_path / "out.png", "--iterations", "2", "--reg-noise-ramp",
                     "-5")  # fmt: skip
    assert code == 2
    assert "--reg-noise-ramp must be a whole number" in err
    assert "Traceback" not in err
