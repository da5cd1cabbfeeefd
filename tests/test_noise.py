"""Noise models (``--noise``) and the losses that match them (``--loss``, ``--peak``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import dipc, save_png, smooth_image
from dip_compile.checkpoint import load_checkpoint
from dip_compile.losses import L1, MSE, PoissonNLL, make_loss
from dip_compile.noise import Noise, NoiseError, parse_noise
from dip_compile.problem import add_noise

TINY = ("--channels", "8", "--depth", "3", "--input-depth", "4", "-q")


def test_gaussian_noise_is_what_sigma_adds():
    image = smooth_image(16, 16)
    assert torch.equal(parse_noise("gaussian:25").apply(image, seed=3), add_noise(image, 25 / 255, seed=3))


def test_poisson_noise_has_the_image_as_mean_and_counts_as_values():
    image = torch.full((1, 64, 64), 0.5)
    noisy = Noise("poisson", 10).apply(image, seed=1)
    counts = noisy * 10
    assert torch.allclose(counts, counts.round(), atol=1e-5)
    assert abs(noisy.mean().item() - 0.5) < 0.02 and abs((counts.var() - 5).item()) < 0.6  # Poisson: var = mean


def test_impulse_noise_hits_the_fraction_of_pixels_with_black_or_white():
    image = torch.full((3, 100, 100), 0.5)
    noisy = Noise("impulse", 0.1).apply(image, seed=0)
    hit = (noisy != 0.5).any(dim=0)
    assert abs(hit.float().mean().item() - 0.1) < 0.01
    assert set(noisy[:, hit].unique().tolist()) == {0.0, 1.0}
    assert (noisy[:, hit] == noisy[:1, hit]).all()  # all channels of a pixel alike


@pytest.mark.parametrize(
    "spec, message",
    [
        ("gaussian", "does not parse"),
        ("speckle:3", "does not parse"),
        ("poisson:x", "does not parse"),
        ("poisson:0", "needs 0 < PEAK"),
        ("impulse:1", "needs 0 < FRACTION < 1"),
        ("gaussian:nan", "does not parse"),
    ],
)
def test_bad_noise_specs_are_one_clear_error(spec, message):
    with pytest.raises(NoiseError, match=message):
        parse_noise(spec)


@pytest.mark.parametrize("loss", [MSE(), L1(), PoissonNLL(10.0)])
def test_each_loss_is_smallest_at_the_observation(loss):
    y = torch.rand(1, 3, 8, 8) * 0.8 + 0.1
    x = y.clone().requires_grad_(True)
    loss(x, y).backward()
    assert x.grad is not None and x.grad.abs().max() < 1e-4
    assert loss(y * 1.2, y) > loss(y, y) and loss(y * 0.8, y) > loss(y, y)


def test_make_loss_needs_a_peak_for_poisson():
    with pytest.raises(ValueError, match="peak"):
        make_loss("poisson")


def test_poisson_fit_takes_the_peak_of_its_noise_and_lowers_its_loss(tmp_path: Path):
    image = save_png(smooth_image(32, 32), tmp_path / "clean.png")
    out, ckpt, report = tmp_path / "o.png", tmp_path / "p.ckpt", tmp_path / "r.json"
    code, err = dipc(
        "fit", "denoise", image, "--noise", "poisson:10", "--loss", "poisson", "-o", out, "--checkpoint", ckpt,
        "--report", report, "--iterations", "8", "--log-every", "1", "--stop", "fixed", *TINY,
    )  # fmt: skip
    assert code == 0, err
    saved = load_checkpoint(ckpt)
    assert str(saved.config.loss) == "poisson" and saved.config.peak == 10
    assert isinstance(saved.problem.fidelity, PoissonNLL)
    assert torch.allclose(saved.problem.reference, smooth_image(32, 32), atol=1 / 255)
    losses = json.loads(report.read_text())["history"]["loss"]
    assert losses[-1] < losses[0]


def test_noise_and_loss_bad_input_is_one_line(tmp_path: Path):
    image = save_png(smooth_image(32, 32), tmp_path / "i.png")
    out = tmp_path / "o.png"
    cases = [
        (("denoise", "--loss", "poisson"), "--loss poisson needs --peak"),
        (("denoise", "--loss", "poisson", "--peak", "0"), "--peak must be a finite number in (0, 1e+06]"),
        (("super-resolve", "--loss", "poisson", "--peak", "5"), "--loss poisson does not fit super-resolve"),
        (("denoise", "--peak", "10"), "--peak only applies to --loss poisson"),
        (("denoise", "--loss", "l1", "--peak", "10"), "--peak only applies to --loss poisson"),
        (("denoise", "--noise", "poisson:5", "--sigma", "5"), "give --sigma or --noise, not both"),
        (("super-resolve", "--noise", "impulse:0.1"), "--noise makes evaluation data from a clean IMAGE"),
        (("denoise", "--noise", "blur:2"), "--noise 'blur:2' does not parse"),
        (("denoise", "--loss", "huber"), "huber"),
    ]
    for args, message in cases:
        code, err = dipc("fit", args[0], image, "-o", out, *args[1:], *TINY)
        assert code == 2 and err.count("\n") == 1 and message in err, (args, err)


def test_noise_baselines_remove_most_of_their_noise():
    from dip_compile.baselines import anscombe_filter, median_filter
    from dip_compile.metrics import psnr

    clean = smooth_image(48, 48, seed=4)
    salted = Noise("impulse", 0.1).apply(clean, seed=1)
    assert psnr(median_filter(salted, 3), clean) > psnr(salted, clean) + 8
    counts = Noise("poisson", 10).apply(clean, seed=1)
    assert psnr(anscombe_filter(counts, 10, 1.5), clean) > psnr(counts, clean) + 6
