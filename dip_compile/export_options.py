"""The choices of ``dipc export`` / ``dipc regenerate`` in one place: the CLI's options are these Enums and the
library validates its string arguments through them, so a value is accepted or refused the same way everywhere.

Imports neither torch nor onnx (nor numpy), so ``dipc --help`` stays fast.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any, TypeVar

from .config import Choice, choice_fields, flag_of, option
from .errors import DipError


class ExportFormat(Choice):
    onnx = "onnx"
    pt2 = "pt2"  # torch.export: torch.export.load(...).module()
    torchscript = "torchscript"  # legacy (torch.jit is deprecated): kept while torch ships it
    all = "all"  # every format: OUT.onnx, OUT.pt2 and OUT.pt


class ExportImage(Choice):
    fit = "fit"  # the image the fit returned (Fitter.image_source()): output, EMA or auto-stop, known pixels kept
    output = "output"  # the network on the unperturbed fixed noise
    ema = "ema"  # the fit's EMA image (a stored correction)
    best = "best"  # the auto-stop image (a stored correction)


class BatchNormMode(Choice):
    frozen = "frozen"
    batch = "batch"


class Weights(Choice):
    fp32 = "fp32"
    fp16 = "fp16"


class NoiseMode(Choice):
    embedded = "embedded"
    seed = "seed"


class Profile(Choice):
    """runtime: dynamic batch and the noise as the default of the noise input (an empty feed regenerates the image
    in ONNX Runtime); portable: static batch 1 and the noise as a plain input, its values in a ``.noise.npy`` beside
    the model (what OpenCV's DNN module and other runtimes load)."""

    runtime = "runtime"
    portable = "portable"


class Provider(Choice):
    """onnxruntime provider of ``dipc regenerate`` (export/regenerate.py cannot import this: its PROVIDERS
    tuple must list the same values, which a test checks)."""

    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


E = TypeVar("E", bound=Enum)


def choice(kind: type[E], value: Any, option: str) -> E:
    """``value`` (a string or a member) as a member of ``kind``; a one-line DipError naming the choices otherwise."""
    try:
        return kind(value)
    except ValueError:
        names = [m.value for m in kind]
        shown = value.value if isinstance(value, Enum) else value
        raise DipError(f"unknown {option} {shown!r}; choose {', '.join(names[:-1])} or {names[-1]}") from None


@dataclass(frozen=True)
class ExportOptions:
    """What ``dipc export`` was asked for, each option declared once here (``dipc export``'s options, the library's
    keywords and ``plan_export`` read these fields); strings are coerced to the Enums, unknown values refused in one
    line."""

    fmt: ExportFormat = option(
        ExportFormat.onnx,
        flag="--format",
        help="onnx; pt2 (torch.export); torchscript (legacy: torch.jit is deprecated); all (OUT.onnx + OUT.pt2 + "
        "OUT.pt)",
    )
    image: ExportImage = option(
        ExportImage.fit,
        flag="--image",
        help="fit: the image the fit returned (default); output: network on the fixed noise; ema / best: the fit's "
        "EMA or auto-stop image (stored correction)",
    )
    bn: BatchNormMode = option(
        BatchNormMode.frozen,
        flag="--bn",
        help="frozen: statistics of the fixed noise folded into convs; batch: live statistics, exact for any noise",
    )
    weights: Weights = option(
        Weights.fp32, flag="--weights", help="weight storage: fp32, or fp16 (half the size, not bit-exact)"
    )
    noise: NoiseMode = option(
        NoiseMode.embedded,
        flag="--noise",
        help="embedded: the noise is in the file (empty feed works anywhere); seed: rebuilt from the seed by "
        "regenerate (file ~ weights)",
    )
    profile: Profile = option(
        Profile.runtime,
        flag="--profile",
        help="runtime: dynamic batch, noise inside (ONNX Runtime, empty feed); portable: batch 1, noise a plain "
        "input saved as OUT.noise.npy (OpenCV DNN and other runtimes)",
    )
    verify: bool = option(False, flag="--verify", help="rerun the export and compare with the fit's image")
    force: bool = option(False, flag="--force", help="overwrite existing outputs")

    def __post_init__(self) -> None:
        for name, kind in choice_fields(self):
            object.__setattr__(self, name, choice(kind, getattr(self, name), flag_of(ExportOptions, name)))

    @classmethod
    def of(cls, **choices: Any) -> ExportOptions:
        """From plain strings (or Enums), as library callers pass them; typed ``Any`` since coercion happens here."""
        return cls(**choices)
