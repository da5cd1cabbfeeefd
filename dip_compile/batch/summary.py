"""The batch's summary: summary.csv, summary.json and summary.md in OUTDIR (one row per job, mean PSNR per task)."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

from ..imageio import atomic_write
from ..report import finite_json
from .jobs import SUMMARY
from .runner import Outcome

COLUMNS = ("job", "task", "status", "iterations", "seconds", "psnr", "ssim", "stop_reason", "error")


def means(outcomes: Sequence[Outcome]) -> dict[str, dict[str, Any]]:
    """Per task: jobs, failures, and the mean PSNR/SSIM of the jobs with a reference (SSIM over the jobs that have
    one: it is not defined for images smaller than its window)."""
    result: dict[str, dict[str, Any]] = {}
    for task in sorted({o.task for o in outcomes}):
        rows = [o for o in outcomes if o.task == task]
        scored = [o for o in rows if o.ok and o.psnr is not None]
        ssims = [o.ssim for o in scored if o.ssim is not None]
        result[task] = {
            "jobs": len(rows),
            "failed": sum(o.status == "failed" for o in rows),
            "scored": len(scored),
            "mean_psnr": sum(o.psnr for o in scored) / len(scored) if scored else None,  # type: ignore[misc]
            "mean_ssim": sum(ssims) / len(ssims) if ssims else None,
        }
    return result


def _cell(value: Any, column: str = "") -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}" if "ssim" in column else f"{value:.2f}"
    return str(value)


def cells(outcome: Outcome) -> list[str]:
    """The job's row as text, one cell per ``COLUMNS`` entry (the CSV, the markdown and the CLI's table)."""
    row = dataclasses.asdict(outcome)
    return [_cell(row[c], c) for c in COLUMNS]


def markdown(outcomes: Sequence[Outcome]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + " --- |" * len(COLUMNS)]
    for o in outcomes:
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells(o)) + " |")
    lines += ["", "| task | jobs | failed | mean PSNR (dB) | mean SSIM |", "| --- | --- | --- | --- | --- |"]
    for task, m in means(outcomes).items():
        lines.append(
            f"| {task} | {m['jobs']} | {m['failed']} | {_cell(m['mean_psnr'], 'psnr')} ({m['scored']} with a reference) | "
            f"{_cell(m['mean_ssim'], 'ssim')} |"
        )
    return "\n".join(lines) + "\n"


def text_table(outcomes: Sequence[Outcome]) -> str:
    """The summary as plain aligned text, every cell whole (for logs and narrow terminals, where a drawn table
    would cut each cell to a few characters); columns empty for every job are left out."""
    rows = [list(COLUMNS), *(cells(o) for o in outcomes)]
    keep = [i for i, c in enumerate(COLUMNS) if c in ("job", "task", "status") or any(r[i] for r in rows[1:])]
    widths = {i: max(len(r[i]) for r in rows) for i in keep}
    return "\n".join("  ".join(r[i].ljust(widths[i]) for i in keep).rstrip() for r in rows)


def summary_paths(outdir: Path, shard: Optional[str] = None) -> list[Path]:
    """``summary.csv``, ``.json`` and ``.md`` (``summary-I-of-N.*`` for a shard)."""
    stem = SUMMARY if shard is None else f"{SUMMARY}-{{}}-of-{{}}".format(*shard.split("/"))
    return [outdir / f"{stem}{suffix}" for suffix in (".csv", ".json", ".md")]


def write_summary(outcomes: Sequence[Outcome], outdir: Path, shard: Optional[str] = None) -> list[Path]:
    """Writes the three summaries (``summary-I-of-N.*`` for a shard) atomically; returns their paths."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    writer.writerows(cells(o) for o in outcomes)
    data = {"jobs": [dataclasses.asdict(o) for o in outcomes], "per_task": means(outcomes)}
    texts = {
        ".csv": buffer.getvalue(),
        ".json": json.dumps(finite_json(data), indent=2, allow_nan=False),
        ".md": markdown(outcomes),
    }
    written = summary_paths(outdir, shard)
    for path, text in zip(written, texts.values(), strict=True):
        atomic_write(path, lambda tmp, text=text: tmp.write_text(text), overwrite=True)  # type: ignore[misc]
    return written
