"""The high-level Python call: ``restore_image`` is ``dipc fit`` without the files it writes.

It builds the same ``FitJob`` the CLI builds and loads its problem with the same code (``fitjob.load_problem``:
presets, masks, made noise, kernels, grayscale presets, ``--paper-exact`` crops), so it refuses what ``dipc fit``
refuses, with the same one-line ``DipError``; then it fits with ``fitting.Fitter`` and returns the ``FitResult``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

from .checkpoint import save_checkpoint
from .fitjob import FitJob, NetShape, load_problem, resolve_device, with_command_line_defaults
from .fitting import FitResult, Fitter, LogRecord
from .restore import validate_job

__all__ = ["restore_image"]


def restore_image(
    image: str | Path,
    task: str = "denoise",
    *,
    mask: str | Path | None = None,
    reference: str | Path | None = None,
    flash: str | Path | None = None,
    sigma: Optional[float] = None,
    noise: Optional[str] = None,
    from_reference: bool = False,
    preset: Optional[str] = None,
    paper_exact: bool = False,
    fast: bool = False,
    checkpoint: str | Path | None = None,
    on_log: Optional[Callable[[LogRecord], None]] = None,
    **settings: Any,
) -> FitResult:
    """Restores the image file ``image`` as ``dipc fit TASK IMAGE`` does and returns the ``FitResult``
    (``result.image``: (1, C, H, W) in [0, 1] on the CPU; ``save_image`` writes it).

    The keywords are ``dipc fit``'s options of the same name (``sigma=25`` is ``--sigma 25``); ``settings`` are
    ``FitConfig`` fields set over the preset's (``iterations=300``, ``seed=1``, ``stop="auto"``,
    ``precision="bf16"``, ``device="cuda"``, ...); device, backend and precision default to ``auto`` as in
    ``dipc fit``. The network options of ``dipc fit`` are keywords too (``channels=64``, ``depth=4``,
    ``upsample="nearest"``: ``NetShape``'s fields, over the preset's network). ``checkpoint`` saves the fit
    (for ``dipc export`` / ``export_checkpoints`` or to resume); nothing else is written. ``on_log`` receives a
    ``LogRecord`` every ``log_every`` iterations."""
    shape = {f.name for f in dataclasses.fields(NetShape)}
    net = NetShape(**{k: v for k, v in settings.items() if k in shape})
    settings = {k: v for k, v in settings.items() if k not in shape and v is not None}
    job = FitJob(
        output=Path("restored.png"),  # never written: load_problem reads only the inputs
        task=task,
        image=Path(image),
        mask=Path(mask) if mask is not None else None,
        reference=Path(reference) if reference is not None else None,
        flash=Path(flash) if flash is not None else None,
        sigma=sigma,
        noise=noise,
        from_reference=from_reference,
        preset=preset,
        paper_exact=paper_exact,
        fast=fast,
        settings=settings,
        net=net,
    )
    job = with_command_line_defaults(job)  # dipc fit's auto device, backend and precision, as every edge
    validate_job(job)
    config, problem = load_problem(job)
    config = config.replace(device=resolve_device(str(config.device)))
    fitter = Fitter(config, problem)
    result = fitter.run(on_log=on_log)
    if checkpoint is not None:
        save_checkpoint(fitter, checkpoint)
    return result
