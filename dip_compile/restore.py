"""One restoration job from files to files, as ``dipc fit`` runs it (and as a script can, without the CLI).

A job flows one way: ``plan.make_plan`` checks and resolves it once (a ``JobPlan``); ``run_plan`` runs the steps every
plan shares (load, dry run, check the outputs, estimate the memory, fit, write the outputs of ``fitjob.OUTPUTS``)
with a ``Pipeline`` for what differs: ``WHOLE`` (one fit, here) or ``tiling.TILED`` (one fit per tile). The hooks
that run while fitting are ``progress.HOOKS``. Names that scripts and tests use are re-exported here.
"""

from __future__ import annotations

import dataclasses
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

from .checkpoint import load_checkpoint
from .errors import DipError
from .fitjob import (
    INTERRUPTED,
    OUTPUT,
    OUTPUT_FIELDS,
    Done,
    FitJob,
    NetShape,
    Outputs,
    Stage,
    at,
    build_config,
    default_checkpoint_path,
    path_key,
    resolve_device,
    resumable_flags,
    resume_config,
    snapshot_path,
)
from .fitting import FitResult, Fitter, LogRecord, Session, drive, stop_flag
from .plan import JobPlan, Loaded, Pipeline, Run, load, load_problem, make_plan, validate_job
from .preflight import MEMORY_SHARE, check_memory, dry_run, is_out_of_memory
from .progress import BestSaver, PeriodicSaver, Watch, run_with_progress, status_line
from .report import build_report
from .stopping import still_improving
from .tiling import TILED
from .timelapse import Timelapse

__all__ = [  # what moved out, importable from here as before
    "INTERRUPTED",
    "MEMORY_SHARE",
    "OUTPUT_FIELDS",
    "FitJob",
    "NetShape",
    "Outputs",
    "build_config",
    "default_checkpoint_path",
    "load_checkpoint",
    "load_problem",
    "make_plan",
    "resolve_device",
    "resumable_flags",
    "resume_config",
    "snapshot_path",
    "status_line",
    "validate_job",
    "run_job",
    "run_plan",
    "fit_session",
    "BestSaver",
    "PeriodicSaver",
]


def run_job(job: FitJob, console_file: Any = None) -> int:
    """Runs the job; returns the exit code (0, or 130 after Ctrl-C, with checkpoint and image saved)."""
    return drive(fit_session(job, console_file))


def fit_session(
    job: FitJob,
    console_file: Any = None,
    stop_requested: Optional[Callable[[], bool]] = None,
    on_log: Optional[Callable[[LogRecord, Fitter], None]] = None,
) -> Session[int]:
    """``run_job`` as a fit session (see ``fitting.StepRequest``): ``run_plan`` of the job's plan."""
    return run_plan(make_plan(job), console_file, stop_requested, on_log)


def run_plan(
    plan: JobPlan,
    console_file: Any = None,
    stop_requested: Optional[Callable[[], bool]] = None,
    on_log: Optional[Callable[[LogRecord, Fitter], None]] = None,
) -> Session[int]:
    """A plan run as a fit session (a batch driver packs several). ``stop_requested`` replaces the Ctrl-C handler
    this installs otherwise (a batch installs one for all its fits); a stop requested so ends the fit as Ctrl-C
    does (image and resumable checkpoint written, 130 returned). ``on_log`` is called at every log point with the
    record and the fitter (whose ``image()`` is the current image), for a caller's own live view; not with
    ``--tile``."""
    from rich.console import Console

    console = Console(file=console_file or sys.stderr, highlight=False, soft_wrap=True)
    job = plan.job
    pipeline: Pipeline = TILED if plan.tiled else WHOLE
    notes: list[str] = []
    loaded = pipeline.load(plan, notes)
    for note in notes:
        console.print(f"note: {note}")
    if job.dry_run:
        return pipeline.dry_run(plan, loaded, console)
    outputs = Outputs(job.force).declare(job, loaded.config.iterations)
    pipeline.declare(plan, loaded, outputs)
    guess = check_memory(loaded.config, loaded.sized, loaded.device)
    with stop_flag(stop_requested, lambda message: console.print(message)) as stopping:
        run = Run(plan, loaded, console, outputs, stopping, guess.describe(), on_log)
        done = yield from pipeline.fit(run)
        if isinstance(done, int):
            return done  # interrupted: what it keeps is written
        for stage in (Stage.before_report, Stage.report, Stage.after_report):
            outputs.write_all(job, done, at(stage))
        if done.work is not None:
            shutil.rmtree(done.work, ignore_errors=True)
        console.print(done.summary)
        return 0


def prepare(plan: JobPlan, notes: Optional[list[str]] = None) -> Loaded:
    """An untiled plan's configuration (on its device), problem and device, and with --resume its checkpoint: what
    its fit, or its estimate, starts from."""
    return WHOLE.load(plan, [] if notes is None else notes)


def interrupt_checkpoint(job: FitJob) -> Path:
    """Where Ctrl-C saves a whole fit: --checkpoint, else OUT.ckpt (the resumed file itself, or OUT-<iteration>.ckpt
    if OUT.ckpt is taken)."""
    return job.checkpoint or default_checkpoint_path(job.output)


class Whole:
    """The image fitted at once."""

    def load(self, plan: JobPlan, notes: list[str]) -> Loaded:
        return load(plan, notes)

    def dry_run(self, plan: JobPlan, loaded: Loaded, console: Any) -> int:
        return dry_run(loaded.config, loaded.problem, loaded.device, console, done=loaded.done)

    def declare(self, plan: JobPlan, loaded: Loaded, outputs: Outputs) -> None:
        job = plan.job
        if job.checkpoint is None:  # on Ctrl-C: OUT.ckpt, the resumed file itself, or OUT-<iteration>.ckpt if taken
            path = interrupt_checkpoint(job)
            continues = job.resume is not None and path_key(path) == path_key(job.resume)
            outputs.add(path, "the Ctrl-C checkpoint", check=False, own=continues)
        # --resume is an input: no output may be written over it (owned: the run continues the resumed file)
        if job.resume is not None and not outputs.owns(job.resume):
            outputs.add(job.resume, "--resume", check=False, written=False)

    def fit(self, run: Run) -> Session[Done | int]:
        job, console, outputs, loaded = run.plan.job, run.console, run.outputs, run.loaded
        config, problem, device, ckpt = loaded.config, loaded.problem, loaded.device, loaded.ckpt
        try:
            fitter = ckpt.fitter(device, config) if ckpt is not None else Fitter(config, problem, device=device)
            console.print(f"step: {fitter.plan.describe()}")
            console.print(run.estimate)
            timelapse = Timelapse(job.timelapse_every) if job.timelapse is not None else None
            watch = Watch(fitter, config, job, console, outputs, run.stop_requested, timelapse, run.on_log)
            result = yield from run_with_progress(watch)
        except Exception as exc:
            if is_out_of_memory(exc):
                raise DipError(
                    f"out of memory while fitting at {problem.canvas[1]}x{problem.canvas[0]}: use --save-memory, "
                    f"a smaller image, --tile or a smaller network (--channels, --depth)"
                ) from None
            raise
        if timelapse is not None:
            timelapse.add(result.iterations, result.image)  # the last frame is the image the fit returns
        done = Done(result.image, fitter.problem, fitter=fitter, timelapse=timelapse)
        outputs.write_all(job, done, at(Stage.fit_end))
        if result.stop_reason == "interrupted":
            return self.interrupted(fitter, result, job, console, outputs)
        resumed = {"resumed_from_iteration": ckpt.iteration} if ckpt is not None else {}
        report = build_report(fitter, result, **resumed, **job.report_extra)
        return Done(result.image, fitter.problem, report, fitter, timelapse, summary(result, report, job))

    def interrupted(self, fitter: Fitter, result: FitResult, job: FitJob, console: Any, outputs: Outputs) -> int:
        """Ctrl-C: the image and a resumable checkpoint written, and how to continue said."""
        path = interrupt_checkpoint(job)
        if job.checkpoint is None and path.exists() and not (job.force or outputs.owns(path)):
            path = path.with_name(path.stem + f"-{fitter.iteration}.ckpt")
        done = Done(result.image, fitter.problem, fitter=fitter)
        outputs.write_all(dataclasses.replace(job, checkpoint=path), done, [OUTPUT["checkpoint"], OUTPUT["output"]])
        console.print(
            f"interrupted at iteration {fitter.iteration}: image written to {job.output}, checkpoint to "
            f"{path}; continue with: dipc fit --resume {path} -o {job.output} --force"
        )
        return INTERRUPTED


WHOLE = Whole()


def summary(result: FitResult, report: dict[str, Any], job: FitJob) -> str:
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
    if still_improving(result.stop_reason, result.stop_info):
        line += "; the held-out error was still falling at the last iteration: more iterations may restore more"
    return line
