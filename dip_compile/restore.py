"""One restoration job from files to files, as ``dipc fit`` runs it (and as a script can, without the CLI)."""

from __future__ import annotations

import dataclasses
import itertools
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from . import kernels, presets
from . import noise as noise_models
from .acceleration import choose
from .checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from .config import FitConfig, NetConfig, check_depth, flag_of
from .degradations import box_mask, random_holes_mask, text_mask
from .errors import DipError
from .estimate import Estimate, available_bytes, estimate, largest_side, probe_seconds, size_text
from .fitting import FitResult, Fitter, LogRecord, Session, drive, stop_flag
from .imageio import check_output, load_image, load_mask, output_path, save_image, save_side_by_side, to_grayscale
from .problem import Problem, blur_reference, crop_to_multiple, downsample_reference, make_problem
from .report import build_report, save_report

INTERRUPTED = 130
MEMORY_SHARE = 0.9  # of the machine's (or GPU's) memory a fit may plan to use


@dataclass(frozen=True)
class NetShape:
    """The network options of ``dipc fit`` (None = the preset's). List options take one value for every level or
    comma-separated values, one per level (``16,32,64,128,128``), as text or as sequences."""

    generator: Optional[str] = None
    structure: Optional[str] = None
    depth: Optional[int] = None
    channels: Any = None  # down and up alike
    channels_down: Any = None
    channels_up: Any = None
    skip_channels: Any = None
    upsample: Any = None
    downsample: Any = None
    kernel_down: Any = None
    kernel_up: Any = None
    kernel_skip: Optional[int] = None
    need_1x1_up: Optional[bool] = None
    input: Optional[str] = None
    input_depth: Optional[int] = None

    def given(self) -> list[str]:
        """The flags given, as the user typed them."""
        names = [f.name for f in dataclasses.fields(self) if getattr(self, f.name) is not None]
        return ["--1x1-up" if n == "need_1x1_up" else f"--{n.replace('_', '-')}" for n in names]

    def apply(self, net: NetConfig) -> NetConfig:
        """The preset's network with these options. The depth is --depth, else the length of a channel list given
        here, else the preset's. A new depth keeps the preset's finest levels (as the library notebook's ``[:depth]``
        does) or repeats its coarsest level's values; every list given here must match it."""
        given = {
            "channels_down": _levels(_first(self.channels_down, self.channels), "--channels-down", int),
            "channels_up": _levels(_first(self.channels_up, self.channels), "--channels-up", int),
            "channels_skip": _levels(self.skip_channels, "--skip-channels", int),
            "upsample": _levels(self.upsample, "--upsample", str),
            "downsample": _levels(self.downsample, "--downsample", str),
            "kernel_down": _levels(self.kernel_down, "--kernel-down", int),
            "kernel_up": _levels(self.kernel_up, "--kernel-up", int),
        }
        if self.depth is not None:
            check_depth(self.depth)
        lengths = [len(v) for k, v in given.items() if v is not None and len(v) > 1 and k.startswith("channels")]
        depth = self.depth or (lengths[0] if lengths else net.depth)
        changes: dict[str, Any] = {}
        for name, value in given.items():
            if value is not None:
                changes[name] = value * depth if len(value) == 1 and name.startswith("channels") else value
            elif depth != net.depth and len(getattr(net, name)) > 1:
                old = getattr(net, name)
                changes[name] = old[:depth] + (old[-1],) * max(0, depth - len(old))
        if self.generator is not None and self.generator != net.generator:
            changes["generator"] = self.generator
            if self.generator != "skip":  # a decoder: its input has its first level's channels, no skips
                coarsest = changes.get("channels_up", net.channels_up)[-1]
                changes.setdefault("kernel_up", (3,) if self.generator == "convdecoder" else (1,))
                changes["input_depth"] = coarsest
                changes["input_kind"] = "noise"
        if self.structure is not None:
            changes["structure"] = self.structure
            if self.structure == "seed" and self.upsample is None:
                changes["upsample"] = ("bicubic",)
        for name in ("kernel_skip", "need_1x1_up", "input_depth"):
            if getattr(self, name) is not None:
                changes[name] = getattr(self, name)
        if self.input is not None:
            changes["input_kind"] = self.input
            if self.input == "meshgrid" and self.input_depth is None:
                changes["input_depth"] = 2  # a meshgrid has two channels
        return dataclasses.replace(net, **changes) if changes else net


def _first(*values: Any) -> Any:
    return next((v for v in values if v is not None), None)


def _levels(value: Any, flag: str, kind: type) -> Optional[tuple[Any, ...]]:
    """``"16,32,64"``, ``16`` or ``[16, 32, 64]`` as a tuple; a value that does not parse is a one-line error."""
    if value is None:
        return None
    items = (
        [v.strip() for v in value.split(",")]
        if isinstance(value, str)
        else list(value)
        if isinstance(value, (list, tuple))
        else [value]
    )
    if not items or any(v == "" for v in items):
        raise DipError(f"{flag} takes one value or comma-separated values, one per level, got {value!r}")
    if kind is int:
        try:
            return tuple(int(v) for v in items)
        except (TypeError, ValueError):
            raise DipError(
                f"{flag} takes whole numbers (one, or one per level separated by commas), got {value!r}"
            ) from None
    return tuple(str(v) for v in items)


OUTPUT_FIELDS = ("output", "checkpoint", "report", "compare")  # the FitJob fields that name files to write


@dataclass
class FitJob:
    """Files in, files out. ``settings`` holds the ``FitConfig`` fields the user set (by field name); the preset
    gives the rest. With ``resume`` the checkpoint gives the problem and the settings, and only the fields that
    ``FitConfig.resumable()`` names may change."""

    output: Path
    task: Optional[str] = None
    image: Optional[Path] = None
    mask: Optional[Path] = None
    holes: Optional[float] = None
    box: Optional[float] = None
    text: bool = False
    from_reference: bool = False
    sigma: Optional[float] = None
    reference: Optional[Path] = None
    flash: Optional[Path] = None  # flash-no-flash: the flash photo, the network's input
    noise: Optional[str] = None  # --noise SPEC: makes the observation from a clean IMAGE (see noise.py)
    preset: Optional[str] = None  # a name from ``presets.NAMES`` (None: the task's default preset)
    paper_exact: bool = False  # the notebook's choices where this project differs (see presets.Preset.paper)
    settings: dict[str, Any] = field(default_factory=dict)
    net: NetShape = field(default_factory=NetShape)
    checkpoint: Optional[Path] = None
    resume: Optional[Path] = None
    report: Optional[Path] = None
    compare: Optional[Path] = None
    snapshot_every: int = 0
    checkpoint_every: float = 0.0  # seconds between checkpoints while fitting (0 = at the end only)
    report_extra: dict[str, Any] = field(default_factory=dict)  # more keys for the report (dipc batch's job)
    force: bool = False
    quiet: bool = False
    status_every: float = 30.0  # seconds between plain progress lines when stderr is not a terminal
    dry_run: bool = False  # estimate memory and time, fit nothing, write nothing
    tile: Optional[int] = None  # --tile SIZE: fit in SIZE x SIZE tiles one after the other and blend (tiling.py)
    overlap: int = 32  # --overlap PX: pixels neighbouring tiles share

    def __post_init__(self) -> None:
        """Outputs given as text (the CLI passes the user's spelling) become Paths here, after the check that only
        the text allows: ``Path("newdir/")`` drops the separator that says a folder was meant."""
        for name in OUTPUT_FIELDS:
            value = getattr(self, name)
            if isinstance(value, str):
                setattr(self, name, output_path(value))

    def resumed(self, checkpoint: Path) -> FitJob:
        """This job continued from ``checkpoint``: the same outputs and device; the checkpoint holds the rest."""
        outputs = ("output", "checkpoint", "report", "compare", "snapshot_every", "checkpoint_every", "report_extra")
        kept = {name: getattr(self, name) for name in (*outputs, "force", "quiet", "status_every")}
        device = self.settings.get("device")
        return FitJob(**kept, resume=checkpoint, settings={"device": device} if device else {})


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DipError("--device cuda asked for, but no CUDA GPU is available")
    return name


def _problem_options(job: FitJob) -> list[str]:
    """The options that describe the problem (the checkpoint holds it on --resume)."""
    given = {
        "TASK": job.task is not None,
        "IMAGE": job.image is not None,
        "--mask": job.mask is not None,
        "--holes": job.holes is not None,
        "--box": job.box is not None,
        "--text": job.text,
        "--from-reference": job.from_reference,
        "--sigma": job.sigma is not None,
        "--noise": job.noise is not None,
        "--reference": job.reference is not None,
        "--flash": job.flash is not None,
        "--preset": job.preset is not None,
        "--paper-exact": job.paper_exact,
    }
    return [name for name, on in given.items() if on]


def build_config(job: FitJob, channels: int) -> FitConfig:
    """The task's preset (named, or the task's default) with the job's settings on top; FitConfig validates every
    value (one-line ConfigError)."""
    settings = {k: v for k, v in job.settings.items() if v is not None}
    config = presets.preset(
        str(job.task),
        factor=settings.get("factor"),
        output_channels=channels,
        name=job.preset,
        paper_exact=job.paper_exact,
    )
    config = config.replace(**settings)
    return config.replace(net=job.net.apply(config.net))


def resume_config(job: FitJob, ckpt: Checkpoint) -> FitConfig:
    """The checkpoint's configuration with the changes a resumed fit may take; refuses the others in one line."""
    problem = _problem_options(job)
    if problem:
        raise DipError(
            f"--resume continues the saved fit, whose checkpoint holds the image, the task and its "
            f"inputs: drop {', '.join(problem)}"
        )
    if job.net.given():
        raise DipError(f"--resume continues the saved network: drop {', '.join(job.net.given())}")
    saved, changes = ckpt.config, {}
    for name, value in job.settings.items():
        if value is None or value == getattr(saved, name):
            continue
        if name not in FitConfig.resumable():
            flag = flag_of(FitConfig, name)
            raise DipError(
                f"{flag} cannot change when resuming (the checkpoint has {getattr(saved, name)}); "
                f"a resumed fit may change only {resumable_flags()}"
            )
        changes[name] = value
    config = saved.replace(**changes)
    if config.iterations <= ckpt.iteration:
        raise DipError(
            f"the checkpoint is already at iteration {ckpt.iteration}; pass --iterations larger than that to continue"
        )
    return config


def resumable_flags() -> str:
    return ", ".join(sorted(flag_of(FitConfig, name) for name in FitConfig.resumable()))


def _make_mask(
    job: FitJob, size: tuple[int, int], seed: int, preset_holes: Optional[float] = None
) -> tuple[torch.Tensor, bool]:
    """The inpainting mask, and whether it was made here (then the image is the clean reference)."""
    job = _mask_source(job, preset_holes)
    if job.mask is not None:
        return load_mask(job.mask, size), False
    if job.holes is not None:
        return random_holes_mask(*size, job.holes, seed=seed), True
    if job.box is not None:
        return box_mask(*size, job.box), True
    return text_mask(*size), True


def _mask_source(job: FitJob, preset_holes: Optional[float]) -> FitJob:
    """The job with its one mask source checked (it needs no image): --mask, --holes, --box or --text, else a
    restoration preset's (barbara, kate-98) fraction of pixels dropped at random."""
    sources = [job.mask is not None, job.holes is not None, job.box is not None, job.text]
    if sum(sources) == 0 and preset_holes is not None:
        return dataclasses.replace(job, holes=preset_holes)
    if sum(sources) != 1:
        raise DipError("inpaint needs exactly one of --mask, --holes, --box or --text")
    if job.holes is not None:
        _fraction(job.holes, "--holes")
    if job.box is not None:
        _fraction(job.box, "--box")
    return job


def _fraction(value: float, flag: str) -> float:
    if not 0 < value < 1:  # also false for nan
        raise DipError(f"{flag} is the fraction of pixels to drop and must be in (0, 1), got {value}")
    return value


def validate_job(job: FitJob, *, device: bool = True) -> None:
    """Everything ``fit_session`` refuses before it reads an image: the job's flags, its configuration (preset, task,
    factor, network, ...), the mask source, the kernel, the tiling and (``device``) the device's availability.
    ``fit_session`` starts with it, and ``dipc batch`` runs it for every job before the first fit, so both refuse
    the same things; what needs the files (unreadable image, mask of another size) is found when the fit loads them."""
    if isinstance(job.snapshot_every, bool) or job.snapshot_every < 0:
        raise DipError(f"--snapshot-every must be >= 0, got {job.snapshot_every}")
    if not job.status_every > 0:
        raise DipError(f"--status-every must be a positive number of seconds, got {job.status_every}")
    if not job.checkpoint_every >= 0:
        raise DipError(f"--checkpoint-every must be >= 0 seconds, got {job.checkpoint_every}")
    tiled = job.tile is not None or job.overlap != FitJob.overlap
    if tiled:
        from .tiling import check_job as check_tiling

        check_tiling(job)
    if job.resume is not None:
        return  # the checkpoint holds the problem and the settings: checked as it is loaded (resume_config)
    chosen, noise = _problem_options_checked(job)
    config = build_config(_with_noise_peak(job, noise), chosen.channels)
    if job.task == "inpaint":
        _mask_source(job, chosen.holes)
    if job.task == "deblur":
        _parse_kernel(config)
    if tiled:
        from .tiling import check_config

        assert job.tile is not None  # (check_tiling refuses --overlap without --tile)
        check_config(config, job.tile, job.overlap)
    if device:
        resolve_device(str(config.device))


def _problem_options_checked(job: FitJob) -> tuple[presets.Preset, Optional[noise_models.Noise]]:
    """The preset and the noise of a new fit, once its problem options are known to go together."""
    if job.task is None or job.image is None:
        raise DipError("give TASK and IMAGE (dipc fit denoise noisy.png -o out.png), or --resume CKPT")
    if job.task != "inpaint" and (job.mask or job.holes is not None or job.box is not None or job.text):
        raise DipError(f"--mask/--holes/--box/--text only apply to inpaint, not {job.task}")
    if job.from_reference and job.task not in ("super-resolve", "deblur"):
        raise DipError("--from-reference only applies to super-resolve and deblur")
    if (job.flash is not None) != (job.task == "flash-no-flash"):
        raise DipError(
            "flash-no-flash needs --flash FLASH (the flash photo)"
            if job.flash is None
            else f"--flash only applies to flash-no-flash, not {job.task}"
        )
    noise = _noise(job)
    return presets.get(job.preset or presets.default_name(job.task, job.settings.get("factor")), job.task), noise


def _with_noise_peak(job: FitJob, noise: Optional[noise_models.Noise]) -> FitJob:
    """``--noise poisson:PEAK`` with ``--loss poisson``: the loss takes the peak the counts were made with."""
    if noise is not None and noise.kind == "poisson" and job.settings.get("loss") == "poisson":
        return dataclasses.replace(job, settings={"peak": noise.value, **job.settings})
    return job


def load_problem(job: FitJob, notes: Optional[list[str]] = None) -> tuple[FitConfig, Problem]:
    """The configuration and problem of a new fit; what the user should know (a conversion) goes to ``notes``."""
    chosen, noise = _problem_options_checked(job)
    assert job.image is not None and job.task is not None
    image = load_image(job.image)
    if chosen.channels == 1 and image.shape[0] == 3 and notes is not None:
        notes.append(f"preset {chosen.name} is grayscale: IMAGE converted to grayscale (ITU-R 601 luma)")
    image = _as_preset_channels(image, chosen)
    reference = _as_preset_channels(load_image(job.reference, "reference"), chosen) if job.reference else None
    guide = _as_preset_channels(load_image(job.flash, "flash image"), chosen) if job.flash is not None else None
    job = _with_noise_peak(job, noise)
    config = build_config(job, image.shape[0])
    if config.crop_to > 1:  # --paper-exact: the notebook's crop instead of our padded canvas
        image, reference, guide = _paper_crop(config, image, reference, guide, low_resolution=not job.from_reference)
    clean = image  # what --noise and the made degradations start from (the reference when they apply)
    mask, kernel = None, None
    if job.task == "deblur":
        kernel = _kernel(config, image)
        if job.from_reference:  # IMAGE is sharp: blur it with the fit's own operator
            image = blur_reference(image, kernel)
    elif job.task == "inpaint":
        mask, made = _make_mask(job, (image.shape[-2], image.shape[-1]), config.seed, chosen.holes)
        if made and noise is None and reference is None:
            reference = image
    elif job.task == "super-resolve" and job.from_reference:
        image, clean = downsample_reference(image, config.factor)
    if noise is not None:
        image = noise.apply(image, seed=config.seed)
    if noise is not None or job.from_reference:
        reference = reference if reference is not None else clean
    if reference is not None and reference.shape[0] != image.shape[0]:
        raise DipError(f"reference has {reference.shape[0]} channel(s) but the image has {image.shape[0]}")
    return config, make_problem(config, image, mask=mask, reference=reference, guide=guide, kernel=kernel)


def _noise(job: FitJob) -> Optional[noise_models.Noise]:
    """The noise that makes the observation from a clean IMAGE (``--noise``, or ``--sigma`` for Gaussian noise)."""
    if job.sigma is not None and job.noise is not None:
        raise DipError("give --sigma or --noise, not both (--sigma S is --noise gaussian:S)")
    if job.sigma is None and job.noise is None:
        return None
    flag = "--sigma" if job.sigma is not None else "--noise"
    # inpaint without --mask makes its mask (--holes/--box/--text, or a restoration preset's): IMAGE is clean
    clean_image = job.task == "denoise" or job.from_reference or (job.task == "inpaint" and job.mask is None)
    if not clean_image:
        raise DipError(
            f"{flag} makes evaluation data from a clean IMAGE: it applies to denoise, to inpaint with a made mask "
            "(--holes/--box/--text or a restoration preset) and to deblur or super-resolve with --from-reference"
        )
    if job.sigma is not None:
        if not 0 < job.sigma <= 255:  # also false for nan
            raise DipError(f"--sigma is on the 0-255 scale and must be in (0, 255], got {job.sigma}")
        return noise_models.Noise("gaussian", job.sigma)
    assert job.noise is not None
    return noise_models.parse_noise(job.noise)


def _kernel(config: FitConfig, image: torch.Tensor) -> torch.Tensor:
    kernel = _parse_kernel(config)
    kernels.check_fits(kernel, (image.shape[-2], image.shape[-1]))
    return torch.from_numpy(kernel).float()


def _parse_kernel(config: FitConfig) -> Any:
    if not config.kernel:
        raise DipError(f"deblur needs --kernel: {kernels.SPECS}")
    return kernels.parse_kernel(config.kernel)


def _as_preset_channels(image: torch.Tensor, chosen: presets.Preset) -> torch.Tensor:
    """A grayscale preset (barbara) converts a colour image to grayscale (ITU-R 601 luma, as Pillow's "L"), so
    its network and parameter count are the paper's; colour presets take grayscale images as they are."""
    return to_grayscale(image) if chosen.channels == 1 and image.shape[0] == 3 else image


def _paper_crop(
    config: FitConfig,
    image: torch.Tensor,
    reference: Optional[torch.Tensor],
    guide: Optional[torch.Tensor],
    *,
    low_resolution: bool,
) -> tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
    """The notebooks' centred crop of the restored image to a multiple of ``crop_to``. A low-resolution input of
    super-resolution is cropped to a multiple of crop_to / factor, so that its high-resolution image is one."""
    if config.task == "super-resolve" and low_resolution:
        image = crop_to_multiple(image, max(1, config.crop_to // config.factor))
        reference = None if reference is None else crop_to_multiple(reference, config.crop_to)
        return image, reference, guide

    def crop(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        return None if t is None else crop_to_multiple(t, config.crop_to)

    return crop_to_multiple(image, config.crop_to), crop(reference), crop(guide)


def default_checkpoint_path(output: Path) -> Path:
    """Where Ctrl-C saves the fit when no --checkpoint was given: OUT.ckpt beside the image."""
    path = output.with_name(output.stem + ".ckpt")
    return path if path != output else output.with_name(output.name + ".ckpt")


def snapshot_path(output: Path, iteration: int) -> Path:
    return output.with_name(f"{output.stem}-{iteration:06d}.png")


def _key(path: Path) -> Path:
    """One spelling per file (relative, absolute, ``./``), to compare paths."""
    return Path(os.path.abspath(path))


class Outputs:
    """Every file one run writes. They must be distinct (two outputs never share a path), are checked before any
    work, and the first write of each is exclusive unless ``force``: a file that another process created
    meanwhile is never replaced. Later writes of a file this run already wrote replace it."""

    def __init__(self, force: bool) -> None:
        self.force = force
        self.paths: dict[Path, str] = {}
        self.mine: set[Path] = set()

    def add(
        self, path: Optional[Path], role: str, *, check: bool = True, own: bool = False, written: bool = True
    ) -> None:
        """``check``: refuse an existing file (without --force) or an unwritable folder now; ``own``: this run may
        replace the file (it continues it); ``written``: an output (an input kept from being written over is not),
        whose name must suit the file system even when ``check`` is off (the Ctrl-C checkpoint)."""
        if path is None:
            return
        key = _key(path)
        if key in self.paths:
            raise DipError(f"{self.paths[key]} and {role} share the path {path}: give them different paths")
        self.paths[key] = role
        if own:  # e.g. --checkpoint equal to --resume: the run continues its own file
            self.mine.add(key)
        elif check:
            check_output(path, self.force)
        elif written:
            output_path(path)

    def owns(self, path: Path) -> bool:
        return _key(path) in self.mine

    def write(self, path: Path, write: Callable[[bool], Any]) -> None:
        """Calls ``write(overwrite)``; the first write of a path is exclusive unless --force."""
        key = _key(path)
        write(self.force or key in self.mine)
        self.mine.add(key)


def _check_memory(config: FitConfig, problem: Problem, device: str) -> Estimate:
    """The fit's estimated peak memory; refuses, before any allocation, an image whose fit would not fit, naming
    the largest size that would and the options that would make this one fit."""
    guess = estimate(config, problem.canvas, problem.channels, device)
    have = available_bytes(device)
    if have is None or guess.peak_bytes <= MEMORY_SHARE * have[0]:
        return guess
    budget, where = MEMORY_SHARE * have[0], have[1]
    (h, w), factor = problem.canvas, config.factor if config.task == "super-resolve" else 1
    side = largest_side(config, problem.canvas, problem.channels, device, budget)
    ways = []
    if side >= config.net.multiple:
        scale = side / max(h, w)
        ways.append(f"an image of at most about {int(w * scale) // factor}x{int(h * scale) // factor}")
    ways += _options_that_fit(config, problem, device, guess.precision, budget)
    from .tiling import TASKS as TILED_TASKS  # (tiling builds on this module)

    if config.task in TILED_TASKS and side >= 2 * config.net.multiple:
        ways.append(f"--tile {min(side, 1024) // factor * factor}")
    ways.append("a smaller network (--channels, --depth)")
    raise DipError(
        f"fitting at {w}x{h} needs about {size_text(guess.peak_bytes)} ({guess.precision}) but this machine has "
        f"{size_text(have[0])} of {where}; it would fit with {'; or '.join(ways)}"
    )


def _options_that_fit(config: FitConfig, problem: Problem, device: str, precision: str, budget: float) -> list[str]:
    """The cheapest switches (alone, else together) under which this fit's estimate is within ``budget``."""
    switches: list[tuple[str, dict[str, Any], Optional[str]]] = []
    if not config.save_memory:
        switches.append(("--save-memory", {"save_memory": True}, None))
    if precision == "fp32" and choose(config.replace(precision="auto"), device, problem.canvas).precision != "fp32":
        switches.append(("--precision bf16", {}, "bf16"))
    if config.stop == "auto" and config.stop_variant == "wmv":  # its window holds stop_window images
        switches.append(("--stop-rule emv", {"stop_variant": "emv"}, None))
    fitting: list[str] = []
    for count in range(1, len(switches) + 1):
        for chosen in itertools.combinations(switches, count):
            changes = {k: v for _, c, _ in chosen for k, v in c.items()}
            lower = next((p for _, _, p in chosen if p), precision)
            need = estimate(config.replace(**changes), problem.canvas, problem.channels, device, precision=lower)
            if need.peak_bytes <= budget:
                fitting.append(f"{' '.join(flag for flag, _, _ in chosen)} (about {size_text(need.peak_bytes)})")
        if fitting:
            return fitting
    return []


def _dry_run(config: FitConfig, problem: Problem, device: str, console: Any, done: int = 0) -> int:
    """``--dry-run``: the memory check and a timed probe at a small canvas; nothing is fitted or written."""
    guess = _check_memory(config, problem, device)
    seconds = probe_seconds(config, problem.canvas, problem.channels, device)
    left = config.iterations - done
    auto = ", less if auto-stop ends it sooner" if config.stop == "auto" else ""
    console.print(
        f"dry run: {guess.describe()}; about {seconds:.2f} s per iteration ({choose(config, device, problem.canvas).describe()}), "
        f"{left} iterations: about {_duration(left * seconds)}{auto}; nothing was fitted or written"
    )
    return 0


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


def _is_out_of_memory(exc: BaseException) -> bool:
    oom = getattr(torch, "OutOfMemoryError", None)
    return (
        (oom is not None and isinstance(exc, oom))
        or isinstance(exc, MemoryError)
        or (isinstance(exc, RuntimeError) and ("can't allocate memory" in str(exc) or "out of memory" in str(exc)))
    )


def run_job(job: FitJob, console_file: Any = None) -> int:
    """Runs the job; returns the exit code (0, or 130 after Ctrl-C, with checkpoint and image saved)."""
    return drive(fit_session(job, console_file))


def fit_session(
    job: FitJob, console_file: Any = None, stop_requested: Optional[Callable[[], bool]] = None
) -> Session[int]:
    """``run_job`` as a fit session (see ``fitting.StepRequest``): a batch driver packs several. ``stop_requested``
    replaces the Ctrl-C handler this installs otherwise (a batch installs one for all its fits)."""
    from rich.console import Console

    console = Console(file=console_file or sys.stderr, highlight=False, soft_wrap=True)
    validate_job(job)
    if job.tile is not None or job.overlap != FitJob.overlap:
        from .tiling import tiled_session

        return (yield from tiled_session(job, console, stop_requested))
    ckpt: Optional[Checkpoint] = None
    if job.resume is not None:
        ckpt = load_checkpoint(job.resume)
        config, problem = resume_config(job, ckpt), ckpt.problem
    else:
        notes: list[str] = []
        config, problem = load_problem(job, notes)
        for note in notes:
            console.print(f"note: {note}")
    device = resolve_device(str(config.device))
    config = config.replace(device=device)
    if job.dry_run:
        return _dry_run(config, problem, device, console, done=ckpt.iteration if ckpt is not None else 0)

    outputs = Outputs(job.force)
    outputs.add(job.output, "-o")
    same_as_resume = job.resume is not None and job.checkpoint is not None and _key(job.checkpoint) == _key(job.resume)
    outputs.add(job.checkpoint, "--checkpoint", own=same_as_resume)
    outputs.add(job.report, "--report")
    outputs.add(job.compare, "--compare")
    if job.snapshot_every:
        for it in range(job.snapshot_every, config.iterations + 1, job.snapshot_every):
            outputs.add(snapshot_path(job.output, it), f"snapshot {it}")
    interrupt_ckpt = job.checkpoint or default_checkpoint_path(job.output)
    if job.checkpoint is None:  # on Ctrl-C: OUT.ckpt, the resumed file itself, or OUT-<iteration>.ckpt if taken
        continues = job.resume is not None and _key(interrupt_ckpt) == _key(job.resume)
        outputs.add(interrupt_ckpt, "the Ctrl-C checkpoint", check=False, own=continues)
    if job.resume is not None and not outputs.owns(job.resume):  # (owned: the run continues the resumed file)
        outputs.add(job.resume, "--resume", check=False, written=False)  # an input: no output may be written over it
    guess = _check_memory(config, problem, device)

    try:
        fitter = ckpt.fitter(device, config) if ckpt is not None else Fitter(config, problem, device=device)
        console.print(f"step: {fitter.plan.describe()}")
        console.print(guess.describe())
        with stop_flag(stop_requested, lambda message: console.print(message)) as stopping:
            saver = _savers(fitter, job, outputs)
            result = yield from _run_with_progress(fitter, config, job, console, outputs, saver, stopping)
            resumed_from = ckpt.iteration if ckpt is not None else None
            return _finish(fitter, result, job, console, outputs, interrupt_ckpt, resumed_from)
    except Exception as exc:
        if _is_out_of_memory(exc):
            raise DipError(
                f"out of memory while fitting at {problem.canvas[1]}x{problem.canvas[0]}: use --save-memory, "
                f"a smaller image, --tile or a smaller network (--channels, --depth)"
            ) from None
        raise


def _finish(
    fitter: Fitter,
    result: FitResult,
    job: FitJob,
    console: Any,
    outputs: Outputs,
    interrupt_ckpt: Path,
    resumed_from: Optional[int] = None,
) -> int:
    problem = fitter.problem
    if result.stop_reason == "interrupted":
        path = interrupt_ckpt
        if job.checkpoint is None and path.exists() and not (job.force or outputs.owns(path)):
            path = path.with_name(path.stem + f"-{fitter.iteration}.ckpt")
        outputs.write(path, lambda overwrite: save_checkpoint(fitter, path, overwrite=overwrite))
        outputs.write(job.output, lambda overwrite: save_image(result.image, job.output, overwrite=overwrite))
        console.print(
            f"interrupted at iteration {fitter.iteration}: image written to {job.output}, checkpoint to "
            f"{path}; continue with: dipc fit --resume {path} -o {job.output} --force"
        )
        return INTERRUPTED
    outputs.write(job.output, lambda overwrite: save_image(result.image, job.output, overwrite=overwrite))
    if job.checkpoint is not None:
        ckpt = job.checkpoint
        outputs.write(ckpt, lambda overwrite: save_checkpoint(fitter, ckpt, overwrite=overwrite))
    if job.compare is not None:
        guide = [] if problem.guide is None else [problem.guide.cpu()]  # flash-no-flash: the flash photo first
        panels = [*guide, problem.corrupted_view().cpu(), result.image]
        if problem.reference is not None:
            panels.append(problem.reference.cpu())
        compare = job.compare
        outputs.write(compare, lambda overwrite: save_side_by_side(panels, compare, overwrite=overwrite))
    resumed = {"resumed_from_iteration": resumed_from} if resumed_from is not None else {}
    report = build_report(fitter, result, **resumed, **job.report_extra)
    if job.report is not None:
        path = job.report
        outputs.write(path, lambda overwrite: save_report(report, path, overwrite=overwrite))
    _summary(console, result, report, job)
    return 0


class BestSaver:
    """With auto stopping, keeps the chosen image (and checkpoint) on disk while the fit runs.

    Early in a fit the variance reaches a new minimum almost every iteration, so writing at every minimum would
    cost more than the fit. Instead, at each log interval (where the loop reads the device anyway) it writes the
    image if a new minimum was recorded since the last write and ``image_seconds`` have passed, and the checkpoint
    (``--checkpoint`` only; WMV checkpoints carry the W-output window) likewise, at most every ``checkpoint_seconds``.
    The end of the fit always writes both, so a crash loses at most those intervals and never the chosen image.
    """

    def __init__(
        self,
        fitter: Fitter,
        image_path: Path,
        checkpoint_path: Optional[Path],
        outputs: Optional[Outputs] = None,
        image_seconds: float = 10.0,
        checkpoint_seconds: float = 60.0,
    ) -> None:
        self.fitter, self.image_path, self.checkpoint_path = fitter, image_path, checkpoint_path
        self.outputs = outputs or Outputs(force=True)
        self.image_seconds, self.checkpoint_seconds = image_seconds, checkpoint_seconds
        self.image_written: tuple[Optional[int], float] = (None, float("-inf"))  # (minimum written, when)
        self.checkpoint_written: tuple[Optional[int], float] = (None, float("-inf"))
        self.writes = {"image": 0, "checkpoint": 0}

    def __call__(self, record: LogRecord) -> None:
        assert self.fitter.stopper is not None
        chosen = self.fitter.stopper.kept_iteration()  # changes at a new minimum and when its lagged EMA is kept
        if chosen is None:
            return
        now = time.monotonic()
        if chosen != self.image_written[0] and now - self.image_written[1] >= self.image_seconds:
            image, path = self.fitter.image()[0], self.image_path
            self.outputs.write(path, lambda overwrite: save_image(image, path, overwrite=overwrite))
            self.image_written = (chosen, now)
            self.writes["image"] += 1
        ckpt = self.checkpoint_path
        if (
            ckpt is not None
            and chosen != self.checkpoint_written[0]
            and now - self.checkpoint_written[1] >= self.checkpoint_seconds
        ):
            self.outputs.write(ckpt, lambda overwrite: save_checkpoint(self.fitter, ckpt, overwrite=overwrite))
            self.checkpoint_written = (chosen, now)
            self.writes["checkpoint"] += 1


class PeriodicSaver:
    """``--checkpoint-every``: writes the checkpoint at a log point once ``seconds`` have passed since the last, so
    that a killed process (a cluster worker, a lost machine) resumes from at most that long ago."""

    def __init__(self, fitter: Fitter, path: Path, outputs: Outputs, seconds: float) -> None:
        self.fitter, self.path, self.outputs, self.seconds = fitter, path, outputs, seconds
        self.last = time.monotonic()

    def __call__(self, record: LogRecord) -> None:
        now = time.monotonic()
        if now - self.last >= self.seconds and record.iteration < record.total:
            path = self.path
            self.outputs.write(path, lambda overwrite: save_checkpoint(self.fitter, path, overwrite=overwrite))
            self.last = now


def _savers(fitter: Fitter, job: FitJob, outputs: Outputs) -> Optional[Callable[[LogRecord], None]]:
    """What runs at each log point besides progress: the auto-stop image keeper and the periodic checkpoint."""
    savers: list[Callable[[LogRecord], None]] = []
    if fitter.stopper is not None:
        savers.append(BestSaver(fitter, job.output, job.checkpoint, outputs))
    if job.checkpoint_every and job.checkpoint is not None:
        savers.append(PeriodicSaver(fitter, job.checkpoint, outputs, job.checkpoint_every))
    if not savers:
        return None

    def save(record: LogRecord) -> None:
        for saver in savers:
            saver(record)

    return save


def _summary(console: Any, result: FitResult, report: dict[str, Any], job: FitJob) -> None:
    line = (
        f"{result.iterations} iterations ({result.stop_reason}), {result.iterations_per_second:.2f} it/s, "
        f"image from {result.image_source}"
    )
    if result.stop_info.get("chosen_iteration") is not None:
        line += f" at iteration {result.stop_info['chosen_iteration']}"
        kept = result.stop_info.get("kept_iteration")
        if kept is not None and kept != result.stop_info["chosen_iteration"]:
            line += f" (its EMA at {kept})"
    line += f" -> {job.output}"
    if "final_psnr" in report:
        line += f"; PSNR {report['final_psnr']:.2f} dB (input {report['input_psnr']:.2f} dB)"
    console.print(line)


def status_line(task: str, r: LogRecord, ema: bool) -> str:
    """The plain progress line printed when stderr is not a terminal (CI, nohup, a cluster job's log)."""
    line = f"{task} {r.iteration}/{r.total} loss {r.loss:.3e}"
    if r.psnr_reference is not None:
        line += f" PSNR {r.psnr_reference:.2f} dB" + (f" (EMA {r.psnr_reference_ema:.2f})" if ema else "")
    line += f" {r.iterations_per_second:.2f} it/s"
    if r.iterations_per_second > 0:
        left = int((r.total - r.iteration) / r.iterations_per_second)
        line += f" ETA {left // 3600}:{left // 60 % 60:02d}:{left % 60:02d}"
    return line


def _run_with_progress(
    fitter: Fitter,
    config: FitConfig,
    job: FitJob,
    console: Any,
    outputs: Outputs,
    saver: Optional[Callable[[LogRecord], None]],
    stop_requested: Callable[[], bool],
) -> Session[FitResult]:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    def snapshot(iteration: int, image: torch.Tensor) -> None:
        path = snapshot_path(job.output, iteration)
        outputs.write(path, lambda overwrite: save_image(image, path, overwrite=overwrite))

    kwargs: dict[str, Any] = dict(
        snapshot_every=job.snapshot_every, on_snapshot=snapshot, stop_requested=stop_requested
    )
    if job.quiet:
        return (yield from fitter.session(config.iterations, on_log=saver, **kwargs))
    if not console.is_terminal:
        last = [time.monotonic()]

        def plain(r: LogRecord) -> None:
            now = time.monotonic()
            if now - last[0] >= job.status_every or r.iteration == r.total:
                last[0] = now
                console.print(status_line(str(config.task), r, fitter.ema is not None))
            if saver is not None:
                saver(r)

        return (yield from fitter.session(config.iterations, on_log=plain, **kwargs))
    columns = [
        TextColumn(f"{config.task}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[stats]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, console=console, transient=False) as progress:
        bar = progress.add_task("fit", total=config.iterations, completed=fitter.iteration, stats="")

        def on_log(r: LogRecord) -> None:
            stats = f"loss {r.loss:.2e}  {r.iterations_per_second:.2f} it/s"
            if r.psnr_reference is not None:
                stats += f"  PSNR {r.psnr_reference:.2f} dB"
                if fitter.ema is not None:
                    stats += f" (EMA {r.psnr_reference_ema:.2f})"
            progress.update(bar, completed=r.iteration, stats=stats)
            if saver is not None:
                saver(r)

        return (yield from fitter.session(config.iterations, on_log=on_log, **kwargs))
