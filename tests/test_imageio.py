import errno

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
