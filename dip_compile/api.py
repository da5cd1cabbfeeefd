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
from typing import Any, Optional

from .config import FitConfig, shown
from .errors import DipError
from .fitjob import OUTPUTS, Done, Outputs, with_command_line_defaults
from .fitting import FitResult, Fitter, LogRecord
from .imageio import image_source
from .job import PROBLEM, FitJob, NetShape
from .plan import load, make_plan

__all__ = ["restore_image"]

# The keywords, read from the declarations: the job's options that say what is fitted (``FitJob``'s fields of role
# problem, but the task and the image, which are arguments) and those declared for Python (``api``: checkpoint,
# force); the network's options (``NetShape``); the fit's settings (``FitConfig``'s fields but the task, the network
# and those that are the job's own)
JOB_KEYWORDS = frozenset(
    f.name for f in dataclasses.fields(FitJob) if f.metadata.get("role") == PROBLEM or f.metadata.get("api")
) - {"task", "image"}
NET_KEYWORDS = NetShape.names()
SETTINGS = frozenset(f.name for f in dataclasses.fields(FitConfig)) - {"task", "net"} - JOB_KEYWORDS
IMAGES = {f.name: f.metadata["source"] for f in dataclasses.fields(FitJob) if f.metadata.get("source")}


def restore_image(
    image: Any,
    task: str = "denoise",
    *,
    on_log: Optional[Callable[[LogRecord], None]] = None,
    **options: Any,
) -> FitResult:
    """Restores ``image`` as ``dipc fit TASK IMAGE`` does and returns the ``FitResult`` (``result.image``:
    (1, C, H, W) in [0, 1] on the CPU; ``save_image`` writes it).

    ``image`` (and ``mask``, ``reference``, ``flash``) is a file path or an image already in memory: a PIL image,
    a numpy array (H, W) or (H, W, C) channels last, or a torch tensor (H, W), (C, H, W) or (1, C, H, W) channels
    first; arrays and tensors hold uint8 (0-255), bool or floats in [0, 1] (``imageio.image_source``). The
    keywords are ``dipc fit``'s options of the same name: the problem's (``sigma=25`` is ``--sigma 25``,
    ``holes=0.5``, ``preset="kate"``, ``fast=True``), the settings over the preset's (``FitConfig`` fields:
    ``iterations=300``, ``seed=1``, ``stop="auto"``, ``precision="bf16"``, ``device="cuda"``, ...; device,
    backend and precision default to ``auto`` as in ``dipc fit``) and the network's (``channels=64``,
    ``depth=4``, ``upsample="nearest"``, ``channels_skip=0``: ``NetConfig``'s field names, over the preset's
    network). ``checkpoint`` saves the fit (for ``dipc export`` / ``export_checkpoints`` or to resume); like every
    ``dipc fit`` output it is checked before the fit and an existing file is replaced only with ``force``; nothing
    else is written. ``on_log`` receives a ``LogRecord`` every ``log_every`` iterations. Bad input of any kind is a
    one-line ``DipError``."""
    if on_log is not None and not callable(on_log):
        raise DipError(f"on_log must be a function taking a LogRecord, got {shown(on_log)}")
    known = JOB_KEYWORDS | NET_KEYWORDS | SETTINGS
    unknown = sorted(set(options) - known)
    if unknown:
        close = difflib.get_close_matches(unknown[0], sorted(known), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise DipError(
            f"restore_image() has no option {unknown[0]!r}{hint}; its keywords are dipc fit's options, named as "
            "the fields of FitJob, FitConfig and NetConfig (holes=0.5, iterations=300, channels=64)"
        )
    given = {k: v for k, v in options.items() if k in JOB_KEYWORDS}
    for name, what in IMAGES.items():
        if given.get(name) is not None:
            given[name] = image_source(given[name], what)
    job = FitJob(
        output=Path("restored.png"),  # never written: only the outputs marked ``api`` are
        task=task,
        image=image_source(image, "image"),
        **given,  # a checkpoint given as text becomes a Path in FitJob (checked), as the CLI's does
        settings={k: v for k, v in options.items() if k in SETTINGS and v is not None},
        net=NetShape(**{k: v for k, v in options.items() if k in NET_KEYWORDS}),
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
