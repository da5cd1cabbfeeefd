"""The hourglass generators of the Deep Image Prior and their fixed input.

Two structures share the building blocks:

* ``paper``: the original "skip" network. Per level the input ``x`` feeds a skip branch (1x1 conv, BN, act)
  and a deeper branch (stride-2 conv, BN, act, conv, BN, act, [deeper levels], upsample x2); both are
  concatenated, then BN, conv, BN, act, [1x1 conv, BN, act].
* ``seed``: the independent reproduction this project started from. The skip is taken after each down block
  and the up block ends in the upsampling: BN, conv, BN, act, 1x1 conv, BN, act, upsample.

BatchNorm: DIP never calls ``eval()``, so every BN normalises with the statistics of the one input. At batch 1
that is InstanceNorm2d with affine weights. We build BN with ``track_running_stats=False``: it then uses the
batch statistics in train and eval mode alike, and there are no buffers that a step mutates (which keeps the
step compilable and CUDA-graph safe, and makes ``eval()`` harmless).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from .config import NetConfig


def conv(cfg: NetConfig, c_in: int, c_out: int, kernel: int, stride: int = 1) -> nn.Conv2d:
    mode: Literal["reflect", "zeros"] = "reflect" if cfg.padding == "reflection" else "zeros"
    return nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=(kernel - 1) // 2, padding_mode=mode)


def norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, track_running_stats=False)


def act() -> nn.LeakyReLU:
    return nn.LeakyReLU(0.2)


def conv_bn_act(cfg: NetConfig, c_in: int, c_out: int, kernel: int, stride: int = 1) -> list[nn.Module]:
    return [conv(cfg, c_in, c_out, kernel, stride), norm(c_out), act()]


def upsample(cfg: NetConfig) -> nn.Upsample:
    align = None if cfg.upsample == "nearest" else False
    return nn.Upsample(scale_factor=2, mode=cfg.upsample, align_corners=align)


class PaperLevel(nn.Module):
    """One level of the paper's skip network; ``deeper`` is the next level (None at the coarsest)."""

    def __init__(self, cfg: NetConfig, level: int, c_in: int, deeper: nn.Module | None) -> None:
        super().__init__()
        down, up, skip = cfg.channels_down[level], cfg.channels_up[level], cfg.channels_skip[level]
        self.skip = nn.Sequential(*conv_bn_act(cfg, c_in, skip, cfg.kernel_skip)) if skip else None
        self.down = nn.Sequential(
            *conv_bn_act(cfg, c_in, down, cfg.kernel_down, stride=2), *conv_bn_act(cfg, down, down, cfg.kernel_down)
        )
        self.deeper = deeper
        self.upsample = upsample(cfg)
        merged = skip + (cfg.channels_up[level + 1] if deeper is not None else down)
        self.merge_norm = norm(merged)
        layers = conv_bn_act(cfg, merged, up, cfg.kernel_up)
        if cfg.need_1x1_up:
            layers += conv_bn_act(cfg, up, up, 1)
        self.up = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.down(x)
        if self.deeper is not None:
            y = self.deeper(y)
        y = self.upsample(y)
        if self.skip is not None:
            y = torch.cat([self.skip(x), y], dim=1)
        return self.up(self.merge_norm(y))


class SeedLevel(nn.Module):
    """One level of the seed reproduction: skip after the down block, upsampling at the end of the up block."""

    def __init__(self, cfg: NetConfig, level: int, c_in: int, deeper: nn.Module | None) -> None:
        super().__init__()
        down, up, skip = cfg.channels_down[level], cfg.channels_up[level], cfg.channels_skip[level]
        self.down = nn.Sequential(
            *conv_bn_act(cfg, c_in, down, cfg.kernel_down, stride=2), *conv_bn_act(cfg, down, down, cfg.kernel_down)
        )
        self.skip = nn.Sequential(*conv_bn_act(cfg, down, skip, cfg.kernel_skip)) if skip else None
        self.deeper = deeper
        merged = skip + (cfg.channels_up[level + 1] if deeper is not None else down)
        layers: list[nn.Module] = [norm(merged), *conv_bn_act(cfg, merged, up, cfg.kernel_up)]
        if cfg.need_1x1_up:
            layers += conv_bn_act(cfg, up, up, 1)
        self.up = nn.Sequential(*layers, upsample(cfg))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = self.down(x)
        y = self.deeper(d) if self.deeper is not None else d
        if self.skip is not None:
            y = torch.cat([self.skip(d), y], dim=1)
        return self.up(y)


class Hourglass(nn.Module):
    """Maps the fixed input (B, input_depth, H, W) to an image (B, C, H, W) in (0, 1); H, W divisible by 2^depth."""

    def __init__(self, cfg: NetConfig) -> None:
        super().__init__()
        self.config = cfg
        level_cls = PaperLevel if cfg.structure == "paper" else SeedLevel
        deeper: nn.Module | None = None
        for level in reversed(range(cfg.depth)):
            c_in = cfg.input_depth if level == 0 else cfg.channels_down[level - 1]
            deeper = level_cls(cfg, level, c_in, deeper)
        assert deeper is not None
        self.body = deeper
        self.head = nn.Sequential(nn.Conv2d(cfg.channels_up[0], cfg.output_channels, 1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def build_network(cfg: NetConfig) -> Hourglass:
    if cfg.structure not in ("paper", "seed"):
        raise ValueError(f"unknown network structure {cfg.structure!r}; choose paper or seed")
    return Hourglass(cfg)


def fit_bytes(cfg: NetConfig, canvas: tuple[int, int], precision_bytes: int = 4) -> int:
    """About how much memory one fitting step needs at this canvas: the activations the backward pass keeps
    (per level: skip, down, upsampled, merged and up tensors) twice over for their gradients, plus the weights and
    Adam state. A pre-flight estimate, to refuse an image that cannot fit before allocating anything."""
    area = canvas[0] * canvas[1]
    floats = 0.0
    for level in range(cfg.depth):
        here, below = area / 4**level, area / 4 ** (level + 1)
        down, up, skip = cfg.channels_down[level], cfg.channels_up[level], cfg.channels_skip[level]
        deeper = cfg.channels_up[level + 1] if level + 1 < cfg.depth else down
        merged = skip + deeper
        floats += here * (3 * skip + deeper + 2 * merged + (6 if cfg.need_1x1_up else 3) * up) + below * 6 * down
    floats += area * (cfg.input_depth + 2 * cfg.output_channels)
    with torch.device("meta"):  # parameter count only: no memory, no initialisation
        weights = 4 * 4 * count_parameters(build_network(cfg))
    return int(2 * floats * precision_bytes + weights)


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def make_input(cfg: NetConfig, height: int, width: int, seed: int) -> torch.Tensor:
    """The fixed network input: U[0,1) * input_scale noise (the paper's default) or a 2-channel meshgrid."""
    if cfg.input_kind == "meshgrid":
        if cfg.input_depth != 2:
            raise ValueError("a meshgrid input has 2 channels: set input_depth to 2")
        ys = torch.linspace(0, 1, height).view(height, 1).expand(height, width)
        xs = torch.linspace(0, 1, width).view(1, width).expand(height, width)
        return torch.stack([xs, ys]).unsqueeze(0).contiguous()
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(1, cfg.input_depth, height, width, generator=generator) * cfg.input_scale
