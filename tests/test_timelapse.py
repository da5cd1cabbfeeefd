"""``dipc fit --timelapse OUT.webp|gif``: one frame every N iterations and the returned image last, one animation."""

import pytest
from PIL import Image

from conftest import dipc

TINY_FIT = ["--depth", "2", "--channels", "8", "--skip-channels", "4", "-q"]


@pytest.mark.parametrize("name", ["lapse.webp", "lapse.gif"])
def test_timelapse_has_a_frame_every_n_iterations_and_the_last(tmp_path, image_png, name):
    out = tmp_path / name
    code, err = dipc("fit", "denoise", image_png, "-o", tmp_path / "out.png", "--iterations", "5", "--stop", "fixed",
                     "--timelapse", out, "--timelapse-every", "2", *TINY_FIT)  # fmt: skip
    assert code == 0, err
    with Image.open(out) as animation:
        assert animation.is_animated and animation.n_frames == 3  # iterations 2, 4 and the final 5
        assert animation.size == (32, 32)


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
