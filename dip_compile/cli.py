"""The ``dipc`` command line: parses, validates and calls the library. Errors are one line on stderr, exit 2."""

from __future__ import annotations

import dataclasses
import functools
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from .config import FitConfig
from .errors import DipError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Deep Image Prior restoration: fit, export and regenerate.")


@app.callback()
def root() -> None:
    """Deep Image Prior restoration: fit an image, export the fitted network, regenerate its image anywhere."""


class Task(str, Enum):
    inpaint = "inpaint"
    denoise = "denoise"
    super_resolve = "super-resolve"


def fail(message: str) -> None:
    raise DipError(message)


def user_errors(command):
    """Turns a DipError into one line on stderr and exit code 2, for the CLI and typer's test runner alike."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except DipError as exc:
            typer.echo(f"dipc: error: {exc}", err=True)
            raise typer.Exit(2) from None

    return wrapper


def _net_overrides(config: FitConfig, structure: Optional[str], depth: Optional[int], channels: Optional[int],
                   skip_channels: Optional[int], upsample: Optional[str]) -> FitConfig:
    net = config.net
    changes: dict = {}
    if structure is not None:
        if structure not in ("paper", "seed"):
            fail(f"--structure must be paper or seed, got {structure!r}")
        changes["structure"] = structure
        if structure == "seed" and upsample is None:
            changes["upsample"] = "bicubic"
    if upsample is not None:
        if upsample not in ("nearest", "bilinear", "bicubic"):
            fail(f"--upsample must be nearest, bilinear or bicubic, got {upsample!r}")
        changes["upsample"] = upsample
    d = depth if depth is not None else net.depth
    if depth is not None and not 1 <= depth <= 8:
        fail(f"--depth must be between 1 and 8, got {depth}")
    if channels is not None and channels <= 0:
        fail(f"--channels must be positive, got {channels}")
    if skip_channels is not None and skip_channels < 0:
        fail(f"--skip-channels must be >= 0, got {skip_channels}")
    if depth is not None or channels is not None or skip_channels is not None:
        c = channels if channels is not None else net.channels_down[0]
        s = skip_channels if skip_channels is not None else net.channels_skip[0]
        changes.update(channels_down=(c,) * d, channels_up=(c,) * d, channels_skip=(s,) * d)
    return config.replace(net=dataclasses.replace(net, **changes)) if changes else config


@app.command()
@user_errors
def fit(
    task: Annotated[Optional[Task], typer.Argument(help="inpaint, denoise or super-resolve")] = None,
    image: Annotated[Optional[Path], typer.Argument(help="the corrupted image (or clean one with --sigma / --from-reference)")] = None,
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="restored PNG")] = None,
    mask: Annotated[Optional[Path], typer.Option(help="inpainting mask, same size, white = known pixel")] = None,
    holes: Annotated[Optional[float], typer.Option(help="inpaint: make a mask dropping this fraction of pixels at random")] = None,
    box: Annotated[Optional[float], typer.Option(help="inpaint: make a mask with a centred hole of this area fraction")] = None,
    text: Annotated[bool, typer.Option("--text", help="inpaint: make a text-overlay mask")] = False,
    factor: Annotated[Optional[int], typer.Option(help="super-resolution factor: 2, 4 or 8")] = None,
    from_reference: Annotated[bool, typer.Option("--from-reference", help="super-resolve: IMAGE is high-resolution; downsample it for the input and use it as reference")] = False,
    sigma: Annotated[Optional[float], typer.Option(help="denoise: add Gaussian noise of this std (0-255 scale) to IMAGE first, and use IMAGE as reference")] = None,
    iterations: Annotated[Optional[int], typer.Option(help="total iterations (preset: the paper's count)")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Adam learning rate")] = None,
    reg_noise: Annotated[Optional[float], typer.Option(help="std of the input perturbation per iteration")] = None,
    stop: Annotated[Optional[str], typer.Option(help="fixed or auto (variance-based early stopping; denoise default auto)")] = None,
    stop_rule: Annotated[Optional[str], typer.Option(help="auto stopping rule: wmv (window of W outputs) or emv (exponential, no buffer)")] = None,
    stop_window: Annotated[Optional[int], typer.Option(help="auto stopping window W (preset 100)")] = None,
    stop_patience: Annotated[Optional[int], typer.Option(help="auto stopping: stop after this many iterations without a new variance minimum (preset 1000)")] = None,
    checkpoint: Annotated[Optional[Path], typer.Option(help="write a checkpoint here at the end (and on Ctrl-C)")] = None,
    resume: Annotated[Optional[Path], typer.Option(help="continue the fit saved in this checkpoint")] = None,
    report: Annotated[Optional[Path], typer.Option(help="write a JSON report here")] = None,
    reference: Annotated[Optional[Path], typer.Option(help="clean image: PSNR is logged against it")] = None,
    seed: Annotated[int, typer.Option(help="seed of the network weights, the input noise and --sigma noise")] = 0,
    snapshot_every: Annotated[int, typer.Option(help="write OUT-<iteration>.png every N iterations (0 = never)")] = 0,
    compare: Annotated[Optional[Path], typer.Option(help="write a side-by-side PNG: input | restored [| reference]")] = None,
    keep_known: Annotated[bool, typer.Option("--keep-known", help="inpaint: keep the observed pixels in the output, use the network only in the holes")] = False,
    structure: Annotated[Optional[str], typer.Option(help="network structure: paper or seed")] = None,
    depth: Annotated[Optional[int], typer.Option(help="hourglass levels (preset 5)")] = None,
    channels: Annotated[Optional[int], typer.Option(help="channels per level, down and up (preset 128)")] = None,
    skip_channels: Annotated[Optional[int], typer.Option(help="skip channels per level (0 = no skips)")] = None,
    upsample: Annotated[Optional[str], typer.Option(help="nearest, bilinear or bicubic")] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda or auto")] = "auto",
    backend: Annotated[str, typer.Option(help="training step: auto, eager, inductor (torch.compile) or script (TorchScript)")] = "auto",
    precision: Annotated[str, typer.Option(help="auto, fp32, bf16 (CPUs with AVX512-BF16/AMX, CUDA) or fp16 (CUDA)")] = "auto",
    log_every: Annotated[int, typer.Option(help="read loss/PSNR from the device every N iterations")] = 10,
    force: Annotated[bool, typer.Option("--force", help="overwrite existing outputs")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar")] = False,
) -> None:
    """Fit the Deep Image Prior to one image: dipc fit TASK IMAGE -o OUT.png, or dipc fit --resume CKPT -o OUT.png."""
    from . import restore

    if output is None:
        fail("missing -o/--output: where to write the restored PNG")
    job = restore.FitJob(
        task=task.value if task is not None else None, image=image, output=output, mask=mask, holes=holes, box=box,
        text=text, factor=factor, from_reference=from_reference, sigma=sigma, iterations=iterations, lr=lr,
        reg_noise=reg_noise, stop=stop, stop_rule=stop_rule, stop_window=stop_window, stop_patience=stop_patience,
        checkpoint=checkpoint, resume=resume, report=report, reference=reference,
        seed=seed, snapshot_every=snapshot_every, compare=compare, keep_known=keep_known, device=device, backend=backend, precision=precision, log_every=log_every,
        force=force, quiet=quiet,
        net_overrides=lambda cfg: _net_overrides(cfg, structure, depth, channels, skip_channels, upsample),
    )
    code = restore.run_job(job)
    if code:
        raise typer.Exit(code)


class ExportFormat(str, Enum):
    onnx = "onnx"
    torchscript = "torchscript"
    all = "all"


class ExportImage(str, Enum):
    output = "output"
    ema = "ema"
    best = "best"


class BatchNormMode(str, Enum):
    frozen = "frozen"
    batch = "batch"


class Weights(str, Enum):
    fp32 = "fp32"
    fp16 = "fp16"


class NoiseMode(str, Enum):
    embedded = "embedded"
    seed = "seed"


class Provider(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


@app.command()
@user_errors
def export(
    checkpoints: Annotated[list[Path], typer.Argument(help="checkpoint(s) written by dipc fit --checkpoint")],
    output: Annotated[Path, typer.Option("-o", "--output", help="output file (a folder for several checkpoints)")],
    fmt: Annotated[ExportFormat, typer.Option("--format", help="onnx, torchscript or all (OUT.onnx + OUT.pt)")] = ExportFormat.onnx,
    image: Annotated[ExportImage, typer.Option(help="output: network on the fixed noise; ema / best: the fit's EMA or auto-stop image (stored correction)")] = ExportImage.output,
    bn: Annotated[BatchNormMode, typer.Option(help="frozen: statistics of the fixed noise folded into convs; batch: live statistics, exact for any noise")] = BatchNormMode.frozen,
    weights: Annotated[Weights, typer.Option(help="weight storage: fp32, or fp16 (half the size, not bit-exact)")] = Weights.fp32,
    noise: Annotated[NoiseMode, typer.Option(help="embedded: the noise is in the file (empty feed works anywhere); seed: rebuilt from the seed by regenerate (file ~ weights)")] = NoiseMode.embedded,
    verify: Annotated[bool, typer.Option("--verify", help="rerun the export and compare with the fit's image")] = False,
    force: Annotated[bool, typer.Option("--force", help="overwrite existing outputs")] = False,
) -> None:
    """Export a fitted network with its fixed noise: ONNX (runs with an empty feed) and/or TorchScript."""
    from . import exporters

    written = exporters.export_checkpoints(checkpoints, output, fmt=fmt.value, image=image.value, bn=bn.value,
                                           weights=weights.value, noise=noise.value, verify=verify, force=force)
    failed, noted = False, set()
    for w in written:
        mib = 1024 * 1024
        typer.echo(f"{w.checkpoint} -> {w.path} ({w.format}, {w.bytes / mib:.2f} MiB: weights "
                   f"{w.weight_bytes / mib:.2f} MiB fp32 + noise {w.noise_bytes / mib:.2f} MiB"
                   + (f" + {w.metadata['image']} correction {w.correction_bytes / mib:.2f} MiB" if w.correction_bytes else "")
                   + ")")
        note = exporters.fit_image_note(w.metadata)
        if note and w.checkpoint not in noted:
            noted.add(w.checkpoint)
            typer.echo(f"  {note}")
        if w.check is not None:
            ok = exporters.passes(w.check)
            exact = weights.value == "fp32"
            failed |= exact and not ok
            verdict = ("OK" if ok else "MISMATCH") if exact else "fp16 weights: not held to the exactness target"
            typer.echo(f"  verify: max abs diff {w.check['max_abs_diff']:.3g}, identical 8-bit pixels "
                       f"{100 * w.check['identical_8bit']:.3f}%, max 8-bit diff {w.check['max_8bit_diff']} ({verdict})")
    if failed:
        raise typer.Exit(1)


@app.command()
@user_errors
def regenerate(
    model: Annotated[Path, typer.Argument(help="an ONNX file written by dipc export")],
    output: Annotated[Optional[Path], typer.Option("-o", "--output", help="PNG to write")] = None,
    provider: Annotated[Provider, typer.Option(help="onnxruntime provider; CUDA falls back to CPU")] = Provider.auto,
    check: Annotated[Optional[Path], typer.Option(help="compare with this PNG: max abs diff, identical 8-bit pixels")] = None,
    noise: Annotated[Optional[Path], typer.Option(help="a .npy of other noise to feed instead of the shipped one")] = None,
    info: Annotated[bool, typer.Option("--info", help="print the model's metadata as JSON")] = False,
    force: Annotated[bool, typer.Option("--force", help="overwrite an existing output")] = False,
) -> None:
    """Regenerate the restored image from an exported ONNX model (the same code as export/regenerate.py)."""
    import json

    from .replay import regenerate as replay

    try:
        if info:
            session, _ = replay.open_session(model, "cpu")
            typer.echo(json.dumps(replay.metadata(session), indent=2, sort_keys=True))
            return
        if output is None and check is None:
            fail("nothing to do: give -o OUT.png and/or --check PNG")
        result = replay.regenerate(model, output, provider=provider.value, check=check, noise=noise, force=force)
    except replay.ReplayError as exc:
        raise DipError(str(exc)) from None
    code = replay.report(result)
    if code:
        raise typer.Exit(code)


def main(argv: Optional[list[str]] = None) -> None:
    """Console entry point: usage errors too become one line on stderr with exit code 2."""
    try:
        from typer import TyperException as UsageProblem  # typer that vendors click
    except ImportError:  # older typer on top of click
        from click import ClickException as UsageProblem

    args = sys.argv[1:] if argv is None else argv
    try:
        code = app(args=args or ["--help"], prog_name="dipc", standalone_mode=False)
    except UsageProblem as exc:
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
