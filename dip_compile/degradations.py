"""Degradation operators: what turns the restored image into the observation the loss compares with.

Each operator maps the network output (1, C, H, W) to observation space; the loss is MSE there.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .tasks import TASKS


class Identity(nn.Module):
    """Denoising and flash-no-flash: the observation is the image itself."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class Mask(nn.Module):
    """Inpainting: only known pixels (mask 1) count. The paper's loss is MSE(out * m, img * m)."""

    mask: torch.Tensor

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask.reshape(1, 1, *mask.shape[-2:]).float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.mask


def lanczos2_kernel(factor: int, phase: float = 0.5) -> np.ndarray:
    """The paper's ``get_kernel(factor, 'lanczos', phase, 4 * factor + 1, support=2)``, normalised to sum 1."""
    support = 2
    width = 4 * factor + 1
    size = width - 1 if phase == 0.5 else width
    center = (width + 1) / 2.0
    idx = np.arange(1, size + 1, dtype=np.float64)
    d = np.abs(idx + (0.5 if phase == 0.5 else 0.0) - center) / factor
    # Lanczos window: sinc(d) * sinc(d / support), evaluated separably as the paper does per pixel.
    with np.errstate(divide="ignore", invalid="ignore"):
        v = support * np.sin(math.pi * d) * np.sin(math.pi * d / support) / (math.pi**2 * d * d)
    v = np.where(d == 0, 1.0, v)
    kernel = np.outer(v, v)
    return kernel / kernel.sum()


class Downsampler(nn.Module):
    """Super-resolution: the paper's Lanczos2 downsampler (phase 0.5, replication padding that keeps size/factor)."""

    def __init__(self, factor: int, channels: int = 3) -> None:
        super().__init__()
        self.factor = factor
        self.weight: torch.Tensor
        kernel = torch.from_numpy(lanczos2_kernel(factor)).float()
        self.register_buffer("weight", kernel.expand(channels, 1, *kernel.shape).contiguous())
        k = kernel.shape[0]
        self.pad = (k - 1) // 2 if k % 2 == 1 else (k - factor) // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, (self.pad,) * 4, mode="replicate")
        return F.conv2d(x, self.weight.to(x.dtype), stride=self.factor, groups=x.shape[1])


class Blur(nn.Module):
    """Deblurring: the convolution with a known kernel (flipped, as a true convolution), the image padded by
    reflection so the blurred image keeps its size. ``--from-reference`` makes test data with this same operator."""

    weight: torch.Tensor

    def __init__(self, kernel: torch.Tensor, channels: int = 3) -> None:
        super().__init__()
        k = torch.as_tensor(kernel, dtype=torch.float32).flip(-2, -1)
        self.register_buffer("weight", k.expand(channels, 1, *k.shape).contiguous())
        kh, kw = k.shape
        self.pad = ((kw - 1) // 2, kw // 2, (kh - 1) // 2, kh // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, self.pad, mode="reflect") if any(self.pad) else x
        return F.conv2d(x, self.weight.to(x.dtype), groups=x.shape[1])


@dataclass(frozen=True)
class OperatorInputs:
    """What an operator factory may use: the image's channels and the task's factor, mask and kernel."""

    channels: int = 3
    factor: int = 1
    mask: torch.Tensor | None = None
    kernel: torch.Tensor | None = None


def _given(value: torch.Tensor | None, message: str) -> torch.Tensor:
    if value is None:
        raise ValueError(message)
    return value


# The operator factories a task names (tasks.TaskSpec.operator), in the style of network.GENERATORS.
OPERATORS: dict[str, Callable[[OperatorInputs], nn.Module]] = {
    "identity": lambda i: Identity(),
    "mask": lambda i: Mask(_given(i.mask, "inpainting needs a mask")),
    "downsample": lambda i: Downsampler(i.factor, i.channels),
    "blur": lambda i: Blur(_given(i.kernel, "deblurring needs a kernel"), i.channels),
}


def make_operator(
    task: str,
    *,
    mask: torch.Tensor | None = None,
    factor: int = 1,
    channels: int = 3,
    kernel: torch.Tensor | None = None,
) -> nn.Module:
    """The operator of ``task``, from the factory its registry entry names."""
    try:
        name = TASKS[str(task)].operator
    except KeyError:
        raise ValueError(f"unknown task {task!r}") from None
    return OPERATORS[name](OperatorInputs(channels, factor, mask, kernel))


def adjoint(operator: nn.Module, y: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A^T y for a linear operator A on (1, C, *size) images: the vector-Jacobian product at zero, so no operator
    needs a hand-written adjoint (the property tests check <A x, y> = <x, A^T y> with it)."""
    x = torch.zeros(*y.shape[:2], *size, dtype=y.dtype, device=y.device)
    return torch.autograd.functional.vjp(operator, x, y)[1]


# --- Test masks (the paper evaluates text overlays, random holes and large regions) -------------------------


def random_holes_mask(height: int, width: int, fraction: float, seed: int = 0) -> torch.Tensor:
    """Drops ``fraction`` of the pixels at random (1 = known)."""
    if not 0 <= fraction < 1:
        raise ValueError(f"hole fraction must be in [0, 1), got {fraction}")
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(height, width, generator=generator) >= fraction).float()


def box_mask(height: int, width: int, fraction: float = 0.25) -> torch.Tensor:
    """A centred square hole covering about ``fraction`` of the image."""
    if not 0 < fraction < 1:
        raise ValueError(f"box fraction must be in (0, 1), got {fraction}")
    mask = torch.ones(height, width)
    bh, bw = round(height * math.sqrt(fraction)), round(width * math.sqrt(fraction))
    top, left = (height - bh) // 2, (width - bw) // 2
    mask[top : top + bh, left : left + bw] = 0
    return mask


def text_mask(height: int, width: int, text: str = "Deep Image Prior", lines: int | None = None) -> torch.Tensor:
    """Text overlaid in rows across the image, as in the paper's text-inpainting figures."""
    from PIL import Image, ImageDraw, ImageFont

    image = Image.new("L", (width, height), 255)
    draw = ImageDraw.Draw(image)
    size = max(8, height // 12)
    try:
        font = ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the bitmap font
        font = ImageFont.load_default()
    rows = lines or max(1, height // (2 * size))
    for r in range(rows):
        y = int((r + 0.25) * height / rows)
        draw.text((width // 20, y), (text + "  ") * 4, fill=0, font=font)
    return torch.from_numpy((np.asarray(image) > 127).astype(np.float32))
