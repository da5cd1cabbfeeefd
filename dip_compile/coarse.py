"""Coarse to fine (``--coarse-share S``): the first share S of a fit's iterations at half resolution, the rest at full
size from the same weights.

The hourglass is fully convolutional, so the same network runs on half the canvas. There it fits the problem
brought to half size: the observation averaged over 2x2 pixels and the task's operator made for the half-size image
(``HALVES``, one entry per operator kind: denoising's identity as it is, inpainting's mask known where at least half
of a 2x2 block is, super-resolution's downsampler of half the factor on the same low-resolution image, deblurring's
kernel at half its size). A half-size step costs about a quarter of a full one. At the switch the fit goes on at
full size with the same weights and Adam state, on the coarse noise input upsampled (nearest, so each value keeps
its statistics); that upsampled noise is the fit's fixed input from the start, so the checkpoint, the export and the
replay hold the full-size input like any fit's. A meshgrid or guide-image input is rebuilt at each size instead.

What watches the returned image starts at the switch: the EMA, auto-stop and backtracking's reference PSNR (the
coarse phase's would compare other pictures). The image a fit returns during the coarse phase (Ctrl-C, snapshots)
is the network on the full-size input, which is what a checkpoint of that moment exports; the history's PSNR there is
that of the half-size output upsampled.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from .config import FitConfig, Generator, NetConfig
from .degradations import Blur, Downsampler, Identity, Mask
from .errors import DipError
from .network import make_input
from .problem import CenterCrop, Problem, canvas_for
from .tasks import spec

KNOWN_SHARE = 0.5  # a half-size pixel of an inpainting mask is known where at least this share of its 2x2 block is


def half_size(size: tuple[int, int]) -> tuple[int, int]:
    """The image size of the coarse phase: each side halved, rounded up."""
    return (size[0] + 1) // 2, (size[1] + 1) // 2


def shrink(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(…, H, W) to ``size`` by averaging (a 2x2 mean where the size halves exactly)."""
    shape = x.shape
    flat = x.reshape(-1, 1, *shape[-2:]).float()
    return F.interpolate(flat, size=size, mode="area").reshape(*shape[:-2], *size).to(x.dtype)


def coarse_iterations(config: FitConfig) -> int:
    """How many iterations run at half size: the share of ``--iterations``, rounded."""
    return round(config.coarse_share * config.iterations)


def check(config: FitConfig, size: tuple[int, int]) -> None:
    """Refuses, in one line, a coarse phase the network cannot run on: the half-size image must still fill the
    network's smallest canvas (otherwise it is padded to that canvas and the coarse phase saves nothing)."""
    if not config.coarse_share:
        return
    if config.net.generator == Generator.drp:  # its input is what it fits: the switch would replace it unfitted
        raise DipError("--coarse-share does not apply to --generator drp (its fitted input cannot be upsampled)")
    net, half = config.net, half_size(size)
    if min(half) < net.min_side:
        raise DipError(
            f"--coarse-share needs an image of at least {2 * net.min_side} px a side for this {net.depth}-level "
            f"network (half of it must fill its {net.min_side} px canvas), got {size[1]}x{size[0]}; use "
            f"--coarse-share 0 or a network with fewer levels (--depth)"
        )


@dataclass(frozen=True)
class Halved:
    """A problem's observation and operator at half size (inpainting: also its mask)."""

    observation: torch.Tensor
    operator: nn.Module
    mask: torch.Tensor | None = None
    kernel: torch.Tensor | None = None


def _identity(problem: Problem, half: tuple[int, int]) -> Halved:
    return Halved(shrink(problem.observation, half), Identity())


def _mask(problem: Problem, half: tuple[int, int]) -> Halved:
    assert problem.mask is not None
    known = shrink(problem.mask.float(), half)
    mask = (known >= KNOWN_SHARE).float()
    # the mean of the known pixels of each block (the observation is 0 in the holes)
    mean = shrink(problem.observation * problem.mask.float(), half) / known.clamp_min(1e-12)
    return Halved(mean * mask, Mask(mask), mask=mask)


def _downsample(problem: Problem, half: tuple[int, int]) -> Halved:
    factor = problem.operator.factor if isinstance(problem.operator, Downsampler) else 1
    operator = Downsampler(factor // 2, problem.channels) if factor > 2 else Identity()
    return Halved(problem.observation, operator)  # the same low-resolution image, half the factor


def _blur(problem: Problem, half: tuple[int, int]) -> Halved:
    assert problem.kernel is not None
    kh, kw = problem.kernel.shape
    kernel = shrink(problem.kernel.float(), ((kh + 1) // 2, (kw + 1) // 2)).clamp_min(0)
    kernel = kernel / kernel.sum()
    return Halved(shrink(problem.observation, half), Blur(kernel, problem.channels), kernel=kernel)


# How each kind of operator (tasks.TaskSpec.operator, degradations.OPERATORS) is brought to half size.
HALVES: dict[str, Callable[[Problem, tuple[int, int]], Halved]] = {
    "identity": _identity,
    "mask": _mask,
    "downsample": _downsample,
    "blur": _blur,
}


def half_problem(config: FitConfig, problem: Problem) -> Problem:
    """The coarse phase's problem: ``problem`` at half size, on the canvas the network needs for it."""
    half = half_size(problem.size)
    halved = HALVES[spec(problem.task).operator](problem, half)
    guide = None if problem.guide is None else shrink(problem.guide, half)
    device = problem.observation.device
    return replace(
        problem,
        observation=halved.observation.contiguous(),
        operator=halved.operator.to(device),
        size=half,
        canvas=canvas_for(config.net, half),
        mask=halved.mask,
        reference=None,
        guide=guide,
        kernel=halved.kernel,
    )


def upsampled_input(net: NetConfig, coarse_input: torch.Tensor, canvas: tuple[int, int]) -> torch.Tensor:
    """The full-size input of a noise input: the coarse one upsampled x2 (nearest), centre-cropped to ``canvas``'s
    input shape (the coarse canvas, rounded up, may give a little more)."""
    big = F.interpolate(coarse_input, scale_factor=2, mode="nearest")
    height, width = net.input_shape(canvas)[-2:]
    top, left = (big.shape[-2] - height) // 2, (big.shape[-1] - width) // 2
    return big[..., top : top + height, left : left + width].contiguous()


@dataclass
class CoarsePhase:
    """What the fit runs on before iteration ``until``: the half-size problem, its crop and its input."""

    until: int
    problem: Problem
    crop: CenterCrop
    net_input: torch.Tensor

    def active(self, iteration: int) -> bool:
        return iteration < self.until

    def describe(self) -> dict[str, object]:
        """What a report says of it."""
        return {"iterations": self.until, "size": list(self.problem.size), "canvas": list(self.problem.canvas)}


def to_full(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A half-size image at ``size`` (bilinear), for the history's PSNR against the full-size reference."""
    return F.interpolate(image, size=size, mode="bilinear", align_corners=False)


def coarse_phase(config: FitConfig, problem: Problem, device: torch.device) -> CoarsePhase | None:
    """The coarse phase of a fit (None without ``--coarse-share``), its input made from the fit's seed."""
    if not config.coarse_share:
        return None
    check(config, problem.size)
    coarse = half_problem(config, problem)
    net_input = make_input(config.net, *coarse.canvas, seed=config.seed, guide=coarse.guide).to(device)
    return CoarsePhase(coarse_iterations(config), coarse, CenterCrop(coarse.canvas, coarse.size), net_input)


def full_input(
    config: FitConfig, phase: CoarsePhase | None, made: torch.Tensor, canvas: tuple[int, int]
) -> torch.Tensor:
    """The fit's full-size fixed input on ``canvas``: ``made`` (the usual one), or with a coarse phase on a noise
    input, that phase's noise upsampled, so the full-size phase starts on the input the coarse weights know."""
    if phase is None or not config.net.input_kind.drawn:
        return made
    return upsampled_input(config.net, phase.net_input, canvas)
