"""One restoration job from files to files, as ``dipc fit`` runs it (and as a script can, without the CLI)."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch

from .checkpoint import load_checkpoint, save_checkpoint
from .config import FitConfig, preset
from .degradations import box_mask, random_holes_mask, text_mask
from .errors import DipError
from .fitting import Fitter, FitResult, LogRecord
from .imageio import check_output, load_image, load_mask, save_image, save_side_by_side
from .problem import Problem, add_noise, downsample_reference, make_problem
from .report import build_report, save_report

INTERRUPTED = 130


@dataclass
class FitJob:
    task: Optional[str]
    image: Optional[Path]
    output: Path
    mask: Optional[Path] = None
    holes: Optional[float] = None
    box: Optional[float] = None
    text: bool = False
    factor: Optional[int] = None
    from_reference: bool = False
    sigma: Optional[float] = None
    iterations: Optional[int] = None
    lr: Optional[float] = None
    reg_noise: Optional[float] = None
    stop: Optional[str] = None
    stop_rule: Optional[str] = None  # wmv or emv
    stop_window: Optional[int] = None
    stop_patience: Optional[int] = None
    checkpoint: Optional[Path] = None
    resume: Optional[Path] = None
    report: Optional[Path] = None
    reference: Optional[Path] = None
    seed: int = 0
    snapshot_every: int = 0
    compare: Optional[Path] = None
    device: str = "auto"
    backend: str = "auto"
    precision: str = "auto"
    log_every: int = 10
    force: bool = False
    quiet: bool = False
    keep_known: bool = False
    net_overrides: Callable[[FitConfig], FitConfig] = field(default=lambda cfg: cfg)


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise DipError(f"unknown device {name!r}; use cpu, cuda or auto")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DipError("--device cuda asked for, but no CUDA GPU is available")
    return name


def build_config(job: FitJob, channels: int) -> FitConfig:
    """The task's paper preset with the job's overrides; nonsense numbers become one-line errors."""
    if job.factor is not None and job.task != "super-resolve":
        raise DipError("--factor only applies to super-resolve")
    factor = job.factor if job.factor is not None else 4
    if job.task == "super-resolve" and factor not in (2, 4, 8):
        raise DipError(f"--factor must be 2, 4 or 8, got {factor}")
    config = preset(job.task, factor=factor, output_channels=channels)
    changes: dict = {"seed": job.seed, "log_every": job.log_every, **step_options(job)}
    if job.keep_known:
        if job.task != "inpaint":
            raise DipError("--keep-known only applies to inpaint")
        changes["keep_known"] = True
    if job.iterations is not None:
        changes["iterations"] = job.iterations
    if job.lr is not None:
        changes["lr"] = job.lr
    if job.reg_noise is not None:
        changes["reg_noise_std"] = job.reg_noise
    if job.stop is not None:
        if job.stop not in ("fixed", "auto"):
            raise DipError(f"--stop must be fixed or auto, got {job.stop!r}")
        changes["stop"] = job.stop
    if job.stop_rule is not None:
        if job.stop_rule not in ("wmv", "emv"):
            raise DipError(f"--stop-rule must be wmv or emv, got {job.stop_rule!r}")
        changes["stop_variant"] = job.stop_rule
    for name, value in (("window", job.stop_window), ("patience", job.stop_patience)):
        if value is not None:
            if value <= 0:
                raise DipError(f"--stop-{name} must be positive, got {value}")
            changes[f"stop_{name}"] = value
    try:
        return job.net_overrides(config.replace(**changes))
    except ValueError as exc:
        raise DipError(str(exc)) from None


def step_options(job: FitJob) -> dict:
    """--backend and --precision; they change how a step runs, never the fit's state, so a resume may change them."""
    from .acceleration import BACKENDS, PRECISIONS

    if job.backend not in BACKENDS:
        raise DipError(f"--backend must be one of {', '.join(BACKENDS)}, got {job.backend!r}")
    if job.precision not in PRECISIONS:
        raise DipError(f"--precision must be one of {', '.join(PRECISIONS)}, got {job.precision!r}")
    return {"backend": job.backend, "precision": job.precision}


def _make_mask(job: FitJob, size: tuple[int, int]) -> tuple[torch.Tensor, bool]:
    """The inpainting mask, and whether it was made here (then the image is the clean reference)."""
    sources = [job.mask is not None, job.holes is not None, job.box is not None, job.text]
    if sum(sources) != 1:
        raise DipError("inpaint needs exactly one of --mask, --holes, --box or --text")
    if job.mask is not None:
        return load_mask(job.mask, size), False
    try:
        if job.holes is not None:
            return random_holes_mask(*size, job.holes, seed=job.seed), True
        if job.box is not None:
            return box_mask(*size, job.box), True
    except ValueError as exc:
        raise DipError(str(exc)) from None
    return text_mask(*size), True


def load_problem(job: FitJob, config_for: Callable[[int], FitConfig]) -> tuple[FitConfig, Problem]:
    if job.task is None or job.image is None:
        raise DipError("give TASK and IMAGE (dipc fit denoise noisy.png -o out.png), or --resume CKPT")
    if job.task != "inpaint" and (job.mask or job.holes is not None or job.box is not None or job.text):
        raise DipError(f"--mask/--holes/--box/--text only apply to inpaint, not {job.task}")
    if job.sigma is not None and job.task != "denoise":
        raise DipError("--sigma only applies to denoise")
    if job.from_reference and job.task != "super-resolve":
        raise DipError("--from-reference only applies to super-resolve")
    image = load_image(job.image)
    config = config_for(image.shape[0])
    reference = load_image(job.reference, "reference") if job.reference is not None else None
    mask = None
    if job.task == "inpaint":
        mask, made = _make_mask(job, tuple(image.shape[-2:]))
        if made and reference is None:
            reference = image
    elif job.task == "denoise" and job.sigma is not None:
        if not 0 < job.sigma <= 255:
            raise DipError(f"--sigma is on the 0-255 scale and must be in (0, 255], got {job.sigma}")
        reference = reference if reference is not None else image
        image = add_noise(image, job.sigma / 255.0, seed=job.seed)
    elif job.task == "super-resolve" and job.from_reference:
        image, high = downsample_reference(image, config.factor)
        reference = reference if reference is not None else high
    if reference is not None and reference.shape[0] != image.shape[0]:
        raise DipError(f"reference has {reference.shape[0]} channel(s) but the image has {image.shape[0]}")
    return config, make_problem(config, image, mask=mask, reference=reference)


def default_checkpoint_path(output: Path) -> Path:
    return output.with_name(output.stem + ".ckpt")


def snapshot_path(output: Path, iteration: int) -> Path:
    return output.with_name(f"{output.stem}-{iteration:06d}.png")


def run_job(job: FitJob, console_file=None) -> int:
    """Runs the job; returns the exit code (0, or 130 after Ctrl-C, with checkpoint and image saved)."""
    from rich.console import Console

    console = Console(file=console_file or sys.stderr)
    device = resolve_device(job.device)
    if job.log_every <= 0:
        raise DipError(f"--log-every must be positive, got {job.log_every}")
    if job.snapshot_every < 0:
        raise DipError(f"--snapshot-every must be >= 0, got {job.snapshot_every}")
    if job.resume is not None:
        if job.task is not None or job.image is not None:
            raise DipError("--resume continues a saved fit: give no TASK or IMAGE with it")
        ckpt = load_checkpoint(job.resume)
        changes = {"log_every": job.log_every, **step_options(job)}
        if job.iterations is not None:
            changes["iterations"] = job.iterations
        config = ckpt.config.replace(**changes)
        if config.iterations <= ckpt.iteration:
            raise DipError(f"the checkpoint is already at iteration {ckpt.iteration}; "
                           f"pass --iterations larger than that to continue")
        problem = ckpt.problem
    else:
        config, problem = load_problem(job, lambda channels: build_config(job, channels))
        ckpt = None

    outputs = [job.output, job.report, job.compare]
    ckpt_path = job.checkpoint or default_checkpoint_path(job.output)
    same_as_resume = job.resume is not None and ckpt_path.resolve() == job.resume.resolve()
    for path in outputs:
        if path is not None:
            check_output(path, job.force)
    if job.checkpoint is not None and not same_as_resume:
        check_output(job.checkpoint, job.force)
    if job.snapshot_every:
        for it in range(job.snapshot_every, config.iterations + 1, job.snapshot_every):
            check_output(snapshot_path(job.output, it), job.force)

    try:
        fitter = ckpt.fitter(device, config) if ckpt is not None else Fitter(config, problem, device=device)
    except ValueError as exc:  # e.g. --precision fp16 on a CPU
        raise DipError(str(exc)) from None
    console.print(f"step: {fitter.plan.describe()}")
    saver = BestSaver(fitter, job.output, job.checkpoint) if fitter.stopper is not None else None
    result = _run_with_progress(fitter, config, job, console, saver)

    if result.stop_reason == "interrupted":
        if ckpt_path.exists() and not (job.force or same_as_resume or job.checkpoint is not None):
            ckpt_path = ckpt_path.with_name(ckpt_path.stem + f"-{fitter.iteration}.ckpt")
        save_checkpoint(fitter, ckpt_path)
        save_image(result.image, job.output)
        console.print(f"interrupted at iteration {fitter.iteration}: image written to {job.output}, checkpoint to "
                      f"{ckpt_path}; continue with: dipc fit --resume {ckpt_path} -o {job.output} --force")
        return INTERRUPTED

    save_image(result.image, job.output)
    if job.checkpoint is not None:
        save_checkpoint(fitter, job.checkpoint)
    if job.compare is not None:
        panels = [problem.corrupted_view().cpu(), result.image]
        if problem.reference is not None:
            panels.append(problem.reference.cpu())
        save_side_by_side(panels, job.compare)
    report = build_report(fitter, result)
    if job.report is not None:
        save_report(report, job.report)
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

    def __init__(self, fitter: Fitter, image_path: Path, checkpoint_path: Optional[Path],
                 image_seconds: float = 10.0, checkpoint_seconds: float = 60.0) -> None:
        self.fitter, self.image_path, self.checkpoint_path = fitter, image_path, checkpoint_path
        self.image_seconds, self.checkpoint_seconds = image_seconds, checkpoint_seconds
        self.image_written: tuple[Optional[int], float] = (None, float("-inf"))  # (minimum written, when)
        self.checkpoint_written: tuple[Optional[int], float] = (None, float("-inf"))
        self.writes = {"image": 0, "checkpoint": 0}

    def __call__(self, record: LogRecord) -> None:
        chosen = self.fitter.stopper.chosen_iteration()
        if chosen is None:
            return
        now = time.monotonic()
        if chosen != self.image_written[0] and now - self.image_written[1] >= self.image_seconds:
            save_image(self.fitter.image()[0], self.image_path)
            self.image_written = (chosen, now)
            self.writes["image"] += 1
        if (self.checkpoint_path is not None and chosen != self.checkpoint_written[0]
                and now - self.checkpoint_written[1] >= self.checkpoint_seconds):
            save_checkpoint(self.fitter, self.checkpoint_path)
            self.checkpoint_written = (chosen, now)
            self.writes["checkpoint"] += 1


def _summary(console, result: FitResult, report: dict, job: FitJob) -> None:
    line = (f"{result.iterations} iterations ({result.stop_reason}), {result.iterations_per_second:.2f} it/s, "
            f"image from {result.image_source}")
    if result.stop_info.get("chosen_iteration") is not None:
        line += f" at iteration {result.stop_info['chosen_iteration']}"
    line += f" -> {job.output}"
    if "final_psnr" in report:
        line += f"; PSNR {report['final_psnr']:.2f} dB (input {report['input_psnr']:.2f} dB)"
    console.print(line)


def _run_with_progress(fitter: Fitter, config: FitConfig, job: FitJob, console,
                       saver: Optional[Callable[[LogRecord], None]] = None) -> FitResult:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    def snapshot(iteration: int, image: torch.Tensor) -> None:
        save_image(image, snapshot_path(job.output, iteration))

    kwargs = dict(snapshot_every=job.snapshot_every, on_snapshot=snapshot)
    if job.quiet:
        return fitter.run(config.iterations, on_log=saver, **kwargs)
    columns = [TextColumn(f"{config.task}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[stats]}"),
               TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn()]
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

        return fitter.run(config.iterations, on_log=on_log, **kwargs)
