"""Runs the jobs of a batch: skips finished ones, resumes interrupted ones, records failures and goes on.

Per job NAME, in OUTDIR: ``NAME.png`` (the restored image), ``NAME.json`` (its ``dipc fit`` report plus the job's
fingerprint), ``checkpoints/NAME.ckpt`` with ``--checkpoints``, and while it runs ``.partial/NAME.<fingerprint>.ckpt``
(written every ``checkpoint_every`` seconds and on Ctrl-C; a rerun resumes from it, then it is removed or kept as
the final checkpoint) and ``.partial/NAME.<fingerprint>.claim`` (made before the job writes anything, removed once
its report is written: what a failed or killed run of the job left, a rerun may replace without --force). Every
file is written atomically, so a killed run leaves whole files or none. A run holds OUTDIR's ``.dipc-batch.lock``
(``lock``), so that two runs never write the same job's files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ..checks import is_whole
from ..errors import DipError
from ..fitting import Session
from ..job import FitJob
from ..packing import drive_packed
from ..plan import JobPlan, make_plan
from ..restore import run_plan
from .jobs import CHECKPOINTS, PARTIAL, BatchJob, ManifestError, fingerprint, fit_job, parse_shard, shard


@dataclass(frozen=True)
class BatchOptions:
    """How a batch runs (the fit options are ``common``: ``dipc fit`` flags for every job)."""

    outdir: Path
    common: tuple[str, ...] = ()
    pack: int = 1
    checkpoints: bool = False
    checkpoint_every: float = 60.0
    force: bool = False
    shard: Optional[str] = None
    ray: bool = False
    cpus_per_fit: float = 1.0
    gpus_per_fit: float = 0.0
    ray_memory: Optional[float] = None  # GiB the local Ray started for --ray gives the fits (None: Ray's own share)
    retries: int = 3
    progress: bool = False  # show each fit's progress (one fit at a time in this process only)

    def __post_init__(self) -> None:
        if not is_whole(self.pack, 1):
            raise ManifestError(f"--pack must be a whole number >= 1, got {self.pack}")
        if not self.checkpoint_every > 0:
            raise ManifestError(f"--checkpoint-every must be > 0 seconds, got {self.checkpoint_every}")
        if not self.cpus_per_fit > 0:
            raise ManifestError(f"--cpus-per-fit must be > 0, got {self.cpus_per_fit}")
        if not self.gpus_per_fit >= 0:
            raise ManifestError(f"--gpus-per-fit must be >= 0, got {self.gpus_per_fit}")
        if self.ray_memory is not None and not (self.ray_memory > 0 and math.isfinite(self.ray_memory)):
            raise ManifestError(f"--ray-memory must be a positive number of GiB, got {self.ray_memory}")
        if self.ray_memory is not None and not self.ray:
            raise ManifestError("--ray-memory sizes the local Ray of --ray: give --ray too, or drop it")
        if self.shard is not None:
            parse_shard(self.shard)
        if self.outdir.exists() and not self.outdir.is_dir():
            raise ManifestError(f"-o {self.outdir} is a file: OUTDIR must be a folder (it is created if missing)")


@dataclass
class Outcome:
    """One job's row of the summary."""

    job: str
    task: str
    status: str  # done, skipped (finished before, same settings), failed, interrupted
    iterations: Optional[int] = None
    seconds: Optional[float] = None
    psnr: Optional[float] = None
    ssim: Optional[float] = None
    stop_reason: Optional[str] = None
    error: Optional[str] = None
    output: Optional[str] = None

    @property
    def ok(self) -> bool:
        return self.status in ("done", "skipped")


@dataclass
class Prepared:
    """A job with its parsed fit, its plan and fingerprint (made up front: bad options stop the batch before any
    work)."""

    job: BatchJob
    fit: FitJob
    plan: JobPlan
    fingerprint: str
    paths: dict[str, Path] = field(default_factory=dict)


def prepare(jobs: Sequence[BatchJob], options: BatchOptions) -> list[Prepared]:
    """Parses every job's options (as ``dipc fit`` parses them), checks them as ``dipc fit`` would
    before fitting, and names its files (absolute: a Ray worker may run elsewhere); a bad job raises
    ``ManifestError`` (exit 2), before any job has run. Jobs that differ only in their files (``BatchJob.alike``)
    are parsed and checked once: a manifest of many rows costs little more than its rows' reading and hashing."""
    outdir = options.outdir.absolute()
    prepared = []
    checked: dict[tuple[Any, ...], JobPlan] = {}
    digests: dict[Path, str] = {}  # (rows often share an image, mask or reference: each file is hashed once)
    for job in shard(jobs, options.shard):
        output = outdir / f"{job.name}.png"
        alike = checked.get(job.alike())
        if alike is not None:  # the same plan for other files
            fit = dataclasses.replace(alike.job, image=job.image, mask=job.mask, reference=job.reference, output=output)
            plan = dataclasses.replace(alike, job=fit)
        else:
            fit = fit_job(job, options.common, outdir)
            try:
                # the device is a Ray worker's, not this driver's, with --ray: a worker without it fails that job
                plan = make_plan(fit, device=not options.ray)
                if fit.tile is not None and options.checkpoints:
                    raise DipError("--checkpoints does not apply to a tiled job (--tile): it has one fit per tile")
            except DipError as exc:
                raise ManifestError(f"job {job.name}: {exc}") from None
            if (fit.image, fit.mask, fit.reference) == (job.image, job.mask, job.reference):  # (not set by options)
                checked[job.alike()] = plan
        fp = fingerprint(fit, digests)
        paths = {
            "image": output,
            "report": outdir / f"{job.name}.json",
            "partial": outdir / PARTIAL / f"{job.name}.{fp}.ckpt",
            "claim": outdir / PARTIAL / f"{job.name}.{fp}.claim",
            "checkpoint": outdir / CHECKPOINTS / f"{job.name}.ckpt",
        }
        prepared.append(Prepared(job, fit, plan, fp, paths))
    return prepared


def read_report(path: Path) -> Optional[dict[str, Any]]:
    """A job's report (None: missing or unreadable, e.g. a report of another tool)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def report_fingerprint(report: Optional[dict[str, Any]]) -> Optional[str]:
    """The fingerprint a finished job's report records (None: no report, or not from a batch)."""
    batch = report.get("batch") if report is not None else None
    return batch.get("fingerprint") if isinstance(batch, dict) else None


def outcome_from_report(p: Prepared, status: str, data: dict[str, Any]) -> Outcome:
    return Outcome(
        job=p.job.name,
        task=p.job.task,
        status=status,
        iterations=data.get("iterations"),
        seconds=data.get("wall_seconds"),
        psnr=data.get("final_psnr"),
        ssim=data.get("final_ssim"),
        stop_reason=data.get("stop_reason"),
        output=str(p.paths["image"]),
    )


def job_session(p: Prepared, options: BatchOptions, stop_requested: Callable[[], bool]) -> Session[Outcome]:
    """One job as a fit session: skips it when done, resumes its partial checkpoint, and turns a bad input into a
    failed row instead of an exception (the other jobs go on)."""
    image, report, partial, claim = (p.paths[k] for k in ("image", "report", "partial", "claim"))
    if p.job.problem is not None:  # e.g. its reference is missing: it fails alone, and does not run unscored
        return Outcome(p.job.name, p.job.task, "failed", error=p.job.problem)
    try:
        finished = read_report(report)
        done = report_fingerprint(finished)
        if finished is not None and done == p.fingerprint and image.exists() and not options.force:
            return outcome_from_report(p, "skipped", finished)
        ours = partial.exists() or claim.exists()  # left by an interrupted, failed or killed run of this job
        if (image.exists() or report.exists()) and not options.force and not ours:
            why = "other settings" if done else "another run"
            raise DipError(f"{image} exists from {why}: pass --force to redo it")
        tiled = p.fit.tile is not None  # keeps its own finished tiles in NAME.png.tiles/: a rerun continues there
        fit = dataclasses.replace(
            p.fit,
            checkpoint=None if tiled else partial,
            report=report,
            checkpoint_every=0.0 if tiled else options.checkpoint_every,
            report_extra={"batch": {"job": p.job.name, "fingerprint": p.fingerprint}},
            quiet=not (options.progress and options.pack == 1 and not options.ray),
            force=True,  # checked above: what is there is this job's own (or --force)
        )
        plan = p.plan.rerouted(fit)  # planned in ``prepare``: the same fit, writing the batch's files
        if partial.exists() and not options.force and not tiled:  # interrupted before: continue where it was
            plan = make_plan(fit.resumed(partial))  # (the checkpoint holds the problem)
        try:
            partial.parent.mkdir(parents=True, exist_ok=True)
            claim.touch()
        except OSError as exc:
            raise DipError(f"cannot write in {partial.parent}: {exc.strerror or exc}") from None
        with open(os.devnull, "w") as devnull:
            code = yield from run_plan(plan, None if not fit.quiet else devnull, stop_requested)
        if code:
            where = f"its tiles in {p.paths['image']}.tiles" if tiled else partial
            return Outcome(p.job.name, p.job.task, "interrupted", error=f"interrupted; rerun to resume from {where}")
        if options.checkpoints:
            p.paths["checkpoint"].parent.mkdir(parents=True, exist_ok=True)
            os.replace(partial, p.paths["checkpoint"])
        else:
            partial.unlink(missing_ok=True)
        claim.unlink(missing_ok=True)
        return outcome_from_report(p, "done", json.loads(report.read_text()))
    except DipError as exc:
        return _failed(p, claim, str(exc))
    except Exception as exc:  # a bug must not cost the other jobs: recorded, in one line, like bad input
        message = " ".join(f"{exc.__class__.__name__}: {exc}".split())
        return _failed(p, claim, f"unexpected error (please report it): {message}")


def _failed(p: Prepared, claim: Path, error: str) -> Outcome:
    """A failed job's row; its claim stays only where it wrote something that a rerun must be free to replace."""
    if not (p.paths["image"].exists() or p.paths["report"].exists()):
        with contextlib.suppress(OSError):
            claim.unlink(missing_ok=True)
    return Outcome(p.job.name, p.job.task, "failed", error=error)


def sort_for_packing(prepared: Sequence[Prepared]) -> list[Prepared]:
    """Jobs likely to share a network and canvas next to each other (same task, preset, options, image size)."""
    from PIL import Image

    def size(path: Path) -> tuple[int, int]:
        try:
            with Image.open(path) as im:
                return im.size
        except (OSError, ValueError):
            return (0, 0)

    def key(p: Prepared) -> tuple[Any, ...]:
        job = p.job
        return (job.task, job.preset or "", job.factor or 0, job.options, size(job.image))

    return sorted(prepared, key=key)


def run_prepared(
    prepared: Sequence[Prepared],
    options: BatchOptions,
    stop_requested: Callable[[], bool],
    on_outcome: Callable[[Outcome], None] = lambda o: None,
) -> list[Outcome]:
    """Runs jobs in this process, ``options.pack`` at a time in one batched step (see ``packing``; a pack of one is
    each fit alone, in job order)."""
    outcomes: list[Outcome] = []
    ordered = sort_for_packing(prepared) if options.pack > 1 else prepared
    sessions = (_reporting(job_session(p, options, stop_requested), outcomes, on_outcome) for p in ordered)
    drive_packed(sessions, options.pack, stop_starting=stop_requested)
    return outcomes


def _reporting(
    session: Session[Outcome], outcomes: list[Outcome], on_outcome: Callable[[Outcome], None]
) -> Session[Outcome]:
    outcome = yield from session
    outcomes.append(outcome)
    on_outcome(outcome)
    return outcome
