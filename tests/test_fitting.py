import os
import signal

import pytest
import torch

from conftest import smooth_image, tiny_config
from dip_compile.checkpoint import load_checkpoint, save_checkpoint
from dip_compile.degradations import Downsampler, random_holes_mask
from dip_compile.fitting import Fitter
from dip_compile.metrics import psnr
from dip_compile.problem import add_noise, make_problem

CLEAN = smooth_image(32, 32)


def test_short_denoising_fit_beats_the_noisy_input():
    cfg = tiny_config("denoise", iterations=100, stop="fixed", ema=None)
    noisy = add_noise(CLEAN, 25 / 255, seed=0)
    result = Fitter(cfg, make_problem(cfg, noisy, reference=CLEAN)).run()
    assert psnr(result.image, CLEAN[None]) > psnr(noisy, CLEAN) + 2.0


def test_short_inpainting_fit_fills_the_holes():
    cfg = tiny_config("inpaint", iterations=100)
    mask = random_holes_mask(32, 32, 0.5, seed=0)
    problem = make_problem(cfg, CLEAN, mask=mask, reference=CLEAN)
    result = Fitter(cfg, problem).run()
    hole = (mask == 0).expand(3, -1, -1)
    restored_error = (result.image[0] - CLEAN)[hole].abs().mean()
    assert psnr(result.image, CLEAN[None]) > psnr(problem.corrupted_view(), CLEAN[None]) + 10
    assert restored_error < 0.1


def test_super_resolution_output_downsamples_to_the_observation():
    cfg = tiny_config("super-resolve", iterations=60, factor=2)
    low = Downsampler(2)(CLEAN[None])
    result = Fitter(cfg, make_problem(cfg, low, reference=CLEAN[None])).run()
    assert result.image.shape == (1, 3, 32, 32)
    assert result.history["psnr_observation"][-1] > 25
    assert result.history["psnr_reference"][-1] > result.history["psnr_reference"][0] + 5


def test_keep_known_returns_the_observed_pixels_and_the_network_in_the_holes():
    cfg = tiny_config("inpaint", iterations=3, keep_known=True)
    mask = random_holes_mask(32, 32, 0.5, seed=0)
    fitter = Fitter(cfg, make_problem(cfg, CLEAN, mask=mask))
    result = fitter.run()
    known, hole = (mask == 1).expand(3, -1, -1), (mask == 0).expand(3, -1, -1)
    assert torch.equal(result.image[0][known], CLEAN[known])
    assert torch.equal(result.image[0][hole], fitter.output()[0][hole])
    assert result.image_source == "output + known pixels"


def test_sizes_the_hourglass_cannot_take_are_restored_at_their_own_size():
    cfg = tiny_config("denoise", iterations=2, stop="fixed")
    image = smooth_image(37, 45)
    problem = make_problem(cfg, image)
    assert problem.canvas == (40, 48)
    assert Fitter(cfg, problem).run().image.shape == (1, 3, 37, 45)


def test_grayscale_images_are_fitted_with_one_channel():
    cfg = tiny_config("denoise", iterations=3, stop="fixed", channels=1)
    result = Fitter(cfg, make_problem(cfg, smooth_image(32, 32, channels=1))).run()
    assert result.image.shape == (1, 1, 32, 32)


def test_same_seed_gives_the_same_fit_on_cpu():
    cfg = tiny_config("denoise", iterations=5, stop="fixed")
    images = [Fitter(cfg, make_problem(cfg, CLEAN)).run().image for _ in range(2)]
    assert torch.equal(*images)
    other = Fitter(cfg.replace(seed=1), make_problem(cfg, CLEAN)).run().image
    assert not torch.equal(images[0], other)


@pytest.mark.parametrize(("stop", "ramp"), [("holdout", 0), ("auto", 0), ("holdout", 10)])
def test_resuming_from_a_checkpoint_equals_an_uninterrupted_run(tmp_path, stop, ramp):
    # denoise preset: EMA, backtracking, the stopping statistics and the perturbation RNG (and its ramp, here
    # interrupted halfway up) all carry over.
    cfg = tiny_config(
        "denoise", iterations=12, stop=stop, stop_window=3, stop_patience=100, log_every=2, reg_noise_ramp=ramp
    )
    noisy = add_noise(CLEAN, 25 / 255, seed=0)
    straight = Fitter(cfg, make_problem(cfg, noisy, reference=CLEAN))
    straight.run(12)

    first = Fitter(cfg, make_problem(cfg, noisy, reference=CLEAN))
    first.run(7)
    save_checkpoint(first, tmp_path / "fit.ckpt")
    resumed = load_checkpoint(tmp_path / "fit.ckpt").fitter()
    resumed.run(12)

    for a, b in zip(straight.net.parameters(), resumed.net.parameters(), strict=True):
        assert torch.equal(a, b)
    assert torch.equal(straight.ema, resumed.ema)
    assert torch.equal(straight.output(), resumed.output())

    # the interrupted run also logged its last iteration (7); every record of the straight run is identical (but
    # for the wall-clock seconds)
    def rows(h):
        return {it: tuple(h[k][i] for k in sorted(h) if k != "seconds") for i, it in enumerate(h["iteration"])}

    assert rows(straight.history).items() <= rows(resumed.history).items()
    history = straight.history
    returned = [it for it, p in zip(history["iteration"], history["psnr_returned"], strict=True) if p]
    assert returned == [10, 12]  # (and the same values after the resume, by the records' equality above)


def test_backtracking_restores_weights_after_a_collapse():
    cfg = tiny_config("denoise", iterations=6, stop="fixed", ema=None, backtrack_db=5.0)
    fitter = Fitter(cfg, make_problem(cfg, add_noise(CLEAN, 0.1, seed=0)))
    fitter.run(5)
    good = [p.detach().clone() for p in fitter.net.parameters()]
    with torch.no_grad():  # wreck the weights: the next output is far worse than the last good one
        for p in fitter.net.parameters():
            p.mul_(-30)
    fitter.run(6)
    assert fitter.backtracks.item() == 1
    # weights went back to those of the last good output, then took one Adam step (as in the paper)
    drift = max((p - g).abs().max().item() for p, g in zip(fitter.net.parameters(), good, strict=True))
    assert drift <= 2 * cfg.lr


def test_ema_image_is_returned_when_the_preset_smooths_outputs():
    cfg = tiny_config("denoise", iterations=4, stop="fixed")
    fitter = Fitter(cfg, make_problem(cfg, CLEAN))
    result = fitter.run()
    assert result.image_source == "ema" and torch.equal(result.image, fitter.ema.cpu())


def test_first_ctrl_c_stops_after_the_current_iteration():
    cfg = tiny_config("denoise", iterations=50, stop="fixed", log_every=1)
    fitter = Fitter(cfg, make_problem(cfg, CLEAN))

    def interrupt(record):
        if record.iteration == 3:
            os.kill(os.getpid(), signal.SIGINT)

    result = fitter.run(on_log=interrupt)
    assert result.stop_reason == "interrupted" and fitter.iteration == 3


@pytest.mark.parametrize(
    "changes", [dict(iterations=0), dict(lr=0.0), dict(lr=-1.0), dict(reg_noise_std=-0.1), dict(ema=1.0)]
)
def test_nonsense_fit_settings_are_rejected(changes):
    with pytest.raises(ValueError):
        tiny_config("denoise", **changes)


def test_history_records_the_fitting_seconds_of_each_record():
    cfg = tiny_config("denoise", iterations=12, stop="fixed", log_every=4)
    fitter = Fitter(cfg, make_problem(cfg, CLEAN, reference=CLEAN))
    fitter.run(8)
    fitter.run(12)  # a second call (as after a resume) continues the clock
    seconds = fitter.history["seconds"]
    assert fitter.history["iteration"] == [4, 8, 12] and len(seconds) == 3
    assert 0 < seconds[0] < seconds[1] < seconds[2] <= fitter.elapsed


@pytest.mark.parametrize("task", ["inpaint", "super-resolve"])
def test_history_records_the_returned_images_psnr_every_fifth_record_and_at_the_end(task):
    # the step's output is for the perturbed input; a study's fixed-count estimates need the image itself
    cfg = tiny_config(task, iterations=23, stop="fixed", log_every=2, reg_noise_std=0.1, factor=2)
    mask = random_holes_mask(32, 32, 0.5, seed=0) if task == "inpaint" else None
    observed = Downsampler(2)(CLEAN[None]) if task == "super-resolve" else CLEAN
    result = Fitter(cfg, make_problem(cfg, observed, mask=mask, reference=CLEAN[None])).run()
    iterations, returned = result.history["iteration"], result.history["psnr_returned"]
    assert [i for i, p in zip(iterations, returned, strict=True) if p] == [10, 20, 23]
    assert returned[-1] == pytest.approx(psnr(result.image, CLEAN[None]).item(), abs=1e-4)
    assert result.history["psnr_returned"][-1] != result.history["psnr_reference"][-1]  # not the perturbed output


def test_a_checkpoint_from_another_device_type_resumes_with_a_fresh_perturbation_stream():
    # a CUDA generator's state is 16 bytes, a CPU one's 5056: set_state of the other kind's would raise
    cfg = tiny_config("denoise", iterations=6, stop="fixed")
    first = Fitter(cfg, make_problem(cfg, CLEAN))
    first.run(3)
    state = first.state_dict()
    state["generator"] = torch.zeros(16, dtype=torch.uint8)
    resumed = Fitter(cfg, make_problem(cfg, CLEAN))
    resumed.load_state_dict(state)
    expected = torch.Generator().manual_seed(cfg.seed + 1 + 3)
    assert torch.equal(resumed.generator.get_state(), expected.get_state())
    assert resumed.run().iterations == 6
