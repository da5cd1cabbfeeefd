"""restore_image: dipc fit from Python, with the same defaults, options and refusals as the command."""

from pathlib import Path

import numpy as np
import pytest
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


def test_restore_image_refuses_with_the_message_dipc_fit_prints(tmp_path: Path) -> None:
    image = save_png(smooth_image(32, 32), tmp_path / "in.png")
    code, err = dipc("fit", "denoise", image, "-o", tmp_path / "o.png", "--mask", image)
    assert code == 2
    with pytest.raises(dip_compile.DipError) as caught:
        dip_compile.restore_image(image, "denoise", mask=image)
    assert str(caught.value) in err
    with pytest.raises(dip_compile.DipError, match="channels"):
        dip_compile.restore_image(image, "denoise", channels=0)
