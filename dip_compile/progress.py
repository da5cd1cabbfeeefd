"""A fit's progress as the user sees it: a rich progress bar on a terminal, a plain status line every
``--status-every`` seconds elsewhere (CI, nohup, a cluster job's log), nothing with ``--quiet``. Shared by
``restore`` and ``tiling``."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any, Optional

import torch

from .config import FitConfig
from .fitjob import FitJob, Outputs, snapshot_path
from .fitting import FitResult, Fitter, LogRecord, Session
from .imageio import save_image
from .timelapse import Timelapse


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


def run_with_progress(
    fitter: Fitter,
    config: FitConfig,
    job: FitJob,
    console: Any,
    outputs: Outputs,
    saver: Optional[Callable[[LogRecord], None]],
    stop_requested: Callable[[], bool],
    timelapse: Optional[Timelapse] = None,
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
        if job.snapshot_every and iteration % job.snapshot_every == 0:
            path = snapshot_path(job.output, iteration)
            outputs.write(path, lambda overwrite: save_image(image, path, overwrite=overwrite))
        if timelapse is not None and iteration % timelapse.every == 0:
            timelapse.add(iteration, image)

    every = math.gcd(job.snapshot_every, timelapse.every if timelapse is not None else 0)  # both when both given
    kwargs: dict[str, Any] = dict(snapshot_every=every, on_snapshot=snapshot, stop_requested=stop_requested)
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
