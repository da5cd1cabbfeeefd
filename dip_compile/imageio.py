"""Reading images and masks, and writing every output atomically (temp file in the same folder, then rename)."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .errors import DipError

T = TypeVar("T")


def _replay_errors(call: Callable[[], T]) -> T:
    """Runs a helper of the torch-free side, turning its errors into DipError (one implementation of the rules)."""
    from .replay.regenerate import ReplayError

    try:
        return call()
    except ReplayError as exc:
        raise DipError(str(exc)) from None


def check_input(path: str | Path, what: str) -> Path:
    """An existing, readable regular file (a FIFO given as the image would block forever)."""
    from .replay.regenerate import check_input as check

    return _replay_errors(lambda: check(path, what))


def _open(path: str | Path, what: str) -> Image.Image:
    path = check_input(path, what)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(path)
            image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise DipError(f"{what} {path} is too large: more than {Image.MAX_IMAGE_PIXELS:,} pixels") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        raise DipError(f"cannot read {what} {path}: not a readable image ({exc.__class__.__name__})") from None
    except MemoryError:
        raise DipError(f"{what} {path} is too large to load into memory") from None
    if image.width == 0 or image.height == 0:
        raise DipError(f"{what} {path} is empty")
    return image


def _value_range(image: Image.Image, path: Path, what: str) -> float:
    """The full-scale value of a single-channel integer or float image: by its mode and bit depth, never by the
    values it happens to hold (a dark 16-bit photo stays dark; a float image is taken as 0..1)."""
    if image.mode == "F":
        return 1.0
    if image.mode.startswith("I;16"):
        return 65535.0
    bits = None
    if image.format == "PNG":
        bits = 16  # Pillow reads 16-bit PNGs as mode I
    tags = getattr(image, "tag_v2", None)
    if tags is not None and 258 in tags:  # TIFF BitsPerSample
        value = tags[258]
        bits = int(value[0] if isinstance(value, tuple) else value)
    if bits is None or bits > 16:
        raise DipError(f"{what} {path} holds {bits or 32}-bit integers; convert it to 8 or 16 bits, or to float 0..1")
    return float(2**bits - 1)


def load_image(path: str | Path, what: str = "image") -> torch.Tensor:
    """(C, H, W) float32 in [0, 1]; C is 1 for grayscale images and 3 otherwise (alpha is dropped).

    8-bit images are divided by 255, 16-bit ones by 65535, float images are taken as 0..1 (values outside are
    clipped)."""
    image = _open(path, what)
    if image.mode.startswith("I") or image.mode == "F":
        array = np.asarray(image, dtype=np.float64)
        if not np.isfinite(array).all():
            raise DipError(f"{what} {path} contains NaN or infinite values")
        scaled = np.clip(array / _value_range(image, Path(path), what), 0, 1).astype(np.float32)
        return torch.from_numpy(np.ascontiguousarray(scaled)).unsqueeze(0)
    if image.mode in ("1", "L", "LA", "La"):
        pixels = np.asarray(image.convert("L"), dtype=np.float32)[None]
    else:
        pixels = np.asarray(image.convert("RGB"), dtype=np.float32).transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(pixels) / 255.0)


def load_mask(path: str | Path, size: tuple[int, int]) -> torch.Tensor:
    """(H, W) float mask, 1 = known pixel (white in the file). ``size`` is the image's (H, W)."""
    image = _open(path, "mask")
    if (image.height, image.width) != tuple(size):
        raise DipError(f"mask {path} is {image.width}x{image.height} but the image is {size[1]}x{size[0]}")
    array = np.asarray(image.convert("L"), dtype=np.float32)
    mask = torch.from_numpy((array > 127).astype(np.float32))
    if mask.sum() == 0:
        raise DipError(f"mask {path} marks no pixel as known (white = known): nothing to fit")
    return mask


def to_grayscale(image: torch.Tensor) -> torch.Tensor:
    """(3, H, W) RGB to (1, H, W) luma with ITU-R 601 weights, the ones Pillow's ``convert("L")`` uses."""
    weights = torch.tensor([0.299, 0.587, 0.114], dtype=image.dtype).view(3, 1, 1)
    return (image * weights).sum(dim=0, keepdim=True)


def to_pil(image: torch.Tensor) -> Image.Image:
    """(C, H, W) or (1, C, H, W) in [0, 1] to an 8-bit PIL image (rounded, as every PNG writer here does)."""
    array = to_uint8(image)
    return Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """(H, W, C) uint8 from a (C, H, W) or (1, C, H, W) tensor in [0, 1], with the torch-free side's rounding, so
    a regenerated PNG can match the fit's bit for bit."""
    from .replay.regenerate import to_uint8 as quantize

    return quantize(image.detach().float().cpu().numpy())


def output_path(path: str | Path) -> Path:
    """The user's spelling of an output as a Path; a trailing separator (a folder) or a name too long is one line."""
    from .replay.regenerate import output_path as spelled

    return _replay_errors(lambda: spelled(path))


def check_output(path: str | Path, force: bool) -> Path:
    """Fails early, before any work, if ``path`` exists (without ``force``) or its folder is not writable."""
    from .replay.regenerate import check_output as check

    return _replay_errors(lambda: check(path, force))


def atomic_write(path: str | Path, write: Callable[[Path], object], *, overwrite: bool = True) -> Path:
    """Writes through a temp file beside ``path``, renamed into place once complete (see
    ``replay.regenerate.write_atomic``: mode as ``open()`` gives it, exclusive without ``overwrite``)."""
    from .replay.regenerate import write_atomic

    return _replay_errors(lambda: write_atomic(path, write, overwrite=overwrite))


def save_image(image: torch.Tensor, path: str | Path, *, overwrite: bool = True) -> Path:
    """Writes in the format the extension names (``.jpg``, ``.tif``, ...), PNG when it names none."""
    pil = to_pil(image)
    fmt = Image.registered_extensions().get(Path(path).suffix.lower(), "PNG")
    return atomic_write(path, lambda tmp: pil.save(tmp, format=fmt), overwrite=overwrite)


def save_side_by_side(images: list[torch.Tensor], path: str | Path, gap: int = 4, *, overwrite: bool = True) -> Path:
    """Panels left to right (e.g. corrupted | restored | reference), grayscale promoted to RGB."""
    pils = [to_pil(im).convert("RGB") for im in images]
    height = max(p.height for p in pils)
    canvas = Image.new("RGB", (sum(p.width for p in pils) + gap * (len(pils) - 1), height), (255, 255, 255))
    x = 0
    for p in pils:
        canvas.paste(p, (x, 0))
        x += p.width + gap
    return atomic_write(path, lambda tmp: canvas.save(tmp, format="PNG"), overwrite=overwrite)
