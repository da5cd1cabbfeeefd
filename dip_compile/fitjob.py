"""One ``dipc fit`` job as data (``FitJob``: files in, files out) and what turns it into a configuration and a
problem, plus the files a run writes (``Outputs``). Below ``restore`` (which runs a job) and ``tiling`` (which runs
one tile by tile), so that both use it and neither imports the other back."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from . import coarse, drp, kernels, presets, tasks
from . import noise as noise_models
from .checkpoint import Checkpoint
from .config import (
    DECODERS,
    FitConfig,
    Generator,
    InputKind,
    NetConfig,
    Precision,
    check_depth,
    check_types,
    command_line_defaults,
    flag_of,
)
from .degradations import box_mask, random_holes_mask, text_mask
from .errors import DipError, joined
from .imageio import ImageSource, check_output, output_path, read_image, read_mask, to_grayscale
from .problem import Problem, blur_reference, crop_to_multiple, downsample_reference, make_problem

INTERRUPTED = 130


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
    padding: Optional[str] = None
    bn_init: Optional[str] = None
    align_corners: Optional[bool] = None  # a switch: None unless given

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
            if self.generator in DECODERS:  # a decoder: its input has its first level's channels, no skips
                coarsest = changes.get("channels_up", net.channels_up)[-1]
                changes.setdefault("kernel_up", (3,) if self.generator == "convdecoder" else (1,))
                changes["input_depth"] = coarsest
                changes["input_kind"] = "noise"
            elif self.generator == Generator.drp and net.input_kind.guided:
                changes["input_kind"] = InputKind.noise  # drp fits its input, which cannot be the flash image
        if self.structure is not None:
            changes["structure"] = self.structure
            if self.structure == "seed" and self.upsample is None:
                changes["upsample"] = ("bicubic",)
        for f in dataclasses.fields(self):  # the others set the NetConfig field of their name as they are
            value = getattr(self, f.name)
            if f.name in _NET_FIELDS and f.name not in (*given, "generator", "structure") and value is not None:
                changes[f.name] = value
        if self.input is not None:
            changes["input_kind"] = self.input
            kind = InputKind.named(self.input)
            if kind is not None and kind.channels is not None and self.input_depth is None:
                changes["input_depth"] = kind.channels  # a meshgrid has two channels
        return dataclasses.replace(net, **changes) if changes else net


_NET_FIELDS = frozenset(f.name for f in dataclasses.fields(NetConfig))
# The NetShape fields of the first fingerprints: a field added since enters a job's fingerprint only when given, so that
# a batch rerun still recognises the jobs it finished before the option existed.
_FINGERPRINTED_NET = frozenset(
    ("generator", "structure", "depth", "channels", "channels_down", "channels_up", "skip_channels", "upsample")
    + ("downsample", "kernel_down", "kernel_up", "kernel_skip", "need_1x1_up", "input", "input_depth")
)


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


OUTPUT_FIELDS = ("output", "checkpoint", "report", "compare", "timelapse")  # the FitJob fields naming files to write
PROBLEM, KEPT = "problem", "kept"  # the roles of FitJob fields (see ``_job_field``)


def _job_field(default: Any = None, *, role: str, flag: str = "", added: bool = False) -> Any:
    """A FitJob field and its role, which the lists over the job's fields are read from: a ``problem`` field
    describes what is fitted (the checkpoint holds it, so --resume refuses it; it is part of the fingerprint), a
    ``kept`` one where the results go and how the run reports (a resumed job keeps it; not in the fingerprint).
    ``flag``: the name the user gave it by, where it is not the field's as an option (TASK, IMAGE). ``added``: a
    field added since the first fingerprints, which enters one only when given (as the NetShape fields below), so
    that a batch rerun still recognises the jobs it finished before the option existed."""
    return field(default=default, metadata={"role": role, "flag": flag, "added": added})


@dataclass
class FitJob:
    """Files in, files out. ``settings`` holds the ``FitConfig`` fields the user set (by field name); the preset
    gives the rest. With ``resume`` the checkpoint gives the problem and the settings, and only the fields that
    ``FitConfig.resumable()`` names may change."""

    output: Path = field(metadata={"role": KEPT})
    task: Optional[str] = _job_field(role=PROBLEM, flag="TASK")
    # the input images: files (the Python API also passes images it holds: ``imageio.image_source``)
    image: Optional[ImageSource] = _job_field(role=PROBLEM, flag="IMAGE")
    mask: Optional[ImageSource] = _job_field(role=PROBLEM)
    holes: Optional[float] = _job_field(role=PROBLEM)
    box: Optional[float] = _job_field(role=PROBLEM)
    text: bool = _job_field(False, role=PROBLEM)
    from_reference: bool = _job_field(False, role=PROBLEM)
    sigma: Optional[float] = _job_field(role=PROBLEM)
    reference: Optional[ImageSource] = _job_field(role=PROBLEM)
    flash: Optional[ImageSource] = _job_field(role=PROBLEM)  # flash-no-flash: the flash photo, the network's input
    noise: Optional[str] = _job_field(role=PROBLEM)  # --noise SPEC: the observation from a clean IMAGE (noise.py)
    preset: Optional[str] = _job_field(role=PROBLEM)  # a name from ``presets.NAMES`` (None: the task's default)
    paper_exact: bool = _job_field(False, role=PROBLEM)  # the notebook's choices where this project differs
    fast: bool = _job_field(
        False, role=PROBLEM, added=True
    )  # the preset made cheaper as its task's ``tasks.Fast`` says
    settings: dict[str, Any] = field(default_factory=dict)
    net: NetShape = field(default_factory=NetShape)
    checkpoint: Optional[Path] = _job_field(role=KEPT)
    resume: Optional[Path] = None
    report: Optional[Path] = _job_field(role=KEPT)
    compare: Optional[Path] = _job_field(role=KEPT)
    snapshot_every: int = _job_field(0, role=KEPT)
    timelapse: Optional[Path] = _job_field(role=KEPT)  # --timelapse OUT.webp|gif: the fit's images as an animation
    timelapse_every: Optional[int] = _job_field(role=KEPT)  # --timelapse-every N: a frame every N iterations (10)
    checkpoint_every: float = _job_field(0.0, role=KEPT)  # seconds between checkpoints while fitting (0: at the end)
    report_extra: dict[str, Any] = field(default_factory=dict, metadata={"role": KEPT})  # more keys (dipc batch's)
    force: bool = _job_field(False, role=KEPT)
    quiet: bool = _job_field(False, role=KEPT)
    status_every: float = _job_field(30.0, role=KEPT)  # seconds between plain progress lines when not a terminal
    dry_run: bool = False  # estimate memory and time, fit nothing, write nothing
    tile: Optional[int] = None  # --tile SIZE: fit in SIZE x SIZE tiles one after the other and blend (tiling.py)
    overlap: int = 32  # --overlap PX: pixels neighbouring tiles share

    def __post_init__(self) -> None:
        """Outputs given as text (the CLI passes the user's spelling) become Paths here, after the check that only
        the text allows: ``Path("newdir/")`` drops the separator that says a folder was meant. A value of the wrong
        type (a Python caller's ``sigma="25"``) is a one-line error here."""
        check_types(self)
        for name in OUTPUT_FIELDS:
            value = getattr(self, name)
            if isinstance(value, str):
                setattr(self, name, output_path(value))

    @staticmethod
    def names(role: str) -> list[str]:
        """The fields with this role, in declaration order."""
        return [f.name for f in dataclasses.fields(FitJob) if f.metadata.get("role") == role]

    def resumed(self, checkpoint: Path) -> FitJob:
        """This job continued from ``checkpoint``: the same outputs and device; the checkpoint holds the rest."""
        kept = {name: getattr(self, name) for name in FitJob.names(KEPT)}
        device = self.settings.get("device")
        return FitJob(**kept, resume=checkpoint, settings={"device": device} if device else {})


def with_command_line_defaults(job: FitJob) -> FitJob:
    """The job with ``dipc fit``'s defaults for the settings it leaves unset (``auto`` device, backend and precision:
    ``config.command_line_defaults``). Every edge builds its job through this one function (``dipc fit`` and
    ``dipc batch``, ``restore_image``, the web page), so that the same inputs fit the same way on the same
    machine whichever way they came (tests/test_job_parity.py)."""
    given = {k: v for k, v in job.settings.items() if v is not None}
    return dataclasses.replace(job, settings={**command_line_defaults(FitConfig), **given})


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DipError("--device cuda asked for, but no CUDA GPU is available")
    return name


def _problem_options(job: FitJob) -> list[str]:
    """The options that describe the problem (the checkpoint holds it on --resume)."""
    given = [f for f in dataclasses.fields(job) if f.metadata.get("role") == PROBLEM and _given(getattr(job, f.name))]
    return [f.metadata.get("flag") or f"--{f.name.replace('_', '-')}" for f in given]


def _given(value: Any) -> bool:
    return value is not None and value is not False  # (0 is a value given)


def build_config(job: FitJob, channels: int) -> FitConfig:
    """The task's preset (named, or the task's default), made DRP by ``--generator drp``, with the job's settings
    on top; FitConfig validates every value (one-line ConfigError)."""
    settings = paper_precision({k: v for k, v in job.settings.items() if v is not None}, job.paper_exact)
    config = presets.preset(
        str(job.task),
        factor=settings.get("factor"),
        output_channels=channels,
        name=job.preset,
        paper_exact=job.paper_exact,
        fast=job.fast,
    )
    config = drp.chosen(config, job.net.generator)  # --generator drp: the paper's DRP settings for the task
    config = config.replace(**settings)
    return config.replace(net=job.net.apply(config.net))


def paper_precision(settings: dict[str, Any], paper_exact: bool) -> dict[str, Any]:
    """``settings`` with --paper-exact's precision: the paper fitted in fp32, so there ``auto`` (the command line's
    default) is fp32; a --precision that names one is kept."""
    precision = Precision.named(settings.get("precision", Precision.auto))
    if paper_exact and precision is not None and precision.is_auto:
        return {**settings, "precision": Precision.fp32}
    return settings


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
    for name, value in paper_precision(job.settings, saved.paper_exact).items():
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
    job = mask_source(job, preset_holes)
    if job.mask is not None:
        return read_mask(job.mask, size), False
    if job.holes is not None:
        return random_holes_mask(*size, job.holes, seed=seed), True
    if job.box is not None:
        return box_mask(*size, job.box), True
    return text_mask(*size), True


def mask_source(job: FitJob, preset_holes: Optional[float]) -> FitJob:
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


def problem_options_checked(job: FitJob) -> tuple[presets.Preset, Optional[noise_models.Noise]]:
    """The preset and the noise of a new fit, once its problem options are known to go together."""
    if job.task is None or job.image is None:
        raise DipError("give TASK and IMAGE (dipc fit denoise noisy.png -o out.png), or --resume CKPT")
    task = tasks.spec(job.task)
    if not task.needs("mask") and (job.mask is not None or job.holes is not None or job.box is not None or job.text):
        raise DipError(f"--mask/--holes/--box/--text only apply to {tasks.needing('mask')}, not {job.task}")
    if job.from_reference and not task.from_reference:
        raise DipError(f"--from-reference only applies to {joined(tasks.names(lambda s: s.from_reference))}")
    if (job.flash is not None) != task.needs("guide"):
        raise DipError(
            f"{job.task} needs --flash FLASH (the flash photo)"
            if job.flash is None
            else f"--flash only applies to {tasks.needing('guide')}, not {job.task}"
        )
    noise = _noise(job)
    return presets.get(job.preset or presets.default_name(job.task, job.settings.get("factor")), job.task), noise


def with_noise_peak(job: FitJob, noise: Optional[noise_models.Noise]) -> FitJob:
    """``--noise poisson:PEAK`` with ``--loss poisson``: the loss takes the peak the counts were made with."""
    if noise is not None and noise.kind == "poisson" and job.settings.get("loss") == "poisson":
        return dataclasses.replace(job, settings={"peak": noise.value, **job.settings})
    return job


def load_problem(job: FitJob, notes: Optional[list[str]] = None) -> tuple[FitConfig, Problem]:
    """The configuration and problem of a new fit; what the user should know (a conversion) goes to ``notes`` and
    to the problem's own (``Problem.notes``, which its report and checkpoint keep)."""
    notes = [] if notes is None else notes
    chosen, noise = problem_options_checked(job)
    assert job.image is not None and job.task is not None
    image = read_image(job.image)
    if chosen.channels == 1 and image.shape[0] == 3:
        notes.append(f"preset {chosen.name} is grayscale: IMAGE converted to grayscale (ITU-R 601 luma)")
    image = _as_preset_channels(image, chosen)
    reference = None
    if job.reference is not None:
        reference = _as_image_channels(
            _as_preset_channels(read_image(job.reference, "reference"), chosen), image, notes
        )
    guide = None if job.flash is None else _as_preset_channels(read_image(job.flash, "flash image"), chosen)
    job = with_noise_peak(job, noise)
    config = build_config(job, image.shape[0])
    if config.crop_to > 1:  # --paper-exact: the notebook's crop instead of our padded canvas
        image, reference, guide = _paper_crop(config, image, reference, guide, low_resolution=not job.from_reference)
    clean = image  # what --noise and the made degradations start from (the reference when they apply)
    mask, kernel, task = None, None, tasks.spec(str(job.task))
    if task.needs("kernel"):
        kernel = _kernel(config, image)
        if job.from_reference:  # IMAGE is sharp: blur it with the fit's own operator
            image = blur_reference(image, kernel)
    elif task.needs("mask"):
        mask, made = _make_mask(job, (image.shape[-2], image.shape[-1]), config.seed, chosen.holes)
        if made and noise is None and reference is None:
            reference = image
    elif task.scales and job.from_reference:
        image, clean = downsample_reference(image, config.factor)
    if noise is not None:
        image = noise.apply(image, seed=config.seed)
    if noise is not None or job.from_reference:
        reference = reference if reference is not None else clean
    problem = make_problem(config, image, mask=mask, reference=reference, guide=guide, kernel=kernel)
    coarse.check(config, problem.size)  # (the fitter checks it too: here, so that --dry-run refuses alike)
    return config, dataclasses.replace(problem, notes=tuple(notes))


def _noise(job: FitJob) -> Optional[noise_models.Noise]:
    """The noise that makes the observation from a clean IMAGE (``--noise``, or ``--sigma`` for Gaussian noise)."""
    if job.sigma is not None and job.noise is not None:
        raise DipError("give --sigma or --noise, not both (--sigma S is --noise gaussian:S)")
    if job.sigma is None and job.noise is None:
        return None
    flag = "--sigma" if job.sigma is not None else "--noise"
    # inpaint without --mask makes its mask (--holes/--box/--text, or a restoration preset's): IMAGE is clean
    task = tasks.spec(str(job.task))
    clean_image = task.clean_image or job.from_reference or (task.needs("mask") and job.mask is None)
    if not clean_image:
        raise DipError(
            f"{flag} makes evaluation data from a clean IMAGE: it applies to {joined(tasks.names(lambda s: s.clean_image))}"
            f", to {tasks.needing('mask')} with a made mask (--holes/--box/--text or a restoration preset) and to "
            f"{joined(tasks.names(lambda s: s.from_reference), 'or')} with --from-reference"
        )
    if job.sigma is not None:
        if not 0 < job.sigma <= 255:  # also false for nan
            raise DipError(f"--sigma is on the 0-255 scale and must be in (0, 255], got {job.sigma}")
        return noise_models.Noise("gaussian", job.sigma)
    assert job.noise is not None
    return noise_models.parse_noise(job.noise)


def _kernel(config: FitConfig, image: torch.Tensor) -> torch.Tensor:
    kernel = parse_kernel(config)
    kernels.check_fits(kernel, (image.shape[-2], image.shape[-1]))
    return torch.from_numpy(kernel).float()


def parse_kernel(config: FitConfig) -> Any:
    if not config.kernel:
        raise DipError(f"deblur needs --kernel: {kernels.SPECS}")
    return kernels.parse_kernel(config.kernel)


def _as_preset_channels(image: torch.Tensor, chosen: presets.Preset) -> torch.Tensor:
    """A grayscale preset (barbara) converts a colour image to grayscale (ITU-R 601 luma, as Pillow's "L"), so
    its network and parameter count are the paper's; colour presets take grayscale images as they are."""
    return to_grayscale(image) if chosen.channels == 1 and image.shape[0] == 3 else image


def _as_image_channels(reference: torch.Tensor, image: torch.Tensor, notes: list[str]) -> torch.Tensor:
    """The reference compared as the image is read: a grayscale one of a colour image as RGB (its gray in all three
    channels, as Pillow converts), a colour one of a grayscale image as its luma (as a grayscale preset converts
    IMAGE). Only a reference of another size cannot be compared (``make_problem`` refuses it)."""
    have, want = reference.shape[0], image.shape[0]
    if have == want:
        return reference
    if have == 1:
        notes.append("the reference is grayscale and IMAGE in colour: the reference compared as RGB (gray in R, G, B)")
        return reference.expand(want, -1, -1).clone()
    notes.append("the reference is in colour and IMAGE grayscale: the reference compared as grayscale (ITU-R 601 luma)")
    return to_grayscale(reference)


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
    if tasks.spec(config.task).scales and low_resolution:
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


def path_key(path: Path) -> Path:
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
        key = path_key(path)
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
        return path_key(path) in self.mine

    def write(self, path: Path, write: Callable[[bool], Any]) -> None:
        """Calls ``write(overwrite)``; the first write of a path is exclusive unless --force."""
        key = path_key(path)
        write(self.force or key in self.mine)
        self.mine.add(key)


def fingerprint(fit_job: FitJob, digests: Optional[dict[Path, str]] = None) -> str:
    """What makes a job's result: its problem and settings, with input files by content (not by path). A rerun
    skips a job whose report has the same fingerprint and resumes its checkpoint of the same fingerprint.
    ``digests``: the files' hashes by path, read once for the many jobs of a batch that share a file."""
    ignored = {*FitJob.names(KEPT), "resume"}
    fields = {
        f.name: getattr(fit_job, f.name)
        for f in dataclasses.fields(fit_job)
        if f.name not in ignored and (not f.metadata.get("added") or _given(getattr(fit_job, f.name)))
    }
    # where and how frugally it runs is not what it is
    settings = {k: v for k, v in fields.pop("settings").items() if k not in ("device", "save_memory")}
    net = {k: v for k, v in dataclasses.asdict(fields.pop("net")).items() if k in _FINGERPRINTED_NET or v is not None}
    known = {} if digests is None else digests
    text = json.dumps(
        {**fields, "net": net, "settings": settings}, sort_keys=True, default=lambda v: _content(v, known)
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _content(value: Any, digests: dict[Path, str]) -> Any:
    if isinstance(value, Path):
        if value not in digests:
            try:
                digests[value] = "sha256:" + hashlib.sha256(value.read_bytes()).hexdigest()
            except OSError:
                return str(value)
        return digests[value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return str(value)
