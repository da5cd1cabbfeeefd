"""The JSON report of a fit: what was run, on what, how fast, and how the loss and PSNR evolved."""

from __future__ import annotations

import json
import math
import platform
from pathlib import Path
from typing import Any

import torch

from .config import FitConfig
from .fitting import FitResult, Fitter
from .imageio import atomic_write
from .metrics import psnr, ssim, ssim_defined
from .problem import Problem
from .version import __version__


def fit_identity(config: FitConfig, problem: Problem) -> dict[str, Any]:
    """What a report says of the fit before any result: task, settings, image size, software versions."""
    return {
        "task": problem.task,
        "config": config.to_dict(),
        "seed": config.seed,
        "image_size": {"height": problem.size[0], "width": problem.size[1], "channels": problem.channels},
        "versions": {"dip_compile": __version__, "torch": str(torch.__version__), "python": platform.python_version()},
        **({"notes": list(problem.notes)} if problem.notes else {}),  # e.g. a reference converted to IMAGE's mode
    }


def image_scores(image: torch.Tensor, problem: Problem) -> dict[str, float | None]:
    """PSNR and SSIM of the returned image, and the input's PSNR, against the reference (none without one). SSIM
    is None (null in the JSON) for an image smaller than its window, where it is not defined."""
    if problem.reference is None:
        return {}
    ref = problem.reference.cpu()
    return {
        "final_psnr": float(psnr(image, ref)),
        "final_ssim": float(ssim(image, ref)) if ssim_defined(ref) else None,
        "input_psnr": float(psnr(problem.corrupted_view().cpu(), ref)),
    }


def build_report(fitter: Fitter, result: FitResult, **extra: Any) -> dict[str, Any]:
    problem = fitter.problem
    report: dict[str, Any] = {
        **fit_identity(fitter.config, problem),
        "canvas_size": {"height": problem.canvas[0], "width": problem.canvas[1]},
        "device": _device_name(fitter.device),
        "threads": torch.get_num_threads(),
        "iterations": result.iterations,
        "stop_reason": result.stop_reason,
        "image_source": result.image_source,
        "wall_seconds": result.fit_seconds,
        "first_step_seconds": result.first_step_seconds,
        # the first step minus a steady one: what compiling (or capturing a CUDA graph) cost
        "compile_seconds": max(result.first_step_seconds - 1.0 / result.iterations_per_second, 0.0)
        if result.iterations_per_second > 0
        else result.first_step_seconds,
        "backend": str(fitter.plan.backend),
        "precision": str(fitter.plan.precision),
        "step_plan": result.plan,
        "precision_fallbacks": result.fallbacks,
        "iterations_per_second": result.iterations_per_second,
        "backtracks": result.backtracks,
        "stop": result.stop_info,
        "coarse": None if fitter.coarse is None else fitter.coarse.describe(),  # --coarse-share's half-size phase
        # the iteration whose image is returned: with auto stopping the variance minimum's (its EMA up to 99
        # iterations later: stop.kept_iteration; stop.chosen_iteration is the minimum), else the last one
        "chosen_iteration": result.stop_info.get("kept_iteration")
        or result.stop_info.get("chosen_iteration")
        or result.iterations,
        "history": result.history,
    }
    report.update(image_scores(result.image, problem))
    if problem.reference is not None:
        # best PSNR of the kind of image returned (EMA or raw output), sampled at the log interval
        ema = result.image_source == "ema" or result.stop_info.get("kept_image") == "ema"
        key = "psnr_reference_ema" if ema else "psnr_reference"
        hist = [float("-inf") if p is None else p for p in result.history.get(key) or []]
        if hist:
            best = max(range(len(hist)), key=hist.__getitem__)
            report["best_psnr_seen"] = hist[best]
            report["best_psnr_iteration"] = result.history["iteration"][best]
            report["best_psnr_series"] = key
            if result.stop_info:
                report["detection_gap_db"] = hist[best] - report["final_psnr"]
    report.update(extra)
    return report


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({platform.processor() or platform.machine()})"


def save_report(report: dict[str, Any], path: str | Path, *, overwrite: bool = True) -> Path:
    """Strict JSON: a non-finite number (an inf loss before the first good step) is written as null."""
    text = json.dumps(finite_json(report), indent=2, default=str, allow_nan=False)
    return atomic_write(path, lambda tmp: tmp.write_text(text), overwrite=overwrite)


def finite_json(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(v) for v in value]
    return value
