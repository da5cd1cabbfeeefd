"""The Deep Random Projector (``--generator drp``): frozen random convolutions, a fitted input and BatchNorm weights,
the root of mse plus total variation, the paper's settings per task; a fit like any other (resume, export, packing)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from conftest import dipc, save_png, smooth_image
from dip_compile import drp, exporters
from dip_compile.acceleration import Capability, choose
from dip_compile.api import restore_image
from dip_compile.checkpoint import load_checkpoint, save_checkpoint
from dip_compile.cli import parse_fit_args
from dip_compile.config import ConfigError, FitConfig, NetConfig
from dip_compile.fitjob import build_config
from dip_compile.fitting import Fitter, StepRequest
from dip_compile.imageio import save_image
from dip_compile.losses import RMSE, TotalVariation
from dip_compile.metrics import psnr
from dip_compile.network import build_network, make_input
from dip_compile.packing import PackedStep
from dip_compile.presets import preset
from dip_compile.problem import add_noise, make_problem
from dip_compile.replay import regenerate as replay

CLEAN = smooth_image(32, 32)
NOISY = add_noise(CLEAN, 25 / 255, seed=0)


def drp_config(task: str = "denoise", **changes) -> FitConfig:
    """The task's DRP settings (its default preset made DRP) with the changes given."""
    return drp.projected(preset(task)).replace(**changes)


def drp_fit(config: FitConfig, image: torch.Tensor = NOISY) -> Fitter:
    return Fitter(config, make_problem(config, image, reference=CLEAN))


def test_a_short_drp_denoising_fit_rises_well_above_the_noisy_input_and_auto_stops():
    result = drp_fit(drp_config(iterations=300, stop_window=10, stop_patience=20, log_every=10)).run()
    assert result.stop_reason == "auto-stop" and result.iterations < 300  # (at 110, keeping iteration 87)
    curve = result.history["psnr_reference"]
    assert max(curve) > curve[0] + 4  # 19.1 dB at iteration 10, 26.5 at best
    assert psnr(result.image, CLEAN[None]) > psnr(NOISY[None], CLEAN[None]) + 4  # the noisy input: 20.4 dB


def test_a_drp_fit_on_cuda_runs_without_cuda_graphs_whose_static_input_would_get_no_gradient():
    gpu = Capability("cuda", "a faked GPU", fast_bf16=True, fast_fp16=True)
    assert choose(preset("denoise"), "cuda", (64, 64), gpu).cuda_graphs
    plan = choose(drp_config(), "cuda", (64, 64), gpu)
    assert not plan.cuda_graphs and "the input is fitted" in plan.reason


def test_the_convolutions_keep_their_random_initialisation_while_the_input_and_batchnorm_move():
    config = drp_config(iterations=5, stop="fixed")
    fitter = drp_fit(config)
    start = make_input(config.net, *fitter.problem.canvas, seed=config.seed)
    torch.manual_seed(config.seed)  # the initialisation a fit of this seed starts from
    fresh = dict(build_network(config.net).named_parameters())
    fitter.run()
    convs = [name for name, m in fitter.net.named_modules() if isinstance(m, nn.Conv2d)]
    norms = [name for name, m in fitter.net.named_modules() if isinstance(m, nn.BatchNorm2d)]
    # one level: convs of the skip, down (2), up (3x3, 1x1) and head; BatchNorms after each but the head's, of the
    # merge and of the input
    assert len(convs) == 6 and len(norms) == 7
    params = dict(fitter.net.named_parameters())
    for name in convs:
        for kind in ("weight", "bias"):
            assert torch.equal(params[f"{name}.{kind}"], fresh[f"{name}.{kind}"]), f"{name}.{kind} moved"
            assert params[f"{name}.{kind}"] not in fitter.optimizer.state  # no gradient, no Adam state
    for name in norms:
        assert not torch.equal(params[f"{name}.weight"], fresh[f"{name}.weight"]), f"{name} did not move"
    assert (fitter.net_input.detach() - start).abs().max() > 0.1  # five steps of lr 0.1 on the fitted input


def test_resuming_a_drp_fit_equals_fitting_straight_through(tmp_path):
    # the denoise preset's auto-stop statistics and backtracking copy (of the input too) carry over
    config = drp_config(iterations=12, stop_window=3, stop_patience=100, log_every=2)
    straight = drp_fit(config)
    straight.run(12)
    first = drp_fit(config)
    first.run(6)
    save_checkpoint(first, tmp_path / "fit.ckpt")
    resumed = load_checkpoint(tmp_path / "fit.ckpt").fitter()
    resumed.run(12)
    assert torch.equal(straight.net_input, resumed.net_input)
    for a, b in zip(straight.net.parameters(), resumed.net.parameters(), strict=True):
        assert torch.equal(a, b)
    assert torch.equal(straight.output(), resumed.output())
    assert straight.history["loss"] == resumed.history["loss"][-len(straight.history["loss"]) :]


def test_a_drp_fit_exports_its_fitted_input_and_frozen_weights_and_replays_its_image(tmp_path):
    config = drp_config(iterations=6, stop="fixed", log_every=1)
    image = smooth_image(30, 45)  # on a 30x46 canvas: the export crops
    fitter = Fitter(config, make_problem(config, add_noise(image, 0.1), reference=image))
    fitter.run()
    save_checkpoint(fitter, tmp_path / "fit.ckpt")
    save_image(fitter.image()[0], tmp_path / "fit.png")
    plan = exporters.plan_export(load_checkpoint(tmp_path / "fit.ckpt"))
    assert torch.equal(plan.noise, fitter.net_input.detach())  # the fitted seed, not the starting noise
    exporters.write_onnx(plan, tmp_path / "model.onnx")
    model, fit_png, again = (str(tmp_path / name) for name in ("model.onnx", "fit.png", "re.png"))
    assert replay.main([model, "-o", again, "--check", fit_png]) == 0
    assert np.array_equal(np.asarray(Image.open(again)), np.asarray(Image.open(fit_png)))
    check = exporters.agreement(exporters.run_onnx((tmp_path / "model.onnx").read_bytes()), fitter.output())
    assert exporters.passes(check), check


def test_total_variation_and_rmse_have_their_values_on_a_known_image():
    image = torch.tensor([[0.0, 1.0, 3.0], [1.0, 1.0, 0.0]]).reshape(1, 1, 2, 3)
    # |dy| = 1 + 0 + 3, |dx| = 1 + 2 + 0 + 1: 8 over 6 values
    assert TotalVariation(0.3)(image).item() == pytest.approx(0.3 * 8 / 6)
    assert RMSE()(image, torch.zeros_like(image)).item() == pytest.approx((12 / 6) ** 0.5)
    config = drp_config(iterations=1, tv_weight=0.3, loss="mse")
    problem = make_problem(config, CLEAN)
    out = torch.rand(1, 3, 32, 32)
    fidelity = torch.mean((out - CLEAN) ** 2)
    assert problem.loss(out).item() == pytest.approx((fidelity + TotalVariation(0.3)(out)).item())
    assert make_problem(config.replace(tv_weight=0.0), CLEAN).loss(out).item() == pytest.approx(fidelity.item())


def fit_args(tmp_path: Path, task: str, *options: str) -> list[str]:
    extra = {"super-resolve": ["--factor", "4"], "inpaint": ["--holes", "0.5"]}.get(task, [])
    return [task, str(tmp_path / "in.png"), "-o", str(tmp_path / "out.png"), *extra, *options]


@pytest.mark.parametrize("task", list(drp.PROJECTORS))
def test_generator_drp_takes_the_papers_settings_for_the_task_and_given_options_win(tmp_path, task):
    record = drp.PROJECTORS[task]
    config = build_config(parse_fit_args(fit_args(tmp_path, task, "--generator", "drp")), 3)
    net = config.net
    assert net == record.net(3) and net.generator == "drp" and net.depth == 1
    assert net.channels_down == net.channels_up == (record.channels,) and net.channels_skip == (record.skip,)
    assert (net.input_kind, net.input_depth) == (record.input_kind, record.input_depth)
    assert (config.lr, config.tv_weight, config.iterations) == (record.lr, record.tv_weight, record.iterations)
    assert (config.loss, config.reg_noise_std, config.ema) == ("rmse", 0.0, None)
    assert config.stop == preset(task).stop  # auto-stop where the task has it (denoise)
    given = ["--generator", "drp", "--lr", "0.2", "--channels", "32", "--tv-weight", "0.1", "--iterations", "300"]
    config = build_config(parse_fit_args(fit_args(tmp_path, task, *given)), 3)
    assert (config.lr, config.net.channels_down, config.tv_weight, config.iterations) == (0.2, (32,), 0.1, 300)
    deeper = build_config(parse_fit_args(fit_args(tmp_path, task, "--generator", "drp", "--depth", "2")), 3).net
    assert deeper.depth == 2 and deeper.channels_down == deeper.channels_up == (record.channels,) * 2
    assert deeper.channels_skip == (record.skip,) * 2


def test_the_python_api_and_a_batch_take_generator_drp(tmp_path):
    save_png(CLEAN, tmp_path / "clean.png")
    result = restore_image(tmp_path / "clean.png", "denoise", sigma=25, generator="drp", iterations=3, stop="fixed")
    assert result.image.shape == (1, 3, 32, 32) and result.iterations == 3
    folder = tmp_path / "images"
    folder.mkdir()
    save_png(CLEAN, folder / "a.png")
    code, stderr = dipc("batch", folder, "-o", tmp_path / "out", "--task", "denoise", "--sigma", "25", "--generator",
                        "drp", "--iterations", "3", "--stop", "fixed", "--checkpoints")  # fmt: skip
    assert code == 0, stderr
    assert load_checkpoint(tmp_path / "out" / "checkpoints" / "a.ckpt").config.net.generator == "drp"


def test_a_packed_step_of_drp_fits_gives_each_its_own_loss_and_input_gradient():
    config = drp_config(iterations=2, stop="fixed", backend="eager", precision="fp32")
    make = [lambda seed=seed: Fitter(config.replace(seed=seed), make_problem(config, NOISY)) for seed in (0, 1)]
    alone, packed = [m() for m in make], [m() for m in make]
    replies = PackedStep()([StepRequest(f, f.net_input) for f in packed])
    for a, p, (loss, out) in zip(alone, packed, replies, strict=True):
        own_loss, own_out = a.step(a.net_input, a.optimizer)
        assert torch.allclose(loss, own_loss, rtol=1e-5) and (out - own_out).abs().max() < 1e-5
        assert torch.allclose(p.net_input.grad, a.net_input.grad, rtol=1e-3, atol=1e-6)
        assert all(q.grad is None for m in p.net.modules() if isinstance(m, nn.Conv2d) for q in m.parameters())


REFUSED = {
    "a task without the paper's settings": (["flash-no-flash", "--flash", "{img}"], "not for flash-no-flash"),
    "deblurring": (["deblur", "--kernel", "gaussian:1"], "not for deblur"),
    "--fast": (["denoise", "--fast"], "--fast changes the DIP preset's network"),
    "--paper-exact": (["denoise", "--paper-exact"], "--paper-exact changes"),
    "the flash image as its input": (["denoise", "--input", "image"], "image"),
}


@pytest.mark.parametrize("case", REFUSED)
def test_combinations_drp_cannot_run_are_refused_in_one_line(tmp_path, case):
    (task, *options), needle = REFUSED[case]
    save_png(CLEAN, tmp_path / "in.png")
    options = [o.format(img=tmp_path / "in.png") for o in options]
    code, stderr = dipc("fit", task, tmp_path / "in.png", "-o", tmp_path / "out.png", "--generator", "drp", *options)
    assert code == 2 and needle in stderr and len(stderr.strip().splitlines()) == 1, stderr
    assert not (tmp_path / "out.png").exists()


def test_a_drp_network_refuses_the_flash_image_and_its_export_refuses_seed_noise(tmp_path):
    with pytest.raises(ConfigError, match="fits its input"):
        NetConfig(generator="drp", input_kind="image", input_depth=3)
    fitter = drp_fit(drp_config(iterations=2, stop="fixed"))
    fitter.run()
    save_checkpoint(fitter, tmp_path / "fit.ckpt")
    code, stderr = dipc("export", tmp_path / "fit.ckpt", "-o", tmp_path / "m.onnx", "--noise", "seed")
    assert code == 2 and "fitted its input" in stderr and len(stderr.strip().splitlines()) == 1, stderr
