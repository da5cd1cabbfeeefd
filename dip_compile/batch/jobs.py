"""The jobs of a batch: a folder of images or a manifest (CSV or JSON Lines), each job one ``dipc fit``.

A job's options are ``dipc fit`` flags (the batch's common flags, then the job's own ``options``), parsed by the same
parser as ``dipc fit``, so every fit option works in a batch and means the same. Everything that can be checked
before fitting is checked here, for every job, so a bad manifest stops the batch before any work (exit 2).
"""

from __future__ import annotations

import csv
import json
import os
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from ..checks import is_whole
from ..cli.options import parse_fit_args
from ..config import Task
from ..errors import DipError
from ..fitjob import fingerprint as fingerprint  # (re-exported: its home before fitjob.py)
from ..job import FitJob
from ..tasks import TASKS, needing

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
COLUMNS = ("image", "task", "mask", "factor", "preset", "reference", "output", "options")
# the job options naming files (or runs) a batch makes itself (OUTDIR/NAME.png, .json, checkpoints/NAME.ckpt), by
# field: the flag to drop, and what to use instead (``config.option``'s ``batch_owned``)
BATCH_OWNED = {
    f.name: f.metadata["flag"] + ("" if owned is True else f" ({owned})")
    for f in FitJob.options()
    if (owned := f.metadata["batch_owned"])
}
# What the batch itself writes in OUTDIR besides the jobs' NAME.png and .json, named here once (``summary``, the
# ``runner``, the ``lock`` read them): the summaries (SUMMARY-I-of-N.* for a shard), the kept checkpoints' folder,
# the running jobs' folder and the locks (LOCK-I-of-N.lock). No job may be named so (compared case-insensitively,
# as on macOS and Windows file systems).
SUMMARY, CHECKPOINTS, PARTIAL, LOCK = "summary", "checkpoints", ".partial", ".dipc-batch"
_SHARD = r"(-\d+-of-\d+)?"
RESERVED = re.compile(
    rf"{SUMMARY}{_SHARD}|{CHECKPOINTS}|{re.escape(PARTIAL)}|{re.escape(LOCK)}{_SHARD}(\.lock)?", re.IGNORECASE
)


class ManifestError(DipError):
    """A batch that cannot start: bad manifest, missing files, duplicate outputs, bad options (exit 2)."""


@dataclass(frozen=True)
class BatchJob:
    """One row: a ``dipc fit`` of ``image`` whose outputs are OUTDIR/``name``.png and .json."""

    name: str
    task: str
    image: Path
    mask: Optional[Path] = None
    reference: Optional[Path] = None
    factor: Optional[int] = None
    preset: Optional[str] = None
    options: tuple[str, ...] = ()  # dipc fit flags for this job only (after the batch's common ones)
    problem: Optional[str] = None  # why this job cannot run (e.g. no reference in --reference-dir): it fails alone

    def alike(self) -> tuple[Any, ...]:
        """Its ``dipc fit`` command but for the files it names: jobs alike here are parsed and checked once (a
        mask or reference given or not is part of it, since a check counts the mask sources)."""
        return (self.task, self.factor, self.preset, self.options, self.mask is None, self.reference is None)

    def fit_args(self, common: Sequence[str], output: Path) -> list[str]:
        """The ``dipc fit`` command line of this job (its own options last, so they win)."""
        args = [self.task, str(self.image), "-o", str(output)]
        for flag, value in (
            ("--mask", self.mask),
            ("--reference", self.reference),
            ("--factor", self.factor),
            ("--preset", self.preset),
        ):
            if value is not None:
                args += [flag, str(value)]
        return [*args, *common, *self.options]


def fit_job(job: BatchJob, common: Sequence[str], outdir: Path) -> FitJob:
    """The job's ``FitJob`` writing OUTDIR/NAME.png, its flags parsed as ``dipc fit`` parses them; bad options raise
    ``ManifestError`` naming the job."""
    output = outdir / f"{job.name}.png"
    try:
        parsed = parse_fit_args(job.fit_args(common, output))
    except DipError as exc:
        raise ManifestError(f"job {job.name}: {exc}") from None
    for name, flag in BATCH_OWNED.items():
        if getattr(parsed, name):
            raise ManifestError(f"job {job.name}: dipc batch writes OUTDIR/NAME.png and .json itself: drop {flag}")
    if parsed.output != output:  # a later -o/--output in the options: it would write outside OUTDIR
        raise ManifestError(
            f"job {job.name}: dipc batch writes OUTDIR/NAME.png itself: drop -o/--output {parsed.output} "
            "(the output column names a job's files)"
        )
    return parsed


def load_jobs(
    source: Path,
    task: Optional[str] = None,
    mask_dir: Optional[Path] = None,
    reference_dir: Optional[Path] = None,
) -> list[BatchJob]:
    """The jobs of a folder of images (``task`` for all, masks and references matched by file name) or of a
    manifest (``.csv``, ``.jsonl``/``.ndjson``)."""
    if task is not None and task not in Task.values():
        raise ManifestError(f"unknown task {task!r}; choose one of {', '.join(Task.values())}")
    if source.is_dir():
        if task is None:
            raise ManifestError("a folder of images needs --task (a manifest gives a task per row)")
        jobs = from_folder(source, task, mask_dir, reference_dir)
    elif source.is_file():
        if mask_dir is not None or reference_dir is not None:
            raise ManifestError("--mask-dir and --reference-dir are for a folder of images; a manifest names them")
        jobs = from_manifest(source, task)
    else:
        raise ManifestError(f"{source}: no such folder or manifest")
    if not jobs:
        raise ManifestError(f"{source}: no jobs (images: {', '.join(IMAGE_SUFFIXES)})")
    _check_names(jobs)
    return jobs


def from_folder(folder: Path, task: str, mask_dir: Optional[Path], reference_dir: Optional[Path]) -> list[BatchJob]:
    images = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    for name, directory in (("--mask-dir", mask_dir), ("--reference-dir", reference_dir)):
        if directory is not None and not directory.is_dir():
            raise ManifestError(f"{name} {directory}: no such folder")
    if mask_dir is not None and not TASKS[task].needs("mask"):
        raise ManifestError(f"--mask-dir is for {needing('mask')}, not {task}")
    jobs = []
    for image in images:
        mask = _match(image, mask_dir)
        if mask_dir is not None and mask is None:  # the whole folder is inpainted with masks: a setup error
            raise ManifestError(_missing(image, mask_dir, "mask"))
        reference = _match(image, reference_dir)
        # a job without its reference would run unscored: it fails alone, with the reason, and the others run
        problem = _missing(image, reference_dir, "reference") if reference_dir and reference is None else None
        jobs.append(BatchJob(image.stem, task, image, mask=mask, reference=reference, problem=problem))
    return jobs


def _match(image: Path, directory: Optional[Path]) -> Optional[Path]:
    """The file of ``directory`` with ``image``'s name (any image extension), or None."""
    if directory is None:
        return None
    for suffix in (image.suffix, *IMAGE_SUFFIXES):
        candidate = directory / (image.stem + suffix)
        if candidate.is_file():
            return candidate
    return None


def _missing(image: Path, directory: Path, what: str) -> str:
    return f"no {what} for {image.name} in {directory} (looked for {image.stem}.png and the like)"


def from_manifest(path: Path, default_task: Optional[str] = None) -> list[BatchJob]:
    """Rows of a CSV (header row) or JSON Lines manifest. Paths are relative to the manifest's folder."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path}: cannot read the manifest ({exc.__class__.__name__})") from None
    suffix = path.suffix.lower()
    rows: list[tuple[int, dict[str, Any]]]
    if suffix == ".csv":
        reader = csv.DictReader(text.splitlines())
        _check_columns(path, reader.fieldnames or [], 1)
        rows = []
        for row in reader:
            if None in row:  # DictReader keeps the fields beyond the header under None: refuse, never drop them
                raise ManifestError(
                    f"{path}:{reader.line_num}: {len(row[None])} more field(s) than the header's "
                    f"{len(reader.fieldnames or [])} columns (quote a value that holds a comma)"
                )
            rows.append((reader.line_num, dict(row)))
    elif suffix in (".jsonl", ".ndjson"):
        rows = []
        for i, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ManifestError(f"{path}:{i}: not JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise ManifestError(f"{path}:{i}: each line must be a JSON object")
            _check_columns(path, list(row), i)
            rows.append((i, row))
    else:
        raise ManifestError(f"{path}: a manifest is .csv or .jsonl, got {path.suffix or 'no extension'}")
    return [_job(path, line, row, default_task) for line, row in rows]


def _check_columns(path: Path, names: Sequence[Any], line: int) -> None:
    unknown = [str(n) for n in names if n not in COLUMNS]
    if unknown:
        raise ManifestError(f"{path}:{line}: unknown column(s) {', '.join(unknown)}; columns are {', '.join(COLUMNS)}")
    twice = sorted({str(n) for n in names if list(names).count(n) > 1})
    if twice:
        raise ManifestError(f"{path}:{line}: column(s) {', '.join(twice)} given twice")
    if "image" not in names:
        raise ManifestError(f"{path}:{line}: the column image is missing")


def _job(path: Path, line: int, row: dict[str, Any], default_task: Optional[str]) -> BatchJob:
    where = f"{path}:{line}"
    values = {k: (v.strip() if isinstance(v, str) else v) for k, v in row.items()}
    values = {k: v for k, v in values.items() if v not in (None, "")}
    for key, value in values.items():  # no file name or command-line flag holds one: it would fail mid-batch
        if any(isinstance(text, str) and "\0" in text for text in (value if isinstance(value, list) else [value])):
            raise ManifestError(f"{where}: {key} holds a NUL character: {value!r}")

    def file(key: str) -> Optional[Path]:
        if key not in values:
            return None
        found = path.parent / str(values[key])
        if not found.is_file():
            raise ManifestError(f"{where}: {key} {values[key]}: no such file")
        return found

    image = file("image")
    if image is None:
        raise ManifestError(f"{where}: no image")
    task = str(values.get("task", default_task or ""))
    if task not in Task.values():
        raise ManifestError(
            f"{where}: unknown task {task!r}; choose one of {', '.join(Task.values())}"
            if task
            else f"{where}: no task (a task column, or --task for every row)"
        )
    factor = whole_number(values["factor"], f"{where}: factor") if "factor" in values else None
    options = values.get("options", "")
    if not isinstance(options, (str, list)) or not all(isinstance(o, (str, int, float)) for o in options):
        raise ManifestError(f"{where}: options must be a string of dipc fit flags or a list of them, got {options!r}")
    try:
        parsed = tuple(shlex.split(options)) if isinstance(options, str) else tuple(str(o) for o in options)
    except ValueError as exc:
        raise ManifestError(f"{where}: options: {exc}") from None
    output = str(values.get("output", image.name))
    suffix = Path(output).suffix  # "x.png" names the job x; "x-0.75" keeps its dot (not an image's suffix)
    name = output[: -len(suffix)] if suffix.lower() in IMAGE_SUFFIXES else output
    if Path(output).is_absolute() or any(sep in output for sep in ("/", "\\", os.sep)) or name in ("", ".", ".."):
        raise ManifestError(f"{where}: output must be a file name in OUTDIR (no folder), got {output!r}")
    if any(ord(c) < 32 or ord(c) == 127 for c in output):  # a newline or tab would also break the summary's lines
        raise ManifestError(f"{where}: output must be a file name without control characters, got {output!r}")
    return BatchJob(
        name,
        task,
        image,
        mask=file("mask"),
        reference=file("reference"),
        factor=factor,
        preset=str(values["preset"]) if "preset" in values else None,
        options=parsed,
    )


def whole_number(value: Any, what: str) -> int:
    """A manifest's integer, the same rule for CSV text and JSON values: an int, or text of one (``"4"``); a float
    (``2.7``, even ``2.0``), a boolean or other text is refused rather than rounded or read as 1."""
    if is_whole(value):
        return value
    if isinstance(value, str) and re.fullmatch(r"[+-]?\d+", value.strip()):
        return int(value)
    raise ManifestError(f"{what} must be a whole number, got {value!r}")


def _check_names(jobs: Sequence[BatchJob]) -> None:
    """Every job writes its own files (names compared case-insensitively: one file on macOS and Windows), none of
    them one the batch writes itself."""
    seen: dict[str, BatchJob] = {}
    for job in jobs:
        if RESERVED.fullmatch(job.name):
            raise ManifestError(
                f"job {job.name} ({job.image}): {job.name} is a name dipc batch uses itself in OUTDIR (summary.*, "
                "checkpoints, .partial, .dipc-batch.lock): name the job otherwise (a manifest's output column, or "
                "rename the image)"
            )
        key = job.name.casefold()
        if key in seen:
            raise ManifestError(
                f"two jobs write {job.name}.png ({seen[key].image} and {job.image}): give them distinct output names"
            )
        seen[key] = job


def parse_shard(spec: str) -> tuple[int, int]:
    """``I/N``: the I-th of N shards, 0 <= I < N (a Slurm array's ``$SLURM_ARRAY_TASK_ID/$N``)."""
    try:
        index, count = (int(part) for part in spec.split("/"))
    except ValueError:
        raise ManifestError(f"--shard takes I/N (e.g. 0/4), got {spec!r}") from None
    if count < 1 or not 0 <= index < count:
        raise ManifestError(f"--shard I/N needs 0 <= I < N, got {spec!r}")
    return index, count


def shard(jobs: Sequence[BatchJob], spec: Optional[str]) -> list[BatchJob]:
    """Every N-th job from the I-th: shards of one manifest are disjoint and together cover it."""
    if spec is None:
        return list(jobs)
    index, count = parse_shard(spec)
    return [job for i, job in enumerate(jobs) if i % count == index]
