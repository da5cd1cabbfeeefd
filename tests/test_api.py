"""restore_image: dipc fit from Python, with the same defaults, options and refusals as the command."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import dip_compile
from conftest import dipc, save_png, smooth_image

TINY = dict(channels=8, depth=2, input_depth=4, iterations=6, seed=3)


def flags(options: dict) -> list[str]:
    return [part for k, v in options.items() for part in (f"--{k.replace('_', '-')}", str(v))]


def test_restore_image_returns_what_dipc_fit_writes(tmp_path: Path) -> None:
    image = save_png(smooth_image(32, 32), tmp_path / "in.png")
    out = tmp_path / "out.png"
    code, err = dipc("fit", "denoise", image, "-o", out, "--sigma", 25, *flags(TINY), "-q")
    assert code == 0, err
    result = dip_compile.restore_image(image, "denoise", sigma=25, **TINY)
    ours = np.round(np.clip(result.image[0].numpy().transpose(1, 2, 0), 0, 1) * 255).astype(np.uint8)
    assert result.iterations == 6
    assert np.array_equal(ours, np.asarray(Image.open(out)))  # same defaults (auto step), same network, same seed


def test_restore_image_takes_every_option_of_the_problem(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """holes=0.5 is dipc fit's --holes 0.5 (the keywords are read from the job's declarations; it was a TypeError)."""
    from dip_compile import api
    from dip_compile.cli import parse_fit_args

    image = save_png(smooth_image(32, 32), tmp_path / "in.png")
    built = []
    monkeypatch.setattr(api, "make_plan", lambda job: built.append(job) or 1 / 0)
    with pytest.raises(ZeroDivisionError):
        dip_compile.restore_image(image, "inpaint", holes=0.5, channels_skip=0, **TINY)
    cli = parse_fit_args(["inpaint", str(image), "--holes", "0.5", "--skip-channels", "0", "-o", "x.png", *flags(TINY)])
    (job,) = built
    assert job.holes == 0.5 and job.net.channels_skip == 0
    assert (job.holes, job.box, job.text, job.mask, job.settings) == (
        cli.holes,
        cli.box,
        cli.text,
        cli.mask,
        cli.settings,
    )


def test_restore_image_refuses_with_the_message_dipc_fit_prints(tmp_path: Path) -> None:
    image = save_png(smooth_image(32, 32), tmp_path / "in.png")
    code, err = dipc("fit", "denoise", image, "-o", tmp_path / "o.png", "--mask", image)
    assert code == 2
    with pytest.raises(dip_compile.DipError) as caught:
        dip_compile.restore_image(image, "denoise", mask=image)
    assert str(caught.value) in err
    with pytest.raises(dip_compile.DipError, match="channels"):
        dip_compile.restore_image(image, "denoise", channels=0)


def test_an_image_held_in_memory_fits_as_its_file_does(tmp_path: Path) -> None:
    """A PIL image, a numpy array (uint8 or float, channels last) and a tensor (channels first) of the file's pixels
    restore to the file's result, bit for bit; so do a mask and a reference given the same ways."""
    path = save_png(smooth_image(32, 32), tmp_path / "in.png")
    pixels = np.asarray(Image.open(path))
    kept = torch.rand(32, 32) > 0.3
    mask = save_png(kept.float()[None], tmp_path / "mask.png")
    expected = dip_compile.restore_image(path, "inpaint", mask=mask, reference=path, **TINY)
    held = {
        "PIL": (Image.open(path), Image.open(mask)),
        "uint8 array": (pixels, kept.numpy()),
        "float array": (pixels / 255.0, kept.numpy().astype(np.float32)),
        "tensor": (dip_compile.load_image(path)[None], kept),
    }
    for kind, (image, known) in held.items():
        result = dip_compile.restore_image(image, "inpaint", mask=known, reference=image, **TINY)
        assert torch.equal(result.image, expected.image), kind
        assert result.history["psnr_reference"] == expected.history["psnr_reference"], kind


def test_a_held_tensor_is_not_changed_by_the_fit(tmp_path: Path) -> None:
    image = smooth_image(32, 32)
    before = image.clone()
    dip_compile.restore_image(image, "denoise", sigma=25, **TINY)
    assert torch.equal(image, before)


@pytest.mark.parametrize(
    "call, message",
    [
        (dict(image=None), "image must be a file path, a PIL image, a numpy array (H, W[, C]) or a torch tensor"),
        (dict(image=5), "image must be a file path, a PIL image, a numpy array"),
        (dict(image=np.zeros((3, 32, 32))), "image as a numpy array is (H, W) or (H, W, C) with C 1, 3 or 4"),
        (dict(image=np.zeros((32, 32), np.int64)), "image holds int64 values: give uint8 (0-255), bool or float"),
        (dict(image=np.full((32, 32), 2.0)), "image holds floats from 2 to 2: float images are in [0, 1]"),
        (dict(image=np.full((32, 32), np.nan)), "image contains NaN or infinite values"),
        (dict(image=np.zeros((0, 32))), "image is empty"),
        (dict(image=torch.zeros(32, 32, 3)), "image as a tensor is (H, W), (C, H, W) or (1, C, H, W) with C 1 or 3"),
        (dict(image=Image.new("I", (32, 32))), "image holds 32-bit integers"),
        (dict(mask=np.zeros((32, 32), bool), task="inpaint"), "mask marks no pixel as known"),
        (dict(mask=np.ones((16, 32), bool), task="inpaint"), "mask is 32x16 but the image is 32x32"),
        (dict(reference="nope.png"), "reference not found: nope.png"),
        (dict(sigma="25"), "--sigma must be a number, got '25'"),
        (dict(sigma=True), "--sigma must be a number, got True"),
        (dict(device=5), "--device must be text (a str), got 5"),
        (dict(noise=5), "--noise must be text (a str), got 5"),
        (dict(fast="no"), "--fast must be True or False, got 'no'"),
        (dict(paper_exact=1), "--paper-exact must be True or False, got 1"),
        (dict(keep_known="yes", task="inpaint"), "--keep-known must be True or False, got 'yes'"),
        (dict(iterations="5"), "--iterations must be a whole number, got '5'"),
        (dict(checkpoint=5), "--checkpoint must be a file path (str or Path), got 5"),
        (dict(on_log=3), "on_log must be a function taking a LogRecord, got 3"),
        (dict(iteration=3), "restore_image() has no option 'iteration' (did you mean iterations?)"),
        (dict(bogus=np.zeros((40, 40))), "restore_image() has no option 'bogus'; its keywords are dipc fit's"),
        (dict(sigma=np.zeros((40, 40))), "--sigma must be a number, got a ndarray"),
    ],
    ids=lambda v: v[:48] if isinstance(v, str) else "",
)
def test_bad_input_of_any_type_is_one_line_dip_error(tmp_path: Path, call: dict, message: str) -> None:
    """Wrong types, shapes and values are DipError with a one-line message naming the option, never a TypeError,
    an AttributeError, or a string taken as true; nothing is fitted (on_log is never called)."""
    image = save_png(smooth_image(32, 32), tmp_path / "in.png")
    call = {"image": image, "task": "denoise", **call}
    if "sigma" not in call and call["task"] == "denoise":
        call["sigma"] = 25
    if call["task"] == "inpaint" and "mask" not in call:
        call["mask"] = np.ones((32, 32), bool)
    seen: list[object] = []
    call.setdefault("on_log", seen.append)
    with pytest.raises(dip_compile.DipError) as caught:
        dip_compile.restore_image(call.pop("image"), call.pop("task"), **{**TINY, **call})
    assert message in str(caught.value) and "\n" not in str(caught.value)
    assert seen == []


def test_the_checkpoint_is_checked_before_the_fit_and_replaced_only_with_force(tmp_path: Path) -> None:
    """As dipc fit checks its outputs: an unwritable --checkpoint must not cost the fit's result."""
    image = save_png(smooth_image(32, 32), tmp_path / "in.png")
    seen: list[object] = []
    for path, message in [
        (tmp_path / "missing" / "fit.ckpt", "output folder"),
        (tmp_path, "is a folder"),
        (image, "exists; pass --force to overwrite it"),
    ]:
        with pytest.raises(dip_compile.DipError, match=message):
            dip_compile.restore_image(image, sigma=25, checkpoint=path, on_log=seen.append, **TINY)
    assert seen == [] and not (tmp_path / "missing").exists()
    ckpt = tmp_path / "fit.ckpt"
    ckpt.write_bytes(b"an older file")
    dip_compile.restore_image(image, sigma=25, checkpoint=ckpt, force=True, **TINY)
    assert dip_compile.load_checkpoint(ckpt).iteration == TINY["iterations"]
