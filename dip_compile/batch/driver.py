"""``dipc batch`` from start to end: the jobs prepared (every one checked before any runs), run here (``runner``) or
on Ray (``cluster``) while OUTDIR is held (``lock``), then the summaries (``summary``). Above the modules it calls,
so that none of them imports another back."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Optional

from ..fitting import interrupt_flag
from .cluster import run_on_ray
from .jobs import BatchJob, ManifestError
from .lock import hold_outdir
from .runner import PARTIAL, BatchOptions, Outcome, prepare, run_prepared
from .summary import write_summary


def run_batch(
    jobs: Sequence[BatchJob],
    options: BatchOptions,
    on_outcome: Callable[[Outcome], None] = lambda o: None,
    notify: Optional[Callable[[str], None]] = None,
) -> tuple[list[Outcome], bool]:
    """Every job of the batch (of its shard), in this process or on Ray, then the summaries (``write_summary``);
    returns the outcomes in job order and whether Ctrl-C stopped the batch. Jobs not started are absent. OUTDIR
    (the shard) is held from the first job to the summaries: another run into it is refused (``lock``)."""
    prepared = prepare(jobs, options)
    try:
        options.outdir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ManifestError(f"cannot make OUTDIR {options.outdir}: {exc.strerror or exc}") from None
    order = {p.job.name: i for i, p in enumerate(prepared)}
    with hold_outdir(options.outdir, options.shard):
        if options.ray:
            outcomes, interrupted = run_on_ray(prepared, options, on_outcome)
        else:
            with interrupt_flag(notify) as stop_requested:
                outcomes = run_prepared(prepared, options, stop_requested, on_outcome)
                interrupted = stop_requested()
        if options.shard is None:  # alone in OUTDIR: no shard is about to write there (empty once every job finished)
            with contextlib.suppress(OSError):
                (options.outdir / PARTIAL).rmdir()
        outcomes = sorted(outcomes, key=lambda o: order[o.job])
        write_summary(outcomes, options.outdir, options.shard)
    return outcomes, interrupted
