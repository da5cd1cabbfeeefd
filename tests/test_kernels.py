"""Blur kernels (``--kernel``), the blur operator, its baselines and the deblur task from the command line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import dipc, save_png, smooth_image
from dip_compile.baselines import richardson_lucy, wiener_deconvolve
from dip_compile.checkpoint import load_checkpoint
from dip_compile.degradations import Blur
from dip_compile.kernels import KernelError, check_fits, parse_kernel
from dip_compile.metrics import psnr
from dip_compile.problem import blur_reference

TINY = ("--channels", "8", "--depth", "3", "--input-depth", "4", "-q")


@pytest.mark.parametrize("spec, side", [("gaussian:2", 13), ("gaussian:0.5", 5), ("box:4", 4), ("motion:7,0", 9)])
def test_named_kernels_sum_to_one_and_have_their_size(spec, side):
    kernel = parse_kernel(spec)
    assert kernel.shape[1] == side and abs(kernel.sum() - 1) < 1e-12 and (kernel >= 0).all()


def test_gaussian_is_symmetric_and_motion_follows_its_angle():
    g = parse_kernel("gaussian:1.5")
    assert np.allclose(g, g.T) and np.allclose(g, g[::-1, ::-1])
    horizontal = parse_kernel("motion:7,0")
    assert horizontal.shape[0] == 1 or np.allclose(horizontal.sum(axis=1)[[0, -1]], 0)  # one row of weight
    rows = np.nonzero(horizontal.sum(axis=1) > 1e-6)[0]
    assert len(rows) == 1
    vertical = parse_kernel("motion:7,90")
    assert np.allclose(vertical, horizontal.T, atol=1e-9)
    diagonal = parse_kernel("motion:9,45")
    assert np.allclose(diagonal, diagonal[::-1, ::-1]) and np.trace(np.fliplr(diagonal)) > 0.5


def test_kernel_files_are_normalised(tmp_path: Path):
    np.save(tmp_path / "k.npy", np.array([[1.0, 2.0, 1.0]]))
    assert np.allclose(parse_kernel(str(tmp_path / "k.npy")), [[0.25, 0.5, 0.25]])
    Image.fromarray(np.array([[0, 255, 0]], dtype=np.uint8)).save(tmp_path / "k.png")
    assert np.allclose(parse_kernel(str(tmp_path / "k.png")), [[0, 1, 0]])


@pytest.mark.parametrize(
    "spec, message",
    [
        ("gaussian:x", "does not parse"),
        ("motion:5", "does not parse"),
        ("box:2.5", "does not parse"),
        ("blur", "neither a kernel spec nor a file"),
        ("gaussian:0", "needs 0 < SIGMA"),
        ("box:0", "between 1 and 255"),
        ("motion:nan,3", "needs 1 <= LENGTH"),
    ],
)
def test_bad_kernel_specs_are_one_clear_error(spec, message):
    with pytest.raises(KernelError, match=message):
        parse_kernel(spec)


@pytest.mark.parametrize(
    "array, message",
    [
        (np.zeros((2, 2, 2)), "must be 2-D"),
        (np.zeros((0, 3)), "is empty"),
        (-np.ones((3, 3)), "sums to -9"),
        (np.array([["a"]]), "holds <U1 values"),
    ],
)
def test_bad_kernel_files_are_one_clear_error(tmp_path: Path, array, message):
    np.save(tmp_path / "k.npy", array)
    with pytest.raises(KernelError, match=message):
        parse_kernel(str(tmp_path / "k.npy"))


def test_a_kernel_larger_than_the_image_is_refused():
    with pytest.raises(KernelError, match="the 13x13 blur kernel is larger than the 12x40 image"):
        check_fits(parse_kernel("gaussian:2"), (40, 12))


def test_blur_keeps_constants_and_convolves_with_the_kernel():
    flat = torch.full((1, 3, 16, 16), 0.3)
    assert torch.allclose(Blur(torch.from_numpy(parse_kernel("gaussian:2")), 3)(flat), flat)
    x = torch.rand(1, 1, 8, 8)
    shift = torch.tensor([[0.0, 0.0, 1.0]])  # a true convolution with this kernel moves the image one pixel right
    assert torch.equal(Blur(shift, 1)(x)[..., 1:], x[..., :-1])


def test_baselines_undo_part_of_a_blur():
    blocks = torch.rand(3, 6, 6, generator=torch.Generator().manual_seed(1))
    sharp = torch.nn.functional.interpolate(blocks[None], size=(48, 48), mode="nearest")[0]  # sharp edges
    kernel = torch.from_numpy(parse_kernel("gaussian:1.5")).float()
    blurred = blur_reference(sharp, kernel)
    before = psnr(blurred, sharp).item()
    assert psnr(wiener_deconvolve(blurred, kernel, 1e-3), sharp).item() > before + 2
    assert psnr(richardson_lucy(blurred, kernel, 30), sharp).item() > before + 2


def test_deblur_fits_from_a_sharp_reference_exports_and_refuses_a_new_kernel(tmp_path: Path, capsys):
    sharp = save_png(smooth_image(40, 32), tmp_path / "sharp.png")
    out, ckpt, report = tmp_path / "out.png", tmp_path / "d.ckpt", tmp_path / "r.json"
    code, err = dipc(
        "fit", "deblur", sharp, "--kernel", "motion:5,30", "--from-reference", "--sigma", "2.55", "-o", out,
        "--iterations", "8", "--log-every", "1", "--checkpoint", ckpt, "--report", report, *TINY,
    )  # fmt: skip
    assert code == 0, err
    history = json.loads(report.read_text())["history"]
    assert history["loss"][-1] < history["loss"][0]
    saved = load_checkpoint(ckpt)
    assert saved.config.kernel == "motion:5,30" and saved.config.preset == "deblur"
    assert torch.allclose(saved.problem.kernel.double(), torch.from_numpy(parse_kernel("motion:5,30")), atol=1e-7)
    code, err = dipc("export", ckpt, "-o", tmp_path / "d.onnx", "--verify")
    assert code == 0, err
    assert "(OK)" in capsys.readouterr().out
    code, err = dipc("fit", "--resume", ckpt, "-o", out, "--iterations", "9", "--kernel", "box:3", "--force")
    assert code == 2 and "--kernel cannot change when resuming" in err


def test_deblur_bad_input_is_one_line(tmp_path: Path):
    image = save_png(smooth_image(24, 24), tmp_path / "i.png")
    out = tmp_path / "o.png"
    cases = [
        ((), "deblur needs --kernel"),
        (("--kernel", "gaussian:5"), "the 31x31 blur kernel is larger than the 24x24 image"),
        (("--kernel", "box:3", "--sigma", "5"), "--sigma makes evaluation data from a clean IMAGE"),
    ]
    for extra, message in cases:
        code, err = dipc("fit", "deblur", image, "-o", out, *extra, *TINY)
        assert code == 2 and err.count("\n") == 1 and message in err, (extra, err)
    code, err = dipc("fit", "denoise", image, "-o", out, "--kernel", "box:3", *TINY)
    assert code == 2 and "--kernel only applies to deblur" in err
