"""Fitting an image too large for one fit in overlapping tiles: ``dipc fit TASK IMAGE -o OUT --tile SIZE``.

The image is covered by SIZE x SIZE boxes, neighbours sharing at least ``overlap`` pixels, the last row and column
aligned to the image's edges (evenly spread in between). Each tile is its own fit, one after the other, with the
same settings and seed: a ``Problem`` made from the tile's crop of the whole image's observation (and reference).
The tiles' images are blended into the full image by a weighted average whose weights ramp up over the overlap
(raised cosine) and are 1 inside a tile and at the image's borders, so every pixel has a positive weight.

Super-resolution tiles are in output (high-resolution) pixels: SIZE is a multiple of the factor, the grid is laid
on the low-resolution input and each tile's observation is the matching low-resolution crop.

Resuming: finished tiles' images, and on Ctrl-C the running tile's checkpoint, are kept in ``OUT.tiles/`` under a
fingerprint of the options and the input files' contents, so rerunning the same command continues where it stopped
and another command never reuses them. The folder is removed once the image is written.

``TILED`` is this run as a ``plan.Pipeline``: ``restore.run_plan`` loads, checks and writes alike for both.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from .checkpoint import load_checkpoint, save_checkpoint
from .config import FitConfig
from .errors import DipError
from .fitjob import INTERRUPTED, Done, FitJob, Outputs, fingerprint
from .fitting import Fitter, Session
from .imageio import atomic_write
from .metrics import psnr
from .plan import JobPlan, Loaded, Run, load, work_folder
from .preflight import TILED_TASKS, dry_run, is_out_of_memory
from .problem import Problem, make_problem
from .progress import Watch, run_with_progress
from .report import fit_identity, image_scores
from .version import __version__

TASKS = TILED_TASKS


@dataclass(frozen=True)
class Box:
    """A tile: (top, left, height, width) in image pixels."""

    top: int
    left: int
    height: int
    width: int

    def crop(self, image: torch.Tensor) -> torch.Tensor:
        return image[..., self.top : self.top + self.height, self.left : self.left + self.width]

    def scaled(self, factor: int) -> Box:
        return Box(self.top * factor, self.left * factor, self.height * factor, self.width * factor)

    def describe(self) -> str:
        return f"{self.width}x{self.height} at y={self.top},x={self.left}"


def starts(length: int, tile: int, overlap: int) -> list[int]:
    """Where tiles of ``tile`` pixels start along a side of ``length``: the first at 0, the last at the edge, evenly
    spread between so neighbours share at least ``overlap`` pixels (one tile, at 0, when the side fits in one)."""
    if tile <= overlap:
        raise ValueError(f"a tile ({tile}) must be larger than the overlap ({overlap})")
    if length <= tile:
        return [0]
    n = math.ceil((length - overlap) / (tile - overlap))
    return [i * (length - tile) // (n - 1) for i in range(n)]


def grid(size: tuple[int, int], tile: int, overlap: int, factor: int = 1) -> list[Box]:
    """The tiles covering an image of ``size`` (H, W), row by row. With ``factor`` > 1 (super-resolution), ``size``,
    ``tile`` and ``overlap`` are in output pixels: the grid is laid on the input (tile / factor, overlap rounded up)
    so every box is a whole low-resolution box times the factor. A side shorter than a tile is one tile of its
    length."""
    height, width = size
    low, step = tile // factor, -(-overlap // factor)
    rows = starts(height // factor, low, step)
    cols = starts(width // factor, low, step)
    return [
        Box(top, left, min(low, height // factor - top), min(low, width // factor - left)).scaled(factor)
        for top in rows
        for left in cols
    ]


def ramp(length: int, overlap: int, rise: bool, fall: bool) -> torch.Tensor:
    """1-D weights (float64) of a tile side: a raised cosine over ``overlap`` pixels at an end that meets another
    tile (``rise`` at the start, ``fall`` at the end), never 0, and 1 elsewhere (at the image's borders too)."""
    weights = torch.ones(length, dtype=torch.float64)
    n = min(overlap, length // 2)
    if n > 0:
        x = (torch.arange(n, dtype=torch.float64) + 0.5) / n
        up = 0.5 - 0.5 * torch.cos(math.pi * x)
        if rise:
            weights[:n] = up
        if fall:
            weights[length - n :] = up.flip(0)
    return weights


def window(box: Box, size: tuple[int, int], overlap: int) -> torch.Tensor:
    """The (height, width) blending weights of a tile in an image of ``size``."""
    wy = ramp(box.height, overlap, box.top > 0, box.top + box.height < size[0])
    wx = ramp(box.width, overlap, box.left > 0, box.left + box.width < size[1])
    return wy[:, None] * wx[None, :]


def blend(tiles: Sequence[tuple[Box, torch.Tensor]], size: tuple[int, int], overlap: int) -> torch.Tensor:
    """The weighted average of the tiles' images ((1, C, h, w) each) as one (1, C, H, W) float32 image. Summed in
    float64, so tiles that agree give back their pixels exactly."""
    channels = tiles[0][1].shape[-3]
    total = torch.zeros(1, channels, *size, dtype=torch.float64)
    weight = torch.zeros(*size, dtype=torch.float64)
    for box, image in tiles:
        w = window(box, size, overlap)
        box.crop(total).add_(image.reshape(1, channels, box.height, box.width).double() * w)
        box.crop(weight).add_(w)
    if not bool((weight > 0).all()):
        raise ValueError("the tiles do not cover the image")
    return (total / weight).float()


# --- the tiled fit ---------------------------------------------------------------------------------------------------


def job_fingerprint(job: FitJob) -> str:
    """What makes the tiles' images: the options (not the outputs or the device) and the input files' contents."""
    return hashlib.sha256(f"{__version__}:{fingerprint(job)}".encode()).hexdigest()[:16]


def tile_problem(config: FitConfig, whole: Problem, box: Box) -> Problem:
    """The fit of one tile: the tile's crop of the observation (the low-resolution crop for super-resolution) and of
    the reference."""
    f = config.factor  # (1 unless the task scales)
    low = Box(box.top // f, box.left // f, box.height // f, box.width // f)
    reference = None if whole.reference is None else box.crop(whole.reference)
    return make_problem(config, low.crop(whole.observation).clone(), reference=reference)


@dataclass(frozen=True)
class Tiles(Loaded):
    """The whole image's problem and its tiles' boxes and problems."""

    boxes: tuple[Box, ...] = ()
    problems: tuple[Problem, ...] = ()

    @property
    def sized(self) -> Problem:
        return max(self.problems, key=lambda p: p.canvas[0] * p.canvas[1])


class Tiled:
    """``--tile``: the tiles fitted one after the other, blended into ``job.output``; the finished tiles and, on
    Ctrl-C, the running tile's checkpoint are kept for a rerun (the pipeline's ``fit`` then returns 130)."""

    def load(self, plan: JobPlan, notes: list[str]) -> Loaded:
        loaded = load(plan, notes)
        tile, overlap = plan.job.tile, plan.job.overlap
        assert tile is not None  # (make_plan refuses --overlap without --tile)
        boxes = tuple(grid(loaded.problem.size, tile, overlap, loaded.config.factor))
        problems = tuple(tile_problem(loaded.config, loaded.problem, box) for box in boxes)
        return Tiles(loaded.config, loaded.problem, loaded.device, None, boxes, problems)

    def dry_run(self, plan: JobPlan, loaded: Loaded, console: Any) -> int:
        job = plan.job
        assert isinstance(loaded, Tiles)
        console.print(
            f"dry run: {len(loaded.boxes)} tile(s) of {job.tile}x{job.tile} (overlap {job.overlap}), each one:"
        )
        return dry_run(loaded.config, loaded.sized, loaded.device, console)

    def declare(self, plan: JobPlan, loaded: Loaded, outputs: Outputs) -> None:
        pass  # a tiled run's own files are in its work folder, under the job's fingerprint

    def fit(self, run: Run) -> Session[Done | int]:
        job, console, loaded = run.plan.job, run.console, run.loaded
        assert isinstance(loaded, Tiles)
        config, device = loaded.config, loaded.device
        work, key = work_folder(job.output), job_fingerprint(job)
        try:
            work.mkdir(exist_ok=True)
        except OSError as exc:
            raise DipError(f"cannot make the tiles' work folder {work}: {exc.strerror or exc}") from None
        if any(key not in f.name for f in work.iterdir()):
            console.print(f"note: {work} holds tiles of a run with other options or input: they are not reused")
        n, results, fitted = len(loaded.boxes), [], 0
        for i, (box, problem) in enumerate(zip(loaded.boxes, loaded.problems, strict=True)):
            done, running = work / f"tile-{i:03d}.{key}.pt", work / f"tile-{i:03d}.{key}.ckpt"
            saved = _load_tile(done, box)
            if saved is not None:
                results.append(saved)
                console.print(f"tile {i + 1}/{n} ({box.describe()}): fitted before, reused")
                continue
            if run.stop_requested():
                return _interrupted(console, i, n, None, work)
            fitter = _fitter(config, problem, device, running)
            again = f", resumed at iteration {fitter.iteration}" if fitter.iteration else ""
            console.print(f"tile {i + 1}/{n} ({box.describe()}{again})")
            if not fitted:
                console.print(f"step: {fitter.plan.describe()}")
                console.print(run.estimate)
            fitted += 1
            watch = Watch(fitter, config, job, console, run.outputs, run.stop_requested, tiled=True)
            try:
                result = yield from run_with_progress(watch)
            except Exception as exc:
                if is_out_of_memory(exc):
                    raise DipError(
                        f"out of memory while fitting a {box.width}x{box.height} tile: use a smaller --tile or a "
                        "smaller network (--channels, --depth)"
                    ) from None
                raise
            if result.stop_reason == "interrupted":
                save_checkpoint(fitter, running)
                return _interrupted(console, i, n, fitter.iteration, work)
            reference = problem.reference
            record: dict[str, Any] = {
                "image": result.image,
                "iterations": result.iterations,
                "stop_reason": result.stop_reason,
                "seconds": fitter.elapsed,
                "psnr": None if reference is None else float(psnr(result.image, reference.cpu())),
                "input_psnr": None
                if reference is None
                else float(psnr(problem.corrupted_view().cpu(), reference.cpu())),
            }
            _save_tile(done, record)
            running.unlink(missing_ok=True)
            results.append(record)
        whole = loaded.problem
        image = blend(
            [(box, r["image"]) for box, r in zip(loaded.boxes, results, strict=True)], whole.size, job.overlap
        )
        image = image.clamp(0, 1)
        report = _report(job, config, whole, loaded.boxes, results, image, device)
        line = (
            f"{n} tile(s) of {job.tile}x{job.tile} (overlap {job.overlap}), {report['iterations']} iterations in all, "
            f"{report['wall_seconds']:.0f} s fitting -> {job.output}"
        )
        if "final_psnr" in report:
            line += f"; PSNR {report['final_psnr']:.2f} dB (input {report['input_psnr']:.2f} dB)"
        return Done(image, whole, report, summary=line, work=work)


TILED = Tiled()


def _fitter(config: FitConfig, problem: Problem, device: str, running: Path) -> Fitter:
    """The tile's fitter: from its checkpoint when an interrupted run left one, else a new one."""
    if running.exists():
        try:
            ckpt = load_checkpoint(running)
        except DipError:
            ckpt = None  # damaged (a killed write leaves none, but be safe): fit the tile again
        if ckpt is not None and ckpt.problem.size == problem.size:
            return ckpt.fitter(device, config)
    return Fitter(config, problem, device=device)


def _save_tile(path: Path, record: dict[str, Any]) -> None:
    def write(tmp: Path) -> None:
        torch.save(record, tmp)

    atomic_write(path, write)


def _load_tile(path: Path, box: Box) -> Optional[dict[str, Any]]:
    """A finished tile's record, or None (not there, or unreadable: the tile is fitted again)."""
    if not path.exists():
        return None
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
        image = record["image"]
    except Exception:
        return None
    if not isinstance(image, torch.Tensor) or tuple(image.shape[-2:]) != (box.height, box.width):
        return None
    return dict(record)


def _interrupted(console: Any, index: int, n: int, iteration: Optional[int], work: Path) -> int:
    where = f"in tile {index + 1}/{n}" + (f" at iteration {iteration}" if iteration is not None else "")
    kept = f"{index} finished tile(s)" + (" and this tile's checkpoint" if iteration is not None else "")
    console.print(f"interrupted {where}: {kept} kept in {work}; rerun the same command to continue")
    return INTERRUPTED


def _report(
    job: FitJob,
    config: FitConfig,
    whole: Problem,
    boxes: Sequence[Box],
    results: Sequence[dict[str, Any]],
    image: torch.Tensor,
    device: str,
) -> dict[str, Any]:
    reasons = sorted({str(r["stop_reason"]) for r in results})
    report: dict[str, Any] = {
        **fit_identity(config, whole),
        "device": device,
        "tiles": len(boxes),
        "tile_size": job.tile,
        "overlap": job.overlap,
        "grid": {"rows": len({b.top for b in boxes}), "columns": len({b.left for b in boxes})},
        "iterations": sum(int(r["iterations"]) for r in results),
        "stop_reason": reasons[0] if len(reasons) == 1 else ",".join(reasons),
        "wall_seconds": sum(float(r["seconds"]) for r in results),  # fitting time of every tile, over reruns too
        "per_tile": [
            {
                "box": {"top": b.top, "left": b.left, "height": b.height, "width": b.width},
                **{k: r[k] for k in ("iterations", "stop_reason", "seconds", "psnr", "input_psnr")},
            }
            for b, r in zip(boxes, results, strict=True)
        ],
    }
    report.update(image_scores(image, whole))
    report.update(job.report_extra)
    return report
