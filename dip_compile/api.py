"""The high-level Python call: ``restore_image`` is ``dipc fit`` without the files it writes.

It builds the same ``FitJob`` the CLI builds, plans it with the same code (``plan.make_plan``) and loads its problem
with the same code (``plan.load``: presets, masks, made noise, kernels, grayscale presets, ``--paper-exact``
crops), so it refuses what ``dipc fit`` refuses, with the same one-line ``DipError``; then it fits with
``fitting.Fitter`` and returns the ``FitResult``. Of the outputs (``fitjob.OUTPUTS``) it writes those marked ``api``.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional, cast

from .config import FitConfig, shown
from .errors import DipError
from .fitjob import OUTPUTS, Done, FitJob, NetShape, Outputs, with_command_line_defaults
from .fitting import FitResult, Fitter, LogRecord
from .imageio import image_source
from .plan import load, make_plan

__all__ = ["restore_image"]

# The keywords ``settings`` takes: the network's options (NetShape) and the fit's settings (FitConfig's fields but
# the task and the network, which have their own arguments)
_NET_OPTIONS = frozenset(f.name for f in dataclasses.fields(NetShape))
_SETTINGS = frozenset(f.name for f in dataclasses.fields(FitConfig)) - {"task", "net"}


def restore_image(
    image: Any,
    task: str = "denoise",
    *,
    mask: Any = None,
    reference: Any = None,
    flash: Any = None,
    sigma: Optional[float] = None,
    noise: Optional[str] = None,
    from_reference: bool = False,
    preset: Optional[str] = None,
    paper_exact: bool = False,
    fast: bool = False,
    checkpoint: str | Path | None = None,
    force: bool = False,
    on_log: Optional[Callable[[LogRecord], None]] = None,
    **settings: Any,
) -> FitResult:
    """Restores ``image`` as ``dipc fit TASK IMAGE`` does and returns the ``FitResult`` (``result.image``:
    (1, C, H, W) in [0, 1] on the CPU; ``save_image`` writes it).

    ``image`` (and ``mask``, ``reference``, ``flash``) is a file path or an image already in memory: a PIL image,
    a numpy array (H, W) or (H, W, C) channels last, or a torch tensor (H, W), (C, H, W) or (1, C, H, W) channels
    first; arrays and tensors hold uint8 (0-255), bool or floats in [0, 1] (``imageio.image_source``). The
    keywords are ``dipc fit``'s options of the same name (``sigma=25`` is ``--sigma 25``); ``settings`` are
    ``FitConfig`` fields set over the preset's (``iterations=300``, ``seed=1``, ``stop="auto"``,
    ``precision="bf16"``, ``device="cuda"``, ...); device, backend and precision default to ``auto`` as in
    ``dipc fit``. The network options of ``dipc fit`` are keywords too (``channels=64``, ``depth=4``,
    ``upsample="nearest"``: ``NetShape``'s fields, over the preset's network). ``checkpoint`` saves the fit
    (for ``dipc export`` / ``export_checkpoints`` or to resume); like every ``dipc fit`` output it is checked
    before the fit and an existing file is replaced only with ``force``; nothing else is written. ``on_log``
    receives a ``LogRecord`` every ``log_every`` iterations. Bad input of any kind is a one-line ``DipError``."""
    if on_log is not None and not callable(on_log):
        raise DipError(f"on_log must be a function taking a LogRecord, got {shown(on_log)}")
    unknown = sorted(set(settings) - _NET_OPTIONS - _SETTINGS)
    if unknown:
        close = difflib.get_close_matches(unknown[0], sorted(_NET_OPTIONS | _SETTINGS), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise DipError(
            f"restore_image() has no option {unknown[0]!r}{hint}; its keywords are dipc fit's options, named as "
            "the fields of FitConfig and NetShape (iterations=300, channels=64)"
        )
    net = NetShape(**{k: v for k, v in settings.items() if k in _NET_OPTIONS})
    settings = {k: v for k, v in settings.items() if k in _SETTINGS and v is not None}
    job = FitJob(
        output=Path("restored.png"),  # never written: only the outputs marked ``api`` are
        task=task,
        image=image_source(image, "image"),
        mask=None if mask is None else image_source(mask, "mask"),
        reference=None if reference is None else image_source(reference, "reference"),
        flash=None if flash is None else image_source(flash, "flash image"),
        sigma=sigma,
        noise=noise,
        from_reference=from_reference,
        preset=preset,
        paper_exact=paper_exact,
        fast=fast,
        settings=settings,
        net=net,
        checkpoint=cast(Any, checkpoint),  # text becomes a Path in FitJob (checked), as the CLI's does
        force=force,
    )
    job = with_command_line_defaults(job)  # dipc fit's auto device, backend and precision, as every edge
    plan = make_plan(job)
    api_outputs = [o for o in OUTPUTS if o.api]
    outputs = Outputs(job.force).declare(job, 0, api_outputs)  # before the fit, as dipc fit checks its outputs
    loaded = load(plan)
    fitter = Fitter(loaded.config, loaded.problem)
    result = fitter.run(on_log=on_log)
    outputs.write_all(job, Done(result.image, fitter.problem, fitter=fitter), api_outputs)
    return result
