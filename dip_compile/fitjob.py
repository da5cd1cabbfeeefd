"""One ``dipc fit`` job as data (``FitJob``: files in, files out), the rules that resolve its configuration and
check its options, and the files a run writes (``OUTPUTS``, one record each; ``Outputs``: one run's). Below ``plan``
(which resolves a job once), ``tiling`` and ``restore`` (which run it), so that all use it and none imports back."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Optional

import torch

from . import drp, kernels, presets, tasks
from . import noise as noise_models
from .checkpoint import Checkpoint, save_checkpoint
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
from .errors import DipError, joined
from .fitting import Fitter
from .imageio import ImageSource, check_output, output_path, save_image, save_side_by_side
from .problem import Problem
from .report import save_report
from .timelapse import Timelapse

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
            elif self.generator == Generator.drp and net.input_kind == InputKind.image:
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
            if self.input == "meshgrid" and self.input_depth is None:
                changes["input_depth"] = 2  # a meshgrid has two channels
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
    if paper_exact and str(settings.get("precision", Precision.auto)) == Precision.auto:
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


def parse_kernel(config: FitConfig) -> Any:
    if not config.kernel:
        raise DipError(f"deblur needs --kernel: {kernels.SPECS}")
    return kernels.parse_kernel(config.kernel)


def default_checkpoint_path(output: Path) -> Path:
    """Where Ctrl-C saves the fit when no --checkpoint was given: OUT.ckpt beside the image."""
    path = output.with_name(output.stem + ".ckpt")
    return path if path != output else output.with_name(output.name + ".ckpt")


def snapshot_path(output: Path, iteration: int) -> Path:
    return output.with_name(f"{output.stem}-{iteration:06d}.png")


def path_key(path: Path) -> Path:
    """One spelling per file (relative, absolute, ``./``), to compare paths."""
    return Path(os.path.abspath(path))


class Stage(str, Enum):
    """When a run writes a file: while fitting (by a ``progress`` hook), when the fit ends (Ctrl-C too), or once
    it finished, before or after its report (a batch job is finished once its report is written, so what must not
    outlive a failed job comes after it)."""

    fitting = "fitting"
    fit_end = "fit end"
    before_report = "before report"
    report = "report"
    after_report = "after report"


@dataclass(frozen=True)
class Done:
    """What a fit hands the writers of its files: the image and the whole image's problem, and the report, the
    fitter (for its checkpoint) and the timelapse where the run has them."""

    image: torch.Tensor
    problem: Optional[Problem] = None
    report: dict[str, Any] = field(default_factory=dict)
    fitter: Optional[Fitter] = None
    timelapse: Optional[Timelapse] = None
    summary: str = ""  # the line printed once every file is written
    work: Optional[Path] = None  # a folder of the run's own, removed once every file is written (tiles)


def compare_panels(problem: Problem, image: torch.Tensor) -> list[torch.Tensor]:
    """--compare's panels: the flash photo (flash-no-flash), the input, the result and the reference if any."""
    guide = [] if problem.guide is None else [problem.guide.cpu()]
    reference = [] if problem.reference is None else [problem.reference.cpu()]
    return [*guide, problem.corrupted_view().cpu(), image, *reference]


def _write_image(done: Done, path: Path, overwrite: bool) -> None:
    save_image(done.image, path, overwrite=overwrite)


def _write_compare(done: Done, path: Path, overwrite: bool) -> None:
    assert done.problem is not None
    save_side_by_side(compare_panels(done.problem, done.image), path, overwrite=overwrite)


def _write_report(done: Done, path: Path, overwrite: bool) -> None:
    save_report(done.report, path, overwrite=overwrite)


def _write_checkpoint(done: Done, path: Path, overwrite: bool) -> None:
    assert done.fitter is not None
    save_checkpoint(done.fitter, path, overwrite=overwrite)


def _write_timelapse(done: Done, path: Path, overwrite: bool) -> None:
    assert done.timelapse is not None
    done.timelapse.save(path, overwrite=overwrite)


@dataclass(frozen=True)
class Output:
    """A file a ``dipc fit`` run writes, named by the FitJob field ``field``: the one record of it that the run's
    checks and writes (``restore``, ``tiling``), ``dipc batch`` and ``restore_image`` read."""

    field: str
    flag: str  # how messages name it
    stage: Stage
    write: Optional[Callable[[Done, Path, bool], None]] = None  # None: written while fitting, by a progress hook
    untiled: str = ""  # why a tiled run cannot write it ("" : it does); ``{work}`` is the tiles' work folder
    batch: str = ""  # how dipc batch names it when a job's options set it (it names these files itself); "": -o
    api: bool = False  # ``restore_image`` takes it as a keyword
    continues: bool = False  # may be the --resume file itself (the run continues it)

    def given(self, job: FitJob) -> bool:
        return bool(getattr(job, self.field))

    def paths(self, job: FitJob, iterations: int) -> list[tuple[Path, str]]:
        """The files it names in ``job`` (a fit of ``iterations``), with how messages name each."""
        value = getattr(job, self.field)
        if self.field == "snapshot_every":  # a file every N iterations, OUT-<iteration>.png
            if not value:
                return []
            return [(snapshot_path(job.output, it), f"snapshot {it}") for it in range(value, iterations + 1, value)]
        return [] if value is None else [(value, self.flag)]


TILES_KEPT = (
    "a tiled run keeps its finished tiles (and on Ctrl-C the running tile's checkpoint) in {work} and resumes when "
    "the same command is run again"
)
TILES_WHOLE = "the image exists only once every tile is fitted"
OUTPUTS: tuple[Output, ...] = (  # in the order they are checked (a message names the first of two sharing a path)
    Output("output", "-o", Stage.before_report, _write_image),
    Output("checkpoint", "--checkpoint", Stage.after_report, _write_checkpoint, TILES_KEPT,
           "--checkpoint (use --checkpoints)", api=True, continues=True),
    Output("report", "--report", Stage.report, _write_report, batch="--report"),
    Output("compare", "--compare", Stage.before_report, _write_compare, batch="--compare"),
    Output("snapshot_every", "--snapshot-every", Stage.fitting, None, TILES_WHOLE, "--snapshot-every"),
    Output("timelapse", "--timelapse", Stage.fit_end, _write_timelapse, TILES_WHOLE, "--timelapse"),
)  # fmt: skip
OUTPUT_FIELDS = tuple(o.field for o in OUTPUTS if o.field != "snapshot_every")  # the FitJob fields naming one file
OUTPUT = {o.field: o for o in OUTPUTS}


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

    def declare(self, job: FitJob, iterations: int, chosen: Sequence[Output] = OUTPUTS) -> Outputs:
        """Checks the files ``job`` names (of ``chosen`` outputs) for a fit of ``iterations``, before any work."""
        for o in chosen:
            for path, role in o.paths(job, iterations):
                continues = o.continues and job.resume is not None and path_key(path) == path_key(job.resume)
                self.add(path, role, own=continues)
        return self

    def write_all(self, job: FitJob, done: Done, chosen: Sequence[Output]) -> None:
        """Writes the files ``job`` names of ``chosen`` outputs, in their order."""
        for o in chosen:
            path = getattr(job, o.field)
            if path is not None and o.write is not None:
                self.write(path, functools.partial(o.write, done, path))


def at(stage: Stage) -> list[Output]:
    """The outputs written at ``stage``."""
    return [o for o in OUTPUTS if o.stage == stage]


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
