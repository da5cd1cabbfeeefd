"""The preset registry: every notebook experiment, its parameter count, a short fit of its real network, and the
--preset / --paper-exact / flash-no-flash command line."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import TINY_NET, dipc, save_png, smooth_image
from dip_compile import presets
from dip_compile.checkpoint import load_checkpoint, save_checkpoint
from dip_compile.cli import parse_fit_args
from dip_compile.config import FinalImage, Precision, StopRule
from dip_compile.degradations import random_holes_mask
from dip_compile.fitjob import resume_config
from dip_compile.fitting import Fitter, ImageKind
from dip_compile.kernels import parse_kernel
from dip_compile.metrics import psnr
from dip_compile.problem import add_noise, blur_reference, make_problem
from dip_compile.restore import FitJob, NetShape, build_config

# What the original code prints for each notebook's network (the table).
ORIGINAL_COUNTS = {
    "f16": 2_217_831,
    "f16-sigma50": 2_217_831,
    "snail": 572_827,
    "kate": 3_002_627,
    "vase": 2_157_955,
    "library": 2_996_467,
    "barbara": 2_217_573,
    "kate-98": 1_027_379,
    "sr-x4": 2_217_831,
    "sr-x8": 2_217_831,
    "flash": 2_184_307,
}


def test_registry_holds_every_notebook_experiment():
    assert {p.name for p in presets.PRESETS if p.notebook} == set(ORIGINAL_COUNTS)
    assert {presets.default_name(t) for t in ("denoise", "inpaint", "super-resolve", "flash-no-flash", "deblur")} == {
        "f16",
        "kate",
        "sr-x4",
        "flash",
        "deblur",
    }
    assert presets.default_name("super-resolve", 8) == "sr-x8"


@pytest.mark.parametrize("name", sorted(ORIGINAL_COUNTS))
def test_preset_network_has_the_original_parameter_count(name):
    assert presets.get(name).network_parameters() == ORIGINAL_COUNTS[name]


def _problem(chosen: presets.Preset, config, size: int):
    """A small problem of the preset's task at ``size``: (problem, corrupted image shown at the output size)."""
    clean = smooth_image(size, size, channels=chosen.channels, seed=3)
    if chosen.task == "inpaint":
        mask = random_holes_mask(size, size, chosen.holes or 0.3, seed=1)
        return make_problem(config, clean, mask=mask, reference=clean)
    if chosen.task == "super-resolve":
        low = torch.nn.functional.avg_pool2d(clean[None], config.factor)[0]
        return make_problem(config, low, reference=clean)
    if chosen.task == "deblur":
        kernel = torch.from_numpy(parse_kernel("gaussian:1")).float()
        blurred = blur_reference(clean, kernel)
        return make_problem(config, add_noise(blurred, 0.01, seed=2), reference=clean, kernel=kernel)
    if chosen.task == "flash-no-flash":
        flash = smooth_image(size, size, seed=4)
        return make_problem(config, add_noise(clean, 0.1, seed=2), reference=clean, guide=flash)
    return make_problem(config, add_noise(clean, 0.1, seed=2), reference=clean)


@pytest.mark.parametrize("name", presets.NAMES)
def test_short_fit_of_each_real_preset_network_lowers_the_loss(name):
    """The preset's own network (full channels) at its smallest canvas: the loss falls within a few iterations, and
    where the observation hides pixels (inpainting, restoration) the image already beats the corrupted input."""
    chosen = presets.get(name)
    config = chosen.fit_config().replace(iterations=12, log_every=1, stop=StopRule.fixed, backend="eager")
    size = config.net.min_side if chosen.task != "super-resolve" else 64
    problem = _problem(chosen, config, size)
    fitter = Fitter(config, problem)
    result = fitter.run()
    losses = result.history["loss"]
    assert losses[-1] < losses[0], losses
    if chosen.task == "inpaint":
        # a flat image of the known pixels' mean scores about 11 dB here (the masked input 5-10 dB); the fits
        # score 13-26 dB, the least above it kate-98's (by 2.1 dB, at 12 iterations from 2% of the pixels)
        observation, reference, known = problem.observation, problem.reference, problem.mask.bool()
        flat = torch.stack([channel[known].mean() for channel in observation[0]]).view(1, -1, 1, 1)
        bound = max(psnr(observation, reference).item() + 3, psnr(flat.expand_as(reference), reference).item() + 1.5)
        assert psnr(result.image, problem.reference).item() > bound


def test_unknown_preset_lists_the_names(image_png: Path, tmp_path: Path):
    code, err = dipc("fit", "denoise", image_png, "-o", tmp_path / "o.png", "--preset", "zebra")
    assert code == 2 and err.count("\n") == 1
    assert "unknown preset 'zebra'" in err and "kate-98" in err and "flash" in err


def test_preset_of_another_task_is_refused(image_png: Path, tmp_path: Path):
    code, err = dipc("fit", "denoise", image_png, "-o", tmp_path / "o.png", "--preset", "vase")
    assert code == 2 and err.count("\n") == 1
    assert "preset 'vase' is for inpaint, not denoise" in err and "f16, f16-sigma50, snail" in err


def test_flags_that_contradict_a_preset_are_refused(image_png: Path, tmp_path: Path):
    args = (
        "fit",
        "inpaint",
        image_png,
        "-o",
        tmp_path / "o.png",
        "--box",
        "0.2",
        "--preset",
        "vase",
        "--iterations",
        2,
    )
    code, err = dipc(*args, "--input-depth", "32")
    assert code == 2 and "a meshgrid input has 2 channels, but --input-depth is 32" in err
    code, err = dipc(*args, "--channels", "16,32", "--depth", "5")
    assert code == 2 and "one entry per level" in err
    code, err = dipc(*args, "--upsample", "nearest,bilinear")
    assert code == 2 and "--upsample needs one value or one per level (5), got 2" in err
    code, err = dipc(*args, "--kernel-down", "4")
    assert code == 2 and "--kernel-down must be odd" in err
    code, err = dipc(*args, "--downsample", "bicubic")
    assert code == 2 and "--downsample must be one of stride, avg, max, lanczos2, got 'bicubic'" in err


def test_explicit_flags_override_single_values_of_a_preset():
    job = FitJob(output=Path("o.png"), task="inpaint", preset="library", settings={"lr": 0.02})
    config = build_config(job, 3)
    assert config.preset == "library" and config.lr == 0.02 and config.iterations == 3001
    job = FitJob(output=Path("o.png"), task="inpaint", preset="library")
    net = NetShape(depth=4, upsample="nearest,nearest,bilinear,bilinear").apply(build_config(job, 3).net)
    assert net.channels_down == (16, 32, 64, 128) and net.kernel_down == (5,) and not net.need_1x1_up
    assert [str(u) for u in net.upsample] == ["nearest", "nearest", "bilinear", "bilinear"]


def test_paper_exact_applies_the_notebook_choices_and_flags_still_win():
    exact = build_config(FitJob(output=Path("o.png"), task="denoise", paper_exact=True), 3)
    assert exact.paper_exact and exact.stop == StopRule.fixed and exact.final_image == FinalImage.perturbed
    assert (exact.backtrack_every, exact.backtrack_skip, exact.crop_to) == (1, 100, 32)
    ours = build_config(FitJob(output=Path("o.png"), task="denoise"), 3)
    assert ours.stop == StopRule.holdout and ours.final_image == FinalImage.auto and ours.crop_to == 1
    flagged = build_config(FitJob(output=Path("o.png"), task="denoise", paper_exact=True, settings={"stop": "auto"}), 3)
    assert flagged.stop == StopRule.auto


def test_backtracking_checks_follow_the_period_and_the_notebook_skip():
    config = presets.preset("inpaint", name="barbara", output_channels=1).replace(iterations=1)
    clean = smooth_image(64, 64, channels=1)
    fitter = Fitter(config, make_problem(config, clean, mask=random_holes_mask(64, 64, 0.5)))
    checked = []
    for i in range(0, 201):
        fitter.iteration = i
        checked.append(fitter.backtracks_now())
    assert [i for i, c in enumerate(checked) if c] == [0, 50, 100, 150, 200]
    fitter.config = fitter.config.replace(backtrack_every=1, backtrack_skip=100)
    fitter.iteration = 100
    assert not fitter.backtracks_now()
    fitter.iteration = 101
    assert fitter.backtracks_now()


def test_backtracking_restores_the_last_checked_weights():
    """A check whose PSNR fell by more than the threshold puts back the weights saved at the previous check."""
    config = presets.preset("denoise").replace(iterations=3, backtrack_every=2, lr=0.01, stop="fixed")
    config = config.replace(net=TINY_NET)
    clean = smooth_image(16, 16)
    fitter = Fitter(config, make_problem(config, add_noise(clean, 0.1), reference=clean))
    saved = [p.detach().clone() for p in fitter.net.parameters()]
    fitter.iterate()  # iteration 0: checked, the weights that made its output (the initial ones) saved
    fitter.iterate()  # iteration 1: not checked
    fitter.backtrack_psnr.fill_(1000.0)  # pretend the last check was far better: the next one must fall back
    before_step = None

    def capture(optimizer):
        nonlocal before_step
        before_step = [p.detach().clone() for p in fitter.net.parameters()]
        optimizer.step()

    fitter.step.optimizer_step = capture  # type: ignore[method-assign]
    fitter.iterate()  # iteration 2: checked, restores the weights saved at iteration 0 before the Adam step
    assert int(fitter.backtracks) == 1
    assert all(torch.equal(a, b) for a, b in zip(before_step, saved, strict=True))


def test_paper_exact_returns_the_output_on_the_last_perturbed_input_and_exports_it(tmp_path: Path):
    config = presets.preset("denoise", paper_exact=True).replace(iterations=3, log_every=1)
    config = config.replace(net=dataclasses.replace(TINY_NET, input_depth=4))
    clean = smooth_image(16, 16)
    fitter = Fitter(config, make_problem(config, add_noise(clean, 0.1), reference=clean))
    result = fitter.run()
    assert fitter.returned_kind() == ImageKind.perturbed and result.image_source == "output on the last perturbed input"
    with torch.no_grad():
        expected = fitter.crop(fitter.net(fitter.last_input))
    assert torch.equal(result.image, expected)
    assert not torch.allclose(result.image, fitter.output())  # the perturbation matters
    save_checkpoint(fitter, tmp_path / "p.ckpt")
    assert torch.equal(load_checkpoint(tmp_path / "p.ckpt").images().fit_image(), result.image)


def _flash_pair(tmp_path: Path, size: tuple[int, int] = (48, 40)) -> tuple[Path, Path]:
    h, w = size
    flash = save_png(smooth_image(h, w, seed=5), tmp_path / "flash.png")
    noflash = save_png(add_noise(smooth_image(h, w, seed=5) * 0.6, 0.05), tmp_path / "noflash.png")
    return flash, noflash


TINY_FLASH = ("--channels", "8", "--depth", "3", "--upsample", "nearest,bilinear,bilinear")


def test_flash_no_flash_fits_on_the_flash_image_exports_it_and_resumes(tmp_path: Path, capsys):
    flash, noflash = _flash_pair(tmp_path)
    out, ckpt = tmp_path / "out.png", tmp_path / "fit.ckpt"
    args = ("fit", "flash-no-flash", noflash, "--flash", flash, "-o", out, "--checkpoint", ckpt, "-q")
    code, err = dipc(*args, *TINY_FLASH, "--iterations", "6", "--log-every", "1", "--report", tmp_path / "r.json")
    assert code == 0, err
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["history"]["loss"][-1] < report["history"]["loss"][0]
    saved = load_checkpoint(ckpt)
    assert saved.config.preset == "flash" and saved.config.lr == 0.1
    flash_pixels = torch.from_numpy(np.asarray(Image.open(flash), dtype=np.float32) / 255)
    assert torch.allclose(saved.problem.guide[0].permute(1, 2, 0), flash_pixels)
    fixed = saved.fixed_input()
    assert fixed.shape == (1, 3, 48, 40) and torch.allclose(fixed[0].permute(1, 2, 0), flash_pixels)
    code, err = dipc("export", ckpt, "-o", tmp_path / "f.onnx", "--verify")
    assert code == 0, err
    assert "identical 8-bit pixels 100.000%" in capsys.readouterr().out
    code, err = dipc("fit", "--resume", ckpt, "-o", out, "--force", "--iterations", "8", "-q")
    assert code == 0, err


def test_flash_no_flash_bad_input_is_one_line(tmp_path: Path):
    flash, noflash = _flash_pair(tmp_path)
    other = save_png(smooth_image(32, 32), tmp_path / "small.png")
    out = tmp_path / "o.png"
    cases = [
        (("fit", "flash-no-flash", noflash, "-o", out), "flash-no-flash needs --flash FLASH"),
        (("fit", "flash-no-flash", noflash, "--flash", other, "-o", out), "the flash image is 32x32 but the no-flash"),
        (("fit", "denoise", noflash, "--flash", flash, "-o", out), "--flash only applies to flash-no-flash"),
        (("fit", "flash-no-flash", noflash, "--flash", flash, "-o", out, "--input", "noise"), "--input must be image"),
    ]
    for args, message in cases:
        code, err = dipc(*args, *TINY_FLASH)
        assert code == 2 and err.count("\n") == 1 and message in err, (args, err)


def test_grayscale_preset_converts_a_colour_image(image_png: Path, tmp_path: Path):
    out = tmp_path / "b.png"
    code, err = dipc(
        "fit", "inpaint", image_png, "-o", out, "--preset", "barbara", "--channels", "8", "--depth", "2",
        "--iterations", "2", "-q",
    )  # fmt: skip
    assert code == 0, err
    assert "note: preset barbara is grayscale: IMAGE converted to grayscale" in err
    assert Image.open(out).mode == "L"


def test_dipc_presets_prints_every_preset_with_its_count(capsys):
    code, _ = dipc("presets", "--json")
    rows = json.loads(capsys.readouterr().out)
    assert code == 0
    counts = {r["preset"].split(" ")[0]: r["parameters"] for r in rows}
    assert {name: counts[name] for name in ORIGINAL_COUNTS} == ORIGINAL_COUNTS


def test_paper_exact_crops_like_the_notebook_and_ours_keeps_every_pixel(tmp_path: Path):
    image = save_png(smooth_image(70, 50), tmp_path / "in.png")
    tiny = ("--channels", "8", "--depth", "3", "--iterations", "2", "--sigma", "25", "-q")
    code, err = dipc("fit", "denoise", image, "-o", tmp_path / "ours.png", *tiny)
    assert code == 0, err
    assert Image.open(tmp_path / "ours.png").size == (50, 70)
    code, err = dipc("fit", "denoise", image, "-o", tmp_path / "paper.png", "--paper-exact", *tiny)
    assert code == 0, err
    assert Image.open(tmp_path / "paper.png").size == (32, 64)  # the denoising notebook's crop to a multiple of 32
    low = save_png(smooth_image(20, 13), tmp_path / "low.png")
    code, err = dipc("fit", "super-resolve", low, "-o", tmp_path / "sr.png", "--paper-exact", *tiny[:-3], "-q")
    assert code == 0, err
    assert Image.open(tmp_path / "sr.png").size == (32, 64)  # low-resolution 8x16 so that x4 is a multiple of 32


@pytest.mark.parametrize("generator", ["convdecoder", "deepdecoder"])
def test_generator_option_fits_checkpoints_and_resumes(tmp_path: Path, generator):
    image = save_png(smooth_image(32, 32), tmp_path / "i.png")
    out, ckpt = tmp_path / "o.png", tmp_path / "g.ckpt"
    args = ("--channels", "8", "--depth", "3", "--stop", "fixed", "-q")
    code, err = dipc(
        "fit", "denoise", image, "--sigma", "25", "--generator", generator, "-o", out, "--checkpoint", ckpt,
        "--iterations", "3", *args,
    )  # fmt: skip
    assert code == 0, err
    saved = load_checkpoint(ckpt)
    assert str(saved.config.net.generator) == generator and saved.fixed_input().shape == (1, 8, 4, 4)
    code, err = dipc("fit", "--resume", ckpt, "-o", out, "--iterations", "5", "--force", "-q")
    assert code == 0, err
    assert load_checkpoint(ckpt).iteration == 3  # resume wrote its image, the checkpoint stays where it was


def test_library_preset_fits_an_image_smaller_than_its_smallest_canvas(tmp_path: Path):
    """Depth 6 with 5x5 kernels needs 192 px (3 at the coarsest level): a 128x128 image is fitted on that canvas and
    cropped back (the memory estimate probed the network at 128 px and crashed in a padding)."""
    image = save_png(smooth_image(128, 128), tmp_path / "i.png")
    out = tmp_path / "o.png"
    library = ("--preset", "library", "--channels", "4", "--iterations", "1", "-q")
    code, err = dipc("fit", "inpaint", image, "--text", "-o", out, *library)
    assert code == 0, err
    assert Image.open(out).size == (128, 128)


def test_paper_exact_fits_in_fp32_unless_precision_names_another_and_a_resume_keeps_it(tmp_path: Path):
    """The paper fitted in fp32: under --paper-exact the command line's `auto` (bf16 on an AMX CPU) is fp32."""
    base = ["super-resolve", str(tmp_path / "lr.png"), "-o", str(tmp_path / "o.png")]
    job = parse_fit_args([*base, "--paper-exact"])
    assert job.settings["precision"] == "auto"  # the command line's default
    assert build_config(job, 3).precision == Precision.fp32
    assert build_config(parse_fit_args([*base, "--paper-exact", "--precision", "bf16"]), 3).precision == "bf16"
    assert build_config(parse_fit_args(base), 3).precision == Precision.auto
    saved = SimpleNamespace(config=build_config(job, 3), iteration=5)
    resumed = parse_fit_args(["--resume", str(tmp_path / "x.ckpt"), "-o", str(tmp_path / "o.png"), "--iterations", "9"])
    assert resume_config(resumed, saved).precision == Precision.fp32  # type: ignore[arg-type]


def test_a_resume_keeps_the_saved_precision_and_backend_unless_given(tmp_path: Path):
    """The command line's `auto` is a default, not a choice: resuming an fp32 fit without --precision stays fp32 (it
    used to become auto, bf16 on an AVX512-BF16 CPU, and the resumed image differed from a straight run); a
    --paper-exact fit saved in bf16 stays bf16; a precision given on the resume wins; the device still defaults to
    auto (where the fit runs)."""
    base = ["denoise", str(tmp_path / "n.png"), "-o", str(tmp_path / "o.png")]
    resume = ["--resume", str(tmp_path / "x.ckpt"), "-o", str(tmp_path / "o.png"), "--iterations", "9"]
    for saved_args, given, expected in [
        (["--precision", "fp32", "--backend", "eager"], [], ("fp32", "eager")),
        (["--paper-exact", "--precision", "bf16"], [], ("bf16", "auto")),
        (["--precision", "fp32"], ["--precision", "auto"], ("auto", "auto")),
        (["--paper-exact"], ["--precision", "auto"], ("fp32", "auto")),  # --paper-exact's auto is fp32
        (["--precision", "fp32"], ["--backend", "inductor"], ("fp32", "inductor")),
    ]:
        saved = SimpleNamespace(config=build_config(parse_fit_args([*base, *saved_args]), 3), iteration=5)
        job = parse_fit_args([*resume, *given])
        assert job.settings["device"] == "auto"
        assert given or not {"precision", "backend"} & set(job.settings)
        config = resume_config(job, saved)  # type: ignore[arg-type]
        assert (config.precision, config.backend) == expected, (saved_args, given)


def test_paper_exact_fits_with_the_2017_framework_and_the_flags_still_win(tmp_path: Path):
    """--paper-exact builds the net as PyTorch 0.2/0.3 did (the published outputs' framework): BatchNorm scales from
    U(0, 1), bilinear upsampling with aligned corners (not where a net upsamples by nearest only); --bn-init ones
    --no-align-corners give today's framework back."""
    base = ["super-resolve", str(tmp_path / "lr.png"), "-o", str(tmp_path / "o.png")]
    exact = build_config(parse_fit_args([*base, "--paper-exact"]), 3).net
    assert (exact.bn_init, exact.align_corners) == ("uniform", True)
    today = build_config(parse_fit_args([*base, "--paper-exact", "--bn-init", "ones", "--no-align-corners"]), 3).net
    assert (today.bn_init, today.align_corners) == ("ones", False)
    ours = build_config(parse_fit_args(base), 3).net
    assert (ours.bn_init, ours.align_corners) == ("ones", False)
    assert parse_fit_args(base).net.settings == {}  # --no-align-corners is a choice; not giving it is none
    kate = presets.preset("inpaint", paper_exact=True).net  # nearest upsampling: no corners to align
    assert (kate.bn_init, kate.align_corners) == ("uniform", False)


def test_the_2017_framework_options_reach_the_report_and_checkpoint_and_the_export_replays_them(tmp_path: Path):
    low = save_png(smooth_image(8, 16), tmp_path / "low.png")
    out, ckpt, report = tmp_path / "sr.png", tmp_path / "sr.ckpt", tmp_path / "sr.json"
    tiny = ("--channels", "8", "--depth", "3", "--iterations", "3", "-q", "--paper-exact")
    code, err = dipc(
        "fit", "super-resolve", low, "-o", out, "--checkpoint", ckpt, "--report", report, *tiny,
        "--bn-init", "uniform", "--align-corners",
    )  # fmt: skip
    assert code == 0, err
    written = json.loads(report.read_text())
    assert written["precision"] == "fp32" and written["config"]["precision"] == "fp32"
    assert (written["config"]["net"]["bn_init"], written["config"]["net"]["align_corners"]) == ("uniform", True)
    net = load_checkpoint(ckpt).config.net
    assert (net.bn_init, net.align_corners) == ("uniform", True)
    code, err = dipc("export", ckpt, "-o", tmp_path / "sr.onnx", "--verify")
    assert code == 0, err
    code, err = dipc("regenerate", tmp_path / "sr.onnx", "-o", tmp_path / "again.png", "--check", out)
    assert code == 0, err
