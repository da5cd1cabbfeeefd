"""Blur kernels for deblurring: from a spec (``gaussian:SIGMA``, ``motion:LENGTH,ANGLE``, ``box:SIZE``) or a file.

A kernel is a 2-D float64 array that sums to 1. The operator that uses it (``degradations.Blur``) convolves with it
(the kernel is flipped, as in a true convolution) and pads the image by reflection, so the blurred image keeps the
image's size; ``--from-reference`` makes its test data with that same operator.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import DipError, joined

if TYPE_CHECKING:  # (the CLI reads SPECS for its help without importing torch or numpy: numpy is imported where used)
    import numpy as np
    import torch

MAX_KERNEL_SIDE = 255


class KernelError(DipError):
    """A kernel spec that does not parse, or a kernel that cannot blur (not 2-D, empty, negative sum, too large)."""


def gaussian(sigma: float) -> np.ndarray:
    """An isotropic Gaussian of std ``sigma`` pixels, cut at 3 sigma (side 2 * ceil(3 sigma) + 1)."""
    import numpy as np

    if not (math.isfinite(sigma) and 0 < sigma <= 40):
        raise KernelError(f"gaussian:SIGMA needs 0 < SIGMA <= 40 (pixels), got {sigma:g}")
    half = math.ceil(3 * sigma)
    x = np.arange(-half, half + 1, dtype=np.float64)
    g = np.exp(-(x**2) / (2 * sigma**2))
    return normalise(np.outer(g, g), "gaussian kernel")


def motion(length: float, angle: float) -> np.ndarray:
    """A straight motion of ``length`` pixels at ``angle`` degrees (counter-clockwise from the x axis): the segment,
    sampled every 1/16 pixel and splatted bilinearly, on the smallest odd square that holds it."""
    import numpy as np

    if not (math.isfinite(length) and 1 <= length <= MAX_KERNEL_SIDE - 2):
        raise KernelError(f"motion:LENGTH,ANGLE needs 1 <= LENGTH <= {MAX_KERNEL_SIDE - 2} (pixels), got {length:g}")
    if not math.isfinite(angle):
        raise KernelError(f"motion:LENGTH,ANGLE needs a finite ANGLE (degrees), got {angle}")
    half = math.ceil(length / 2) + 1
    side = 2 * half + 1
    kernel = np.zeros((side, side))
    steps = max(2, int(math.ceil(length * 16)) + 1)
    t = np.linspace(-length / 2, length / 2, steps)
    xs = half + t * math.cos(math.radians(angle))
    ys = half - t * math.sin(math.radians(angle))  # rows grow downwards
    x0, y0 = np.floor(xs).astype(int), np.floor(ys).astype(int)
    fx, fy = xs - x0, ys - y0
    for dy, dx, w in ((0, 0, (1 - fy) * (1 - fx)), (0, 1, (1 - fy) * fx), (1, 0, fy * (1 - fx)), (1, 1, fy * fx)):
        np.add.at(kernel, (y0 + dy, x0 + dx), w)
    return normalise(trim(kernel), "motion kernel")


def box(size: int) -> np.ndarray:
    import numpy as np

    if not 1 <= size <= MAX_KERNEL_SIDE:
        raise KernelError(f"box:SIZE needs a whole SIZE between 1 and {MAX_KERNEL_SIDE}, got {size}")
    return np.full((size, size), 1.0 / size**2)


@dataclass(frozen=True)
class KernelKind:
    """A ``--kernel KIND:ARGS`` family: its arguments' names and the function that makes the kernel from them."""

    args: str  # comma-separated names (LENGTH,ANGLE), one number each
    make: Callable[..., np.ndarray]
    whole: bool = False  # its arguments are whole numbers

    @property
    def arity(self) -> int:
        return len(self.args.split(","))


# The kernel families of --kernel, in the style of network.GENERATORS (a file is the other way to give one).
KINDS: dict[str, KernelKind] = {
    "gaussian": KernelKind("SIGMA", gaussian),
    "motion": KernelKind("LENGTH,ANGLE", motion),
    "box": KernelKind("SIZE", lambda size: box(int(size)), whole=True),
}
SPECS = joined([*(f"{k}:{kind.args}" for k, kind in KINDS.items()), "a kernel file (.png or .npy)"], "or")


def trim(kernel: np.ndarray) -> np.ndarray:
    """Drops all-zero border rows and columns symmetrically, so the kernel stays centred."""
    while kernel.shape[0] > 1 and not kernel[0].any() and not kernel[-1].any():
        kernel = kernel[1:-1]
    while kernel.shape[1] > 1 and not kernel[:, 0].any() and not kernel[:, -1].any():
        kernel = kernel[:, 1:-1]
    return kernel


def normalise(kernel: np.ndarray, what: str) -> np.ndarray:
    """Checks a kernel (2-D, non-empty, finite, positive sum, at most MAX_KERNEL_SIDE a side) and scales it to sum 1."""
    import numpy as np

    if kernel.ndim != 2:
        raise KernelError(f"{what} must be 2-D, got {kernel.ndim} dimension(s) of shape {kernel.shape}")
    if kernel.size == 0:
        raise KernelError(f"{what} is empty")
    if max(kernel.shape) > MAX_KERNEL_SIDE:
        raise KernelError(f"{what} is {kernel.shape[1]}x{kernel.shape[0]}; at most {MAX_KERNEL_SIDE} a side")
    if not np.isfinite(kernel).all():
        raise KernelError(f"{what} holds NaN or infinite values")
    total = float(kernel.sum())
    if not total > 0:
        raise KernelError(f"{what} sums to {total:g}; a blur kernel needs a positive sum (it is scaled to 1)")
    return np.ascontiguousarray(kernel / total, dtype=np.float64)


def load_kernel_file(path: Path) -> np.ndarray:
    """A kernel from a .npy file (no pickles) or an image (its gray levels), normalised to sum 1."""
    import numpy as np

    from .imageio import check_input, load_image

    path = check_input(path, "kernel file")
    if path.suffix.lower() == ".npy":
        try:
            array = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise KernelError(f"kernel file {path} is not a readable .npy array ({exc})") from None
        if array.dtype.kind not in "fiu":
            raise KernelError(f"kernel file {path} holds {array.dtype} values, not numbers")
        return normalise(np.asarray(array, dtype=np.float64), f"kernel file {path}")
    image = load_image(path, "kernel file").numpy().astype(np.float64)
    if image.shape[0] != 1:
        image = image.mean(axis=0, keepdims=True)
    return normalise(image[0], f"kernel file {path}")


def parse_kernel(spec: str) -> np.ndarray:
    """The kernel a ``--kernel`` spec names: ``gaussian:2``, ``motion:15,30``, ``box:5`` or a file path."""
    name, sep, args = spec.partition(":")
    kind = KINDS.get(name)
    if sep and kind is not None:
        try:
            numbers = [float(a) for a in args.split(",")]
        except ValueError:
            raise KernelError(f"--kernel {spec!r} does not parse; use {SPECS}") from None
        if len(numbers) != kind.arity or (kind.whole and not all(n.is_integer() for n in numbers)):
            raise KernelError(f"--kernel {spec!r} does not parse; use {SPECS}")
        return kind.make(*numbers)
    path = Path(spec)
    if path.suffix.lower() in (".npy", ".png", ".tif", ".tiff", ".bmp", ".pgm") or path.exists():
        return load_kernel_file(path)
    raise KernelError(f"--kernel {spec!r} is neither a kernel spec nor a file; use {SPECS}")


def check_fits(kernel: np.ndarray | torch.Tensor, size: tuple[int, int]) -> None:
    """A kernel larger than the image cannot blur it (reflection padding needs the image to be larger)."""
    kh, kw = kernel.shape
    if kh > size[0] or kw > size[1]:
        raise KernelError(f"the {kw}x{kh} blur kernel is larger than the {size[1]}x{size[0]} image")
