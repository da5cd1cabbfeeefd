"""The ``dipc`` command line: parses, validates and calls the library. Errors are one line on stderr, exit 2."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from . import kernels, presets
from . import noise as noise_models
from .config import (
    Backend,
    Downsample,
    Generator,
    InputKind,
    Loss,
    LrSchedule,
    Precision,
    StopRule,
    StopVariant,
    Structure,
    Task,
    Upsample,
)
from .errors import DipError
from .export_options import (
    BatchNormMode,
    ExportFormat,
    ExportImage,
    ExportOptions,
    NoiseMode,
    Profile,
    Provider,
    Weights,
)

if TYPE_CHECKING:
    from .fitjob import FitJob

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Deep Image Prior restoration: fit, export and regenerate.",
)


@app.callback()
def root() -> None:
    """Deep Image Prior restoration: fit an image, export the fitted network, regenerate its image anywhere."""


def fail(message: str) -> None:
    raise DipError(message)


def user_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turns a DipError into one line on stderr and exit code 2, for the CLI and typer's test runner alike."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except DipError as exc:
            typer.echo(f"dipc: error: {exc}", err=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            typer.echo("dipc: interrupted; nothing more was saved", err=True)
            raise typer.Exit(130) from None

    return wrapper


RESUMABLE = "may change on --resume"
LEVELS = "comma-separated from the finest level (16,32,64,128,128)"


@app.command()
@user_errors
def fit(
    task: Annotated[Optional[Task], typer.Argument(help="the problem", show_default=False)] = None,
    image: Annotated[
        Optional[Path],
        typer.Argument(help="the corrupted image (or clean one with --sigma / --from-reference)", show_default=False),
    ] = None,
    output: Annotated[  # text, not Path: Path("newdir/") would drop the separator that the output check refuses
        Optional[str],
        typer.Option(
            "-o", "--output", metavar="<path>", help="restored image (format from the extension, PNG otherwise)"
        ),
    ] = None,
    mask: Annotated[Optional[Path], typer.Option(help="inpainting mask, same size, white = known pixel")] = None,
    holes: Annotated[
        Optional[float], typer.Option(help="inpaint: make a mask dropping this fraction of pixels at random")
    ] = None,
    box: Annotated[
        Optional[float], typer.Option(help="inpaint: make a mask with a centred hole of this area fraction")
    ] = None,
    text: Annotated[bool, typer.Option("--text", help="inpaint: make a text-overlay mask")] = False,
    factor: Annotated[Optional[int], typer.Option(help="super-resolution factor: 2, 4 or 8 (default 4)")] = None,
    from_reference: Annotated[
        bool,
        typer.Option(
            "--from-reference",
            help="super-resolve / deblur: IMAGE is sharp; downsample or blur it for the input, use it as reference",
        ),
    ] = False,
    sigma: Annotated[
        Optional[float],
        typer.Option(
            help="denoise: add Gaussian noise of this std (0-255 scale) to IMAGE first, and use IMAGE as reference; "
            "deblur --from-reference: the noise added after the blur"
        ),
    ] = None,
    kernel: Annotated[Optional[str], typer.Option(help=f"deblur: the known blur, {kernels.SPECS}")] = None,
    noise: Annotated[
        Optional[str],
        typer.Option(help=f"make the observation from a clean IMAGE with {noise_models.SPECS}; IMAGE is the reference"),
    ] = None,
    loss: Annotated[
        Optional[Loss], typer.Option(help="data fidelity: mse (Gaussian noise), l1 (impulse noise), poisson (counts)")
    ] = None,
    peak: Annotated[
        Optional[float], typer.Option(help="--loss poisson: photons of a white pixel (default: --noise poisson:PEAK's)")
    ] = None,
    iterations: Annotated[
        Optional[int], typer.Option(help=f"total iterations (preset: the paper's count); {RESUMABLE}")
    ] = None,
    lr: Annotated[Optional[float], typer.Option(help=f"Adam learning rate; {RESUMABLE}")] = None,
    lr_schedule: Annotated[
        Optional[LrSchedule],
        typer.Option(
            help="the rate over the fit: constant (the paper's), warmup (linear over --lr-warmup iterations), cosine "
            f"(that warm-up, then a cosine decay to --lr/10 at --iterations); {RESUMABLE}"
        ),
    ] = None,
    lr_warmup: Annotated[
        Optional[int], typer.Option(help=f"warm-up iterations of --lr-schedule warmup/cosine (100); {RESUMABLE}")
    ] = None,
    reg_noise: Annotated[
        Optional[float], typer.Option(help=f"std of the input perturbation per iteration; {RESUMABLE}")
    ] = None,
    stop: Annotated[
        Optional[StopRule], typer.Option(help="auto: variance-based early stopping (denoise default)")
    ] = None,
    stop_rule: Annotated[
        Optional[StopVariant],
        typer.Option(help="auto stopping rule: wmv (window of W outputs) or emv (exponential, no buffer)"),
    ] = None,
    stop_window: Annotated[Optional[int], typer.Option(help="auto stopping window W (preset 100)")] = None,
    stop_patience: Annotated[
        Optional[int],
        typer.Option(
            help=f"auto stopping: stop after this many iterations without a new variance minimum (preset 300); {RESUMABLE}"
        ),
    ] = None,
    checkpoint: Annotated[
        Optional[str],
        typer.Option(
            metavar="<path>",
            help="write a checkpoint here at the end (and on Ctrl-C); an existing file needs --force, except the "
            "--resume file itself, which the resumed fit continues",
        ),
    ] = None,
    resume: Annotated[
        Optional[Path],
        typer.Option(help="continue the fit saved in this checkpoint (only the options marked so may change)"),
    ] = None,
    report: Annotated[Optional[str], typer.Option(metavar="<path>", help="write a JSON report here")] = None,
    reference: Annotated[Optional[Path], typer.Option(help="clean image: PSNR is logged against it")] = None,
    seed: Annotated[
        Optional[int], typer.Option(help="seed of the network weights, the input noise and --sigma noise (default 0)")
    ] = None,
    snapshot_every: Annotated[int, typer.Option(help="write OUT-<iteration>.png every N iterations (0 = never)")] = 0,
    timelapse: Annotated[
        Optional[str], typer.Option(metavar="<path>", help="write the fit's images as an animation (.webp or .gif)")
    ] = None,
    timelapse_every: Annotated[int, typer.Option(help="--timelapse: one frame every N iterations")] = 10,
    checkpoint_every: Annotated[
        float, typer.Option(help="with --checkpoint: also write it every N seconds while fitting (0 = at the end)")
    ] = 0.0,
    compare: Annotated[
        Optional[str], typer.Option(metavar="<path>", help="write a side-by-side PNG: input | restored [| reference]")
    ] = None,
    tile: Annotated[
        Optional[int],
        typer.Option(
            help="denoise / super-resolve of an image too large for one fit: fit SIZE x SIZE tiles one after the "
            "other and blend them (super-resolve: output pixels, a multiple of --factor); Ctrl-C keeps the finished "
            "tiles in OUT.tiles/ and rerunning the same command continues",
            show_default=False,
        ),
    ] = None,
    overlap: Annotated[
        int, typer.Option(help="--tile: pixels neighbouring tiles share, blended with a smooth ramp")
    ] = 32,
    keep_known: Annotated[
        bool,
        typer.Option(
            "--keep-known",
            help=f"inpaint: keep the observed pixels in the output, use the network only in the holes; {RESUMABLE}",
        ),
    ] = False,
    preset: Annotated[
        Optional[str],
        typer.Option(
            help=f"start from this preset ({', '.join(presets.NAMES)}; dipc presets lists them); default: the task's"
        ),
    ] = None,
    paper_exact: Annotated[
        bool,
        typer.Option("--paper-exact", help="run the notebook's choices where dip-compile differs (see the README)"),
    ] = False,
    flash: Annotated[
        Optional[Path], typer.Option(help="flash-no-flash: the flash photo (the network's input), same size as IMAGE")
    ] = None,
    backtrack: Annotated[
        Optional[float],
        typer.Option(
            help="restore the last good weights when the PSNR to the input drops by more than DB dB (0 = off)"
        ),
    ] = None,
    backtrack_every: Annotated[
        Optional[int], typer.Option(help="check for backtracking every N iterations (preset 1; 50 for restoration)")
    ] = None,
    generator: Annotated[
        Optional[Generator],
        typer.Option(
            help="skip (the paper's hourglass), convdecoder or deepdecoder (decoders from a small noise input)"
        ),
    ] = None,
    structure: Annotated[Optional[Structure], typer.Option(help="network structure (preset paper)")] = None,
    depth: Annotated[Optional[int], typer.Option(help="hourglass levels (preset 5)")] = None,
    channels: Annotated[
        Optional[str], typer.Option(help=f"channels per level, down and up: one value or one per level, {LEVELS}")
    ] = None,
    channels_down: Annotated[Optional[str], typer.Option(help="channels of the down blocks, per level")] = None,
    channels_up: Annotated[Optional[str], typer.Option(help="channels of the up blocks, per level")] = None,
    skip_channels: Annotated[Optional[str], typer.Option(help="skip channels per level (0 = no skip)")] = None,
    upsample: Annotated[
        Optional[str], typer.Option(help=f"upsampling: {'|'.join(Upsample.values())}, one or per level")
    ] = None,
    downsample: Annotated[
        Optional[str], typer.Option(help=f"downsampling: {'|'.join(Downsample.values())}, one or per level")
    ] = None,
    kernel_down: Annotated[Optional[str], typer.Option(help="kernel size of the down convs (odd), per level")] = None,
    kernel_up: Annotated[Optional[str], typer.Option(help="kernel size of the up convs (odd), per level")] = None,
    kernel_skip: Annotated[Optional[int], typer.Option(help="kernel size of the skip convs (odd; preset 1)")] = None,
    need_1x1_up: Annotated[
        Optional[bool], typer.Option("--1x1-up/--no-1x1-up", help="the 1x1 conv at the end of each up block")
    ] = None,
    net_input: Annotated[
        Optional[InputKind],
        typer.Option("--input", help="the fixed input: noise, a 2-channel meshgrid, or the flash image"),
    ] = None,
    input_depth: Annotated[Optional[int], typer.Option(help="channels of the noise input (preset 32)")] = None,
    device: Annotated[str, typer.Option(help=f"cpu, cuda, cuda:N or auto; {RESUMABLE}")] = "auto",
    backend: Annotated[
        Backend,
        typer.Option(help=f"training step: eager, inductor (torch.compile) or auto; {RESUMABLE}"),
    ] = Backend.auto,
    precision: Annotated[
        Precision, typer.Option(help=f"bf16 (CPUs with AVX512-BF16/AMX, CUDA), fp16 (CUDA), fp32 or auto; {RESUMABLE}")
    ] = Precision.auto,
    log_every: Annotated[
        Optional[int], typer.Option(help=f"read loss/PSNR from the device every N iterations (default 10); {RESUMABLE}")
    ] = None,
    status_every: Annotated[
        float, typer.Option(help="seconds between plain progress lines when stderr is not a terminal (logs, CI)")
    ] = 30.0,
    save_memory: Annotated[
        bool,
        typer.Option(
            "--save-memory",
            help=f"recompute activations in the backward pass instead of keeping them: about half the peak memory at "
            f"512-1024 px for 1.3-1.5x the time per iteration, the same results; {RESUMABLE}",
        ),
    ] = False,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run", help="print the estimated peak memory and time per iteration, fit nothing, write nothing"
        ),
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="overwrite existing outputs")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress output")] = False,
) -> None:
    """Fit the Deep Image Prior to one image: dipc fit TASK IMAGE -o OUT.png, or dipc fit --resume CKPT -o OUT.png."""
    from . import restore

    code = restore.run_job(fit_job(locals()))
    if code:
        raise typer.Exit(code)


def fit_job(params: dict[str, Any]) -> FitJob:
    """The ``FitJob`` of ``dipc fit``'s parsed options (by parameter name)."""
    from .fitjob import FitJob, NetShape  # (imports torch: not at the top, so that dipc --help stays fast)

    p = dict(params)
    if p["output"] is None and not p["dry_run"]:
        fail("missing -o/--output: where to write the restored image")
    settings = {
        "iterations": p["iterations"],
        "lr": p["lr"],
        "lr_schedule": p["lr_schedule"],
        "lr_warmup": p["lr_warmup"],
        "reg_noise_std": p["reg_noise"],
        "stop": p["stop"],
        "stop_variant": p["stop_rule"],
        "stop_window": p["stop_window"],
        "stop_patience": p["stop_patience"],
        "seed": p["seed"],
        "factor": p["factor"],
        "kernel": p["kernel"],
        "loss": p["loss"],
        "peak": p["peak"],
        "keep_known": p["keep_known"] or None,
        "device": p["device"],
        "backend": p["backend"],
        "precision": p["precision"],
        "log_every": p["log_every"],
        "backtrack_db": p["backtrack"],
        "backtrack_every": p["backtrack_every"],
        "save_memory": p["save_memory"] or None,
    }
    generator, net_input, task = p["generator"], p["net_input"], p["task"]
    return FitJob(
        output=p["output"] or Path("dry-run.png"),
        task=task.value if task is not None else None,
        image=p["image"],
        mask=p["mask"],
        holes=p["holes"],
        box=p["box"],
        text=p["text"],
        from_reference=p["from_reference"],
        sigma=p["sigma"],
        reference=p["reference"],
        settings={k: v for k, v in settings.items() if v is not None},
        flash=p["flash"],
        noise=p["noise"],
        preset=p["preset"],
        paper_exact=p["paper_exact"],
        net=NetShape(
            generator=generator.value if generator is not None else None,
            structure=p["structure"],
            depth=p["depth"],
            channels=p["channels"],
            channels_down=p["channels_down"],
            channels_up=p["channels_up"],
            skip_channels=p["skip_channels"],
            upsample=p["upsample"],
            downsample=p["downsample"],
            kernel_down=p["kernel_down"],
            kernel_up=p["kernel_up"],
            kernel_skip=p["kernel_skip"],
            need_1x1_up=p["need_1x1_up"],
            input=net_input.value if net_input is not None else None,
            input_depth=p["input_depth"],
        ),
        checkpoint=p["checkpoint"],
        resume=p["resume"],
        report=p["report"],
        compare=p["compare"],
        tile=p["tile"],
        overlap=p["overlap"],
        snapshot_every=p["snapshot_every"],
        timelapse=p["timelapse"],
        timelapse_every=p["timelapse_every"],
        checkpoint_every=p["checkpoint_every"],
        dry_run=p["dry_run"],
        force=p["force"],
        quiet=p["quiet"],
        status_every=p["status_every"],
    )


def parse_fit_args(args: list[str]) -> FitJob:
    """``dipc fit ARGS`` parsed into its ``FitJob`` without running it (``dipc batch`` and manifests use it,
    so a job's options are exactly ``dipc fit``'s). Bad options raise ``DipError``."""
    fit_command = typer.main.get_command(app).commands["fit"]  # type: ignore[attr-defined]
    try:
        ctx = fit_command.make_context("dipc fit", list(args))
    except _usage_exception() as exc:
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        raise DipError(" ".join(message.split())) from None
    return fit_job(ctx.params)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
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

    from . import batch as batching

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

    outcomes, interrupted = batching.run_batch(jobs, options, parse_fit_args, on_outcome=line, notify=console.print)
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


@app.command("presets")
@user_errors
def list_presets(
    as_json: Annotated[bool, typer.Option("--json", help="print the table as JSON")] = False,
) -> None:
    """List the presets: every experiment of the paper's notebooks, with its network and settings."""
    import json

    from rich.console import Console
    from rich.table import Table

    rows = presets.rows()
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table(title="dip-compile presets (dipc fit TASK IMAGE --preset NAME)")
    for column in rows[0]:
        table.add_column(
            column.replace("_", "-"), justify="right" if column in ("parameters", "iterations") else "left"
        )
    for row in rows:
        table.add_row(
            *(f"{v:,}" if isinstance(v, int) else f"{v:.4g}" if isinstance(v, float) else str(v) for v in row.values())
        )
    Console(width=200).print(table)


@app.command()
@user_errors
def export(
    checkpoints: Annotated[list[Path], typer.Argument(help="checkpoint(s) written by dipc fit --checkpoint")],
    output: Annotated[
        str, typer.Option("-o", "--output", metavar="<path>", help="output file (a folder for several checkpoints)")
    ],
    fmt: Annotated[
        ExportFormat,
        typer.Option(
            "--format",
            help="onnx; pt2 (torch.export); torchscript (legacy: torch.jit is deprecated); all (OUT.onnx + OUT.pt2 + OUT.pt)",
        ),
    ] = ExportFormat.onnx,
    image: Annotated[
        ExportImage,
        typer.Option(
            help="fit: the image the fit returned (default); output: network on the fixed noise; ema / best: the fit's EMA or auto-stop image (stored correction)"
        ),
    ] = ExportImage.fit,
    bn: Annotated[
        BatchNormMode,
        typer.Option(
            help="frozen: statistics of the fixed noise folded into convs; batch: live statistics, exact for any noise"
        ),
    ] = BatchNormMode.frozen,
    weights: Annotated[
        Weights, typer.Option(help="weight storage: fp32, or fp16 (half the size, not bit-exact)")
    ] = Weights.fp32,
    noise: Annotated[
        NoiseMode,
        typer.Option(
            help="embedded: the noise is in the file (empty feed works anywhere); seed: rebuilt from the seed by regenerate (file ~ weights)"
        ),
    ] = NoiseMode.embedded,
    profile: Annotated[
        Profile,
        typer.Option(
            help="runtime: dynamic batch, noise inside (ONNX Runtime, empty feed); portable: batch 1, noise a plain input saved as OUT.noise.npy (OpenCV DNN and other runtimes)"
        ),
    ] = Profile.runtime,
    verify: Annotated[bool, typer.Option("--verify", help="rerun the export and compare with the fit's image")] = False,
    force: Annotated[bool, typer.Option("--force", help="overwrite existing outputs")] = False,
) -> None:
    """Export a fitted network with its fixed noise: ONNX (runs with an empty feed), pt2 and/or TorchScript."""
    from . import exporters

    options = ExportOptions(
        fmt=fmt, image=image, bn=bn, weights=weights, noise=noise, profile=profile, verify=verify, force=force
    )
    written = exporters.export_checkpoints(checkpoints, output, options)
    failed, noted = False, set()
    for w in written:
        mib = 1024 * 1024
        typer.echo(
            f"{w.checkpoint} -> {w.path} ({w.format}, {w.bytes / mib:.2f} MiB: weights "
            f"{w.weight_bytes / mib:.2f} MiB fp32 + noise {w.noise_bytes / mib:.2f} MiB"
            + (f" + {w.metadata['image']} correction {w.correction_bytes / mib:.2f} MiB" if w.correction_bytes else "")
            + ")"
        )
        note = exporters.fit_image_note(w.metadata)
        if note and w.checkpoint not in noted:
            noted.add(w.checkpoint)
            typer.echo(f"  {note}")
        if w.check is not None:
            ok = exporters.passes(w.check)
            exact = weights == Weights.fp32
            failed |= exact and not ok
            verdict = ("OK" if ok else "MISMATCH") if exact else "fp16 weights: not held to the exactness target"
            typer.echo(f"  verify: {exporters.replay.check_line(w.check, verdict)}")
    if failed:
        raise typer.Exit(1)


@app.command()
@user_errors
def regenerate(
    model: Annotated[Path, typer.Argument(help="an ONNX file written by dipc export")],
    output: Annotated[Optional[str], typer.Option("-o", "--output", metavar="<path>", help="PNG to write")] = None,
    provider: Annotated[Provider, typer.Option(help="onnxruntime provider; CUDA falls back to CPU")] = Provider.auto,
    check: Annotated[
        Optional[Path], typer.Option(help="compare with this PNG: max abs diff, identical 8-bit pixels")
    ] = None,
    noise: Annotated[
        Optional[Path], typer.Option(help="a .npy of other noise to feed instead of the shipped one")
    ] = None,
    info: Annotated[bool, typer.Option("--info", help="print the model's metadata as JSON")] = False,
    force: Annotated[bool, typer.Option("--force", help="overwrite an existing output")] = False,
    allow_unsealed: Annotated[
        bool,
        typer.Option(
            "--allow-unsealed",
            help="run a model that has no integrity seal (older export, or edited and stripped of it): its weights "
            "may have been changed undetectably",
        ),
    ] = False,
) -> None:
    """Regenerate the restored image from an exported ONNX model (the same code as export/regenerate.py)."""

    from .replay import regenerate as replay

    try:
        if info:
            text, code = replay.info(model)
            typer.echo(text)
            if code:
                raise typer.Exit(code)
            return
        if output is None and check is None:
            fail("nothing to do: give -o OUT.png and/or --check PNG")
        result = replay.regenerate(
            model,
            output,
            provider=provider.value,
            check=check,
            noise=noise,
            force=force,
            allow_unsealed=allow_unsealed,
        )
    except replay.ReplayError as exc:
        raise DipError(str(exc)) from None
    code = replay.report(result)
    if code:
        raise typer.Exit(code)


@app.command()
@user_errors
def ui(
    host: Annotated[
        str, typer.Option(help="address to serve on; anything but this machine exposes it to the network")
    ] = "127.0.0.1",
    port: Annotated[Optional[int], typer.Option(help="port (default: the first free one from 7860)")] = None,
) -> None:
    """Open the web app: paint a mask, watch the fit, download the image and its ONNX model (the 'ui' extra)."""
    try:
        import gradio  # noqa: F401  (the optional extra: here, so that dipc stays light without it)
    except ImportError:
        fail("dipc ui needs the ui extra: pip install 'dip-compile[ui]'")
    from .ui import LOCAL_HOSTS, serve

    if host not in LOCAL_HOSTS:
        typer.echo(
            f"dipc: warning: serving on {host}: anyone who can reach it can run fits and read the results", err=True
        )
    serve(host, port)


def _usage_exception() -> type[Exception]:
    """The exception typer raises for usage errors: its own where it vendors click, click's otherwise."""
    try:
        from typer import TyperException

        return TyperException
    except ImportError:
        from click import ClickException

        return ClickException


def main(argv: Optional[list[str]] = None) -> None:
    """Console entry point: usage errors too become one line on stderr with exit code 2."""
    usage_problem = _usage_exception()

    args = sys.argv[1:] if argv is None else argv
    try:
        code = app(args=args or ["--help"], prog_name="dipc", standalone_mode=False)
    except usage_problem as exc:
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        print(f"dipc: error: {' '.join(message.split())}", file=sys.stderr)
        sys.exit(2)
    except typer.Abort:
        sys.exit(130)
    except DipError as exc:
        print(f"dipc: error: {exc}", file=sys.stderr)
        sys.exit(2)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
