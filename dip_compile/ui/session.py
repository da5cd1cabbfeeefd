"""What the web page does with the library, without gradio: a form becomes a ``FitJob``; a fit runs in a thread
through ``restore.fit_session`` (so every refusal is the CLI's own one-line ``DipError``), with a stop request that
ends it as Ctrl-C does and a live record + preview the page polls."""

from __future__ import annotations

import io
import shutil
import threading
import time
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional

import numpy as np
from PIL import Image

from .. import presets
from ..checks import integral
from ..errors import DipError
from ..estimate import size_text
from ..fitjob import INTERRUPTED, FitJob, with_command_line_defaults
from ..fitting import Fitter, LogRecord, drive
from ..imageio import to_pil
from ..job import from_options
from ..plan import make_plan
from ..preflight import Forecast, duration, forecast
from ..progress import status_line
from ..restore import fit_session, prepare
from ..tasks import spec

PREVIEW_SECONDS = 2.0  # how often the running fit's image is copied out for the page
LONG_FIT_SECONDS = 180.0  # "a few minutes": a longer fit's estimate names the quicker choice (Fast) where there is one


@dataclass
class Form:
    """The page's fields: only what a user is asked for, each named as its ``dipc fit`` option (but the page's
    ``timelapse_every``, whose 0 is no timelapse); everything else stays at the CLI's defaults."""

    task: str
    image: Optional[str] = None
    mask: Optional[str] = None  # a mask file (uploaded, or written from the painted strokes)
    flash: Optional[str] = None
    reference: Optional[str] = None
    preset: Optional[str] = None
    iterations: Optional[int] = None
    factor: Optional[int] = None
    kernel: Optional[str] = None
    channels: Optional[str] = None
    depth: Optional[int] = None
    seed: Optional[int] = None
    timelapse_every: int = 0  # 0: no timelapse
    fast: bool = False  # --fast: the task's cheaper setting (docs/fast.md)


def painted_mask(layers: list[np.ndarray], size: tuple[int, int], path: Path) -> Optional[Path]:
    """The strokes painted over the photo as a mask file (white = known, painted = hole) of the image's ``size``
    (W, H), or None when nothing was painted (then the library asks for a mask, as the CLI does)."""
    painted: Any = None
    for layer in layers:
        alpha = layer[..., 3] > 127 if layer.ndim == 3 and layer.shape[-1] == 4 else np.asarray(layer).any(-1)
        painted = alpha if painted is None else painted | alpha
    if painted is None or not np.any(painted):
        return None
    mask = Image.fromarray(np.where(painted, 0, 255).astype(np.uint8), mode="L")
    if mask.size != size:  # the editor's canvas may differ from the photo's pixels: the strokes are scaled onto them
        mask = mask.resize(size, Image.Resampling.NEAREST)
    mask.save(path)
    return path


class Workspace:
    """One browser session's files: the inputs it wrote and every output of its fit, in its own folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.stop = threading.Event()
        self.image: Optional[str] = None  # the photo of the last fit (the 'before' of the comparison)
        self.live: Optional[LiveFit] = None  # the last fit started in this session

    @property
    def busy(self) -> bool:
        """A fit of this session is running (its folder must stay)."""
        return self.live is not None and not self.live.done.is_set()

    def path(self, name: str) -> Path:
        return self.folder / name

    @property
    def output(self) -> Path:
        return self.path("restored.png")

    @property
    def checkpoint(self) -> Path:
        return self.path("restored.ckpt")

    def job(self, form: Form) -> FitJob:
        """The ``FitJob`` of a new fit: the one ``dipc fit`` builds from these options (``job.from_options``, the
        CLI's own), every option the page does not ask for at its command-line default."""
        given = {
            "task": form.task,
            "image": _path(form.image),
            "mask": _path(form.mask) if spec(form.task).needs("mask") else None,
            "flash": _path(form.flash) if spec(form.task).needs("guide") else None,
            "reference": _path(form.reference),
            "preset": form.preset or None,
            "fast": form.fast,
            "iterations": form.iterations,
            "seed": form.seed,
            "factor": form.factor,
            "kernel": form.kernel or None,
            "channels": form.channels or None,
            "depth": form.depth or None,
            "output": self.output,
            **self._outputs(form.timelapse_every),
        }
        return with_command_line_defaults(from_options(given))

    def resumed_job(self, iterations: Optional[int], timelapse_every: int = 0) -> FitJob:
        """Continue the fit saved in this session's checkpoint (as ``dipc fit --resume``), up to ``iterations``."""
        if not self.checkpoint.exists():
            raise DipError("nothing to continue: start a fit first (Stop saves it so that it can continue)")
        settings = {"iterations": iterations} if iterations else {}
        job = FitJob(output=self.output, resume=self.checkpoint, settings=settings, **self._outputs(timelapse_every))
        return with_command_line_defaults(job)

    def _outputs(self, timelapse_every: int) -> dict[str, Any]:
        timelapse = {"timelapse": self.path("timelapse.webp"), "timelapse_every": timelapse_every}
        return {
            "checkpoint": self.checkpoint,
            "report": self.path("report.json"),
            "compare": self.path("before-after.png"),
            "force": True,  # the session's own folder: a new fit replaces the last one's files
            "quiet": True,
            **(timelapse if timelapse_every else {}),
        }

    def downloads(self) -> list[str]:
        names = ("restored.png", "report.json", "restored.ckpt", "restored.onnx", "timelapse.webp")
        return [str(self.path(n)) for n in names if self.path(n).exists()]

    def forget_derived(self) -> None:
        """Before a fit: the last fit's export and timelapse would pass for this one's."""
        for name in ("restored.onnx", "timelapse.webp"):
            self.path(name).unlink(missing_ok=True)

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def whole(value: Any, label: str, zero: bool = False) -> Optional[int]:
    """A number field's value as a whole number; None for an empty field (and for 0 unless ``zero``). A client may
    send anything (NaN, 1e400, 2.5, a string): what is not a whole number is refused in one line."""
    if value is None or value == "" or (value == 0 and not zero and not isinstance(value, str)):
        return None
    number = integral(value)
    if number is None:
        raise DipError(f"{label} must be a whole number, not {str(value)[:40]!r}")
    return number


def _path(value: Optional[str]) -> Optional[Path]:
    return Path(value) if value else None


def estimate(job: FitJob) -> Forecast:
    """The job's ``--dry-run`` numbers (memory, step, time), or the library's refusal as a ``DipError`` (an
    image too large for this machine's memory says so, with its ways out)."""
    loaded = prepare(make_plan(job))
    return forecast(loaded.config, loaded.problem, loaded.device, done=loaded.done)


def estimate_text(job: FitJob, quicker: Optional[FitJob] = None) -> str:
    """The estimate in plain words; for a fit of more than ``LONG_FIT_SECONDS``, also the time of ``quicker`` (the
    same fit with Fast) where that is quicker."""
    planned = estimate(job)
    text = (
        f"about {duration(planned.seconds)} for {planned.iterations} iterations (about "
        f"{planned.seconds_per_iteration:.2f} s each, {planned.memory.precision}), about "
        f"{size_text(planned.memory.peak_bytes)} of memory"
        + (", less if auto-stop ends it sooner" if planned.auto_stop else "")
    )
    if quicker is not None and planned.seconds > LONG_FIT_SECONDS:
        fast = estimate(quicker)
        if fast.seconds < 0.8 * planned.seconds:
            text += f"; with Fast (a cheaper setting, a slightly different image; docs/fast.md) about {duration(fast.seconds)}"
    return text


def preset_iterations(preset: Optional[str], task: str, fast: bool = False) -> int:
    """The iterations the preset runs (``--fast`` may run a share of them); where --fast has no measured setting
    for the preset, the preset's own (the fit then refuses --fast in the CLI's words)."""
    chosen = presets.get(preset or presets.default_name(task), task)
    config = chosen.fit_config()
    return presets.faster(config).iterations if fast and chosen.fast and spec(task).fast else config.iterations


def quicker(form: Form) -> Optional[Form]:
    """The form with Fast ticked, as the page sets it (the preset's Fast iterations where the form has the
    preset's own), where the task has a Fast setting and the form does not use it; else None."""
    if form.fast or spec(form.task).fast is None:
        return None
    try:
        if not presets.get(form.preset or presets.default_name(form.task), form.task).fast:
            return None  # --fast is measured only on some presets: no hint where it would be refused
    except DipError:
        return None
    iterations = form.iterations
    if iterations in (None, preset_iterations(form.preset, form.task)):
        iterations = preset_iterations(form.preset, form.task, fast=True)
    return replace(form, fast=True, iterations=iterations)


@dataclass
class LiveFit:
    """A fit running in a thread; the page reads ``record``, ``preview`` and, once ``done``, ``code``/``error``."""

    job: FitJob
    stop: threading.Event
    record: Optional[LogRecord] = None
    preview: Optional[Image.Image] = None
    previews: int = 0  # how many previews were taken (the page shows each new one)
    code: Optional[int] = None
    error: Optional[str] = None
    log: io.StringIO = field(default_factory=io.StringIO)
    done: threading.Event = field(default_factory=threading.Event)
    ema: bool = False
    last_preview: float = float("-inf")
    fitter: Optional[Fitter] = None  # once it fits: its iteration between log points

    def start(self) -> LiveFit:
        """Starts the fit (a stop asked for before, while it was estimated, ends it at once)."""
        threading.Thread(target=self._run, name="dipc-ui-fit", daemon=True).start()
        return self

    def _on_log(self, record: LogRecord, fitter: Fitter) -> None:
        self.record, self.ema = record, fitter.ema is not None
        now = time.monotonic()
        if now - self.last_preview >= PREVIEW_SECONDS or record.iteration == record.total:
            self.preview, self.last_preview = to_pil(fitter.image()[0]), now
            self.previews += 1

    def _run(self) -> None:
        try:
            session = fit_session(self.job, console_file=self.log, stop_requested=self.stop.is_set, on_log=self._on_log)
            self.code = drive(session, on_step=self._on_step)
        except DipError as exc:
            self.error = str(exc)
        except Exception as exc:  # a bug, not a user error: the page says so, the server log has the trace
            traceback.print_exc()
            self.error = f"internal error ({exc.__class__.__name__}: {exc}); the server log has the details"
        finally:
            self.done.set()

    def _on_step(self, fitter: Fitter) -> None:
        self.fitter = fitter

    def status(self) -> str:
        """The CLI's status line; before the first log point, the iteration count alone (from the first step)."""
        task = str(self.job.task or "resumed fit")
        if self.record is not None:
            return status_line(task, self.record, self.ema)
        if self.fitter is None:
            return "starting the fit (building the network)"
        return f"{task} {self.fitter.iteration}/{self.fitter.config.iterations} (measuring the speed)"

    def summary(self) -> str:
        """How the fit ended, in the page's words: the CLI's summary without the server's paths, or where Stop left
        it (the page continues it: no command line)."""
        if self.code == INTERRUPTED and self.fitter is not None:
            return (
                f"stopped at iteration {self.fitter.iteration} of {self.fitter.config.iterations}: the image so far is "
                "shown and in Downloads; Continue goes on from here (up to Iterations)"
            )
        lines = [line for line in self.log.getvalue().splitlines() if line.strip()]
        return lines[-1].replace(f" -> {self.job.output}", "") if lines else ""
