"""The Deep Random Projector (Li, Wang, Zhuang & Sun, CVPR 2023, "Deep Random Projector: Accelerated Deep Image
Prior"; code: github.com/sun-umn/Deep-Random-Projector) as ``dipc fit --generator drp``.

DRP keeps the convolution weights at their random initialisation and fits the network's input (the seed) and the
BatchNorm weights instead, through a one-level hourglass, with the root of mse plus a total-variation term as the
loss and a learning rate 5-50 times DIP's. The network is ``network.RandomProjector``, the fitted input
``Fitter.optimised``, the loss ``losses.RMSE`` and ``losses.TotalVariation``; this module holds the paper's settings
per task, read from its code (``Main_Start.py`` and ``train_*.py`` of each task's folder), and turns a task's
preset into them. What stays the preset's: auto-stop, backtracking (which restores the input too), the seed and
everything about the problem, so a DRP fit checkpoints, resumes, auto-stops, exports and replays as any fit does.

Where this differs from the paper's code (each kept small on purpose):

* its seed is N(0, 1) / 10; ours is the project's U[0, 1) noise scaled to the same standard deviation (0.1), since a
  BatchNorm standardises it first and Adam's steps (of the learning rate, whatever the gradient's scale) then move
  it as much relative to its spread;
* its inpainting code adds N(0, 1e-3) to the frozen weights during each step (and puts them back after); not done;
* it runs every task for 5000 iterations and reports the best; here denoising auto-stops, as the task does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .config import FitConfig, Generator, InputKind, Loss, NetConfig, Upsample
from .errors import DipError, joined

SEED_STD = 0.1  # the standard deviation of the paper's seed, N(0, 1) * 1e-1


class DrpError(DipError):
    """--generator drp with a task it has no settings for, or with an option that replaces its network."""


@dataclass(frozen=True)
class Projector:
    """One task's DRP settings from the paper's code: a one-level "skip" hourglass of ``channels`` (down and up;
    ``skip`` channels on its skip), fed a fitted seed of ``input_depth`` channels, fitted by Adam at ``lr`` on
    rmse + ``tv_weight`` * TV for ``iterations`` (its ``max_epoch`` + 1, as the notebook presets count)."""

    channels: int
    skip: int
    input_kind: InputKind
    input_depth: int
    lr: float
    tv_weight: float
    iterations: int
    source: str  # the folder of the paper's code the values come from

    def net(self, output_channels: int) -> NetConfig:
        """The network: the paper's level (stride-2 down, bilinear up, 3x3 convs, 1x1 skip and 1x1 up), one deep."""
        scale = SEED_STD * math.sqrt(12)  # U[0, 1) * scale has the standard deviation of N(0, 1) * SEED_STD
        return NetConfig(
            generator=Generator.drp,
            input_kind=self.input_kind,
            input_depth=self.input_depth,
            input_scale=scale,
            output_channels=output_channels,
            channels_down=(self.channels,),
            channels_up=(self.channels,),
            channels_skip=(self.skip,),
            upsample=(Upsample.bilinear,),
        )


PROJECTORS: dict[str, Projector] = {
    "denoise": Projector(64, 4, InputKind.noise, 3, 0.1, 0.45, 5001, "1_Denoising"),
    "super-resolve": Projector(128, 4, InputKind.noise, 1, 0.5, 0.75, 5001, "2_Super_Resolution"),
    "inpaint": Projector(128, 128, InputKind.meshgrid, 2, 0.05, 0.01, 5001, "3_Inpainting"),
}


def projected(config: FitConfig) -> FitConfig:
    """``config`` (a task's preset) as ``--generator drp`` runs it: the task's ``Projector`` network, learning
    rate, loss, total-variation weight and count, no input perturbation (the input is what is fitted) and no EMA
    (the paper's code keeps none: its fits peak within a few hundred iterations, where an EMA of 0.99 still holds
    the first outputs). Refuses a task the paper's code does not cover, and ``--fast`` / ``--paper-exact``, which
    would change another network."""
    record = PROJECTORS.get(str(config.task))
    if record is None:
        covered = joined(tuple(str(task) for task in PROJECTORS))
        raise DrpError(f"--generator drp has the paper's settings for {covered}, not for {config.task}")
    for flag, given in (("--fast", config.fast), ("--paper-exact", config.paper_exact)):
        if given:
            raise DrpError(f"{flag} changes the DIP preset's network; --generator drp brings its own: give one of them")
    return config.replace(
        net=record.net(config.net.output_channels),
        lr=record.lr,
        tv_weight=record.tv_weight,
        iterations=record.iterations,
        loss=Loss.rmse,
        reg_noise_std=0.0,
        ema=None,
    )


def chosen(config: FitConfig, generator: str | None) -> FitConfig:
    """The preset ``config`` made DRP when ``--generator drp`` asks for it (and the preset is not DRP already)."""
    if generator == Generator.drp and config.net.generator != Generator.drp:
        return projected(config)
    return config
