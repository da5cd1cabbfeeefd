"""What runs while a fit runs, declared once (``HOOKS``): the progress the user sees (a rich progress bar on a
terminal, a plain status line every ``--status-every`` seconds elsewhere: CI, nohup, a cluster job's log; nothing
with ``--quiet``), the files kept up to date (the stopping rule's chosen image, the periodic checkpoint, the
snapshots, the timelapse's frames) and a caller's own view. Shared by ``restore`` and ``tiling``."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from .checkpoint import save_checkpoint
from .config import FitConfig
from .fitjob import FitJob, Outputs, snapshot_path
from .fitting import FitResult, Fitter, LogRecord, Session
from .imageio import save_image
from .timelapse import Timelapse

LogHook = Callable[[LogRecord], None]
SnapshotHook = Callable[[int, torch.Tensor], None]


def eta_label(capped: bool) -> str:
    """The ETA's label: "at most" where the count is a cap that a stopping rule may end the fit before."""
    return "ETA at most" if capped else "ETA"


def status_line(task: str, r: LogRecord, ema: bool) -> str:
    """The plain progress line printed when stderr is not a terminal (CI, nohup, a cluster job's log)."""
    line = f"{task} {r.iteration}/{r.total} loss {r.loss:.3e}"
    if r.psnr_reference is not None:
        line += f" PSNR {r.psnr_reference:.2f} dB" + (f" (EMA {r.psnr_reference_ema:.2f})" if ema else "")
    line += f" {r.iterations_per_second:.2f} it/s"
    if r.iterations_per_second > 0:
        left = int((r.total - r.iteration) / r.iterations_per_second)
        line += f" {eta_label(r.capped)} {left // 3600}:{left // 60 % 60:02d}:{left % 60:02d}"
    return line


@dataclass
class Watch:
    """What the hooks of one fit see. ``tiled``: one tile of a tiled run, whose image is not the job's output."""

    fitter: Fitter
    config: FitConfig
    job: FitJob
    console: Any
    outputs: Outputs
    stop_requested: Callable[[], bool]
    timelapse: Optional[Timelapse] = None
    on_log: Optional[Callable[[LogRecord, Fitter], None]] = None  # a caller's live view (the web page's)
    tiled: bool = False


@dataclass(frozen=True)
class Hook:
    """Something run at every log point (``every="log"``) or snapshot point (``"snapshot"``) of a fit: ``make``
    returns the function for this fit, or None where it does not apply; it may enter contexts on ``stack`` (a
    progress bar's), closed when the fit ends."""

    name: str
    every: str
    make: Callable[[Watch, contextlib.ExitStack], Optional[Callable[..., None]]]


def run_with_progress(watch: Watch) -> Session[FitResult]:
    """The fit's session with every hook of ``HOOKS`` that applies to it."""
    fitter, job, timelapse = watch.fitter, watch.job, watch.timelapse
    with contextlib.ExitStack() as stack:
        made = [(h.every, h.make(watch, stack)) for h in HOOKS]
        on_log = _all([hook for every, hook in made if every == "log" and hook is not None])
        on_snapshot = _all([hook for every, hook in made if every == "snapshot" and hook is not None])
        every = math.gcd(job.snapshot_every, timelapse.every if timelapse is not None else 0)  # both when both given
        return (
            yield from fitter.session(
                watch.config.iterations,
                on_log=on_log,
                snapshot_every=every,
                on_snapshot=on_snapshot,
                stop_requested=watch.stop_requested,
            )
        )


def _all(hooks: list[Callable[..., None]]) -> Optional[Callable[..., None]]:
    if not hooks:
        return None

    def call(*args: Any) -> None:
        for hook in hooks:
            hook(*args)

    return call


def _display(watch: Watch, stack: contextlib.ExitStack) -> Optional[LogHook]:
    """The progress bar on a terminal, the plain status line elsewhere, nothing with --quiet."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    fitter, config, job, console = watch.fitter, watch.config, watch.job, watch.console
    if job.quiet:
        return None
    if not console.is_terminal:
        last = [time.monotonic()]

        def plain(r: LogRecord) -> None:
            now = time.monotonic()
            if now - last[0] >= job.status_every or r.iteration == r.total:
                last[0] = now
                console.print(status_line(str(config.task), r, fitter.ema is not None))

        return plain
    columns = [
        TextColumn(f"{config.task}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[stats]}"),
        TimeElapsedColumn(),
        TextColumn(eta_label(watch.fitter.capped)),
        TimeRemainingColumn(),
    ]
    progress = stack.enter_context(Progress(*columns, console=console, transient=False))
    bar = progress.add_task("fit", total=config.iterations, completed=fitter.iteration, stats="")

    def show(r: LogRecord) -> None:
        stats = f"loss {r.loss:.2e}  {r.iterations_per_second:.2f} it/s"
        if r.psnr_reference is not None:
            stats += f"  PSNR {r.psnr_reference:.2f} dB"
            if fitter.ema is not None:
                stats += f" (EMA {r.psnr_reference_ema:.2f})"
        progress.update(bar, completed=r.iteration, stats=stats)

    return show


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
            and record.iteration < record.total  # the last one: written once the report is written
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


def _best_image(watch: Watch, stack: contextlib.ExitStack) -> Optional[LogHook]:
    """A stopping rule's chosen image (and checkpoint) kept on disk; not for a tile, whose image is not -o."""
    if watch.fitter.stopper is None or watch.tiled:
        return None
    return BestSaver(watch.fitter, watch.job.output, watch.job.checkpoint, watch.outputs)


def _periodic_checkpoint(watch: Watch, stack: contextlib.ExitStack) -> Optional[LogHook]:
    job = watch.job
    if not job.checkpoint_every or job.checkpoint is None:
        return None
    return PeriodicSaver(watch.fitter, job.checkpoint, watch.outputs, job.checkpoint_every)


def _callers_view(watch: Watch, stack: contextlib.ExitStack) -> Optional[LogHook]:
    hook, fitter = watch.on_log, watch.fitter
    return None if hook is None else lambda record: hook(record, fitter)


def _snapshots(watch: Watch, stack: contextlib.ExitStack) -> Optional[SnapshotHook]:
    """--snapshot-every N: OUT-<iteration>.png every N iterations."""
    job, outputs = watch.job, watch.outputs
    if not job.snapshot_every:
        return None

    def snapshot(iteration: int, image: torch.Tensor) -> None:
        if iteration % job.snapshot_every == 0:
            path = snapshot_path(job.output, iteration)
            outputs.write(path, lambda overwrite: save_image(image, path, overwrite=overwrite))

    return snapshot


def _timelapse_frames(watch: Watch, stack: contextlib.ExitStack) -> Optional[SnapshotHook]:
    timelapse = watch.timelapse
    if timelapse is None:
        return None

    def frame(iteration: int, image: torch.Tensor) -> None:
        if iteration % timelapse.every == 0:
            timelapse.add(iteration, image)

    return frame


HOOKS: tuple[Hook, ...] = (  # in the order they run
    Hook("progress", "log", _display),
    Hook("chosen image", "log", _best_image),
    Hook("periodic checkpoint", "log", _periodic_checkpoint),
    Hook("caller's view", "log", _callers_view),
    Hook("snapshots", "snapshot", _snapshots),
    Hook("timelapse frames", "snapshot", _timelapse_frames),
)
