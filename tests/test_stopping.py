"""Variance-based early stopping (ES-WMV / ES-EMV): synthetic output sequences with a known minimum, and real fits."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from conftest import dipc
from dip_compile.checkpoint import load_checkpoint
from dip_compile.cli import app
from dip_compile.fitting import Fitter
from dip_compile.imageio import to_uint8
from dip_compile.metrics import psnr
from dip_compile.presets import preset
from dip_compile.problem import add_noise, make_problem
from dip_compile.restore import BestSaver
from dip_compile.stopping import VarianceStopper

CPU = torch.device("cpu")


def quiet_dip(length: int = 400, quiet_at: int = 200, seed: int = 0) -> list[torch.Tensor]:
    """Outputs that jitter around a fixed image with an amplitude that is smallest at ``quiet_at``."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(1, 3, 8, 8, generator=g)
    amplitude = 0.002 + 0.001 * np.abs(np.arange(1, length + 1) - quiet_at)
    return [base + float(a) * torch.randn(1, 3, 8, 8, generator=g) for a in amplitude]


def wmv_reference(xs: list[torch.Tensor], window: int) -> np.ndarray:
    """The paper's VAR_t straight from its definition: mean over the window of MSE(x_i, window mean); NaN before W."""
    out = np.full(len(xs), np.nan)
    stack = torch.stack([x.double() for x in xs])
    for t in range(window - 1, len(xs)):
        win = stack[t - window + 1 : t + 1]
        out[t] = float(((win - win.mean(0)) ** 2).mean())
    return out


def emv_reference(xs: list[torch.Tensor], alpha: float, warmup: int) -> np.ndarray:
    """EMA_t = (1-a) EMA + a x_t, EMV_t = (1-a) EMV + a (1-a) MSE(x_t, EMA_{t-1}); NaN during the warm-up."""
    out = np.full(len(xs), np.nan)
    mean, var = xs[0].double(), 0.0
    for t in range(1, len(xs)):
        delta = xs[t].double() - mean
        var = (1 - alpha) * var + alpha * (1 - alpha) * float((delta**2).mean())
        mean = mean + alpha * delta
        if t + 1 >= warmup:
            out[t] = var
    return out


def feed(stopper: VarianceStopper, xs: list[torch.Tensor], keep: list[torch.Tensor] | None = None) -> int | None:
    """Feeds outputs 1, 2, ... and returns the iteration where the stopper says stop (None if it never does)."""
    for i, x in enumerate(xs, start=1):
        stopper.update(x, i, keep=None if keep is None else keep[i - 1])
        if stopper.should_stop(i):
            return i
    return None


@pytest.mark.parametrize("variant", ["wmv", "emv"])
def test_stopper_picks_the_variance_minimum_of_the_definition_and_stops_patience_later(variant):
    xs = quiet_dip()
    window, patience, alpha = 20, 60, 0.1
    stopper = VarianceStopper(variant, window, patience, alpha, CPU, check_every=1)
    stopped = feed(stopper, xs)
    reference = wmv_reference(xs, window) if variant == "wmv" else emv_reference(xs, alpha, window)
    expected = int(np.nanargmin(reference[:stopped])) + 1
    assert stopper.chosen_iteration() == expected
    assert stopped == expected + patience
    assert stopper.info()["min_variance"] == pytest.approx(reference[expected - 1], rel=1e-9)
    assert torch.equal(stopper.best_image, xs[expected - 1])
    # the quietest stretch is at iteration 200: WMV's trailing window is centred on it, EMV lags a few steps
    assert 200 <= expected <= 200 + window


def test_wmv_minimum_of_a_quiet_stretch_is_the_window_ending_inside_it():
    xs = [torch.full((1, 1, 4, 4), float(i % 2)) for i in range(100)]  # large alternation...
    for i in range(40, 60):
        xs[i] = torch.full((1, 1, 4, 4), 0.5)  # ...and a perfectly still stretch: iterations 41-60
    stopper = VarianceStopper("wmv", 10, 45, 0.1, CPU, check_every=1)  # patience outlasts the alternation
    assert feed(stopper, xs) == 50 + 45
    assert stopper.chosen_iteration() == 50  # the first window holding only still outputs: 41..50
    assert float(stopper.best_var) == 0.0


def test_a_still_moment_before_the_burn_in_neither_stops_the_fit_nor_is_returned():
    # zebra at sigma 50 (256 px) settled for a moment at iteration ~120 and only passed that variance again ~500
    # iterations later: without the burn-in (3 windows) patience 300 stopped it at 410, 10 dB below its best
    xs = [torch.full((1, 1, 4, 4), float(i % 2)) for i in range(300)]
    for i in range(5, 20):
        xs[i] = torch.full((1, 1, 4, 4), 0.5)  # still: the windows ending at 15-20 have variance 0
    for i in range(50, 80):
        xs[i] = torch.full((1, 1, 4, 4), 0.5 + 0.01 * (i % 2))  # nearly still, later: windows ending at 60-80
    stopper = VarianceStopper("wmv", 10, 40, 0.1, CPU, check_every=1)
    assert stopper.burn_in == 30
    chosen = stopper.chosen_iteration() if feed(stopper, xs) else None
    assert chosen is not None and 60 <= chosen <= 80
    assert feed(VarianceStopper("wmv", 10, 40, 0.1, CPU, check_every=1), xs) == chosen + 40
    assert stopper.info()["burn_in"] == 30


def test_stopper_keeps_the_image_lag_iterations_after_a_minimum_unless_a_newer_one_comes_first():
    xs = quiet_dip(length=300, quiet_at=200)
    keep = [torch.full((1, 3, 8, 8), float(i)) for i in range(1, 301)]  # the image of iteration i holds i
    stopper = VarianceStopper("wmv", 10, 60, 0.1, CPU, check_every=1, lag=20)
    stopped = feed(stopper, xs, keep)
    chosen = stopper.chosen_iteration()
    assert stopped == chosen + 60
    assert stopper.kept_iteration() == chosen + 20
    assert torch.equal(stopper.best_image, keep[chosen + 20 - 1])
    # cut off before the lag is reached: the image at the minimum itself
    early = VarianceStopper("wmv", 10, 60, 0.1, CPU, check_every=1, lag=20)
    feed(early, xs[: chosen + 5], keep[: chosen + 5])
    assert early.chosen_iteration() == chosen and early.kept_iteration() == chosen
    assert torch.equal(early.best_image, keep[chosen - 1])


def test_stopper_never_stops_while_the_variance_keeps_falling():
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(1, 3, 8, 8, generator=g) * 0.9**t for t in range(300)]  # the jitter shrinks throughout
    stopper = VarianceStopper("wmv", 10, 50, 0.1, CPU, check_every=1)
    assert feed(stopper, xs) is None
    assert stopper.chosen_iteration() == 300


def test_emv_ignores_the_biased_low_start_up_variance():
    xs = quiet_dip(length=200, quiet_at=120)
    xs[1] = xs[0].clone()  # a zero step right after the start would make EMV_2 = 0 without the warm-up
    stopper = VarianceStopper("emv", 20, 40, 0.1, CPU, check_every=1)
    feed(stopper, xs)
    assert stopper.chosen_iteration() > 100


def test_stopper_keeps_the_given_image_at_the_minimum_not_the_watched_output():
    xs = quiet_dip(length=300, quiet_at=150)
    smoothed = [x * 0 + i for i, x in enumerate(xs, start=1)]  # stands in for the EMA: its value is the iteration
    stopper = VarianceStopper("wmv", 20, 50, 0.1, CPU, check_every=1)
    feed(stopper, xs, keep=smoothed)
    assert torch.all(stopper.best_image == stopper.chosen_iteration())


def test_stopper_checks_only_at_its_interval_and_resumes_from_its_state():
    xs = quiet_dip()
    first = VarianceStopper("wmv", 20, 60, 0.1, CPU, check_every=10)
    for i, x in enumerate(xs[:150], start=1):
        first.update(x, i)
    second = VarianceStopper("wmv", 20, 60, 0.1, CPU, check_every=10)
    second.load_state_dict(first.state_dict())
    stopped = feed_from(second, xs, 151)
    assert stopped % 10 == 0 and 0 <= stopped - second.chosen_iteration() - 60 < 10
    whole = VarianceStopper("wmv", 20, 60, 0.1, CPU, check_every=10)
    assert feed(whole, xs) == stopped and whole.chosen_iteration() == second.chosen_iteration()


def feed_from(stopper: VarianceStopper, xs: list[torch.Tensor], start: int) -> int | None:
    for i in range(start, len(xs) + 1):
        stopper.update(xs[i - 1], i)
        if stopper.should_stop(i):
            return i
    return None


# --- real fits on a tiny noisy image ---------------------------------------------------------------------------


def tiny_clean(n: int = 32) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.linspace(0, 1, n), torch.linspace(0, 1, n), indexing="ij")
    return torch.stack([0.5 + 0.4 * torch.sin(6 * xx), 0.5 + 0.4 * torch.cos(5 * yy), (xx + yy) / 2]).clamp(0, 1)


def tiny_config(**changes):
    config = preset("denoise")
    net = dataclasses.replace(
        config.net, channels_down=(16,) * 3, channels_up=(16,) * 3, channels_skip=(4,) * 3, input_depth=8
    )
    settings = dict(net=net, iterations=400, stop_window=10, stop_patience=40, log_every=5)
    return config.replace(**(settings | changes))


def test_auto_stop_ends_before_the_fixed_count_and_returns_the_ema_its_mean_age_after_the_minimum():
    clean = tiny_clean()
    config = tiny_config(ema=0.9)  # a short EMA: this tiny fit turns around within ~50 iterations
    problem = make_problem(config, add_noise(clean, 0.2, seed=0), reference=clean)
    fitter = Fitter(config, problem, device="cpu")
    result = fitter.run()
    chosen = result.stop_info["chosen_iteration"]
    assert result.stop_reason == "auto-stop" and result.iterations < 400
    assert 40 <= result.iterations - chosen < 45  # patience, checked every log interval
    assert result.image_source == "auto-stop best" and result.stop_info["kept_image"] == "ema"
    # the EMA 9 iterations after the minimum (the mean age of an EMA of 0.9): the same fit run for exactly that many
    # iterations without the stopper holds the same EMA, bit for bit
    assert result.stop_info["lag"] == 9 and result.stop_info["kept_iteration"] == chosen + 9
    replay = Fitter(config.replace(stop="fixed"), problem, device="cpu")
    replay.run(chosen + 9)
    assert torch.equal(result.image, replay.ema.cpu())
    # and the chosen image is a real denoising gain over the noisy input
    gain = psnr(result.image, clean.unsqueeze(0)) - psnr(problem.observation.cpu(), clean.unsqueeze(0))
    assert float(gain) > 3


def test_best_saver_writes_the_chosen_image_while_the_fit_runs(tmp_path):
    clean = tiny_clean()
    config = tiny_config(iterations=80, ema=None)
    fitter = Fitter(config, make_problem(config, add_noise(clean, 0.2, seed=0), reference=clean), device="cpu")
    saver = BestSaver(fitter, tmp_path / "best.png", tmp_path / "best.ckpt", image_seconds=0, checkpoint_seconds=0)
    result = fitter.run(on_log=saver)
    assert saver.writes["image"] >= 2 and saver.writes["checkpoint"] >= 2
    on_disk = np.asarray(Image.open(tmp_path / "best.png"))
    assert np.array_equal(on_disk, to_uint8(result.image))
    ckpt = load_checkpoint(tmp_path / "best.ckpt")
    assert torch.equal(ckpt.state["stopper"]["best_image"], result.image)


def test_cli_auto_stop_reports_the_chosen_iteration_and_the_detection_gap(tmp_path):
    Image.fromarray(to_uint8(tiny_clean())).save(tmp_path / "clean.png")
    args = [
        "fit",
        "denoise",
        str(tmp_path / "clean.png"),
        "--sigma",
        "50",
        "-o",
        str(tmp_path / "out.png"),
        "--iterations",
        "400",
        "--stop-window",
        "10",
        "--stop-patience",
        "40",
        "--depth",
        "3",
        "--channels",
        "16",
        "--skip-channels",
        "4",
        "--log-every",
        "5",
        "--quiet",
        "--device",
        "cpu",
        "--report",
        str(tmp_path / "r.json"),
        "--checkpoint",
        str(tmp_path / "c.ckpt"),
    ]
    run = CliRunner().invoke(app, args)
    assert run.exit_code == 0, run.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["stop_reason"] == "auto-stop" and report["iterations"] < 400
    assert report["stop"]["rule"] == "es-wmv" and report["chosen_iteration"] == report["stop"]["chosen_iteration"]
    assert report["iterations"] - report["chosen_iteration"] >= 40
    assert report["best_psnr_seen"] >= report["final_psnr"] - 1e-6
    assert report["detection_gap_db"] == pytest.approx(report["best_psnr_seen"] - report["final_psnr"])
    assert report["stop"]["kept_image"] == "ema" and report["best_psnr_series"] == "psnr_reference_ema"
    saved = load_checkpoint(tmp_path / "c.ckpt").state["stopper"]["best_image"]
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out.png")), to_uint8(saved))


@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("--stop-rule", "median", "'median' is not one of 'wmv', 'emv'"),
        ("--stop-patience", "0", "--stop-patience must be a whole number"),
        ("--stop-window", "-3", "--stop-window must be a whole number"),
        ("--stop", "sometimes", "'sometimes' is not one of 'fixed', 'auto'"),
    ],
)
def test_cli_rejects_bad_stopping_options_in_one_line(tmp_path, flag, value, message):
    Image.fromarray(to_uint8(tiny_clean())).save(tmp_path / "clean.png")
    code, stderr = dipc(
        "fit", "denoise", tmp_path / "clean.png", "--sigma", "25", "-o", tmp_path / "out.png", flag, value
    )
    assert code == 2
    assert message in stderr and stderr.strip().count("\n") == 0
    assert not (tmp_path / "out.png").exists()
