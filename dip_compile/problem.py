"""A restoration problem: the observation, the operator that maps the restored image onto it, and the sizes.

The hourglass needs sides divisible by 2^depth, and its coarsest level needs at least 2 pixels a side. Rather than
cropping the user's image (as the paper does), the network works on a padded canvas and its output is
centre-cropped to the image size before the operator, so every pixel of the input is restored and the output has
exactly the input's size, however small the image.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .config import FitConfig, NetConfig
from .degradations import make_operator
from .errors import DipError
from .kernels import check_fits
from .losses import MSE, make_loss, make_regularizer
from .tasks import needing, spec


@dataclass
class Problem:
    task: str
    observation: torch.Tensor  # (1, C, h, w): what the loss compares the operator's output with
    operator: nn.Module
    size: tuple[int, int]  # (H, W) of the restored image
    canvas: tuple[int, int]  # (H, W) the network runs at: size rounded up to a multiple of 2^depth
    mask: torch.Tensor | None = None  # (H, W), inpainting only
    reference: torch.Tensor | None = None  # (1, C, H, W) clean image for PSNR, if the user has one
    guide: torch.Tensor | None = None  # (1, C, H, W) the network's input image (flash-no-flash: the flash photo)
    kernel: torch.Tensor | None = None  # (kh, kw) deblurring: the blur kernel, sum 1
    fidelity: nn.Module = field(default_factory=MSE)  # loss(operator(output), observation)
    regularizer: nn.Module | None = None  # a term on the output itself, added to the loss (--tv-weight)
    notes: tuple[str, ...] = ()  # how the inputs were read where the user should know (a conversion): for the report

    @property
    def channels(self) -> int:
        return self.observation.shape[1]

    def loss(self, output: torch.Tensor) -> torch.Tensor:
        """The data fidelity of a network output (restored size), plus its regulariser: the loss the fit minimises."""
        loss = self.fidelity(self.operator(output), self.observation)
        return loss if self.regularizer is None else loss + self.regularizer(output)

    def corrupted_view(self) -> torch.Tensor:
        """The observation shown at the output size (bicubic for super-resolution), for baselines and pictures."""
        if spec(self.task).scales:
            up = F.interpolate(self.observation, size=self.size, mode="bicubic", align_corners=False)
            return up.clamp(0, 1)
        return self.observation

    def to(self, device: torch.device | str) -> Problem:
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device)

        return dataclasses.replace(
            self,
            observation=self.observation.to(device),
            operator=self.operator.to(device),
            mask=move(self.mask),
            reference=move(self.reference),
            guide=move(self.guide),
        )


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def canvas_for(net: NetConfig, size: tuple[int, int]) -> tuple[int, int]:
    """The size the network runs at: each side rounded up to a multiple of 2^depth and at least ``net.min_side``,
    so the coarsest level keeps enough pixels for BatchNorm and reflection padding (a small image is fitted on a
    larger canvas and cropped back)."""
    return tuple(max(round_up(s, net.multiple), net.min_side) for s in size)  # type: ignore[return-value]


def crop_box(canvas: tuple[int, int], size: tuple[int, int]) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the centred crop from the canvas to the image size."""
    return ((canvas[0] - size[0]) // 2, (canvas[1] - size[1]) // 2, size[0], size[1])


class CenterCrop(nn.Module):
    """Crops the network's padded canvas back to the image size (a no-op when they agree)."""

    def __init__(self, canvas: tuple[int, int], size: tuple[int, int]) -> None:
        super().__init__()
        self.box = crop_box(canvas, size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, left, h, w = self.box
        return x[:, :, top : top + h, left : left + w]


def make_problem(
    config: FitConfig,
    image: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    reference: torch.Tensor | None = None,
    guide: torch.Tensor | None = None,
    kernel: torch.Tensor | None = None,
) -> Problem:
    """``image`` is the corrupted observation (C, H, W): masked/noisy image, the low-resolution one, or the no-flash
    photo; ``guide`` the flash photo of flash-no-flash (the network's input)."""
    if image.dim() == 3:
        image = image.unsqueeze(0)
    channels, (h, w) = image.shape[1], image.shape[-2:]
    if channels != config.net.output_channels:
        raise DipError(f"the image has {channels} channel(s) but the network outputs {config.net.output_channels}")
    task = spec(config.task)
    size = (h * config.factor, w * config.factor)  # (the factor is 1 unless the task scales)
    if task.needs("mask"):
        if mask is None:
            raise DipError("inpainting needs a mask (--mask, or --holes/--box/--text to make one)")
        if tuple(mask.shape[-2:]) != (h, w):
            raise DipError(f"mask is {mask.shape[-1]}x{mask.shape[-2]} but the image is {w}x{h}")
        if mask.sum() == 0:
            raise DipError("the mask marks no pixel as known (white = known): nothing to fit")
    elif mask is not None:
        raise DipError(f"a mask only applies to {needing('mask')}, not to {config.task}")
    if reference is not None:
        if reference.dim() == 3:
            reference = reference.unsqueeze(0)
        if tuple(reference.shape[-2:]) != size or reference.shape[1] != channels:
            rh, rw = reference.shape[-2:]
            raise DipError(
                f"reference is {rw}x{rh} with {reference.shape[1]} channel(s); "
                f"expected {size[1]}x{size[0]} with {channels}"
            )
    if config.net.input_kind.guided:
        if guide is None:
            raise DipError("flash-no-flash needs the flash image: --flash FLASH")
        guide = guide.reshape(1, -1, *guide.shape[-2:])
        gh, gw = guide.shape[-2:]
        if (gh, gw) != size:
            raise DipError(f"the flash image is {gw}x{gh} but the no-flash image is {size[1]}x{size[0]}")
        if guide.shape[1] != channels:
            raise DipError(f"the flash image has {guide.shape[1]} channel(s) but the no-flash image has {channels}")
    elif guide is not None:
        raise DipError(f"a flash image only applies to {needing('guide')}, not to {config.task}")
    if task.needs("kernel"):
        if kernel is None:
            raise DipError("deblurring needs the blur kernel: --kernel SPEC")
        check_fits(kernel, size)
    elif kernel is not None:
        raise DipError(f"a blur kernel only applies to {needing('kernel')}, not to {config.task}")
    canvas = canvas_for(config.net, size)
    operator = make_operator(config.task, mask=mask, factor=config.factor, channels=channels, kernel=kernel)
    observation = operator(image) if task.observed else image
    fidelity = make_loss(str(config.loss), config.peak)
    return Problem(
        str(config.task),
        observation.contiguous(),
        operator,
        size,
        canvas,
        mask,
        reference,
        guide,
        kernel,
        fidelity,
        make_regularizer(config.tv_weight),
    )


def crop_to_multiple(image: torch.Tensor, multiple: int, too_small: str | None = None) -> torch.Tensor:
    """The centred crop of ``image`` (..., H, W) to sides divisible by ``multiple``: the notebooks' ``crop_image``
    (--paper-exact) and the high-resolution crop of ``downsample_reference``. ``too_small`` is the error when no
    side is left."""
    h, w = image.shape[-2:]
    size = (h - h % multiple, w - w % multiple)
    if 0 in size:
        raise DipError(too_small or f"the image ({w}x{h}) is smaller than the notebook's crop multiple {multiple}")
    top, left, h2, w2 = crop_box((h, w), size)
    return image[..., top : top + h2, left : left + w2]


def blur_reference(image: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """The blurred observation of a sharp image, with the operator the fit uses (reflection padding)."""
    from .degradations import Blur

    with torch.no_grad():
        return Blur(kernel, image.shape[-3])(image.reshape(1, *image.shape[-3:]))[0].clamp(0, 1)


def add_noise(image: torch.Tensor, sigma: float, seed: int = 0) -> torch.Tensor:
    """The paper's noisy observation: clip(image + N(0, sigma^2)), sigma on the [0, 1] scale."""
    generator = torch.Generator().manual_seed(seed)
    return (image + sigma * torch.randn(image.shape, generator=generator)).clamp(0, 1)


def downsample_reference(image: torch.Tensor, factor: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(low-resolution input, high-resolution reference). The paper's low-resolution input: PIL's Lanczos (antialiased) resize of the high-resolution image by 1/factor.

    The image is first centre-cropped to a multiple of ``factor`` so the high-resolution size is exactly
    factor times the low-resolution one.
    """
    import numpy as np
    from PIL import Image

    from .imageio import to_pil

    c, h, w = image.shape[-3:]
    cropped = crop_to_multiple(image.reshape(c, h, w), factor, f"image {w}x{h} is smaller than the factor {factor}")
    h2, w2 = cropped.shape[-2:]
    small = to_pil(cropped).resize((w2 // factor, h2 // factor), Image.Resampling.LANCZOS)
    array = np.asarray(small, dtype=np.float32) / 255.0
    array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(array)), cropped
