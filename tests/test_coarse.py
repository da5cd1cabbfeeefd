"""Coarse to fine (``--coarse-share``): a share of the iterations at half size, then the full size from the same
weights; every task's operator halves, the fit resumes exactly across the switch, exports and replays its full-size
input, and what cannot work is refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import dipc, save_png, smooth_image, tiny_config
from dip_compile import coarse
from dip_compile.checkpoint import load_checkpoint, save_checkpoint
from dip_compile.config import ConfigError
from dip_compile.degradations import OPERATORS, Downsampler, Identity
from dip_compile.errors import DipError
from dip_compile.fitting import Fitter, StepRequest
from dip_compile.packing import PackedStep, drive_packed
from dip_compile.problem import add_noise, make_problem

CLEAN = smooth_image(32, 48)


def denoising(iterations: int = 12, **changes) -> Fitter:
    """A tiny denoising fit with the preset's EMA, backtracking and auto-stop, half of it at half size."""
    cfg = tiny_config("denoise", iterations=iterations, coarse_share=0.5, stop_window=2, log_every=2, **changes)
    return Fitter(cfg, make_problem(cfg, add_noise(CLEAN, 0.1, seed=0), reference=CLEAN))


def test_every_kind_of_operator_has_a_half_size_version() -> None:
    assert set(coarse.HALVES) == set(OPERATORS)


def test_denoising_fits_the_2x2_means_then_the_image() -> None:
    fitter = denoising()
    half = fitter.coarse.problem
    assert half.size == (16, 24) and fitter.coarse.until == 6
    assert torch.allclose(half.observation, F.avg_pool2d(fitter.problem.observation, 2))
    assert fitter.fit_problem is half and fitter.step.problem is half  # the step fits the half-size problem
    fitter.run(6)
    assert fitter.fit_problem is fitter.problem and fitter.step.problem is fitter.problem
    assert fitter.ema is None  # the EMA (and auto-stop) watch only full-size outputs: they start at the switch
    fitter.run(7)
    assert fitter.ema is not None and fitter.ema.shape == (1, 3, 32, 48)


def test_the_full_size_input_is_the_coarse_noise_upsampled() -> None:
    fitter = denoising()
    low = fitter.coarse.net_input
    assert low.shape == (1, 8, 16, 24) and fitter.net_input.shape == (1, 8, 32, 48)
    assert torch.equal(fitter.net_input, low.repeat_interleave(2, -2).repeat_interleave(2, -1))


def test_inpainting_knows_a_half_size_pixel_where_half_its_block_is_known() -> None:
    cfg = tiny_config("inpaint", coarse_share=0.5)
    mask = torch.zeros(32, 48)
    mask[0, 0] = 1  # one of four known: a hole at half size
    mask[0:2, 2] = 1  # two of four: known, their mean
    problem = make_problem(cfg, CLEAN, mask=mask)
    half = coarse.half_problem(cfg, problem)
    assert half.mask[0, 0] == 0 and half.mask[0, 1] == 1 and half.mask.sum() == 1
    assert torch.allclose(half.observation[0, :, 0, 1], CLEAN[:, 0:2, 2].mean(1))
    assert half.observation[0, :, 0, 0].abs().sum() == 0


@pytest.mark.parametrize(("factor", "half_factor"), [(4, 2), (8, 4), (2, 1)])
def test_super_resolution_halves_the_factor_on_the_same_low_resolution_image(factor: int, half_factor: int) -> None:
    cfg = tiny_config("super-resolve", factor=factor, coarse_share=0.5)
    low = Downsampler(factor)(smooth_image(64, 64)[None])
    problem = make_problem(cfg, low)
    half = coarse.half_problem(cfg, problem)
    assert half.size == (32, 32) and torch.equal(half.observation, problem.observation)
    if half_factor == 1:
        assert isinstance(half.operator, Identity)
    else:
        assert half.operator.factor == half_factor
    assert half.operator(torch.rand(1, 3, 32, 32)).shape == low.shape


def test_deblurring_blurs_with_the_kernel_at_half_size() -> None:
    cfg = tiny_config("deblur", coarse_share=0.5, kernel="box:5")
    kernel = torch.full((5, 5), 1 / 25)
    half = coarse.half_problem(cfg, make_problem(cfg, CLEAN, kernel=kernel))
    assert half.kernel.shape == (3, 3) and torch.isclose(half.kernel.sum(), torch.tensor(1.0))
    assert half.observation.shape == (1, 3, 16, 24)


@pytest.mark.parametrize("stop_at", [4, 6, 9])  # in the coarse phase, at the switch, in the full-size phase
def test_a_fit_resumed_across_the_switch_equals_a_straight_one(tmp_path: Path, stop_at: int) -> None:
    straight = denoising()
    straight.run(12)
    first = denoising()
    first.run(stop_at)
    save_checkpoint(first, tmp_path / "fit.ckpt")
    resumed = load_checkpoint(tmp_path / "fit.ckpt").fitter()
    assert resumed.coarse_now() == (stop_at < 6)
    resumed.run(12)
    for a, b in zip(straight.net.parameters(), resumed.net.parameters(), strict=True):
        assert torch.equal(a, b)
    assert torch.equal(straight.ema, resumed.ema)
    assert torch.equal(straight.output(), resumed.output())

    def rows(h: dict[str, list], skip=("seconds", "psnr_returned")) -> dict:  # (the first run also logged stop_at,
        # and the returned image's PSNR there: its end)
        return {it: tuple(h[k][i] for k in sorted(h) if k not in skip) for i, it in enumerate(h["iteration"])}

    def returned(h: dict[str, list]) -> dict:
        return {it: p for it, p in zip(h["iteration"], h["psnr_returned"], strict=True) if p is not None}

    assert rows(straight.history).items() <= rows(resumed.history).items()
    assert returned(straight.history).items() <= returned(resumed.history).items()


def test_a_resume_with_more_iterations_keeps_the_saved_switch(tmp_path: Path) -> None:
    first = denoising()
    first.run(3)
    save_checkpoint(first, tmp_path / "fit.ckpt")
    ckpt = load_checkpoint(tmp_path / "fit.ckpt")
    resumed = ckpt.fitter(config=ckpt.config.replace(iterations=40))
    assert resumed.coarse.until == 6


def test_packed_coarse_fits_step_at_half_size_then_at_full_size() -> None:
    fits = [denoising(8, seed=s, stop="fixed") for s in (0, 1)]
    replies = PackedStep()([StepRequest(f, f.perturbed_input()) for f in fits])
    assert [tuple(out.shape) for _, out in replies] == [(1, 3, 16, 24)] * 2
    results = drive_packed(iter(f.session() for f in fits), pack=2)
    assert [r.iterations for r in results] == [8, 8] and all(f.fit_problem is f.problem for f in fits)


def fit_command(tmp: Path, *extra: object) -> tuple[int, str]:
    clean = save_png(CLEAN, tmp / "clean.png")
    noisy = save_png(add_noise(CLEAN, 0.1, seed=0), tmp / "noisy.png")
    return dipc(
        "fit", "denoise", noisy, "--reference", clean, "-o", tmp / "out.png", "--depth", "3", "--channels", "16",
        "--input-depth", "8", "--iterations", "6", "--log-every", "1", "--precision", "fp32", "--quiet", *extra,
    )  # fmt: skip


def test_a_coarse_to_fine_fit_records_itself_and_replays_its_full_size_input(tmp_path: Path) -> None:
    code, err = fit_command(
        tmp_path, "--coarse-share", "0.5", "--checkpoint", tmp_path / "fit.ckpt", "--report", tmp_path / "r.json"
    )
    assert code == 0, err
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["config"]["coarse_share"] == 0.5
    assert report["coarse"] == {"iterations": 3, "size": [16, 24], "canvas": [16, 24]}
    ckpt = load_checkpoint(tmp_path / "fit.ckpt")
    assert ckpt.config.coarse_share == 0.5 and ckpt.fixed_input().shape == (1, 8, 32, 48)
    code, err = dipc("export", tmp_path / "fit.ckpt", "-o", tmp_path / "fit.onnx")
    assert code == 0, err
    code, err = dipc("regenerate", tmp_path / "fit.onnx", "-o", tmp_path / "again.png", "--check", tmp_path / "out.png")
    assert code == 0, err
    code, err = dipc("fit", "--resume", tmp_path / "fit.ckpt", "-o", tmp_path / "o2.png", "--coarse-share", "0.25")
    assert code == 2 and "--coarse-share cannot change when resuming" in err, err


@pytest.mark.parametrize("share", ["1", "-0.1", "nan"])
def test_a_share_outside_0_to_1_is_refused(share: str) -> None:
    with pytest.raises(ConfigError, match=r"--coarse-share must be a finite number in \[0, 1\)"):
        tiny_config("denoise", coarse_share=float(share))


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (("--depth", "4"), "--coarse-share needs an image of at least 64 px a side for this 4-level network"),
        (("--tile", "32", "--overlap", "8"), "--coarse-share does not apply with --tile"),
    ],
)
def test_what_cannot_work_is_refused_in_one_line_with_nothing_written(
    tmp_path: Path, extra: tuple[str, ...], needle: str
) -> None:
    code, err = fit_command(tmp_path, "--coarse-share", "0.5", *extra)
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out.png").exists()


def test_the_library_refuses_a_too_small_image_too() -> None:
    cfg = tiny_config("denoise", coarse_share=0.5)
    with pytest.raises(DipError, match="needs an image of at least 32 px"):
        Fitter(cfg, make_problem(cfg, smooth_image(24, 40)))


def test_a_dry_run_counts_the_half_size_iterations_apart(tmp_path: Path) -> None:
    code, err = fit_command(tmp_path, "--coarse-share", "0.5", "--dry-run")
    assert code == 0 and "6 iterations, 3 of them at half size: about" in err, err


def test_a_dry_run_refuses_what_the_fit_would(tmp_path: Path) -> None:
    code, err = fit_command(tmp_path, "--coarse-share", "0.5", "--depth", "4", "--dry-run")
    assert code == 2 and "--coarse-share needs an image" in err, err


def test_without_a_share_the_fit_is_unchanged() -> None:
    cfg = tiny_config("denoise", iterations=4, stop="fixed")
    plain = Fitter(cfg, make_problem(cfg, CLEAN))
    zero = Fitter(cfg.replace(coarse_share=0.0), make_problem(cfg, CLEAN))
    assert plain.coarse is None and zero.coarse is None
    assert torch.equal(plain.run().image, zero.run().image)


def test_drp_with_a_coarse_phase_is_refused_in_one_line(tmp_path):
    image = save_png(smooth_image(128, 128), tmp_path / "p.png")
    code, err = dipc("fit", "denoise", image, "-o", tmp_path / "o.png", "--generator", "drp", "--coarse-share", "0.5")
    assert code == 2 and "--coarse-share does not apply to --generator drp" in err and err.count("\n") <= 1, err
    assert not (tmp_path / "o.png").exists()
