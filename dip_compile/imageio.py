"""Reading images and masks, and writing every output atomically (temp file in the same folder, then rename)."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .errors import DipError


def _open(path: str | Path, what: str) -> Image.Image:
    path = Path(path)
    if not path.exists():
        raise DipError(f"{what} not found: {path}")
    if path.is_dir():
        raise DipError(f"{what} is a folder, not an image: {path}")
    try:
        image = Image.open(path)
        image.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DipError(f"cannot read {what} {path}: not a readable image ({exc.__class__.__name__})") from None
    if image.width == 0 or image.height == 0:
        raise DipError(f"{what} {path} is empty")
    return image


def load_image(path: str | Path, what: str = "image") -> torch.Tensor:
    """(C, H, W) float32 in [0, 1]; C is 1 for grayscale images and 3 otherwise (alpha is dropped)."""
    image = _open(path, what)
    if image.mode in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"):
        if image.mode.startswith("I") or image.mode == "F":
            array = np.asarray(image, dtype=np.float32)
            peak = 65535.0 if array.max() > 255 else 255.0
            return torch.from_numpy(np.clip(array / peak, 0, 1)).unsqueeze(0)
        array = np.asarray(image.convert("L"), dtype=np.float32)[None]
    else:
        array = np.asarray(image.convert("RGB"), dtype=np.float32).transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(array) / 255.0)


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


def to_pil(image: torch.Tensor) -> Image.Image:
    """(C, H, W) or (1, C, H, W) in [0, 1] to an 8-bit PIL image (rounded, as every PNG writer here does)."""
    array = to_uint8(image)
    return Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """(H, W, C) uint8 from a (C, H, W) or (1, C, H, W) tensor in [0, 1], with the torch-free side's rounding, so
    a regenerated PNG can match the fit's bit for bit."""
    from .replay.regenerate import to_uint8 as quantize

    return quantize(image.detach().float().cpu().numpy())


def writable(folder: Path) -> bool:
    return os.access(folder, os.W_OK)


def check_output(path: str | Path, force: bool) -> Path:
    """Fails early, before any work, if ``path`` exists (without ``force``) or its folder is not writable."""
    from .replay.regenerate import ReplayError, check_output as check_path

    try:
        path = check_path(path, force)  # the torch-free side's check: one implementation of the rules
    except ReplayError as exc:
        raise DipError(str(exc)) from None
    folder = path.parent if str(path.parent) else Path(".")
    if not writable(folder):
        raise DipError(f"output folder {folder} is not writable")
    return path


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yields a temp path beside ``path``; on success it replaces ``path``, on any failure it is removed."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent if str(path.parent) else ".")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if exc.errno == errno.ENOSPC:
            raise DipError(f"no space left on the device while writing {path}") from None
        raise DipError(f"cannot write {path}: {exc.strerror or exc}") from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    with atomic_path(path) as tmp:
        write(tmp)
    return Path(path)


def save_image(image: torch.Tensor, path: str | Path) -> Path:
    """Writes in the format the extension names (``.jpg``, ``.tif``, ...), PNG when it names none."""
    pil = to_pil(image)
    fmt = Image.registered_extensions().get(Path(path).suffix.lower(), "PNG")
    return atomic_write(path, lambda tmp: pil.save(tmp, format=fmt))


def save_side_by_side(images: list[torch.Tensor], path: str | Path, gap: int = 4) -> Path:
    """Panels left to right (e.g. corrupted | restored | reference), grayscale promoted to RGB."""
    pils = [to_pil(im).convert("RGB") for im in images]
    height = max(p.height for p in pils)
    canvas = Image.new("RGB", (sum(p.width for p in pils) + gap * (len(pils) - 1), height), (255, 255, 255))
    x = 0
    for p in pils:
        canvas.paste(p, (x, 0))
        x += p.width + gap
    return atomic_write(path, lambda tmp: canvas.save(tmp, format="PNG"))
