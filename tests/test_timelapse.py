"""``dipc fit --timelapse OUT.webp|gif``: one frame every N iterations and the returned image last, one animation."""

import numpy as np
import pytest
from PIL import Image, ImageSequence

from conftest import dipc

TINY_FIT = ["--depth", "2", "--channels", "8", "--skip-channels", "4", "-q"]


@pytest.mark.parametrize(
    ("name", "returned"),
    [
        ("lapse.webp", []),  # lossless: the last frame is the output's pixels (the preset's EMA image)
        ("lapse.gif", ["--paper-exact"]),  # a palette per frame; the network's output, which moves faster than the EMA
    ],
)
def test_timelapse_has_a_frame_every_n_iterations_and_ends_on_the_returned_image(tmp_path, image_png, name, returned):
    out = tmp_path / name
    code, err = dipc("fit", "denoise", image_png, "-o", tmp_path / "out.png", "--iterations", "5", "--stop", "fixed",
                     "--timelapse", out, "--timelapse-every", "2", *TINY_FIT, *returned)  # fmt: skip
    assert code == 0, err
    with Image.open(out) as animation:
        assert animation.is_animated and animation.n_frames == 3  # iterations 2, 4 and the final 5
        assert animation.size == (32, 32)
        frames = [np.asarray(frame.convert("RGB"), dtype=int) for frame in ImageSequence.Iterator(animation)]
    with Image.open(tmp_path / "out.png") as restored:
        pixels = np.asarray(restored.convert("RGB"), dtype=int)
    off = [float(np.abs(frame - pixels).mean()) for frame in frames]  # mean 8-bit levels from the output
    if name.endswith(".webp"):
        assert off[-1] == 0 and off[-2] > 0, off
    else:  # the palette's rounding (about 2 levels) against about 10 for the frame of iteration 4
        assert off[-1] < 4 < off[-2], off


def test_timelapse_has_a_frame_every_ten_iterations_by_default(tmp_path, image_png):
    out = tmp_path / "lapse.gif"
    code, err = dipc("fit", "denoise", image_png, "-o", tmp_path / "out.png", "--iterations", "12", "--stop", "fixed",
                     "--timelapse", out, *TINY_FIT)  # fmt: skip
    assert code == 0, err
    with Image.open(out) as animation:
        assert animation.n_frames == 2  # iterations 10 and the final 12


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--timelapse", "lapse.mp4"], "give a path ending in .webp or .gif"),
        (["--timelapse", "lapse.gif", "--timelapse-every", "0"], "--timelapse-every must be"),
        (["--timelapse-every", "5"], "--timelapse-every only applies with --timelapse"),
        (["--timelapse-every", "0"], "--timelapse-every only applies with --timelapse"),
        (["--timelapse-every", "-3"], "--timelapse-every only applies with --timelapse"),
    ],
)
def test_bad_timelapse_options_are_one_line(tmp_path, image_png, args, message):
    code, err = dipc("fit", "denoise", image_png, "-o", tmp_path / "out.png", *args, *TINY_FIT)
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "out.png").exists()


def test_timelapse_is_refused_with_tile_and_in_a_batch(tmp_path, image_png):
    tiled = ["--tile", "32", "--timelapse", tmp_path / "t.webp"]
    code, err = dipc("fit", "denoise", image_png, "-o", tmp_path / "out.png", *tiled, *TINY_FIT)
    assert code == 2 and "--timelapse does not apply with --tile" in err, err
    folder = image_png.parent
    code, err = dipc("batch", folder, "--task", "denoise", "-o", tmp_path / "batch", "--timelapse", tmp_path / "t.gif")
    assert code == 2 and "drop --timelapse" in err, err
