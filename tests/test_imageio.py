import errno
import os
import stat
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import save_png, smooth_image
from dip_compile.errors import DipError
from dip_compile.imageio import atomic_write, load_image, load_mask, save_image


def test_png_round_trip_is_exact_at_8_bits(tmp_path):
    image = torch.round(smooth_image(16, 20) * 255) / 255
    save_image(image, tmp_path / "a.png")
    assert torch.equal(load_image(tmp_path / "a.png"), image)


def test_output_format_follows_the_extension(tmp_path):
    save_image(smooth_image(16, 16), tmp_path / "a.jpg")
    save_image(smooth_image(16, 16), tmp_path / "b.out")
    assert Image.open(tmp_path / "a.jpg").format == "JPEG" and Image.open(tmp_path / "b.out").format == "PNG"


def test_grayscale_and_rgba_images_load_with_one_and_three_channels(tmp_path):
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "g.png")
    Image.fromarray(np.zeros((8, 8, 4), np.uint8)).save(tmp_path / "rgba.png")
    assert load_image(tmp_path / "g.png").shape == (1, 8, 8)
    assert load_image(tmp_path / "rgba.png").shape == (3, 8, 8)


def test_mask_white_means_known(tmp_path):
    array = np.zeros((4, 4), np.float32)
    array[:2] = 1
    mask = load_mask(save_png(array, tmp_path / "m.png"), (4, 4))
    assert mask[:2].all() and not mask[2:].any()


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "out.png"
    target.write_bytes(b"old")

    def half_write_then_fail(tmp):
        tmp.write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(DipError, match="no space left"):
        atomic_write(target, half_write_then_fail)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]


def test_an_interrupted_write_leaves_no_temp(tmp_path):
    def interrupted(tmp):
        tmp.write_bytes(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(tmp_path / "x.png", interrupted)
    assert list(tmp_path.iterdir()) == []


def test_sixteen_bit_images_are_scaled_by_their_range_not_their_maximum(tmp_path):
    dark = np.full((4, 4), 200, np.uint16)  # a dark 16-bit photo: every value <= 255
    Image.fromarray(dark).save(tmp_path / "dark16.png")
    assert torch.allclose(load_image(tmp_path / "dark16.png"), torch.full((1, 4, 4), 200 / 65535))


def test_float_images_are_taken_as_zero_to_one(tmp_path):
    Image.fromarray(np.full((4, 4), 0.5, np.float32), mode="F").save(tmp_path / "half.tif")
    assert torch.allclose(load_image(tmp_path / "half.tif"), torch.full((1, 4, 4), 0.5))


def test_outputs_get_the_mode_open_would_give(tmp_path):
    old = os.umask(0o022)
    try:
        save_image(smooth_image(8, 8), tmp_path / "new.png")
        assert stat.S_IMODE((tmp_path / "new.png").stat().st_mode) == 0o644
        (tmp_path / "kept.png").write_bytes(b"old")
        os.chmod(tmp_path / "kept.png", 0o640)
        save_image(smooth_image(8, 8), tmp_path / "kept.png")  # --force: the existing file keeps its mode
        assert stat.S_IMODE((tmp_path / "kept.png").stat().st_mode) == 0o640
    finally:
        os.umask(old)


def test_temp_files_of_killed_writers_are_removed_on_the_next_write(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".out.png.{int(dead.stdout)}.abc123.tmp"
    stale.write_bytes(b"half")
    alive = tmp_path / f".out.png.{os.getppid()}.def456.tmp"  # a live writer's temp file stays
    alive.write_bytes(b"busy")
    save_image(smooth_image(8, 8), tmp_path / "out.png")
    assert not stale.exists() and alive.exists()


def test_exclusive_write_never_replaces_a_file_that_appeared_meanwhile(tmp_path):
    target = tmp_path / "out.png"

    def write_while_another_process_creates_target(tmp):
        tmp.write_bytes(b"mine")
        target.write_bytes(b"theirs")

    with pytest.raises(DipError, match="created by another process"):
        atomic_write(target, write_while_another_process_creates_target, overwrite=False)
    assert target.read_bytes() == b"theirs" and (tmp_path / "out.1.png").read_bytes() == b"mine"
