"""The ``dipc`` command line: parses, validates and calls the library. Errors are one line on stderr, exit 2."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import sys
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from . import kernels, presets
from . import noise as noise_models
from .config import PANELS, Choice, FitConfig, NetConfig, Task, flagged
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
from .ui import MAX_UPLOAD_MB

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
HELP_LISTS = {  # the lists config help texts name
    "kernels": kernels.SPECS,
    "presets": ", ".join(presets.NAMES),
    "fast_presets": ", ".join(p.name for p in presets.PRESETS if p.fast),
}


def _option(name: str, kind: Any, default: Any, *decls: str, panel: str, help: str, **kwargs: Any) -> inspect.Parameter:
    """One ``dipc fit`` option as typer reads it from a signature, in its --help panel."""
    info = typer.Option(*decls, help=help, rich_help_panel=panel.capitalize(), **kwargs)
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=Annotated[kind, info])


def _argument(name: str, kind: Any, help: str) -> inspect.Parameter:
    info = typer.Argument(help=help, show_default=False)
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[kind, info])


# The options of ``dipc fit`` that are not settings of the fit: the files in and out and how the run behaves, each
# named after its FitJob field (--depth and --channels: NetShape's). The settings' options come from the fields of
# FitConfig and NetConfig (``config.option``).
JOB_OPTIONS: tuple[inspect.Parameter, ...] = (
    _argument("task", Optional[Task], "the problem"),
    _argument("image", Optional[Path], "the corrupted image (or clean one with --sigma / --from-reference)"),
    _option("mask", Optional[Path], None, panel="problem", help="inpainting mask, same size, white = known pixel"),
    _option(
        "holes",
        Optional[float],
        None,
        panel="problem",
        help="inpaint: make a mask dropping this fraction of pixels at random",
    ),
    _option(
        "box",
        Optional[float],
        None,
        panel="problem",
        help="inpaint: make a mask with a centred hole of this area fraction",
    ),
    _option("text", bool, False, "--text", panel="problem", help="inpaint: make a text-overlay mask"),
    _option(
        "from_reference",
        bool,
        False,
        "--from-reference",
        panel="problem",
        help="super-resolve / deblur: IMAGE is sharp; downsample or blur it for the input, use it as reference",
    ),
    _option(
        "sigma",
        Optional[float],
        None,
        panel="problem",
        help="denoise: add Gaussian noise of this std (0-255 scale) to IMAGE first, and use IMAGE as reference; "
        "deblur --from-reference: the noise added after the blur",
    ),
    _option(
        "noise",
        Optional[str],
        None,
        panel="problem",
        help=f"make the observation from a clean IMAGE with {noise_models.SPECS}; IMAGE is the reference",
    ),
    _option("reference", Optional[Path], None, panel="problem", help="clean image: PSNR is logged against it"),
    _option(
        "flash",
        Optional[Path],
        None,
        panel="problem",
        help="flash-no-flash: the flash photo (the network's input), same size as IMAGE",
    ),
    _option(
        "resume",
        Optional[Path],
        None,
        panel="problem",
        help="continue the fit saved in this checkpoint (only the options marked so may change)",
    ),
    _option("depth", Optional[int], None, panel="network", help="hourglass levels (preset 5)"),
    _option(
        "channels",
        Optional[str],
        None,
        panel="network",
        help=f"channels per level, down and up: one value or one per level, {LEVELS}",
    ),
    _option(  # text, not Path: Path("newdir/") would drop the separator that the output check refuses
        "output",
        Optional[str],
        None,
        "-o",
        "--output",
        panel="outputs",
        metavar="<path>",
        help="restored image (format from the extension, PNG otherwise)",
    ),
    _option(
        "checkpoint",
        Optional[str],
        None,
        panel="outputs",
        metavar="<path>",
        help="write a checkpoint here at the end (and on Ctrl-C); an existing file needs --force, except the "
        "--resume file itself, which the resumed fit continues",
    ),
    _option(
        "checkpoint_every",
        float,
        0.0,
        panel="outputs",
        help="with --checkpoint: also write it every N seconds while fitting (0 = at the end)",
    ),
    _option("report", Optional[str], None, panel="outputs", metavar="<path>", help="write a JSON report here"),
    _option(
        "compare",
        Optional[str],
        None,
        panel="outputs",
        metavar="<path>",
        help="write a side-by-side PNG: input | restored [| reference]",
    ),
    _option("snapshot_every", int, 0, panel="outputs", help="write OUT-<iteration>.png every N iterations (0 = never)"),
    _option(
        "timelapse",
        Optional[str],
        None,
        panel="outputs",
        metavar="<path>",
        help="write the fit's images as an animation (.webp or .gif)",
    ),
    _option(
        "timelapse_every",
        Optional[int],
        None,
        panel="outputs",
        show_default=False,
        help="--timelapse: one frame every N iterations (default 10)",
    ),
    _option(
        "dry_run",
        bool,
        False,
        "--dry-run",
        panel="outputs",
        help="print the estimated peak memory and time per iteration, fit nothing, write nothing",
    ),
    _option("force", bool, False, "--force", panel="outputs", help="overwrite existing outputs"),
    _option("quiet", bool, False, "--quiet", "-q", panel="outputs", help="no progress output"),
    _option(
        "status_every",
        float,
        30.0,
        panel="outputs",
        help="seconds between plain progress lines when stderr is not a terminal (logs, CI)",
    ),
    _option(
        "tile",
        Optional[int],
        None,
        panel="speed",
        show_default=False,
        help="denoise / super-resolve of an image too large for one fit: fit SIZE x SIZE tiles one after the "
        "other and blend them (super-resolve: output pixels, a multiple of --factor); Ctrl-C keeps the finished "
        "tiles in OUT.tiles/ and rerunning the same command continues",
    ),
    _option(
        "overlap", int, 32, panel="speed", help="--tile: pixels neighbouring tiles share, blended with a smooth ramp"
    ),
)


def _parsed_type(hint: Any) -> Any:
    """What an option of a field with this type parses: the value type of an optional field, and text for a per-level
    tuple (one value, or comma-separated values, one per level)."""
    if typing.get_origin(hint) is tuple:
        return str
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


def setting_options(cls: type) -> list[inspect.Parameter]:
    """The options of a config class's flagged fields, each named after its field. An option not given is None (the
    preset's value), unless the field's metadata gives a command-line default; a setting that is off by default is
    a switch (--keep-known), one that is on by default can be turned off (--no-1x1-up)."""
    hints = typing.get_type_hints(cls)
    options = []
    for f in flagged(cls):
        meta, flag = f.metadata, f.metadata["flag"]
        text = meta["help"].format(**HELP_LISTS) + (f"; {RESUMABLE}" if meta["resume"] else "")
        kind, default, decls = _parsed_type(hints[f.name]), None, flag
        if kind is bool and f.default:
            kind, decls = Optional[bool], f"{flag}/--no-{flag.removeprefix('--')}"
        elif kind is bool:
            default = False
        elif meta["cli_default"] is not None:
            default = meta["cli_default"]
        else:
            kind = Optional[kind]
        options.append(_option(f.name, kind, default, decls, panel=meta["panel"], help=text))
    return options


def fit_parameters() -> list[inspect.Parameter]:
    """Every parameter of ``dipc fit``: the arguments, then the options panel by panel (in --help's order)."""

    def rank(param: inspect.Parameter) -> int:
        panel = typing.get_args(param.annotation)[1].rich_help_panel
        return -1 if panel is None else [p.capitalize() for p in PANELS].index(panel)

    return sorted([*JOB_OPTIONS, *setting_options(FitConfig), *setting_options(NetConfig)], key=rank)


def _signature(params: list[inspect.Parameter]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Gives a command that takes ``**params`` the signature typer builds its options from."""

    def sign(command: Callable[..., Any]) -> Callable[..., Any]:
        command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        return command

    return sign


@app.command()
@user_errors
@_signature(fit_parameters())
def fit(**params: Any) -> None:
    """Fit the Deep Image Prior to one image: dipc fit TASK IMAGE -o OUT.png, or dipc fit --resume CKPT -o OUT.png."""
    from . import restore

    code = restore.run_job(fit_job(params))
    if code:
        raise typer.Exit(code)


def fit_job(params: dict[str, Any]) -> FitJob:
    """The ``FitJob`` of ``dipc fit``'s parsed options, by parameter name (a setting's is its config field's name).
    The settings the user gave go to ``FitJob.settings``, the network's to ``NetShape``, whose fields are named
    after the config field or, where the two differ, after the flag (--skip-channels, --input)."""
    from .fitjob import FitJob, NetShape, with_command_line_defaults  # (torch: not at the top, --help stays fast)

    if params["output"] is None and not params["dry_run"]:
        fail("missing -o/--output: where to write the restored image")
    shape_fields = {f.name for f in dataclasses.fields(NetShape)}
    job = {p.name: _plain(params[p.name]) for p in JOB_OPTIONS if p.name not in shape_fields}
    net = {p.name: params[p.name] for p in JOB_OPTIONS if p.name in shape_fields}
    settings = {}
    for f in flagged(FitConfig):
        value = params[f.name]
        if f.metadata["job"]:
            job[f.name] = value
        elif value is not None and value is not False:  # a switch not given is not a setting
            settings[f.name] = value
    for f in flagged(NetConfig):
        name = f.name if f.name in shape_fields else f.metadata["flag"].removeprefix("--").replace("-", "_")
        value = params[f.name]
        net[name] = None if value is False and f.default is False else _plain(value)  # a switch not given
    job["output"] = job["output"] or Path("dry-run.png")
    return with_command_line_defaults(FitJob(**job, settings=settings, net=NetShape(**net)))


def _plain(value: Any) -> Any:
    """A choice as its text, as the job's fields hold it."""
    return value.value if isinstance(value, Choice) else value


@functools.cache
def _fit_command() -> Any:
    """``dipc fit`` as a click command, built once: typer builds the whole app's commands, and each option's value
    converter on its first use, so a manifest's rows share them instead of building them again per row."""
    return typer.main.get_command(app).commands["fit"]  # type: ignore[attr-defined]


def parse_fit_args(args: list[str]) -> FitJob:
    """``dipc fit ARGS`` parsed into its ``FitJob`` without running it (``dipc batch`` and manifests use it,
    so a job's options are exactly ``dipc fit``'s). Bad options raise ``DipError``."""
    try:
        ctx = _fit_command().make_context("dipc fit", list(args))
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
    max_upload: Annotated[int, typer.Option(help="largest file a user may upload, in MB")] = MAX_UPLOAD_MB,
) -> None:
    """Open the web app: paint a mask, watch the fit, download the image and its ONNX model (the 'ui' extra)."""
    try:
        import gradio  # noqa: F401  (the optional extra: here, so that dipc stays light without it)
    except ImportError:
        fail("dipc ui needs the ui extra: pip install 'dip-compile[ui]'")
    from .ui import LOCAL_HOSTS, serve
    from .ui.app import check_address

    check_address(host, port)  # (refused before the warning below)
    if host not in LOCAL_HOSTS:
        typer.echo(
            f"dipc: warning: serving on {host}: anyone who can reach it can run fits and read the results", err=True
        )
    serve(host, port, max_upload)


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
