import math

import pytest
import torch

from conftest import dipc, smooth_image, tiny_config
from dip_compile.checkpoint import load_checkpoint, save_checkpoint
from dip_compile.config import ConfigError
from dip_compile.fitting import Fitter
from dip_compile.problem import add_noise, make_problem
from dip_compile.schedule import COSINE_FLOOR, learning_rate

CLEAN = smooth_image(32, 32)


def rates(**changes) -> list[float]:
    cfg = tiny_config("denoise", **changes)
    return [learning_rate(cfg, i) for i in range(cfg.iterations)]


def test_constant_schedule_is_the_paper_rate_throughout():
    assert rates(iterations=50, lr=0.02) == [0.02] * 50


def test_warmup_rises_linearly_to_the_rate_then_holds_it():
    r = rates(iterations=50, lr=0.02, lr_schedule="warmup", lr_warmup=10)
    assert r[0] == pytest.approx(0.002)
    assert r[4] == pytest.approx(0.01)
    assert r[9:] == [0.02] * 41
    assert all(a < b for a, b in zip(r[:10], r[1:10], strict=False))


def test_cosine_warms_up_then_decays_to_a_tenth_at_the_last_iteration():
    r = rates(iterations=110, lr=0.03, lr_schedule="cosine", lr_warmup=10)
    assert r[9] == pytest.approx(0.03)
    assert r[10] == pytest.approx(0.03)
    assert r[60] == pytest.approx(0.03 * (COSINE_FLOOR + 1) / 2)
    assert all(a >= b for a, b in zip(r[10:], r[11:], strict=False))
    assert learning_rate(tiny_config("denoise", iterations=110, lr=0.03, lr_schedule="cosine", lr_warmup=10), 500) == (
        pytest.approx(0.03 * COSINE_FLOOR)
    )  # a fit resumed past its old total stays at the floor
    assert all(math.isfinite(x) and x > 0 for x in r)


def test_the_optimizer_steps_with_the_scheduled_rate():
    cfg = tiny_config("denoise", iterations=6, stop="fixed", lr=0.05, lr_schedule="warmup", lr_warmup=10)
    fitter = Fitter(cfg, make_problem(cfg, CLEAN))
    fitter.run()
    assert fitter.optimizer.param_groups[0]["lr"] == pytest.approx(0.05 * 6 / 10)


def test_a_schedule_changes_the_fit():
    cfg = tiny_config("denoise", iterations=5, stop="fixed")
    plain = Fitter(cfg, make_problem(cfg, CLEAN)).run().image
    warm = Fitter(cfg.replace(lr_schedule="warmup"), make_problem(cfg, CLEAN)).run().image
    assert not torch.equal(plain, warm)


def test_a_resumed_cosine_fit_equals_an_uninterrupted_one(tmp_path):
    cfg = tiny_config("denoise", iterations=12, lr_schedule="cosine", lr_warmup=3, stop="fixed", log_every=2)
    noisy = add_noise(CLEAN, 25 / 255, seed=0)
    straight = Fitter(cfg, make_problem(cfg, noisy))
    straight.run()
    first = Fitter(cfg, make_problem(cfg, noisy))
    first.run(7)
    save_checkpoint(first, tmp_path / "fit.ckpt")
    resumed = load_checkpoint(tmp_path / "fit.ckpt").fitter()
    resumed.run()
    assert torch.equal(straight.output(), resumed.output())


@pytest.mark.parametrize("changes", [dict(lr_warmup=-1), dict(lr_warmup=1.5), dict(lr_schedule="steps")])
def test_nonsense_schedules_are_rejected(changes):
    with pytest.raises(ConfigError):
        tiny_config("denoise", **changes)


@pytest.mark.parametrize(
    ("args", "text"),
    [(["--lr-schedule", "steps"], "--lr-schedule"), (["--lr-warmup", "-5"], "--lr-warmup must be a whole number")],
)
def test_cli_refuses_a_bad_schedule_in_one_line(tmp_path, image_png, args, text):
    code, err = dipc("fit", "denoise", image_png, "-o", tmp_path / "out.png", "--iterations", "2", *args)
    assert code == 2
    assert text in err
    assert "Traceback" not in err
