"""What turns one ``dipc fit`` job (``FitJob``, declared in ``job``) into a configuration and checks its options,
and the files a run writes (``OUTPUTS``, one record each; ``Outputs``: one run's). Below ``plan`` (which resolves a
job once), ``tiling`` and ``restore`` (which run it), so that all use it and none imports back."""

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
from .config import FitConfig, Precision, command_line_defaults, field_of, flag_of
from .errors import DipError, joined
from .fitting import Fitter
from .imageio import check_output, output_path, save_image, save_side_by_side
from .job import KEPT, PROBLEM, FitJob
from .job import OUTPUT_FIELDS as OUTPUT_FIELDS  # (re-exported: their home before job.py)
from .job import NetShape as NetShape
from .problem import Problem
from .report import save_report
from .timelapse import Timelapse

INTERRUPTED = 130


def with_command_line_defaults(job: FitJob) -> FitJob:
    """The job with ``dipc fit``'s defaults for the settings it leaves unset (``auto`` device, backend and precision:
    ``config.command_line_defaults``; on --resume only the device's, so that the saved precision and backend hold
    unless given). Every edge builds its job through this one function (``dipc fit`` and
    ``dipc batch``, ``restore_image``, the web page), so that the same inputs fit the same way on the same
    machine whichever way they came (tests/test_job_parity.py)."""
    given = {k: v for k, v in job.settings.items() if v is not None}
    defaults = command_line_defaults(FitConfig, resuming=job.resume is not None)
    return dataclasses.replace(job, settings={**defaults, **given})


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
    default) is fp32; a --precision that names one is kept, and none given leaves the value below it (the
    preset's fp32, or on --resume the checkpoint's)."""
    precision = Precision.named(settings.get("precision"))
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
    """A file a ``dipc fit`` run writes, named by the FitJob field ``field``: the one record of how and when it is
    written, which the run's checks and writes (``restore``, ``tiling``) and ``restore_image`` read. How it is
    named on the command line, whether ``dipc batch`` names it itself and whether ``restore_image`` takes it are
    the field's own declaration (``job.FitJob``)."""

    field: str
    stage: Stage
    write: Optional[Callable[[Done, Path, bool], None]] = None  # None: written while fitting, by a progress hook
    untiled: str = ""  # why a tiled run cannot write it ("" : it does); ``{work}`` is the tiles' work folder
    continues: bool = False  # may be the --resume file itself (the run continues it)

    @property
    def flag(self) -> str:  # how messages name it
        return flag_of(FitJob, self.field)

    @property
    def api(self) -> bool:  # ``restore_image`` takes it as a keyword
        field = field_of(FitJob, self.field)
        return field is not None and bool(field.metadata.get("api"))

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
    Output("output", Stage.before_report, _write_image),
    Output("checkpoint", Stage.after_report, _write_checkpoint, TILES_KEPT, continues=True),
    Output("report", Stage.report, _write_report),
    Output("compare", Stage.before_report, _write_compare),
    Output("snapshot_every", Stage.fitting, None, TILES_WHOLE),
    Output("timelapse", Stage.fit_end, _write_timelapse, TILES_WHOLE),
)  # fmt: skip
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
    net = fields.pop("net").fingerprinted()
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
