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
"""

from __future__ import annotations

import hashlib
import math
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from .checkpoint import load_checkpoint, save_checkpoint
from .checks import is_whole
from .config import FitConfig
from .errors import DipError
from .fitjob import INTERRUPTED, FitJob, Outputs, fingerprint, load_problem, resolve_device
from .fitting import Fitter, Session, stop_flag
from .imageio import atomic_write, save_image, save_side_by_side
from .metrics import psnr
from .preflight import TILED_TASKS, check_memory, dry_run, is_out_of_memory
from .problem import Problem, make_problem
from .progress import run_with_progress
from .report import fit_identity, image_scores, save_report
from .tasks import TASKS as TASK_SPECS
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


def work_folder(output: Path) -> Path:
    """Where a tiled run keeps finished tiles and the running tile's checkpoint: OUT.tiles beside the image."""
    return output.with_name(output.name + ".tiles")


def job_fingerprint(job: FitJob) -> str:
    """What makes the tiles' images: the options (not the outputs or the device) and the input files' contents."""
    return hashlib.sha256(f"{__version__}:{fingerprint(job)}".encode()).hexdigest()[:16]


def check_job(job: FitJob) -> None:
    """The one-line refusals that need no image."""
    tile, overlap = job.tile, job.overlap
    if tile is None:
        raise DipError("--overlap only applies with --tile SIZE")
    if not is_whole(tile, 1):
        raise DipError(f"--tile must be a positive whole number of pixels, got {tile!r}")
    if not is_whole(overlap, 0):
        raise DipError(f"--overlap must be a whole number of pixels >= 0, got {overlap!r}")
    if job.resume is not None or job.checkpoint is not None or job.checkpoint_every:
        given = "--resume" if job.resume is not None else "--checkpoint" if job.checkpoint else "--checkpoint-every"
        raise DipError(
            f"{given} does not apply with --tile: a tiled run keeps its finished tiles (and on Ctrl-C the running "
            f"tile's checkpoint) in {work_folder(job.output)} and resumes when the same command is run again"
        )
    if job.snapshot_every or job.timelapse is not None:
        given = "--snapshot-every" if job.snapshot_every else "--timelapse"
        raise DipError(f"{given} does not apply with --tile: the image exists only once every tile is fitted")
    if job.task in TASK_SPECS and TASK_SPECS[job.task].needs("mask"):
        raise DipError(
            f"--tile does not support {job.task}: the mask's holes cross tile borders and a tile may fall entirely in a "
            f"hole, with nothing to fit; --tile supports {' and '.join(TASKS)}"
        )
    if job.task is not None and job.task not in TASKS:
        raise DipError(f"--tile supports {' and '.join(TASKS)}, not {job.task}")


def check_config(config: FitConfig, tile: int, overlap: int) -> None:
    """The refusals that need the network and the factor."""
    net = config.net
    if tile < net.min_side:
        raise DipError(
            f"--tile {tile} is smaller than the smallest canvas of this {net.depth}-level network ({net.min_side} px: "
            f"{net.min_coarsest} px at its coarsest level); use --tile {net.min_side} or more"
        )
    if tile <= 2 * overlap:
        raise DipError(
            f"--tile ({tile}) must be larger than twice --overlap ({overlap}): a tile would be all overlap; use a "
            "larger --tile or a smaller --overlap"
        )
    if config.coarse_share:
        raise DipError(
            "--coarse-share does not apply with --tile: each tile is a small fit of its own; fit the whole image, or "
            "tile it without --coarse-share"
        )
    if tile % config.factor:  # (the factor is 1 unless the task scales)
        raise DipError(
            f"--tile is in output pixels and must be a multiple of --factor {config.factor} for {config.task}, got {tile}"
        )


def tile_problem(config: FitConfig, whole: Problem, box: Box) -> Problem:
    """The fit of one tile: the tile's crop of the observation (the low-resolution crop for super-resolution) and of
    the reference."""
    f = config.factor  # (1 unless the task scales)
    low = Box(box.top // f, box.left // f, box.height // f, box.width // f)
    reference = None if whole.reference is None else box.crop(whole.reference)
    return make_problem(config, low.crop(whole.observation).clone(), reference=reference)


def tiled_session(job: FitJob, console: Any, stop_requested: Optional[Callable[[], bool]] = None) -> Session[int]:
    """``restore.fit_session`` with ``job.tile``: the tiles fitted one after the other, blended into ``job.output``.
    Returns 0, or 130 after Ctrl-C (the finished tiles and the running tile's checkpoint kept for a rerun)."""
    check_job(job)
    assert job.tile is not None
    notes: list[str] = []
    config, whole = load_problem(job, notes)
    for note in notes:
        console.print(f"note: {note}")
    check_config(config, job.tile, job.overlap)
    device = resolve_device(str(config.device))
    config = config.replace(device=device)
    boxes = grid(whole.size, job.tile, job.overlap, config.factor)
    problems = [tile_problem(config, whole, box) for box in boxes]
    largest = max(problems, key=lambda p: p.canvas[0] * p.canvas[1])
    if job.dry_run:
        console.print(f"dry run: {len(boxes)} tile(s) of {job.tile}x{job.tile} (overlap {job.overlap}), each one:")
        return dry_run(config, largest, device, console)
    outputs = Outputs(job.force)
    outputs.add(job.output, "-o")
    outputs.add(job.report, "--report")
    outputs.add(job.compare, "--compare")
    guess = check_memory(config, largest, device)

    work, key = work_folder(job.output), job_fingerprint(job)
    try:
        work.mkdir(exist_ok=True)
    except OSError as exc:
        raise DipError(f"cannot make the tiles' work folder {work}: {exc.strerror or exc}") from None
    if any(key not in f.name for f in work.iterdir()):
        console.print(f"note: {work} holds tiles of a run with other options or input: they are not reused")
    n, results, fitted = len(boxes), [], 0
    with stop_flag(stop_requested, lambda message: console.print(message)) as stopping:
        for i, (box, problem) in enumerate(zip(boxes, problems, strict=True)):
            done, running = work / f"tile-{i:03d}.{key}.pt", work / f"tile-{i:03d}.{key}.ckpt"
            saved = _load_tile(done, box)
            if saved is not None:
                results.append(saved)
                console.print(f"tile {i + 1}/{n} ({box.describe()}): fitted before, reused")
                continue
            if stopping():
                return _interrupted(console, i, n, None, work)
            fitter = _fitter(config, problem, device, running)
            again = f", resumed at iteration {fitter.iteration}" if fitter.iteration else ""
            console.print(f"tile {i + 1}/{n} ({box.describe()}{again})")
            if not fitted:
                console.print(f"step: {fitter.plan.describe()}")
                console.print(guess.describe())
            fitted += 1
            try:
                result = yield from run_with_progress(fitter, config, job, console, outputs, None, stopping)
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
    image = blend([(box, r["image"]) for box, r in zip(boxes, results, strict=True)], whole.size, job.overlap)
    image = image.clamp(0, 1)
    outputs.write(job.output, lambda overwrite: save_image(image, job.output, overwrite=overwrite))
    if job.compare is not None:
        panels = [whole.corrupted_view().cpu(), image]
        if whole.reference is not None:
            panels.append(whole.reference.cpu())
        compare = job.compare
        outputs.write(compare, lambda overwrite: save_side_by_side(panels, compare, overwrite=overwrite))
    report = _report(job, config, whole, boxes, results, image, device)
    if job.report is not None:
        path = job.report
        outputs.write(path, lambda overwrite: save_report(report, path, overwrite=overwrite))
    shutil.rmtree(work, ignore_errors=True)
    line = (
        f"{n} tile(s) of {job.tile}x{job.tile} (overlap {job.overlap}), {report['iterations']} iterations in all, "
        f"{report['wall_seconds']:.0f} s fitting -> {job.output}"
    )
    if "final_psnr" in report:
        line += f"; PSNR {report['final_psnr']:.2f} dB (input {report['input_psnr']:.2f} dB)"
    console.print(line)
    return 0


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
