"""``dipc batch``: many ``dipc fit`` jobs, from a folder of images or a manifest (``dip_compile.batch`` runs them)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from ..config import Task
from .errors import user_errors


@user_errors
def batch(
    ctx: typer.Context,
    source: Annotated[
        Path, typer.Argument(help="a folder of images (with --task) or a manifest (.csv / .jsonl, one job a row)")
    ],
    outdir: Annotated[Path, typer.Option("-o", "--output", help="folder for NAME.png, NAME.json and the summaries")],
    task: Annotated[
        Optional[Task], typer.Option(help="the task of every image of a folder (a manifest's default)")
    ] = None,
    mask_dir: Annotated[Optional[Path], typer.Option(help="inpaint: masks matched to the images by file name")] = None,
    reference_dir: Annotated[
        Optional[Path], typer.Option(help="clean images matched by file name: PSNR/SSIM in the summary")
    ] = None,
    pack: Annotated[int, typer.Option(help="fit K jobs of equal size and network at once, in one batched step")] = 1,
    checkpoints: Annotated[
        bool, typer.Option("--checkpoints", help="keep each job's checkpoint in OUTDIR/checkpoints")
    ] = False,
    checkpoint_every: Annotated[
        float, typer.Option(help="seconds between checkpoints of a running job (what an interrupted job resumes from)")
    ] = 60.0,
    shard: Annotated[
        Optional[str], typer.Option(help="run only shard I of N (I/N, 0 <= I < N): every N-th job from the I-th")
    ] = None,
    ray: Annotated[
        bool, typer.Option("--ray", help="run the jobs as Ray tasks on RAY_ADDRESS's cluster, or a local Ray")
    ] = False,
    cpus_per_fit: Annotated[float, typer.Option(help="--ray: CPUs per job (or pack), also its torch threads")] = 1.0,
    gpus_per_fit: Annotated[float, typer.Option(help="--ray: GPUs per job (or pack); 0.25 lets four share one")] = 0.0,
    ray_memory: Annotated[
        Optional[float],
        typer.Option(
            help="--ray: GiB of this machine's memory the local Ray lets the fits reserve (their estimated peaks); "
            "default: Ray's own, about 70% of the memory free at its start",
            show_default=False,
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="redo jobs whose outputs exist (finished or from other settings)")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress and no line per job")] = False,
) -> None:
    """Restore many images: every dipc fit option after SOURCE applies to all jobs (a manifest row adds its own).

    A rerun skips finished jobs and resumes interrupted ones. Exit 0 when every job succeeded, 1 when some failed,
    2 when the batch cannot start (bad manifest, options or OUTDIR), 130 after Ctrl-C."""
    from rich.console import Console
    from rich.measure import Measurement
    from rich.table import Table
    from rich.text import Text

    from .. import batch as batching

    options = batching.BatchOptions(
        outdir=outdir,
        common=tuple(ctx.args),
        pack=pack,
        checkpoints=checkpoints,
        checkpoint_every=checkpoint_every,
        force=force,
        shard=shard,
        ray=ray,
        cpus_per_fit=cpus_per_fit,
        gpus_per_fit=gpus_per_fit,
        ray_memory=ray_memory,
        progress=not quiet,
    )
    jobs = batching.load_jobs(source, task.value if task else None, mask_dir, reference_dir)
    console = Console(stderr=True, highlight=False, soft_wrap=True)
    if pack > 1 and not ray and not quiet:
        import torch

        if not torch.cuda.is_available():
            console.print(
                "note: on a CPU a packed step measured slower than fits one after the other (grouped convolutions); "
                "--pack pays on GPUs (see the README)"
            )
    count = [0]
    total = len(batching.shard(jobs, shard))

    def line(o: Any) -> None:
        count[0] += 1
        if quiet:
            return
        detail = (
            o.error
            if o.error
            else f"{o.iterations} it, {o.seconds or 0:.0f} s" + (f", {o.psnr:.2f} dB" if o.psnr is not None else "")
        )
        console.print(f"[{count[0]}/{total}] {o.job}: {o.status}: {detail}", markup=False)

    outcomes, interrupted = batching.run_batch(jobs, options, on_outcome=line, notify=console.print)
    written = batching.summary.summary_paths(outdir, shard)
    if not quiet:
        title = f"dipc batch: {len(outcomes)} of {total} jobs"
        table = Table(title=title)
        for column in batching.summary.COLUMNS:
            table.add_column(column)
        for o in outcomes:
            table.add_row(*(Text(cell) for cell in batching.summary.cells(o)))  # (no markup in names)
        # a drawn table only where it fits whole: in a log or a narrow terminal it would cut every cell short
        wide = console.options.update_width(10**6)  # (the measure is clamped to the width it is given)
        if console.is_terminal and Measurement.get(console, wide, table).maximum <= console.width:
            console.print(table)
        else:
            console.print(f"{title}\n{batching.summary.text_table(outcomes)}", markup=False)
        for task_name, m in batching.summary.means(outcomes).items():
            if m["mean_psnr"] is not None:
                console.print(f"{task_name}: mean PSNR {m['mean_psnr']:.2f} dB over {m['scored']} job(s)")
        console.print(f"summary: {', '.join(str(p) for p in written)}", markup=False)
    if interrupted:
        console.print("interrupted: rerun the same command to resume")
        raise typer.Exit(130)
    if any(not o.ok for o in outcomes):
        raise typer.Exit(1)
