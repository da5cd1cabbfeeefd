"""The export job, as ``dipc export`` runs it: every input and output checked before anything is written, one plan
per checkpoint, each format written atomically, and optionally each file rerun and compared with the fit's image."""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import DipError
from ..export_options import ExportFormat, ExportOptions, NoiseMode, Profile, choice
from ..replay import regenerate as replay
from .onnx_format import noise_path, write_onnx
from .plan import DEFAULTS, KNOWN_PIXELS, image_kind, plan_export
from .torch_formats import run_pt2, run_torchscript, write_torch

SUFFIX = {ExportFormat.onnx: ".onnx", ExportFormat.pt2: ".pt2", ExportFormat.torchscript: ".pt"}


@dataclass
class Written:
    checkpoint: Path
    format: str  # onnx | pt2 | torchscript
    path: Path
    bytes: int
    weight_bytes: int
    noise_bytes: int
    metadata: dict[str, str] = field(default_factory=dict)
    correction_bytes: int = 0  # the stored correction (an EMA, auto-stop or known-pixels image)
    check: dict[str, float] | None = None


def output_paths(checkpoints: list[Path], output: Path, fmt: str) -> list[tuple[Path, str, Path]]:
    """(checkpoint, format, path) for every file to write. One checkpoint: ``output`` is the file (its suffix
    replaced per format with --format all); several: ``output`` is a folder that gets ``<checkpoint stem>.onnx``."""
    fmt = choice(ExportFormat, fmt, "--format")
    formats = list(SUFFIX) if fmt == ExportFormat.all else [fmt]
    if len(checkpoints) == 1 and not output.is_dir():
        if fmt == ExportFormat.all:
            return [(checkpoints[0], f.value, output.with_suffix(SUFFIX[f])) for f in formats]
        path = output if output.suffix else output.with_suffix(SUFFIX[fmt])
        return [(checkpoints[0], fmt.value, path)]
    if not output.is_dir():
        raise DipError(f"with several checkpoints, -o must be an existing folder (got {output})")
    stems = [c.stem for c in checkpoints]
    if len(set(stems)) != len(stems):
        raise DipError("two checkpoints share a file name; export them to different folders")
    return [(c, f.value, output / (c.stem + SUFFIX[f])) for c in checkpoints for f in formats]


def _show(seen: list[warnings.WarningMessage]) -> None:
    """Shows, once a file is written, the warnings torch gave while making it (under the filters in force). After a
    failure (a full disk) they are dropped: the one-line error is what the user needs, not torch's notes before it."""
    for w in seen:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)


def _is_folder(path: str | Path) -> bool:
    try:
        return Path(path).is_dir()
    except OSError:  # a name too long to look up: not a folder, and output_path says why it cannot be a file
        return False


def fit_image_note(metadata: dict[str, str]) -> str | None:
    """A hint when an explicit --image exported another image than the one the fit returned (``--image fit``,
    the default, always exports that one)."""
    returned = metadata.get("fit_image", "")
    if not returned or image_kind(returned) == metadata.get("image"):
        return None
    base = returned.removesuffix(KNOWN_PIXELS)
    what = f"{base} image" + (" with the observed pixels kept (--keep-known)" if base != returned else "")
    return f"note: this fit returned its {what}; --image fit (the default) exports that one"


def agreement(image: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor) -> dict[str, float]:
    """max |a - b| in [0, 1], the share of identical 8-bit pixels, the largest 8-bit difference, NaN/inf count."""

    def arr(t: Any) -> np.ndarray:
        return t.detach().cpu().float().numpy() if isinstance(t, torch.Tensor) else np.asarray(t, dtype=np.float32)

    return replay.compare(arr(image), arr(target))


def passes(check: dict[str, float], tolerance: float = 1e-4) -> bool:
    """The exactness target: no NaN/inf, max abs difference <= 1e-4, >= 99.9% identical 8-bit pixels, none off
    by more than 1."""
    return check["max_abs_diff"] <= tolerance and replay.passes(check)


def run_file(path: Path, fmt: str) -> Any:
    """The image an exported file returns on its own noise, read back the way its users would."""
    if fmt == "onnx":
        return replay.regenerate(path, None)["image"]
    return run_pt2(path) if fmt == "pt2" else run_torchscript(path)


def export_checkpoints(
    checkpoints: Sequence[str | Path], output: str | Path, options: ExportOptions | None = None, **choices: Any
) -> list[Written]:
    """Exports each checkpoint; checks every input and output before writing anything, writes atomically (without
    --force, never over a file that appeared meanwhile).

    ``options``, or keyword choices over the defaults (``fmt="onnx", image="fit", bn=..., weights=..., noise=...,
    verify=..., force=...``, strings or Enums), so library callers need not build an ExportOptions."""
    from ..checkpoint import load_checkpoint
    from ..imageio import check_output, output_path

    options = dataclasses.replace(options or DEFAULTS, **choices)
    if not _is_folder(output):  # a file: its spelling is checked as text, since Path() drops a trailing separator
        if replay.names_folder(output):
            raise DipError(f"output {output} ends with a path separator, but there is no such folder")
        output_path(output)
    jobs = output_paths([Path(c) for c in checkpoints], Path(output), options.fmt)
    for _, f, path in jobs:
        check_output(path, options.force)
        if f == "onnx" and options.profile == Profile.portable and options.noise == NoiseMode.embedded:
            check_output(noise_path(path), options.force)
    loaded = {c: load_checkpoint(c) for c in dict.fromkeys(c for c, _, _ in jobs)}
    plans = {}
    for c, ck in loaded.items():
        try:
            plans[c] = plan_export(ck, options)
        except DipError as exc:
            raise DipError(f"{c}: {exc}" if len(loaded) > 1 else str(exc)) from None
    written = []
    for ckpt_path, f, path in jobs:
        plan = plans[ckpt_path]
        with warnings.catch_warnings(record=True) as seen:  # held back until the file is written: see _show
            if f == "onnx":
                write_onnx(plan, path, overwrite=options.force)
            else:
                write_torch(plan, path, f, overwrite=options.force)
        _show(seen)
        noise_bytes = plan.noise.numel() * 4 if (plan.embed_noise and not plan.portable) or f != "onnx" else 0
        result = Written(
            ckpt_path,
            f,
            path,
            path.stat().st_size,
            plan.weight_bytes,
            noise_bytes,
            plan.metadata,
            plan.correction_bytes,
        )
        if options.verify:
            result.check = agreement(run_file(path, f), plan.target)
        written.append(result)
    return written
