"""Reading images and masks (files, or images a Python caller already holds), and writing every output atomically
(temp file in the same folder, then rename)."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar, Union

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


def _value_range(image: Image.Image, name: str) -> float:
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
        raise DipError(f"{name} holds {bits or 32}-bit integers; convert it to 8 or 16 bits, or to float 0..1")
    return float(2**bits - 1)


def load_image(path: str | Path, what: str = "image") -> torch.Tensor:
    """(C, H, W) float32 in [0, 1]; C is 1 for grayscale images and 3 otherwise (alpha is dropped).

    8-bit images are divided by 255, 16-bit ones by 65535, float images are taken as 0..1 (values outside are
    clipped)."""
    return _pil_pixels(_open(path, what), f"{what} {path}")


def _pil_pixels(image: Image.Image, name: str) -> torch.Tensor:
    """``load_image``'s conversion of a PIL image (``name``: how messages call it)."""
    if image.mode.startswith("I") or image.mode == "F":
        array = np.asarray(image, dtype=np.float64)
        if not np.isfinite(array).all():
            raise DipError(f"{name} contains NaN or infinite values")
        scaled = np.clip(array / _value_range(image, name), 0, 1).astype(np.float32)
        return torch.from_numpy(np.ascontiguousarray(scaled)).unsqueeze(0)
    if image.mode in ("1", "L", "LA", "La"):
        pixels = np.asarray(image.convert("L"), dtype=np.float32)[None]
    else:
        pixels = np.asarray(image.convert("RGB"), dtype=np.float32).transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(pixels) / 255.0)


def load_mask(path: str | Path, size: tuple[int, int]) -> torch.Tensor:
    """(H, W) float mask, 1 = known pixel (white in the file). ``size`` is the image's (H, W)."""
    image = _open(path, "mask")
    known = torch.from_numpy(np.asarray(image.convert("L"), dtype=np.float32) > 127)
    return _checked_mask(known, f"mask {path}", size)


def _checked_mask(known: torch.Tensor, name: str, size: tuple[int, int]) -> torch.Tensor:
    if tuple(known.shape) != tuple(size):
        raise DipError(f"{name} is {known.shape[1]}x{known.shape[0]} but the image is {size[1]}x{size[0]}")
    if not known.any():
        raise DipError(f"{name} marks no pixel as known (white = known): nothing to fit")
    return known.float()


# An input image: a file, or an image a Python caller holds, already read into (C, H, W) float32 in [0, 1]
ImageSource = Union[Path, torch.Tensor]
IMAGE_KINDS = "a file path, a PIL image, a numpy array (H, W[, C]) or a torch tensor ([1, ]C, H, W)"


def image_source(value: object, what: str = "image") -> ImageSource:
    """What the Python API takes as an image: a file path (read when the fit loads its problem, as ``dipc fit``
    does), or an image in memory read here with its library's convention: a PIL image as ``load_image`` reads the
    file; a numpy array (H, W) or (H, W, C), channels last, C 1, 3 or 4 (alpha dropped); a torch tensor (H, W),
    (C, H, W) or (1, C, H, W), channels first, C 1 or 3; arrays and tensors of uint8 (0-255), bool or float in
    [0, 1]. Anything else is a one-line DipError."""
    if isinstance(value, (str, os.PathLike)):
        return Path(value)
    if isinstance(value, Image.Image):
        if value.width == 0 or value.height == 0:
            raise DipError(f"{what} is empty (a {value.width}x{value.height} PIL image)")
        return _pil_pixels(value, what)
    if isinstance(value, np.ndarray):
        if value.dtype.kind == "f":
            value = value.astype(np.float64)  # (float16 to float128: torch takes some of them only)
        elif value.dtype not in (np.uint8, np.bool_):
            raise DipError(_dtype_refused(what, str(value.dtype)))
        if value.ndim == 3 and value.shape[2] in (1, 3, 4):
            return _scaled(torch.from_numpy(np.ascontiguousarray(value[..., :3].transpose(2, 0, 1))), what)
        if value.ndim == 2:
            return _scaled(torch.from_numpy(np.ascontiguousarray(value))[None], what)
        raise DipError(
            f"{what} as a numpy array is (H, W) or (H, W, C) with C 1, 3 or 4 (channels last), got shape {value.shape}"
        )
    if isinstance(value, torch.Tensor):
        tensor = value.detach().to("cpu", copy=True)  # the fit's own copy: the caller's tensor stays as it was
        if tensor.ndim == 4 and tensor.shape[0] == 1:
            tensor = tensor[0]
        if tensor.ndim == 2:
            tensor = tensor[None]
        if tensor.ndim != 3 or tensor.shape[0] not in (1, 3):
            raise DipError(
                f"{what} as a tensor is (H, W), (C, H, W) or (1, C, H, W) with C 1 or 3 (channels first), "
                f"got shape {tuple(value.shape)}"
            )
        return _scaled(tensor, what)
    raise DipError(f"{what} must be {IMAGE_KINDS}, got {type(value).__name__}")


def _scaled(pixels: torch.Tensor, what: str) -> torch.Tensor:
    """(C, H, W) of uint8, bool or float in [0, 1] as float32 in [0, 1]; other types or values are refused."""
    if pixels.shape[-1] == 0 or pixels.shape[-2] == 0:
        raise DipError(f"{what} is empty (shape {tuple(pixels.shape)})")
    if pixels.dtype == torch.uint8:
        return pixels.float() / 255.0
    if pixels.dtype == torch.bool:
        return pixels.float()
    if not pixels.is_floating_point():
        raise DipError(_dtype_refused(what, str(pixels.dtype).removeprefix("torch.")))
    pixels = pixels.float()
    if not torch.isfinite(pixels).all():
        raise DipError(f"{what} contains NaN or infinite values")
    low, high = pixels.min().item(), pixels.max().item()
    if low < 0 or high > 1:
        raise DipError(f"{what} holds floats from {low:.4g} to {high:.4g}: float images are in [0, 1]")
    return pixels.contiguous()


def _dtype_refused(what: str, dtype: str) -> str:
    return f"{what} holds {dtype} values: give uint8 (0-255), bool or float in [0, 1]"


def read_image(source: ImageSource, what: str = "image") -> torch.Tensor:
    """An input image, from its file or as the caller gave it: (C, H, W) float32 in [0, 1]."""
    return source if isinstance(source, torch.Tensor) else load_image(source, what)


def read_mask(source: ImageSource, size: tuple[int, int]) -> torch.Tensor:
    """The mask, from its file or as the caller gave it (a colour one by its luma): 1 = known (white, above half)."""
    if isinstance(source, torch.Tensor):
        gray = to_grayscale(source) if source.shape[0] == 3 else source
        return _checked_mask(gray[0] > 0.5, "mask", size)
    return load_mask(source, size)


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
