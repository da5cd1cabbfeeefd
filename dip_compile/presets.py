"""Named presets: every experiment of the original notebooks, as the settings a fit starts from.

One registry feeds ``dipc presets``, the ``--preset`` choices, the task defaults and the README. A preset is a
complete ``FitConfig`` (at the paper image's channel count) plus what ``--paper-exact`` changes to run the notebook's
own choice where this project knowingly differs, and the parameter count the original code prints for its network.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .config import (
    BnInit,
    Downsample,
    FinalImage,
    FitConfig,
    Generator,
    InputKind,
    NetConfig,
    StopRule,
    Task,
    Upsample,
)
from .drp import projected
from .errors import DipError, joined
from .tasks import TASKS

# The paper's "skip" net for denoising and super-resolution (2,217,831 parameters at 3 output channels).
PAPER_NET = NetConfig()
# The kate inpainting net: 128 skip channels and nearest upsampling (3,002,627 parameters).
PAPER_INPAINT_NET = NetConfig(channels_skip=(128,) * 5, upsample=(Upsample.nearest,))

# What --paper-exact changes, per notebook family (each is one README line under "Where dip-compile differs").
_DENOISE_NOTEBOOK = {  # denoising.ipynb
    "stop": StopRule.fixed,  # the notebook runs its fixed count; we stop automatically
    "final_image": FinalImage.perturbed,  # its last cell runs the net on the last perturbed input (a global)
    "backtrack_skip": 100,  # its check reads `if i % show_every:`, so it skips every 100th iteration
    "crop_to": 32,
}
_INPAINT_NOTEBOOK = {"crop_to": 64}  # inpainting.ipynb: dim_div_by = 64; its last cell uses the fixed input
_RESTORE_NOTEBOOK = {"final_image": FinalImage.perturbed}  # restoration.ipynb keeps the perturbed input global
_SR_NOTEBOOK = {"final_image": FinalImage.perturbed, "crop_to": 32}  # super-resolution.ipynb: enforse_div32='CROP'
_FLASH_NOTEBOOK = {"crop_to": 32}  # flash-no-flash.ipynb: enforse_div32='CROP', no perturbation (reg-noise 0)


@dataclass(frozen=True)
class Preset:
    name: str
    reproduces: str  # the notebook experiment, for the table
    config: FitConfig  # at ``channels`` output channels
    parameters: int  # what the original code prints for this network
    paper: dict[str, Any] = field(default_factory=dict)  # FitConfig changes that --paper-exact applies
    holes: float | None = None  # restoration: with no mask given, drop this fraction of pixels at random
    channels: int = 3  # 1: a grayscale preset (a colour image is converted to grayscale)
    notebook: bool = True  # False: beyond the paper (no original count to match; ``parameters`` is ours)
    # --fast was measured on this preset (docs/fast.md's study, at its own factor): only then does it apply
    fast: bool = False

    @property
    def task(self) -> Task:
        return self.config.task

    def fit_config(
        self, *, output_channels: int | None = None, paper_exact: bool = False, fast: bool = False
    ) -> FitConfig:
        """The preset's settings for an image of ``output_channels`` (the preset's own by default); ``fast``: with
        what ``--fast`` changes for its task (``tasks.Fast``)."""
        channels = self.channels if output_channels is None else output_channels
        net = dataclasses.replace(self.config.net, output_channels=channels)
        if self.config.net.input_kind.guided:
            net = dataclasses.replace(net, input_depth=channels)  # the guide image has the image's channels
        config = self.config.replace(net=net, preset=self.name)
        if paper_exact:
            config = config.replace(**self.paper, net=framework_2017(config.net), paper_exact=True)
        if fast and not self.fast:
            raise fast_refused(f"preset {self.name}")
        return faster(config) if fast else config

    def network_parameters(self) -> int:
        import torch  # (here, not at the top: the CLI lists the presets without importing torch)

        from .network import build_network, count_parameters

        with torch.device("meta"):  # a count only: no memory, no initialisation
            return count_parameters(build_network(self.config.net))


def framework_2017(net: NetConfig) -> NetConfig:
    """``net`` as PyTorch 0.2/0.3 built it, the framework of the paper's published outputs (which --paper-exact
    fits with: docs/paper-tables.md has the A/B that chose it): BatchNorm scales drawn from U(0, 1), and bilinear /
    bicubic upsampling with aligned corners (a net that upsamples by nearest only has no corners to align)."""
    smooth = any(u != Upsample.nearest for u in net.upsample)
    return dataclasses.replace(net, bn_init=BnInit.uniform, align_corners=net.align_corners or smooth)


def fast_refused(what: str) -> PresetError:
    """--fast where no measurement backs it (a preset, or a factor, the study did not fit): refused, not guessed."""
    measured = joined(
        [f"{p.name}{f' at x{p.config.factor}' if p.config.factor > 1 else ''}" for p in PRESETS if p.fast]
    )
    return PresetError(
        f"--fast has no setting for {what}: it is measured only on {measured} (docs/fast.md); drop --fast or "
        f"start from one of those"
    )


def faster(config: FitConfig) -> FitConfig:
    """``config`` as ``--fast`` runs it: its task's ``Fast`` record applied (the convolutions' channels and the
    iterations scaled, rounded, at least 1; or the task's DRP settings for the preset's count times the share).
    Refuses a task the study behind --fast has not covered."""
    fast = TASKS[str(config.task)].fast
    if fast is None:
        covered = ", ".join(name for name, spec in TASKS.items() if spec.fast is not None)
        raise PresetError(f"--fast has no setting for {config.task} yet: the study behind it covered {covered}")
    iterations = max(1, round(config.iterations * fast.iterations))
    if fast.generator == Generator.drp:
        if config.paper_exact:
            raise PresetError(
                f"--fast on {config.task} fits the Deep Random Projector, not the paper's network that --paper-exact "
                "fits: give one of them"
            )
        return projected(config).replace(iterations=iterations, fast=True)
    net = config.net
    net = dataclasses.replace(
        net,
        channels_down=tuple(max(1, round(c * fast.width)) for c in net.channels_down),
        channels_up=tuple(max(1, round(c * fast.width)) for c in net.channels_up),
    )
    return config.replace(net=net, iterations=iterations, fast=True)


def _fit(task: str, net: NetConfig, iterations: int, lr: float, reg_noise: float, **changes: Any) -> FitConfig:
    """A notebook's loop: no EMA, no backtracking and a fixed count unless it says otherwise."""
    base: dict[str, Any] = {"ema": None, "backtrack_db": None, "stop": StopRule.fixed}
    return FitConfig(
        task=Task(task), net=net, iterations=iterations, lr=lr, reg_noise_std=reg_noise, **{**base, **changes}
    )


# EMA, backtracking, and the stop on held-out noisy pixels (auto-stop's variance stopped 1.3-2.4 dB early on textures
# and microscopy: docs/stopping.md)
_DENOISE = {"ema": 0.99, "backtrack_db": 5.0, "stop": StopRule.holdout}
_RESTORE = {"backtrack_db": 5.0, "backtrack_every": 50}  # backtracking on the masked PSNR every 50 iterations

PRESETS: tuple[Preset, ...] = (
    Preset("f16", "F16 denoising, sigma 25 (denoising)", _fit("denoise", PAPER_NET, 3000, 0.01, 1 / 30, **_DENOISE),
           2_217_831, _DENOISE_NOTEBOOK, fast=True),
    Preset("f16-sigma50", "F16 denoising, sigma 50: reg-noise 1/20 (denoising)",
           _fit("denoise", PAPER_NET, 3000, 0.01, 1 / 20, **_DENOISE), 2_217_831, _DENOISE_NOTEBOOK),
    Preset("snail", "snail JPEG artefacts (denoising)",
           _fit("denoise", NetConfig(input_depth=3, channels_down=(8, 16, 32, 64, 128),
                                     channels_up=(8, 16, 32, 64, 128), channels_skip=(0, 0, 0, 4, 4)),
                2400, 0.01, 1 / 30, **_DENOISE),
           572_827, _DENOISE_NOTEBOOK),
    Preset("kate", "kate inpainting, Fig. 7 top (inpainting)", _fit("inpaint", PAPER_INPAINT_NET, 6001, 0.01, 0.03),
           3_002_627, _INPAINT_NOTEBOOK, fast=True),
    Preset("vase", "vase inpainting, meshgrid input, Fig. 6 (inpainting)",
           _fit("inpaint", NetConfig(input_depth=2, input_kind=InputKind.meshgrid, channels_skip=(0,) * 5,
                                     upsample=(Upsample.nearest,)), 5001, 0.01, 0.03),
           2_157_955, _INPAINT_NOTEBOOK),
    Preset("library", "library inpainting, depth 6, Fig. 8 (inpainting)",
           _fit("inpaint", NetConfig(input_depth=1, channels_down=(16, 32, 64, 128, 128, 128),
                                     channels_up=(16, 32, 64, 128, 128, 128), channels_skip=(0,) * 6,
                                     kernel_down=(5,), need_1x1_up=False, upsample=(Upsample.nearest,)),
                3001, 0.01, 0.0),
           2_996_467, _INPAINT_NOTEBOOK),
    Preset("barbara", "barbara, 50% of pixels missing, Fig. 7 bottom (restoration)",
           _fit("inpaint", dataclasses.replace(PAPER_NET, output_channels=1), 11000, 0.001, 0.03, **_RESTORE),
           2_217_573, _RESTORE_NOTEBOOK, holes=0.5, channels=1),
    Preset("kate-98", "kate, 98% of pixels missing, supp. Fig. 14 (restoration)",
           _fit("inpaint", NetConfig(channels_down=(16, 32, 64, 128, 128), channels_up=(16, 32, 64, 128, 128),
                                     channels_skip=(0,) * 5, downsample=(Downsample.avg,)),
                1000, 0.01, 0.0, **_RESTORE),
           1_027_379, _RESTORE_NOTEBOOK, holes=0.98),
    Preset("sr-x4", "super-resolution x4 (super-resolution)",
           _fit("super-resolve", PAPER_NET, 2000, 0.01, 0.03, factor=4), 2_217_831, _SR_NOTEBOOK, fast=True),
    Preset("sr-x8", "super-resolution x8 (super-resolution)",
           _fit("super-resolve", PAPER_NET, 4000, 0.01, 0.05, factor=8), 2_217_831, _SR_NOTEBOOK),
    Preset("flash", "cave flash / no-flash (flash-no-flash)",
           _fit("flash-no-flash",
                NetConfig(input_depth=3, input_kind=InputKind.image,
                          upsample=(Upsample.nearest, Upsample.nearest, Upsample.bilinear, Upsample.bilinear,
                                    Upsample.bilinear)),
                601, 0.1, 0.0),
           2_184_307, _FLASH_NOTEBOOK),
    # the held-out rule decides the length, 8000 is its cap: a fixed 4000 ended fits with little noise while they were
    # still improving (the measurements: docs/stopping.md#deblurring-2026-12-07)
    Preset("deblur", "beyond the paper: a known blur (--kernel), the F16 loop with its held-out stop",
           _fit("deblur", PAPER_NET, 8000, 0.01, 1 / 30, **_DENOISE),
           2_217_831, notebook=False, fast=True),
)  # fmt: skip

BY_NAME: dict[str, Preset] = {p.name: p for p in PRESETS}
NAMES: tuple[str, ...] = tuple(BY_NAME)
DEFAULTS: dict[str, str] = {name: s.default_preset for name, s in TASKS.items()}


class PresetError(DipError):
    """An unknown preset, or one for another task."""


def default_name(task: str, factor: int | None = None) -> str:
    """The task's default preset; with a ``factor`` it lacks, the task's first preset at that factor (x8: sr-x8)."""
    try:
        name = DEFAULTS[task]
    except KeyError:
        raise PresetError(f"unknown task {task!r}; choose one of {', '.join(Task.values())}") from None
    if factor is not None and BY_NAME[name].config.factor != factor:
        name = next((p.name for p in PRESETS if p.task == task and p.config.factor == factor), name)
    return name


def get(name: str, task: str | None = None) -> Preset:
    """The preset called ``name``; with ``task``, it must be one of that task's."""
    found = BY_NAME.get(name)
    if found is None:
        raise PresetError(f"unknown preset {name!r}; choose one of {', '.join(NAMES)} (dipc presets lists them)")
    if task is not None and found.task != task:
        same = [p.name for p in PRESETS if p.task == task]
        raise PresetError(
            f"preset {name!r} is for {found.task}, not {task}; {task} presets: {', '.join(same) or 'none'}"
        )
    return found


def preset(
    task: str,
    *,
    factor: int | None = None,
    output_channels: int = 3,
    name: str | None = None,
    paper_exact: bool = False,
    fast: bool = False,
) -> FitConfig:
    """The settings a fit of ``task`` starts from: the named preset, or the task's default one, made ``faster``
    with ``fast``. A super-resolution ``factor`` other than the preset's replaces it (x8 picks sr-x8 by default)."""
    chosen = get(name or default_name(task, factor), task)
    config = chosen.fit_config(output_channels=output_channels, paper_exact=paper_exact, fast=fast)
    if factor is not None and TASKS[task].scales:
        if fast and factor != chosen.config.factor:
            raise fast_refused(f"preset {chosen.name} at x{factor}")
        config = config.replace(factor=factor)
    return config


def rows() -> list[dict[str, Any]]:
    """The table ``dipc presets`` prints and the README shows."""
    defaults = {v: k for k, v in DEFAULTS.items()}
    return [
        {
            "preset": p.name + (f" (default for {defaults[p.name]})" if p.name in defaults else ""),
            "task": str(p.task),
            "reproduces": p.reproduces,
            "network": p.config.net.summary(),
            "parameters": p.network_parameters(),
            "iterations": p.config.iterations,
            "lr": p.config.lr,
            "reg_noise": p.config.reg_noise_std,
        }
        for p in PRESETS
    ]
