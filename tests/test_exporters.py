"""``dipc export`` and the exporters: the ONNX/TorchScript image equals the fit's image, and bad input fails cleanly."""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from typer.testing import CliRunner

from conftest import dipc, smooth_image, tiny_config
from dip_compile import exporters
from dip_compile.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from dip_compile.cli import app
from dip_compile.degradations import random_holes_mask
from dip_compile.errors import DipError
from dip_compile.export_options import (
    BatchNormMode,
    ExportFormat,
    ExportImage,
    ExportOptions,
    NoiseMode,
    Provider,
    Weights,
)
from dip_compile.fitting import Fitter
from dip_compile.imageio import save_image
from dip_compile.metrics import psnr
from dip_compile.problem import add_noise, make_problem

TOL = 1e-4


def fit(tmp: Path, name: str = "fit.ckpt", iterations: int = 4, task: str = "denoise", net=None) -> Fitter:
    """A tiny fit saved as a checkpoint; the 30x45 image runs on a 32x48 canvas, so the export must crop."""
    config = tiny_config(task, iterations=iterations, log_every=1, stop="fixed")
    if net is not None:
        config = config.replace(net=net)
    clean = smooth_image(30, 45)
    if task == "inpaint":
        problem = make_problem(config, clean, mask=random_holes_mask(30, 45, 0.3))
    else:
        problem = make_problem(config, add_noise(clean, 0.1), reference=clean)
    fitter = Fitter(config, problem)
    fitter.run(iterations)
    save_checkpoint(fitter, tmp / name)
    return fitter


@pytest.fixture(scope="module")
def fitted(tmp_path_factory) -> tuple[Fitter, Path]:
    tmp = tmp_path_factory.mktemp("export")
    return fit(tmp), tmp / "fit.ckpt"


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def onnx_image(path_or_model, noise: np.ndarray | None = None) -> np.ndarray:
    data = path_or_model.SerializeToString() if isinstance(path_or_model, onnx.ModelProto) else path_or_model
    return exporters.run_onnx(data, noise)


@pytest.mark.parametrize("bn", ["frozen", "batch"])
def test_onnx_image_equals_fit_output_within_1e4_with_empty_feed(fitted, bn):
    fitter, ckpt = fitted
    plan = exporters.plan_export(load_checkpoint(ckpt), bn=bn, image="output")
    image = onnx_image(exporters.to_onnx(plan))
    assert image.shape == (1, 3, 30, 45)  # cropped from the 32x48 canvas to the image size
    check = exporters.agreement(image, fitter.output())
    assert check["max_abs_diff"] <= TOL and check["identical_8bit"] == 1.0


def test_onnx_passes_the_full_checker_and_takes_a_batch_of_noises(fitted):
    fitter, ckpt = fitted
    model = exporters.to_onnx(exporters.plan_export(load_checkpoint(ckpt), bn="batch", image="output"))
    onnx.checker.check_model(model, full_check=True)
    noise = fitter.net_input.numpy()
    other = np.random.default_rng(3).random(noise.shape, dtype=np.float32) * 0.1
    both = onnx_image(model, np.concatenate([noise, other]))
    assert both.shape == (2, 3, 30, 45)
    assert np.abs(both[:1] - onnx_image(model)).max() <= TOL  # each sample normalised as if it were alone
    assert np.abs(both[1:] - onnx_image(model, other)).max() <= TOL


NETWORK_VARIANTS = {
    "zeros padding, bicubic": dict(padding="zeros", upsample=("bicubic",)),
    "seed structure": dict(structure="seed", upsample=("bicubic",)),
    "meshgrid, lanczos2 down, kernel 5, no 1x1 up": dict(
        input_kind="meshgrid", input_depth=2, downsample=("lanczos2",), kernel_down=(5,), need_1x1_up=False
    ),
    "convdecoder": dict(generator="convdecoder", input_depth=16),
    "deepdecoder": dict(generator="deepdecoder", input_depth=16, kernel_up=(1,)),
    "the 2017 framework: BatchNorm from U(0, 1), aligned corners": dict(bn_init="uniform", align_corners=True),
    "avg/max/stride down, per-level up and kernels": dict(
        downsample=("avg", "max", "stride"), upsample=("nearest", "bilinear", "bicubic"), kernel_up=(1, 3, 5)
    ),
}


@pytest.mark.parametrize("variant", NETWORK_VARIANTS)
def test_any_network_the_fit_builds_exports_without_exporter_changes(tmp_path, variant):
    net = dataclasses.replace(tiny_config().net, **NETWORK_VARIANTS[variant])
    fitter = fit(tmp_path, net=net)
    plan = exporters.plan_export(load_checkpoint(tmp_path / "fit.ckpt"), image="output")
    check = exporters.agreement(onnx_image(exporters.to_onnx(plan)), fitter.output())
    assert exporters.passes(check), check


def test_other_noise_gets_batch_statistics_in_batch_mode_and_frozen_ones_in_frozen_mode(fitted):
    fitter, ckpt = fitted
    other = torch.rand(fitter.net_input.shape, generator=torch.Generator().manual_seed(7)) * 0.1
    with torch.no_grad():
        dip = fitter.crop(fitter.net(other))  # DIP semantics: BN with the statistics of this input
    plan = exporters.plan_export(load_checkpoint(ckpt), bn="batch", image="output")
    batch = onnx_image(exporters.to_onnx(plan), other.numpy())
    assert exporters.agreement(batch, dip)["max_abs_diff"] <= TOL
    plan = exporters.plan_export(load_checkpoint(ckpt), bn="frozen", image="output")
    frozen = onnx_image(exporters.to_onnx(plan), other.numpy())
    assert np.abs(frozen - onnx_image(exporters.to_onnx(plan))).max() > 1e-3  # the feed is really used
    with torch.no_grad():
        assert np.abs(frozen - plan.module(other).numpy()).max() <= TOL  # the same module torch runs


def run_without_dip_compile(script: str, model: Path) -> np.ndarray:
    """Runs ``script MODEL OUT.npy`` in a fresh interpreter (which asserts it never imports dip_compile); its array."""
    out = model.with_suffix(".npy")
    subprocess.run(
        [sys.executable, "-c", script, str(model), str(out)],
        check=True,
        cwd=model.parent,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    return np.load(out)


def test_torchscript_loads_with_torch_jit_load_alone_and_matches(fitted, tmp_path):
    fitter, ckpt = fitted
    out = tmp_path / "net.pt"
    result = invoke("export", ckpt, "-o", out, "--format", "torchscript", "--image", "output")
    assert result.exit_code == 0, result.output
    script = (
        "import sys, torch, numpy; m = torch.jit.load(sys.argv[1]); x = m(); "
        "assert not any(k.startswith('dip_compile') for k in sys.modules); numpy.save(sys.argv[2], x.numpy())"
    )
    assert exporters.agreement(run_without_dip_compile(script, out), fitter.output())["max_abs_diff"] <= TOL
    loaded = torch.jit.load(str(out))
    assert torch.equal(loaded(fitter.net_input), loaded())  # the shipped noise is the default input


def test_pt2_loads_with_torch_export_alone_and_takes_a_batch(fitted, tmp_path):
    fitter, ckpt = fitted
    out = tmp_path / "net.pt2"
    result = invoke("export", ckpt, "-o", out, "--format", "pt2", "--image", "output")
    assert result.exit_code == 0, result.output
    script = (
        "import sys, io, json, base64, torch, numpy\n"
        "extra = {'noise.npy.b64': '', 'dip_compile.json': ''}\n"
        "m = torch.export.load(sys.argv[1], extra_files=extra).module()\n"
        "noise = torch.from_numpy(numpy.load(io.BytesIO(base64.b64decode(extra['noise.npy.b64']))))\n"
        "assert json.loads(extra['dip_compile.json'])['task'] == 'denoise'\n"
        "assert not any(k.startswith('dip_compile') for k in sys.modules)\n"
        "numpy.save(sys.argv[2], m(torch.cat([noise, noise])).detach().numpy())\n"
    )
    both = run_without_dip_compile(script, out)
    assert both.shape == (2, 3, 30, 45)
    assert all(exporters.passes(exporters.agreement(image[None], fitter.output())) for image in both)


def test_export_all_with_verify_writes_every_format_and_reports_exactness(fitted, tmp_path):
    _, ckpt = fitted
    result = invoke("export", ckpt, "-o", tmp_path / "model", "--format", "all", "--verify", "--image", "output")
    assert result.exit_code == 0, result.output
    assert all((tmp_path / f"model.{suffix}").is_file() for suffix in ("onnx", "pt2", "pt"))
    verify_lines = [line for line in result.output.splitlines() if "verify:" in line]
    assert len(verify_lines) == 3 and all("identical 8-bit pixels 100.000%" in v and "(OK)" in v for v in verify_lines)
    # denoise returns its EMA image
    assert "note: this fit returned its ema image; --image fit (the default) exports that one" in result.output


def test_checkpoints_at_other_iterations_export_their_own_images(tmp_path):
    early = fit(tmp_path, "early.ckpt", iterations=2)
    early_image = early.output()
    early.run(5)
    save_checkpoint(early, tmp_path / "late.ckpt")
    folder = tmp_path / "models"
    folder.mkdir()
    result = invoke("export", tmp_path / "early.ckpt", tmp_path / "late.ckpt", "-o", folder, "--image", "output")
    assert result.exit_code == 0, result.output
    got_early, got_late = onnx_image(str(folder / "early.onnx")), onnx_image(str(folder / "late.onnx"))
    assert exporters.agreement(got_early, early_image)["max_abs_diff"] <= TOL
    assert exporters.agreement(got_late, early.output())["max_abs_diff"] <= TOL
    assert np.abs(got_early - got_late).max() > 1e-3
    meta = exporters.replay.metadata(exporters.replay.open_session(str(folder / "late.onnx"))[0])
    assert meta["iterations"] == "5"


def test_ema_export_reproduces_the_fits_ema_image_via_a_stored_correction(tmp_path):
    fitter = fit(tmp_path, iterations=6)  # the denoise preset smooths with EMA 0.99
    assert fitter.ema is not None
    plan = exporters.plan_export(load_checkpoint(tmp_path / "fit.ckpt"), image="ema")
    image = onnx_image(exporters.to_onnx(plan))
    assert exporters.agreement(image, fitter.ema)["max_abs_diff"] <= TOL
    assert np.abs(image - fitter.output().numpy()).max() > 1e-3
    assert plan.metadata["image"] == "ema" and "correction" in plan.metadata["image_note"]


def test_inpainting_checkpoint_without_ema_refuses_image_ema(tmp_path):
    fit(tmp_path, task="inpaint", iterations=2)
    result = invoke("export", tmp_path / "fit.ckpt", "-o", tmp_path / "m.onnx", "--image", "ema")
    assert result.exit_code == 2 and "no EMA image" in result.stderr
    assert not (tmp_path / "m.onnx").exists()


def test_fp16_weights_halve_the_weights_and_stay_within_one_8bit_level(fitted):
    fitter, ckpt = fitted
    plans = {w: exporters.plan_export(load_checkpoint(ckpt), weights=w, image="output") for w in ("fp32", "fp16")}
    models = {w: exporters.to_onnx(p) for w, p in plans.items()}

    def stored(model, kind):
        return sum(numpy_helper.to_array(t).nbytes for t in model.graph.initializer if t.data_type == kind)

    half = stored(models["fp16"], onnx.TensorProto.FLOAT16)
    assert half > 0.4 * plans["fp32"].weight_bytes  # the convolutions, in half the bytes
    stored_bytes = {w: sum(numpy_helper.to_array(t).nbytes for t in m.graph.initializer) for w, m in models.items()}
    assert stored_bytes["fp32"] - stored_bytes["fp16"] > 0.9 * half  # the weights shrink by half
    check = exporters.agreement(onnx_image(models["fp16"]), fitter.output())
    assert check["max_8bit_diff"] <= 1 and check["max_abs_diff"] < 5e-3


def test_metadata_records_what_a_user_needs_to_trust_the_model(fitted):
    fitter, ckpt = fitted
    model = exporters.to_onnx(exporters.plan_export(load_checkpoint(ckpt)))
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["task"] == "denoise" and meta["image_size"] == "45x30" and meta["iterations"] == "4"
    assert meta["seed"] == "0" and meta["bn"] == "frozen" and meta["image"] == "ema"  # the fit's image
    assert meta["image_option"] == "fit" and meta["fit_image"] == "ema"
    assert meta["package_version"] and meta["torch_version"] == str(torch.__version__)
    image = onnx_image(model)  # the model's own image: the scores describe it
    assert float(meta["psnr_reference"]) == pytest.approx(
        psnr(torch.from_numpy(image), smooth_image(30, 45)[None]).item(), abs=1e-3
    )
    assert float(meta["loss"]) == pytest.approx(fitter.problem.loss(torch.from_numpy(image)).item(), rel=1e-4)
    noise = next(numpy_helper.to_array(t) for t in model.graph.initializer if t.name == "noise")
    assert np.array_equal(noise, fitter.net_input.numpy())
    assert meta["noise_sha256"] == "sha256:" + hashlib.sha256(noise.astype("<f4").tobytes()).hexdigest()
    assert json.loads(meta["config"])["net"]["input_depth"] == 8


# --- bad input: one line on stderr, exit code 2, nothing written ---------------------------------------------


def bad(result, needle: str, out: Path) -> None:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], result.stderr
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]  # no temp file left


def test_missing_checkpoint_is_one_line_exit_2(tmp_path):
    bad(invoke("export", tmp_path / "nope.ckpt", "-o", tmp_path / "m.onnx"), "not found", tmp_path / "m.onnx")


def test_truncated_checkpoint_is_one_line_exit_2(fitted, tmp_path):
    data = fitted[1].read_bytes()
    (tmp_path / "cut.ckpt").write_bytes(data[: len(data) // 2])
    bad(
        invoke("export", tmp_path / "cut.ckpt", "-o", tmp_path / "m.onnx"),
        "corrupted or truncated",
        tmp_path / "m.onnx",
    )


def test_checkpoint_of_another_format_version_is_one_line_exit_2(fitted, tmp_path):
    payload = torch.load(fitted[1], weights_only=True)
    payload["version"] = 99
    torch.save(payload, tmp_path / "v99.ckpt")
    bad(invoke("export", tmp_path / "v99.ckpt", "-o", tmp_path / "m.onnx"), "version 99", tmp_path / "m.onnx")


@pytest.mark.parametrize("content", [b"\x89PNG\r\n\x1a\n not a checkpoint", "torch-dict"])
def test_file_that_is_not_a_checkpoint_is_one_line_exit_2(tmp_path, content):
    path = tmp_path / "x.ckpt"
    if content == "torch-dict":
        torch.save({"weights": torch.zeros(2)}, path)
    else:
        path.write_bytes(content)
    bad(invoke("export", path, "-o", tmp_path / "m.onnx"), "checkpoint", tmp_path / "m.onnx")


def test_existing_output_without_force_is_one_line_exit_2_and_untouched(fitted, tmp_path):
    out = tmp_path / "m.onnx"
    out.write_bytes(b"keep me")
    result = invoke("export", fitted[1], "-o", out)
    assert result.exit_code == 2 and "exists" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert out.read_bytes() == b"keep me"
    assert invoke("export", fitted[1], "-o", out, "--force").exit_code == 0
    assert out.stat().st_size > 1000


def test_format_all_checks_every_output_before_writing_any(fitted, tmp_path):
    (tmp_path / "m.pt").write_bytes(b"keep me")
    result = invoke("export", fitted[1], "-o", tmp_path / "m", "--format", "all")
    assert result.exit_code == 2 and "m.pt exists" in result.stderr
    assert not (tmp_path / "m.onnx").exists()


def test_best_export_reproduces_the_auto_stop_image(tmp_path):
    config = tiny_config("denoise", iterations=6, log_every=1, stop="auto", stop_window=2, stop_patience=100)
    clean = smooth_image(30, 45)
    fitter = Fitter(config, make_problem(config, add_noise(clean, 0.1), reference=clean))
    fitter.run(6)
    save_checkpoint(fitter, tmp_path / "auto.ckpt")
    best, source = fitter.image()
    assert source == "auto-stop best"
    plan = exporters.plan_export(load_checkpoint(tmp_path / "auto.ckpt"), image="best")
    assert exporters.agreement(onnx_image(exporters.to_onnx(plan)), best)["max_abs_diff"] <= TOL
    assert exporters.fit_image_note(plan.metadata) is None  # the export is the image the fit returned


# --- the default image is the one the fit returned -------------------------------------------------------------


def test_default_export_reproduces_the_image_the_fit_returned_so_regenerate_check_passes(fitted, tmp_path):
    fitter, ckpt = fitted  # the denoise preset returns its EMA image
    save_image(fitter.image()[0], tmp_path / "restored.png")  # what dipc fit -o writes
    [written] = exporters.export_checkpoints([ckpt], tmp_path / "m.onnx", verify=True)
    assert written.metadata["image"] == "ema" and written.metadata["image_option"] == "fit"
    assert exporters.passes(written.check) and exporters.fit_image_note(written.metadata) is None
    result = invoke("regenerate", tmp_path / "m.onnx", "--check", tmp_path / "restored.png")
    assert result.exit_code == 0 and "(OK)" in result.output, result.output
    # the network's own output is another image: exported on request, and the note says which one the fit returned
    [output] = exporters.export_checkpoints(
        [ckpt], tmp_path / "o.onnx", fmt="onnx", image="output", bn="frozen", weights="fp32", noise="embedded"
    )
    assert exporters.fit_image_note(output.metadata) == (
        "note: this fit returned its ema image; --image fit (the default) exports that one"
    )
    assert invoke("regenerate", tmp_path / "o.onnx", "--check", tmp_path / "restored.png").exit_code == 1


def test_keep_known_fit_exports_its_image_with_the_observed_pixels_by_default(tmp_path):
    config = tiny_config("inpaint", iterations=3, log_every=1, stop="fixed", keep_known=True)
    fitter = Fitter(config, make_problem(config, smooth_image(30, 45), mask=random_holes_mask(30, 45, 0.3)))
    fitter.run(3)
    save_checkpoint(fitter, tmp_path / "fit.ckpt")
    pasted, source = fitter.image()
    assert source == "output + known pixels" and np.abs((pasted - fitter.output()).numpy()).max() > 1e-2
    plan = exporters.plan_export(load_checkpoint(tmp_path / "fit.ckpt"))
    assert exporters.agreement(onnx_image(exporters.to_onnx(plan)), pasted)["max_abs_diff"] <= TOL
    assert plan.metadata["image"] == "output + known pixels" and "--keep-known" in plan.metadata["image_note"]
    assert exporters.fit_image_note(plan.metadata) is None
    raw = exporters.plan_export(load_checkpoint(tmp_path / "fit.ckpt"), image="output")
    assert exporters.fit_image_note(raw.metadata) == (
        "note: this fit returned its output image with the observed pixels kept (--keep-known); "
        "--image fit (the default) exports that one"
    )


# --- non-finite values: refused at export, never passing a check --------------------------------------------


def test_checkpoint_whose_weights_are_not_finite_is_refused_in_one_line(tmp_path):
    fitter = fit(tmp_path, iterations=2)
    with torch.no_grad():
        next(fitter.net.parameters()).view(-1)[0] = float("nan")
    save_checkpoint(fitter, tmp_path / "nan.ckpt")
    bad(
        invoke("export", tmp_path / "nan.ckpt", "-o", tmp_path / "m.onnx"),
        "nan.ckpt is a damaged dip-compile checkpoint, or one of a fit that diverged: weight",
        tmp_path / "m.onnx",
    )
    with pytest.raises(DipError, match="one of a fit that diverged"):
        load_checkpoint(tmp_path / "nan.ckpt")
    with pytest.raises(DipError, match="fit diverged"):  # a checkpoint made in memory is checked by the export
        exporters.plan_export(Checkpoint(fitter.config, fitter.problem, fitter.state_dict(), {}))


def test_agreement_counts_non_finite_values_and_they_never_pass(fitted):
    fitter, _ = fitted
    image = fitter.output().numpy().copy()
    image[0, 0, :2] = np.nan
    check = exporters.agreement(image, fitter.output())
    assert check["nonfinite"] == 90 and not exporters.passes(check)
    assert exporters.replay.check_line(check, "MISMATCH") == (
        "90 non-finite values (NaN/inf) in the regenerated image: MISMATCH"
    )
    clean = exporters.agreement(fitter.output(), fitter.output())
    assert clean["nonfinite"] == 0 and exporters.passes(clean)


# --- the options: one set of Enums for the CLI and the library ----------------------------------------------


def test_export_options_coerce_strings_and_refuse_unknown_values_in_one_line():
    options = ExportOptions(fmt="all", image="best", bn="batch", weights="fp16", noise="seed", verify=True)
    assert (options.fmt, options.image, options.bn, options.weights, options.noise) == (
        ExportFormat.all,
        ExportImage.best,
        BatchNormMode.batch,
        Weights.fp16,
        NoiseMode.seed,
    )
    assert ExportOptions().image is ExportImage.fit and ExportOptions(image=ExportImage.ema).image is ExportImage.ema
    with pytest.raises(DipError, match=r"^unknown --image 'outptu'; choose fit, output, ema or best$"):
        ExportOptions(image="outptu")
    with pytest.raises(ValueError, match=r"^unknown --format 'zip'; choose onnx, pt2, torchscript or all$"):
        ExportOptions(fmt="zip")
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.fmt = "onnx"
    with pytest.raises(DipError, match=r"^unknown --bn 'eval'; choose frozen or batch$"):
        exporters.plan_export(None, bn="eval")  # refused before the checkpoint is touched
    assert tuple(p.value for p in Provider) == exporters.replay.PROVIDERS


def test_export_options_import_neither_torch_nor_onnx():
    code = (
        "import sys, dip_compile.export_options; "
        "print(sorted({'torch', 'onnx', 'numpy', 'dip_compile.exporters'} & set(sys.modules)))"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "[]"


@pytest.mark.parametrize("bn", ["frozen", "batch"])
def test_portable_profile_reproduces_the_fit_image_in_opencv_dnn_and_onnx_runtime(fitted, tmp_path, bn):
    import cv2

    fitter, ckpt = fitted
    out = tmp_path / "p.onnx"
    result = invoke("export", ckpt, "-o", out, "--profile", "portable", "--bn", bn, "--verify")
    assert result.exit_code == 0, result.output
    assert "(OK)" in result.output
    noise = np.load(tmp_path / "p.noise.npy")
    assert np.array_equal(noise, fitter.net_input.numpy())
    net = cv2.dnn.readNetFromONNX(str(out))
    net.setInput(noise, "noise")
    target = fitter.image()[0]  # denoising returns its EMA image: the default export reproduces it
    assert exporters.passes(exporters.agreement(net.forward(), target))
    assert exporters.passes(exporters.agreement(exporters.run_file(out, "onnx"), target))  # noise read beside
    np.save(tmp_path / "p.noise.npy", noise + 0.01)
    with pytest.raises(exporters.replay.ReplayError, match="p.noise.npy does not match the model's noise checksum"):
        exporters.run_file(out, "onnx")


def test_a_full_disk_during_a_pt2_export_is_the_one_line_error_without_torchs_warnings(fitted, tmp_path, monkeypatch):
    _, ckpt = fitted
    real_save, real_write = torch.export.save, Path.write_bytes

    def save_with_a_warning(*args, **kwargs):  # what torch printed before the error on a full disk
        warnings.warn("a note torch gives while exporting", UserWarning, stacklevel=2)
        return real_save(*args, **kwargs)

    def full_disk(self, data):
        if self.name.endswith(".tmp"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(self, data)

    monkeypatch.setattr(torch.export, "save", save_with_a_warning)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with monkeypatch.context() as full:
            full.setattr(Path, "write_bytes", full_disk)
            code, err = dipc("export", ckpt, "-o", tmp_path / "m.pt2", "--format", "pt2")
        assert code == 2 and err.count("\n") == 1 and "no space left on the device while writing" in err, err
        assert [str(w.message) for w in seen] == []
        assert list(tmp_path.iterdir()) == []
        # once the file is written, torch's warnings are shown as they always were
        code, err = dipc("export", ckpt, "-o", tmp_path / "m.pt2", "--format", "pt2")
        assert code == 0, err
        assert [str(w.message) for w in seen] == ["a note torch gives while exporting"]
