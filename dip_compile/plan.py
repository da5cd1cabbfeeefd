"""A ``FitJob`` resolved once: ``make_plan`` checks the job and resolves its preset, noise, configuration, mask
source, kernel and device into a ``JobPlan``; ``load`` reads its files into what a fit starts from (``Loaded``). Every
edge plans a job once (``dipc fit``, ``dipc batch`` for each row before any fit, ``restore_image``, the web page),
and nothing after the plan resolves the preset, configuration or device again. Below ``tiling`` and ``restore``,
which run a plan tile by tile or whole."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Protocol

import torch

from . import coarse, kernels, tasks
from . import noise as noise_models
from .checkpoint import Checkpoint, load_checkpoint
from .checks import is_whole
from .config import FitConfig
from .degradations import box_mask, random_holes_mask, text_mask
from .errors import DipError
from .fitjob import (
    KEPT,
    OUTPUTS,
    TILES_KEPT,
    Done,
    FitJob,
    Outputs,
    build_config,
    mask_source,
    parse_kernel,
    problem_options_checked,
    resolve_device,
    resume_config,
    with_noise_peak,
)
from .fitting import Fitter, LogRecord, Session
from .imageio import read_image, read_mask, to_grayscale
from .preflight import TILED_TASKS
from .presets import Preset
from .problem import Problem, blur_reference, crop_to_multiple, downsample_reference, make_problem
from .timelapse import check as check_timelapse


@dataclass(frozen=True, eq=False)
class JobPlan:
    """A checked job with what it resolves to. With ``--resume`` the checkpoint holds the problem and settings:
    only the job's own options are checked, and ``load`` resolves the rest from the checkpoint."""

    job: FitJob  # as given (its fingerprint and the tiles' work folder are the given job's)
    tiled: bool = False  # --tile: fitted tile by tile (tiling.py)
    preset: Optional[Preset] = None
    noise: Optional[noise_models.Noise] = None  # what makes the observation from a clean IMAGE
    config: Optional[FitConfig] = None  # at the preset's channels, on ``device`` once it is resolved
    holes: Optional[float] = None  # inpainting's fraction of pixels dropped: --holes, or the preset's
    kernel: Any = None  # deblurring's kernel (a numpy array)
    device: Optional[str] = None  # None: resolved where the fit runs (a Ray worker's), or from the checkpoint

    def config_for(self, channels: int) -> FitConfig:
        """The configuration for an image of ``channels`` (known once it is read): the plan's, or, for a grayscale
        image under a colour preset, the same settings at one channel."""
        assert self.config is not None
        if channels == self.config.net.output_channels:
            return self.config
        return build_config(with_noise_peak(self.job, self.noise), channels).replace(device=self.config.device)

    def rerouted(self, job: FitJob) -> JobPlan:
        """This plan for ``job``, the same fit with other outputs (a batch names its files itself): only the
        fields that say where results go may differ, and only they are checked again."""
        moved = [
            f.name
            for f in dataclasses.fields(FitJob)
            if f.metadata.get("role") != KEPT and getattr(job, f.name) is not getattr(self.job, f.name)
        ]
        if moved:
            raise ValueError(f"rerouted() changes only where results go, not {', '.join(moved)}")
        check_outputs(job)
        return dataclasses.replace(self, job=job)


def make_plan(job: FitJob, *, device: bool = True) -> JobPlan:
    """Everything a fit refuses before it reads an image (the job's flags, its configuration, the mask source, the
    kernel, the tiling and, with ``device``, the device's availability), resolved once. ``dipc batch`` plans every
    job before the first fit (``device=False`` with --ray: a worker's device is not this machine's); what needs the
    files (an unreadable image, a mask of another size) is found by ``load``."""
    check_outputs(job)
    tiled = job.tile is not None or job.overlap != FitJob.overlap
    if job.resume is not None:
        return JobPlan(job, tiled)  # the checkpoint holds the problem and the settings: checked by ``load``
    chosen, noise = problem_options_checked(job)
    config = build_config(with_noise_peak(job, noise), chosen.channels)
    task = tasks.spec(str(job.task))  # (problem_options_checked refuses a job without one)
    holes = mask_source(job, chosen.holes).holes if task.needs("mask") else None
    kernel = parse_kernel(config) if task.needs("kernel") else None
    if tiled:
        assert job.tile is not None  # (check_outputs refuses --overlap without --tile)
        check_tiled_config(config, job.tile, job.overlap)
    where = resolve_device(str(config.device)) if device else None
    if where is not None:
        config = config.replace(device=where)
    return JobPlan(job, tiled, chosen, noise, config, holes, kernel, where)


def validate_job(job: FitJob, *, device: bool = True) -> None:
    """``make_plan``'s refusals alone (for scripts and docs checks that only ask whether a job is valid)."""
    make_plan(job, device=device)


def check_outputs(job: FitJob) -> None:
    """The refusals of the options that say where results go and how a run reports (no preset needed)."""
    if not is_whole(job.snapshot_every, 0):
        raise DipError(f"--snapshot-every must be >= 0, got {job.snapshot_every}")
    if not job.status_every > 0:
        raise DipError(f"--status-every must be a positive number of seconds, got {job.status_every}")
    if not job.checkpoint_every >= 0:
        raise DipError(f"--checkpoint-every must be >= 0 seconds, got {job.checkpoint_every}")
    check_timelapse(job.timelapse, job.timelapse_every)
    if job.tile is not None or job.overlap != FitJob.overlap:
        check_tiled_job(job)


def work_folder(output: Path) -> Path:
    """Where a tiled run keeps finished tiles and the running tile's checkpoint: OUT.tiles beside the image."""
    return output.with_name(output.name + ".tiles")


def check_tiled_job(job: FitJob) -> None:
    """The refusals of --tile that need no image: the outputs a tiled run cannot write (``Output.untiled``)."""
    tile, overlap = job.tile, job.overlap
    if tile is None:
        raise DipError("--overlap only applies with --tile SIZE")
    if not is_whole(tile, 1):
        raise DipError(f"--tile must be a positive whole number of pixels, got {tile!r}")
    if not is_whole(overlap, 0):
        raise DipError(f"--overlap must be a whole number of pixels >= 0, got {overlap!r}")
    refused = [("--resume", TILES_KEPT)] if job.resume is not None else []
    refused += [(o.flag, o.untiled) for o in OUTPUTS if o.untiled and o.given(job)]
    refused += [("--checkpoint-every", TILES_KEPT)] if job.checkpoint_every else []
    if refused:
        flag, why = refused[0]
        raise DipError(f"{flag} does not apply with --tile: {why.format(work=work_folder(job.output))}")
    if job.task in tasks.TASKS and tasks.TASKS[job.task].needs("mask"):
        raise DipError(
            f"--tile does not support {job.task}: the mask's holes cross tile borders and a tile may fall entirely in a "
            f"hole, with nothing to fit; --tile supports {' and '.join(TILED_TASKS)}"
        )
    if job.task is not None and job.task not in TILED_TASKS:
        raise DipError(f"--tile supports {' and '.join(TILED_TASKS)}, not {job.task}")


def check_tiled_config(config: FitConfig, tile: int, overlap: int) -> None:
    """The refusals of --tile that need the network and the factor."""
    net = config.net
    if tile < net.min_side:
        raise DipError(
            f"--tile {tile} is smaller than the smallest canvas of this {net.depth}-level network ({net.min_side} px: "
            f"{net.min_coarsest} px at its coarsest level); use --tile {net.min_side} or more"
        )
    if tile <= 2 * overlap:
        raise DipError(
            f"--tile ({tile}) must be larger than twice --overlap ({overlap}): a tile would be all overlap; use a "
            "larger --tile or a smaller --overlap"
        )
    if config.coarse_share:
        raise DipError(
            "--coarse-share does not apply with --tile: each tile is a small fit of its own; fit the whole image, or "
            "tile it without --coarse-share"
        )
    if tile % config.factor:  # (the factor is 1 unless the task scales)
        raise DipError(
            f"--tile is in output pixels and must be a multiple of --factor {config.factor} for {config.task}, got {tile}"
        )


@dataclass(frozen=True)
class Loaded:
    """What a fit starts from: its configuration on its device, its problem and, with --resume, its checkpoint."""

    config: FitConfig
    problem: Problem
    device: str
    ckpt: Optional[Checkpoint] = None

    @property
    def done(self) -> int:
        """The iterations fitted before (a resumed checkpoint's)."""
        return self.ckpt.iteration if self.ckpt is not None else 0

    @property
    def sized(self) -> Problem:
        """The problem whose memory is checked and estimated (a tiled run's largest tile)."""
        return self.problem


def load(plan: JobPlan, notes: Optional[list[str]] = None) -> Loaded:
    """The plan's problem read from its files (or its checkpoint), on its device. What the user should know (a
    conversion) goes to ``notes``."""
    if plan.job.resume is None:
        config, problem = load_problem(plan, notes)
        ckpt = None
    else:
        ckpt = load_checkpoint(plan.job.resume)
        config, problem = resume_config(plan.job, ckpt), ckpt.problem
    device = plan.device or resolve_device(str(config.device))
    return Loaded(config if config.device == device else config.replace(device=device), problem, device, ckpt)


def load_problem(plan: JobPlan, notes: Optional[list[str]] = None) -> tuple[FitConfig, Problem]:
    """The configuration and problem of a new fit; what the user should know (a conversion) goes to ``notes`` and
    to the problem's own (``Problem.notes``, which its report and checkpoint keep)."""
    notes = [] if notes is None else notes
    job, chosen, noise = plan.job, plan.preset, plan.noise
    assert job.image is not None and job.task is not None and chosen is not None  # (make_plan refuses the others)
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
    config = plan.config_for(image.shape[0])
    if config.crop_to > 1:  # --paper-exact: the notebook's crop instead of our padded canvas
        image, reference, guide = _paper_crop(config, image, reference, guide, low_resolution=not job.from_reference)
    clean = image  # what --noise and the made degradations start from (the reference when they apply)
    mask, kernel, task = None, None, tasks.spec(str(job.task))
    if task.needs("kernel"):
        kernels.check_fits(plan.kernel, (image.shape[-2], image.shape[-1]))
        kernel = torch.tensor(plan.kernel, dtype=torch.float32)
        if job.from_reference:  # IMAGE is sharp: blur it with the fit's own operator
            image = blur_reference(image, kernel)
    elif task.needs("mask"):
        mask, made = _make_mask(plan, (image.shape[-2], image.shape[-1]), config.seed)
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


def _make_mask(plan: JobPlan, size: tuple[int, int], seed: int) -> tuple[torch.Tensor, bool]:
    """The inpainting mask from the plan's one source, and whether it was made here (then the image is the clean
    reference)."""
    job = plan.job
    if job.mask is not None:
        return read_mask(job.mask, size), False
    if plan.holes is not None:
        return random_holes_mask(*size, plan.holes, seed=seed), True
    if job.box is not None:
        return box_mask(*size, job.box), True
    return text_mask(*size), True


def _as_preset_channels(image: torch.Tensor, chosen: Preset) -> torch.Tensor:
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


# --- running a plan: one pipeline, whole (``restore``) or tile by tile (``tiling``) ---------------------------------


@dataclass(frozen=True)
class Run:
    """One run of a plan, as its pipeline's ``fit`` sees it: the outputs already checked, the memory estimate
    made, Ctrl-C handled by ``stop_requested``."""

    plan: JobPlan
    loaded: Loaded
    console: Any
    outputs: Outputs
    stop_requested: Callable[[], bool]
    estimate: str  # the memory estimate's line, printed with the step once the first fit starts
    on_log: Optional[Callable[[LogRecord, Fitter], None]] = None


class Pipeline(Protocol):
    """How a plan is loaded, estimated, checked and fitted; ``restore.run_plan`` runs the steps in order and writes
    the outputs (``fitjob.OUTPUTS``) of the ``Done`` that ``fit`` returns (an exit code: interrupted)."""

    def load(self, plan: JobPlan, notes: list[str]) -> Loaded: ...

    def dry_run(self, plan: JobPlan, loaded: Loaded, console: Any) -> int: ...

    def declare(self, plan: JobPlan, loaded: Loaded, outputs: Outputs) -> None:
        """Files of its own to check besides the job's outputs (a whole fit's Ctrl-C checkpoint)."""

    def fit(self, run: Run) -> Session[Done | int]: ...
