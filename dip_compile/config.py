"""Frozen configuration: the network, the task and the fit, with named presets from the paper's notebooks."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from .errors import DipError


class Choice(str, Enum):
    """A string option with a fixed set of values: typer lists them in --help, and it prints as its value."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)

    @classmethod
    def values(cls) -> tuple[str, ...]:
        return tuple(str(m.value) for m in cls)


class Task(Choice):
    inpaint = "inpaint"
    denoise = "denoise"
    super_resolve = "super-resolve"


class Structure(Choice):
    paper = "paper"
    seed = "seed"


class Upsample(Choice):
    nearest = "nearest"
    bilinear = "bilinear"
    bicubic = "bicubic"


class Padding(Choice):
    reflection = "reflection"
    zeros = "zeros"


class InputKind(Choice):
    noise = "noise"
    meshgrid = "meshgrid"


class StopRule(Choice):
    fixed = "fixed"
    auto = "auto"


class StopVariant(Choice):
    wmv = "wmv"
    emv = "emv"


class Backend(Choice):
    auto = "auto"
    eager = "eager"
    inductor = "inductor"


class Precision(Choice):
    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


TASKS: tuple[str, ...] = Task.values()
MAX_DEPTH = 10
MAX_CHANNELS = 4096


class ConfigError(DipError):
    """A setting outside its valid range (a ValueError subclass, shown by the CLI as one line)."""


def option(default: Any = dataclasses.MISSING, *, flag: str, resume: bool = False, **kwargs: Any) -> Any:
    """A config field with the command-line flag that sets it and whether a resumed fit may change it."""
    return field(default=default, metadata={"flag": flag, "resume": resume}, **kwargs)


def flag_of(cls: type, name: str) -> str:
    return next(f.metadata.get("flag", name) for f in dataclasses.fields(cls) if f.name == name)


def choice_fields(obj: Any) -> list[tuple[str, type[Choice]]]:
    """(name, Enum) of every field whose default is a ``Choice``: the Enum is read from the default, not restated."""
    return [(f.name, type(f.default)) for f in dataclasses.fields(obj) if isinstance(f.default, Choice)]


def _coerce_choices(obj: Any) -> None:
    """Turns the strings given for Choice fields into their members; an unknown value is a one-line ConfigError."""
    for name, kind in choice_fields(obj):
        value = getattr(obj, name)
        try:
            object.__setattr__(obj, name, kind(value))
        except ValueError:
            raise ConfigError(
                f"{flag_of(type(obj), name)} must be one of {', '.join(kind.values())}, got {value!r}"
            ) from None


def _finite(
    obj: Any,
    name: str,
    low: float,
    high: float = math.inf,
    *,
    low_open: bool = False,
    high_open: bool = False,
    allow_none: bool = False,
) -> None:
    """One rule for every float setting: a real, finite number in its range (nan and inf are never valid)."""
    value = getattr(obj, name)
    if value is None and allow_none:
        return
    flag = flag_of(type(obj), name)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        lo, hi = ("(" if low_open else "[") + f"{low:g}", f"{high:g}" + (")" if high_open else "]")
        raise ConfigError(f"{flag} must be a finite number in {lo}, {hi}, got {value!r}")


def _count(obj: Any, name: str, low: int = 1, high: int | None = None) -> None:
    value = getattr(obj, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        rng = f">= {low}" if high is None else f"between {low} and {high}"
        raise ConfigError(f"{flag_of(type(obj), name)} must be a whole number {rng}, got {value!r}")


def check_depth(depth: int) -> None:
    if isinstance(depth, bool) or not isinstance(depth, int) or not 1 <= depth <= MAX_DEPTH:
        raise ConfigError(f"--depth (levels of the hourglass) must be between 1 and {MAX_DEPTH}, got {depth!r}")


@dataclass(frozen=True)
class NetConfig:
    """The hourglass. Lists run from the finest level (0) to the coarsest; a skip of 0 drops that skip."""

    structure: Structure = option(Structure.paper, flag="--structure")
    input_depth: int = option(32, flag="input_depth")
    output_channels: int = option(3, flag="output channels")
    channels_down: tuple[int, ...] = option((128, 128, 128, 128, 128), flag="--channels")
    channels_up: tuple[int, ...] = option((128, 128, 128, 128, 128), flag="--channels")
    channels_skip: tuple[int, ...] = option((4, 4, 4, 4, 4), flag="--skip-channels")
    kernel_down: int = option(3, flag="kernel_down")
    kernel_up: int = option(3, flag="kernel_up")
    kernel_skip: int = option(1, flag="kernel_skip")
    upsample: Upsample = option(Upsample.bilinear, flag="--upsample")
    padding: Padding = option(Padding.reflection, flag="padding")
    need_1x1_up: bool = option(True, flag="need_1x1_up")
    input_kind: InputKind = option(InputKind.noise, flag="input_kind")
    input_scale: float = option(0.1, flag="input_scale")  # the paper's noise is U[0, 1) * 1/10

    def __post_init__(self) -> None:
        _coerce_choices(self)
        for name in ("channels_down", "channels_up", "channels_skip"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        n = len(self.channels_down)
        check_depth(n)
        if len(self.channels_up) != n or len(self.channels_skip) != n:
            raise ConfigError("channels_down, channels_up and channels_skip must have one entry per level")
        for c in self.channels_down + self.channels_up:
            if isinstance(c, bool) or not isinstance(c, int) or not 1 <= c <= MAX_CHANNELS:
                raise ConfigError(f"--channels must be whole numbers between 1 and {MAX_CHANNELS}, got {c!r}")
        for c in self.channels_skip:
            if isinstance(c, bool) or not isinstance(c, int) or not 0 <= c <= MAX_CHANNELS:
                raise ConfigError(f"--skip-channels must be whole numbers between 0 and {MAX_CHANNELS}, got {c!r}")
        _count(self, "input_depth", 1, MAX_CHANNELS)
        if self.output_channels not in (1, 3):
            raise ConfigError(f"output channels must be 1 or 3, got {self.output_channels!r}")
        for name in ("kernel_down", "kernel_up", "kernel_skip"):
            _count(self, name, 1, 31)
            if getattr(self, name) % 2 == 0:
                raise ConfigError(f"{name} must be odd, got {getattr(self, name)}")
        _finite(self, "input_scale", 0, low_open=True)
        if self.input_kind == InputKind.meshgrid and self.input_depth != 2:
            raise ConfigError("a meshgrid input has 2 channels: set input_depth to 2")

    @property
    def depth(self) -> int:
        return len(self.channels_down)

    @property
    def multiple(self) -> int:
        """Spatial sizes the hourglass takes without cropping must be divisible by this."""
        return 2**self.depth

    @property
    def min_coarsest(self) -> int:
        """The smallest side the coarsest level may have: BatchNorm needs more than one value per channel, and
        reflection padding needs a side larger than the pad of every convolution."""
        pad = max(self.kernel_down, self.kernel_up, self.kernel_skip) // 2
        return max(2, pad + 1)

    @property
    def min_side(self) -> int:
        """The smallest canvas side this network runs at (a smaller image is fitted on a canvas this big)."""
        return self.min_coarsest * self.multiple


@dataclass(frozen=True)
class FitConfig:
    """Everything that shapes one fit apart from the data. ``resume=True`` fields may change when resuming."""

    task: Task = option(Task.denoise, flag="TASK")
    net: NetConfig = option(flag="network options", default_factory=NetConfig)
    iterations: int = option(3000, flag="--iterations", resume=True)
    lr: float = option(0.01, flag="--lr", resume=True)
    reg_noise_std: float = option(1.0 / 30.0, flag="--reg-noise", resume=True)
    ema: float | None = option(0.99, flag="ema")  # the paper's output smoothing (exp_weight); None disables it
    # restore the last weights when PSNR to the target drops by more than this
    backtrack_db: float | None = option(5.0, flag="backtrack_db")
    factor: int = option(1, flag="--factor")  # super-resolution factor
    seed: int = option(0, flag="--seed")
    stop: StopRule = option(StopRule.fixed, flag="--stop")
    stop_window: int = option(100, flag="--stop-window")  # ES-WMV window W
    stop_patience: int = option(1000, flag="--stop-patience", resume=True)  # ES-WMV patience P
    stop_variant: StopVariant = option(StopVariant.wmv, flag="--stop-rule")
    stop_alpha: float = option(0.1, flag="stop_alpha")  # ES-EMV smoothing
    backend: Backend = option(Backend.eager, flag="--backend", resume=True)
    precision: Precision = option(Precision.fp32, flag="--precision", resume=True)
    device: str = option("cpu", flag="--device", resume=True)
    log_every: int = option(10, flag="--log-every", resume=True)  # host reads of loss/PSNR happen only this often
    # inpainting: paste the observed pixels back into the returned image (not in the paper)
    keep_known: bool = option(False, flag="--keep-known", resume=True)

    def __post_init__(self) -> None:
        _coerce_choices(self)
        if not isinstance(self.net, NetConfig):
            raise ConfigError("net must be a NetConfig")
        _count(self, "iterations", 1, 10**9)
        _finite(self, "lr", 0, 10, low_open=True)
        _finite(self, "reg_noise_std", 0, 100)
        _finite(self, "ema", 0, 1, high_open=True, allow_none=True)
        _finite(self, "backtrack_db", 0, low_open=True, allow_none=True)
        _count(self, "seed", 0, 2**63 - 1)
        if self.task == Task.super_resolve:
            if self.factor not in (2, 4, 8):
                raise ConfigError(f"--factor must be 2, 4 or 8, got {self.factor!r}")
        elif self.factor != 1:
            raise ConfigError("--factor only applies to super-resolve")
        _count(self, "stop_window", 1, 10**6)
        _count(self, "stop_patience", 1, 10**9)
        _count(self, "log_every", 1, 10**9)
        _finite(self, "stop_alpha", 0, 1, low_open=True)
        device = self.device
        if not (device in ("auto", "cpu", "cuda") or (device.startswith("cuda:") and device[5:].isdigit())):
            raise ConfigError(f"--device must be cpu, cuda, cuda:N or auto, got {device!r}")
        if self.keep_known and self.task != Task.inpaint:
            raise ConfigError("--keep-known only applies to inpaint")

    def replace(self, **changes: Any) -> FitConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain values only (Enums become strings), so checkpoints load with ``weights_only`` and JSON is plain."""
        return _plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FitConfig:
        data = dict(data)
        net = dict(data.pop("net"))
        for key in ("channels_down", "channels_up", "channels_skip"):
            net[key] = tuple(net[key])
        known = {f.name for f in dataclasses.fields(cls)}
        if data.get("backend") == "script":  # checkpoints from before the TorchScript step was removed
            data["backend"] = Backend.eager.value
        return cls(net=NetConfig(**net), **{k: v for k, v in data.items() if k in known})

    @staticmethod
    def resumable() -> frozenset[str]:
        """The settings a resumed fit may change; the others define the problem, the network or saved state."""
        return frozenset(f.name for f in dataclasses.fields(FitConfig) if f.metadata.get("resume"))


def _plain(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    return value


# The paper's "skip" net for denoising and super-resolution (2,217,831 parameters at 3 output channels).
PAPER_NET = NetConfig()

# The kate inpainting net: 128 skip channels and nearest upsampling (3,002,627 parameters).
PAPER_INPAINT_NET = NetConfig(channels_skip=(128, 128, 128, 128, 128), upsample=Upsample.nearest)


def preset(task: str, *, factor: int = 4, output_channels: int = 3) -> FitConfig:
    """The paper notebooks' settings for a task (kate inpainting, F16 denoising, x4/x8 super-resolution)."""
    if task == "inpaint":
        net = dataclasses.replace(PAPER_INPAINT_NET, output_channels=output_channels)
        return FitConfig(
            task=Task.inpaint, net=net, iterations=6000, lr=0.01, reg_noise_std=0.03, ema=None, backtrack_db=None
        )
    if task == "denoise":
        net = dataclasses.replace(PAPER_NET, output_channels=output_channels)
        return FitConfig(
            task=Task.denoise,
            net=net,
            iterations=3000,
            lr=0.01,
            reg_noise_std=1.0 / 30.0,
            ema=0.99,
            backtrack_db=5.0,
            stop=StopRule.auto,
        )
    if task == "super-resolve":
        net = dataclasses.replace(PAPER_NET, output_channels=output_channels)
        iterations, reg = {2: (2000, 0.03), 4: (2000, 0.03), 8: (4000, 0.05)}.get(factor, (2000, 0.03))
        return FitConfig(
            task=Task.super_resolve,
            net=net,
            iterations=iterations,
            lr=0.01,
            reg_noise_std=reg,
            ema=None,
            backtrack_db=None,
            factor=factor,
        )
    raise ConfigError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
