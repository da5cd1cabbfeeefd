"""One restoration job from files to files, as ``dipc fit`` runs it (and as a script can, without the CLI).

The job itself (``FitJob``, its problem, its output files) is ``fitjob``; the checks before fitting ``preflight``;
the progress display ``progress``; a tiled job ``tiling``. Their names that scripts and tests use are re-exported here.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

from .checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from .checks import is_whole
from .config import FitConfig
from .errors import DipError
from .fitjob import (
    INTERRUPTED,
    OUTPUT_FIELDS,
    FitJob,
    NetShape,
    Outputs,
    build_config,
    default_checkpoint_path,
    load_problem,
    mask_source,
    parse_kernel,
    path_key,
    problem_options_checked,
    resolve_device,
    resumable_flags,
    resume_config,
    snapshot_path,
    with_noise_peak,
)
from .fitting import FitResult, Fitter, LogRecord, Session, drive, stop_flag
from .imageio import save_image, save_side_by_side
from .preflight import MEMORY_SHARE, check_memory, dry_run, is_out_of_memory
from .problem import Problem
from .progress import run_with_progress, status_line
from .report import build_report, save_report
from .tasks import spec
from .tiling import check_config, tiled_session
from .tiling import check_job as check_tiling
from .timelapse import Timelapse
from .timelapse import check as check_timelapse

__all__ = [  # what moved out, importable from here as before
    "INTERRUPTED",
    "MEMORY_SHARE",
    "OUTPUT_FIELDS",
    "FitJob",
    "NetShape",
    "Outputs",
    "build_config",
    "default_checkpoint_path",
    "load_problem",
    "resolve_device",
    "resumable_flags",
    "resume_config",
    "snapshot_path",
    "status_line",
    "validate_job",
    "run_job",
    "fit_session",
    "BestSaver",
    "PeriodicSaver",
]


def validate_job(job: FitJob, *, device: bool = True) -> None:
    """Everything ``fit_session`` refuses before it reads an image: the job's flags, its configuration (preset, task,
    factor, network, ...), the mask source, the kernel, the tiling and (``device``) the device's availability.
    ``fit_session`` starts with it, and ``dipc batch`` runs it for every job before the first fit, so both refuse
    the same things; what needs the files (unreadable image, mask of another size) is found when the fit loads them."""
    if not is_whole(job.snapshot_every, 0):
        raise DipError(f"--snapshot-every must be >= 0, got {job.snapshot_every}")
    if not job.status_every > 0:
        raise DipError(f"--status-every must be a positive number of seconds, got {job.status_every}")
    if not job.checkpoint_every >= 0:
        raise DipError(f"--checkpoint-every must be >= 0 seconds, got {job.checkpoint_every}")
    check_timelapse(job.timelapse, job.timelapse_every)
    tiled = job.tile is not None or job.overlap != FitJob.overlap
    if tiled:
        check_tiling(job)
    if job.resume is not None:
        return  # the checkpoint holds the problem and the settings: checked as it is loaded (resume_config)
    chosen, noise = problem_options_checked(job)
    config = build_config(with_noise_peak(job, noise), chosen.channels)
    task = spec(str(job.task))  # (problem_options_checked refuses a job without one)
    if task.needs("mask"):
        mask_source(job, chosen.holes)
    if task.needs("kernel"):
        parse_kernel(config)
    if tiled:
        assert job.tile is not None  # (check_tiling refuses --overlap without --tile)
        check_config(config, job.tile, job.overlap)
    if device:
        resolve_device(str(config.device))


def prepare(job: FitJob, notes: Optional[list[str]] = None) -> tuple[FitConfig, Problem, str, Optional[Checkpoint]]:
    """A validated, untiled job's configuration (on its device), problem and device, and with --resume its
    checkpoint: what its fit, or its estimate, starts from. What the user should know (a conversion) goes to
    ``notes``."""
    ckpt: Optional[Checkpoint] = None
    if job.resume is not None:
        ckpt = load_checkpoint(job.resume)
        config, problem = resume_config(job, ckpt), ckpt.problem
    else:
        config, problem = load_problem(job, notes)
    device = resolve_device(str(config.device))
    return config.replace(device=device), problem, device, ckpt


def run_job(job: FitJob, console_file: Any = None) -> int:
    """Runs the job; returns the exit code (0, or 130 after Ctrl-C, with checkpoint and image saved)."""
    return drive(fit_session(job, console_file))


def fit_session(
    job: FitJob,
    console_file: Any = None,
    stop_requested: Optional[Callable[[], bool]] = None,
    on_log: Optional[Callable[[LogRecord, Fitter], None]] = None,
) -> Session[int]:
    """``run_job`` as a fit session (see ``fitting.StepRequest``): a batch driver packs several. ``stop_requested``
    replaces the Ctrl-C handler this installs otherwise (a batch installs one for all its fits); a stop requested
    so ends the fit as Ctrl-C does (image and resumable checkpoint written, 130 returned). ``on_log`` is called at
    every log point with the record and the fitter (whose ``image()`` is the current image), for a caller's own
    live view; not with ``--tile``."""
    from rich.console import Console

    console = Console(file=console_file or sys.stderr, highlight=False, soft_wrap=True)
    validate_job(job)
    if job.tile is not None or job.overlap != FitJob.overlap:
        return (yield from tiled_session(job, console, stop_requested))
    notes: list[str] = []
    config, problem, device, ckpt = prepare(job, notes)
    for note in notes:
        console.print(f"note: {note}")
    if job.dry_run:
        return dry_run(config, problem, device, console, done=ckpt.iteration if ckpt is not None else 0)

    outputs = Outputs(job.force)
    outputs.add(job.output, "-o")
    same_as_resume = (
        job.resume is not None and job.checkpoint is not None and path_key(job.checkpoint) == path_key(job.resume)
    )
    outputs.add(job.checkpoint, "--checkpoint", own=same_as_resume)
    outputs.add(job.report, "--report")
    outputs.add(job.compare, "--compare")
    outputs.add(job.timelapse, "--timelapse")
    if job.snapshot_every:
        for it in range(job.snapshot_every, config.iterations + 1, job.snapshot_every):
            outputs.add(snapshot_path(job.output, it), f"snapshot {it}")
    interrupt_ckpt = job.checkpoint or default_checkpoint_path(job.output)
    if job.checkpoint is None:  # on Ctrl-C: OUT.ckpt, the resumed file itself, or OUT-<iteration>.ckpt if taken
        continues = job.resume is not None and path_key(interrupt_ckpt) == path_key(job.resume)
        outputs.add(interrupt_ckpt, "the Ctrl-C checkpoint", check=False, own=continues)
    if job.resume is not None and not outputs.owns(job.resume):  # (owned: the run continues the resumed file)
        outputs.add(job.resume, "--resume", check=False, written=False)  # an input: no output may be written over it
    guess = check_memory(config, problem, device)

    try:
        fitter = ckpt.fitter(device, config) if ckpt is not None else Fitter(config, problem, device=device)
        console.print(f"step: {fitter.plan.describe()}")
        console.print(guess.describe())
        with stop_flag(stop_requested, lambda message: console.print(message)) as stopping:
            saver = _savers(fitter, job, outputs, on_log)
            timelapse = Timelapse(job.timelapse_every) if job.timelapse is not None else None
            result = yield from run_with_progress(fitter, config, job, console, outputs, saver, stopping, timelapse)
            if timelapse is not None and job.timelapse is not None:
                timelapse.add(result.iterations, result.image)  # the last frame is the image the fit returns
                path = job.timelapse
                outputs.write(path, lambda overwrite: timelapse.save(path, overwrite=overwrite))
            resumed_from = ckpt.iteration if ckpt is not None else None
            return _finish(fitter, result, job, console, outputs, interrupt_ckpt, resumed_from)
    except Exception as exc:
        if is_out_of_memory(exc):
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
    # the checkpoint after the report: a batch job is finished once its report is written, and a finished fit's
    # checkpoint left by a job that failed before its report could not be resumed (nothing is left to fit)
    if job.checkpoint is not None:
        ckpt = job.checkpoint
        outputs.write(ckpt, lambda overwrite: save_checkpoint(fitter, ckpt, overwrite=overwrite))
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
            and record.iteration < record.total  # the last one: _finish writes it once the report is written
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


def _savers(
    fitter: Fitter, job: FitJob, outputs: Outputs, on_log: Optional[Callable[[LogRecord, Fitter], None]] = None
) -> Optional[Callable[[LogRecord], None]]:
    """What runs at each log point besides progress: the auto-stop image keeper, the periodic checkpoint and the
    caller's hook."""
    savers: list[Callable[[LogRecord], None]] = []
    if fitter.stopper is not None:
        savers.append(BestSaver(fitter, job.output, job.checkpoint, outputs))
    if job.checkpoint_every and job.checkpoint is not None:
        savers.append(PeriodicSaver(fitter, job.checkpoint, outputs, job.checkpoint_every))
    if on_log is not None:
        hook = on_log
        savers.append(lambda record: hook(record, fitter))
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
