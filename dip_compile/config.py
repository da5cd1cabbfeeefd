"""Frozen configuration: the network, the task and the fit, with named presets from the paper's notebooks."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

Structure = Literal["paper", "seed"]
Upsample = Literal["nearest", "bilinear", "bicubic"]
Padding = Literal["reflection", "zeros"]
InputKind = Literal["noise", "meshgrid"]
TaskName = Literal["inpaint", "denoise", "super-resolve"]
StopRule = Literal["fixed", "auto"]

TASKS: tuple[str, ...] = ("inpaint", "denoise", "super-resolve")


@dataclass(frozen=True)
class NetConfig:
    """The hourglass. Lists run from the finest level (0) to the coarsest; a skip of 0 drops that skip."""

    structure: Structure = "paper"
    input_depth: int = 32
    output_channels: int = 3
    channels_down: tuple[int, ...] = (128, 128, 128, 128, 128)
    channels_up: tuple[int, ...] = (128, 128, 128, 128, 128)
    channels_skip: tuple[int, ...] = (4, 4, 4, 4, 4)
    kernel_down: int = 3
    kernel_up: int = 3
    kernel_skip: int = 1
    upsample: Upsample = "bilinear"
    padding: Padding = "reflection"
    need_1x1_up: bool = True
    input_kind: InputKind = "noise"
    input_scale: float = 0.1  # the paper's noise is U[0, 1) * 1/10

    def __post_init__(self) -> None:
        n = len(self.channels_down)
        if n == 0 or len(self.channels_up) != n or len(self.channels_skip) != n:
            raise ValueError("channels_down, channels_up and channels_skip must be non-empty and of equal length")
        if any(c <= 0 for c in self.channels_down + self.channels_up) or any(c < 0 for c in self.channels_skip):
            raise ValueError("channel counts must be positive (skip channels may be 0)")
        if self.input_depth <= 0 or self.output_channels not in (1, 3):
            raise ValueError("input_depth must be positive and output_channels 1 or 3")
        for k in (self.kernel_down, self.kernel_up, self.kernel_skip):
            if k <= 0 or k % 2 == 0:
                raise ValueError("kernel sizes must be odd and positive")

    @property
    def depth(self) -> int:
        return len(self.channels_down)

    @property
    def multiple(self) -> int:
        """Spatial sizes the hourglass takes without cropping must be divisible by this."""
        return 2**self.depth


@dataclass(frozen=True)
class FitConfig:
    """Everything that shapes one fit apart from the data."""

    task: TaskName = "denoise"
    net: NetConfig = field(default_factory=NetConfig)
    iterations: int = 3000
    lr: float = 0.01
    reg_noise_std: float = 1.0 / 30.0
    ema: float | None = 0.99  # the paper's output smoothing (exp_weight); None disables it
    backtrack_db: float | None = 5.0  # restore the last weights when PSNR to the target drops by more than this
    factor: int = 1  # super-resolution factor
    seed: int = 0
    stop: StopRule = "fixed"
    stop_window: int = 100  # ES-WMV window W
    stop_patience: int = 1000  # ES-WMV patience P
    stop_variant: Literal["wmv", "emv"] = "wmv"
    stop_alpha: float = 0.1  # ES-EMV smoothing
    backend: str = "eager"
    precision: str = "fp32"
    device: str = "cpu"
    log_every: int = 10  # host reads of loss/PSNR happen only this often
    keep_known: bool = False  # inpainting: paste the observed pixels back into the returned image (not in the paper)

    def __post_init__(self) -> None:
        if self.iterations <= 0:
            raise ValueError(f"iterations must be positive, got {self.iterations}")
        if not self.lr > 0:
            raise ValueError(f"learning rate must be positive, got {self.lr}")
        if self.reg_noise_std < 0:
            raise ValueError(f"reg-noise std must be >= 0, got {self.reg_noise_std}")
        if self.ema is not None and not 0 <= self.ema < 1:
            raise ValueError(f"EMA weight must be in [0, 1), got {self.ema}")
        if self.task == "super-resolve" and self.factor not in (2, 4, 8):
            raise ValueError(f"super-resolution factor must be 2, 4 or 8, got {self.factor}")
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; choose one of {', '.join(TASKS)}")
        if self.stop_window <= 0 or self.stop_patience <= 0 or self.log_every <= 0:
            raise ValueError("stop window, stop patience and log interval must be positive")
        if not 0 < self.stop_alpha <= 1:
            raise ValueError("stop alpha must be in (0, 1]")
        if self.keep_known and self.task != "inpaint":
            raise ValueError("keeping the known pixels only applies to inpainting")

    def replace(self, **changes: Any) -> "FitConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "FitConfig":
        data = dict(data)
        net = dict(data.pop("net"))
        for key in ("channels_down", "channels_up", "channels_skip"):
            net[key] = tuple(net[key])
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(net=NetConfig(**net), **{k: v for k, v in data.items() if k in known})


# The paper's "skip" net for denoising and super-resolution (2,217,831 parameters at 3 output channels).
PAPER_NET = NetConfig()

# The kate inpainting net: 128 skip channels and nearest upsampling (3,002,627 parameters).
PAPER_INPAINT_NET = NetConfig(channels_skip=(128, 128, 128, 128, 128), upsample="nearest")


def preset(task: str, *, factor: int = 4, output_channels: int = 3) -> FitConfig:
    """The paper notebooks' settings for a task (kate inpainting, F16 denoising, x4/x8 super-resolution)."""
    if task == "inpaint":
        net = dataclasses.replace(PAPER_INPAINT_NET, output_channels=output_channels)
        return FitConfig(task="inpaint", net=net, iterations=6000, lr=0.01, reg_noise_std=0.03,
                         ema=None, backtrack_db=None)
    if task == "denoise":
        net = dataclasses.replace(PAPER_NET, output_channels=output_channels)
        return FitConfig(task="denoise", net=net, iterations=3000, lr=0.01, reg_noise_std=1.0 / 30.0,
                         ema=0.99, backtrack_db=5.0, stop="auto")
    if task == "super-resolve":
        net = dataclasses.replace(PAPER_NET, output_channels=output_channels)
        iterations, reg = {2: (2000, 0.03), 4: (2000, 0.03), 8: (4000, 0.05)}.get(factor, (2000, 0.03))
        return FitConfig(task="super-resolve", net=net, iterations=iterations, lr=0.01, reg_noise_std=reg,
                         ema=None, backtrack_db=None, factor=factor)
    raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
