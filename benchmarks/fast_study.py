"""Which cheaper setting returns nearly the default's image in a third of the time: the study behind ``--fast``.

Not a test: hours on a 2-core CPU. Over the paper's own images (../shared/data/paper, centre crops of ``--side``
px: CSet9 at sigma 25 and 50, Set5 x4, Table 1) every candidate below is fitted through ``dipc batch`` (the product's
path: resumable, a rerun continues) next to ``dipc fit TASK``'s defaults on the same crops, and scored with the
paper's protocol (benchmarks/paper_tables.py). Two phases, so the quality runs may share the machine:

* ``--phase fits``: the fits. PSNR, the iteration a fit stopped at and the PSNR it returns do not depend on the
  load; the seconds in its report do, and are only shown.
* ``--phase steps``: one steady iteration of every candidate's network, timed interleaved (as fit_speed.py does) on
  each table's crop size. Run it ALONE: the wall time to the returned image is ``iterations x ms per iteration``.
* ``--phase report`` (also the end of the other two): per task, each candidate's mean and worst PSNR change against
  the defaults, its mean iterations and its estimated wall time as a share of the defaults'; the winner is the
  quickest candidate within 0.5 dB of the defaults on the mean (worst case stated).

    python -m benchmarks.fast_study --phase fits --side 128 --images 3 --max-minutes 50
    python -m benchmarks.fast_study --phase steps          # alone: nothing else computing
    python -m benchmarks.fast_study --phase report
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from benchmarks.paper_tables import (
    ROOT,
    Case,
    batch_row,
    cases_of,
    fit_entry,
    machine,
    run_batch,
    write_inputs,
)


@dataclass(frozen=True)
class Candidate:
    """A setting tried against the defaults: ``dipc fit`` options added to the task's default ones."""

    name: str
    options: tuple[str, ...]
    why: str


# The defaults first. Candidates change only the network, the length or the rule that decides it, so each one is a
# preset modifier that exports, resumes and regenerates like any other net.
CANDIDATES: tuple[Candidate, ...] = (
    Candidate("defaults", (), "dipc fit TASK: the task's default preset, auto-stop and EMA where it has them"),
    Candidate("w64", ("--channels", "64"), "64 channels per level: about a quarter of the convolutions' work"),
    Candidate("w32", ("--channels", "32"), "32 channels per level"),
    Candidate("w64-d4", ("--channels", "64", "--depth", "4"), "64 channels, 4 levels"),
    Candidate("w64-in8", ("--channels", "64", "--input-depth", "8"), "64 channels and 8 input noise channels"),
    Candidate("w128-half", ("--iterations-scale", "0.5"), "the default net, half the iterations"),
    Candidate("w64-half", ("--channels", "64", "--iterations-scale", "0.5"), "64 channels, half the iterations"),
    Candidate("w32-half", ("--channels", "32", "--iterations-scale", "0.5"), "32 channels, half the iterations"),
    Candidate("w48", ("--channels", "48"), "48 channels per level"),
    Candidate("w64-3q", ("--channels", "64", "--iterations-scale", "0.75"), "64 channels, 3/4 of the iterations"),
    # the stopping rules (docs/stopping.md): the length decided by 5% of the observed pixels held out of the fit
    Candidate("holdout", ("--stop", "holdout"), "stop at the held-out error's minimum, return the image there"),
    Candidate(
        "holdout-finish",
        ("--stop", "holdout", "--stop-finish", "200"),
        "stop at the held-out error's minimum, then 200 iterations on all pixels (noise-free tasks)",
    ),
    Candidate(
        "w64-holdout-finish",
        ("--channels", "64", "--stop", "holdout", "--stop-finish", "200"),
        "64 channels, the held-out stop and 200 iterations on all pixels",
    ),
)
BY_NAME = {c.name: c for c in CANDIDATES}
# The candidate each task's ``--fast`` is (its tasks.Fast record; tests/test_fast.py checks they build the same fit).
SHIPPED = {"denoise": "w32", "super-resolve": "w64-3q", "inpaint": "w64-half"}
# Which tables the study covers and the paper_tables case groups it keeps (x8 and Set14 add time, not insight).
GROUPS = {"denoise": ("CSet9 sigma 25", "CSet9 sigma 50"), "sr": ("Set5 x4",), "table1": ("Table 1",)}
TASK_OF = {"denoise": "denoise", "sr": "super-resolve", "table1": "inpaint"}
MAX_LOSS_DB = 0.5  # the issue's bound on the mean PSNR given up
MAX_SHARE = 1 / 3  # ... for at most this share of the defaults' wall time


def default_iterations(table: str) -> int:
    """The default preset's iteration count for the table's task (a cap where auto-stop runs)."""
    from dip_compile.presets import preset

    return preset(TASK_OF[table], factor=4 if table == "sr" else None).iterations


def options_of(candidate: Candidate, table: str, cap: Optional[int] = None) -> list[str]:
    """The candidate's ``dipc fit`` options for one table; ``--iterations-scale`` is this study's shorthand for a
    share of the default preset's iterations, and ``cap`` (a smoke test) bounds every fit's iterations."""
    out, it, iterations = [], iter(candidate.options), None
    for flag in it:
        if flag == "--iterations-scale":
            iterations = round(float(next(it)) * default_iterations(table))
        else:
            out.append(flag)
    if cap is not None:
        iterations = min(cap, iterations or cap)
    return out + (["--iterations", str(iterations)] if iterations is not None else [])


def study_cases(table: str, data: Path, images: int) -> list[Case]:
    """The first ``images`` cases of every group the study keeps for ``table``."""
    chosen: list[Case] = []
    for group in GROUPS[table]:
        chosen += [c for c in cases_of(table, data) if c.group == group][:images]
    return chosen


def manifest_rows(
    cases: list[Case], candidates: list[Candidate], table: str, cap: Optional[int]
) -> list[dict[str, Any]]:
    return [
        batch_row(case, f"{case.name}-{candidate.name}", options_of(candidate, table, cap))
        for case in cases
        for candidate in candidates
    ]


def time_steps(table: str, inputs: Path, case: Case, candidates: list[Candidate], repeats: int) -> dict[str, float]:
    """Median ms of one steady iteration of each candidate on ``case``'s crop, the candidates taking turns so that
    any load hits them alike. The fits are built by ``dipc fit``'s own parser and loader."""
    from dip_compile.cli import parse_fit_args
    from dip_compile.fitjob import load_problem, resolve_device
    from dip_compile.fitting import Fitter

    fitters = {}
    with tempfile.TemporaryDirectory() as tmp:
        for candidate in candidates:
            args = [case.task, str(inputs / case.image), "-o", str(Path(tmp) / "out.png"), "--force"]
            args += ["--mask", str(inputs / case.mask)] if case.mask else []
            args += ["--factor", str(case.factor)] if case.factor else []
            config, problem = load_problem(parse_fit_args(args + options_of(candidate, table)))
            device = resolve_device(str(config.device))
            fitter = Fitter(config.replace(device=device), problem, device=device)
            for _ in range(3):  # warm-up: allocations, the first compiled step
                fitter.iterate()
            fitters[candidate.name] = fitter
        times: dict[str, list[float]] = {name: [] for name in fitters}
        for _ in range(repeats):
            for name, fitter in fitters.items():
                t0 = time.perf_counter()
                fitter.iterate()
                times[name].append(time.perf_counter() - t0)
    return {name: 1000 * statistics.median(t) for name, t in times.items()}


def summarise(
    table: str,
    rows: list[dict[str, Any]],
    steps: dict[str, float],
    names: list[str],
    other_steps: Optional[dict[str, float]] = None,
) -> dict[str, Any]:
    """Per candidate: PSNR change against the defaults (mean, worst), mean iterations, estimated wall time and its
    share of the defaults'; and the winner under the issue's bounds. ``other_steps``: step timings at another crop
    size, for the share there (the same iterations: exact where the count is fixed, an estimate under auto-stop)."""
    base = [r["fits"]["defaults"] for r in rows]
    out: dict[str, Any] = {}
    for name in names:
        pairs = [
            (r["fits"][name], b)
            for r, b in zip(rows, base, strict=True)
            if r["fits"][name].get("psnr") is not None and b.get("psnr") is not None
        ]
        if not pairs:
            out[name] = {"images": 0}
            continue
        deltas = [f["psnr"] - b["psnr"] for f, b in pairs]
        its = [f.get("iterations") or 0 for f, _ in pairs]
        entry: dict[str, Any] = {
            "images": len(pairs),
            "psnr": float(np.mean([f["psnr"] for f, _ in pairs])),
            "delta_db": float(np.mean(deltas)),
            "worst_delta_db": float(min(deltas)),
            "iterations": float(np.mean(its)),
            "fit_seconds_shown": float(np.mean([f.get("seconds") or 0.0 for f, _ in pairs])),
        }
        if name in steps:
            entry["ms_per_iteration"] = steps[name]
            entry["est_seconds"] = entry["iterations"] * steps[name] / 1000
        out[name] = entry
    default = out.get("defaults", {}).get("est_seconds")
    base_its = out.get("defaults", {}).get("iterations")
    for name, entry in out.items():
        if default and "est_seconds" in entry:
            entry["time_share"] = entry["est_seconds"] / default
        if other_steps and name in other_steps and "defaults" in other_steps and entry.get("images") and base_its:
            entry["time_share_other_side"] = (
                entry["iterations"] * other_steps[name] / (base_its * other_steps["defaults"])
            )
    eligible = [
        n
        for n in names
        if n != "defaults" and out[n].get("images") and out[n].get("time_share") is not None
        if out[n]["delta_db"] >= -MAX_LOSS_DB
    ]
    winner = min(eligible, key=lambda n: out[n]["time_share"], default=None)
    return {
        "candidates": out,
        "winner": winner,
        "meets_target": bool(winner and out[winner]["time_share"] <= MAX_SHARE),
    }


def fmt(value: Optional[float], spec: str) -> str:
    return "-" if value is None else format(value, spec)


def markdown(table: str, summary: dict[str, Any], other_side: Optional[int] = None) -> str:
    other = f" | share at {other_side} px" if other_side else ""
    lines = [
        f"#### {table} ({TASK_OF[table]})",
        "",
        f"| candidate | images | PSNR | vs defaults (mean / worst) | iterations | ms/it | est. seconds | share{other} |",
        "|---|---|---|---|---|---|---|---|" + ("---|" if other_side else ""),
    ]
    for name, e in summary["candidates"].items():
        if not e.get("images"):
            lines.append(f"| {name} | 0 | - | - | - | - | - | -{' | -' if other_side else ''} |")
            continue
        lines.append(
            f"| {name} | {e['images']} | {e['psnr']:.2f} | {e['delta_db']:+.2f} / {e['worst_delta_db']:+.2f} | "
            f"{e['iterations']:.0f} | {fmt(e.get('ms_per_iteration'), '.0f')} | {fmt(e.get('est_seconds'), '.0f')}"
            f" | {fmt(e.get('time_share'), '.2f')}"
            + (f" | {fmt(e.get('time_share_other_side'), '.2f')}" if other_side else "")
            + " |"
        )
    verdict = summary["winner"] or "none within 0.5 dB with a step timing"
    lines += [
        "",
        f"Quickest within {MAX_LOSS_DB} dB: **{verdict}**; a third of the time or less: {summary['meets_target']}",
    ]
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--phase", choices=("fits", "steps", "report"), default="report")
    parser.add_argument("--tables", default="denoise,sr,table1", help="comma-separated: denoise, sr, table1")
    parser.add_argument("--candidates", default=",".join(BY_NAME), help="comma-separated names (defaults always)")
    parser.add_argument("--side", type=int, default=128, help="centre-crop side of every image")
    parser.add_argument("--images", type=int, default=3, help="images per group (CSet9 sigma 25 is one group)")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data", help="holds paper/")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "fast_study")
    parser.add_argument("--cap", type=int, help="bound every fit's iterations (a smoke test of the pipeline)")
    parser.add_argument("--repeats", type=int, default=10, help="--phase steps: timed iterations per candidate")
    parser.add_argument(
        "--steps-side", type=int, help="also the share with the step timings of this --side's steps phase"
    )
    parser.add_argument("--device", default="auto", help="dipc batch --device")
    parser.add_argument("--threads", type=int, help="OMP_NUM_THREADS of the batch")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint-every", type=float, default=60.0)
    parser.add_argument("--max-minutes", type=float, help="stop the fits after this long (a rerun continues)")
    parser.add_argument("-q", "--quiet", action="store_true")
    args = parser.parse_args(argv)
    args.pack, args.ray = 1, False  # what paper_tables.run_batch reads

    tables = [t for t in args.tables.split(",") if t]
    names = ["defaults", *[n for n in args.candidates.split(",") if n and n != "defaults"]]
    unknown = [t for t in tables if t not in GROUPS] + [n for n in names if n not in BY_NAME]
    if unknown:
        parser.error(f"unknown: {', '.join(unknown)} (tables: {', '.join(GROUPS)}; candidates: {', '.join(BY_NAME)})")
    if not (args.data / "paper").is_dir():
        parser.error(f"{args.data / 'paper'} not found (pass --data: the folder that holds paper/)")
    candidates = [BY_NAME[n] for n in names]
    root = args.out / (f"side{args.side}" + (f"-cap{args.cap}" if args.cap else ""))
    steps_path = root / "steps.json"
    steps: dict[str, dict[str, float]] = json.loads(steps_path.read_text()) if steps_path.exists() else {}
    other_path = args.out / f"side{args.steps_side}" / "steps.json" if args.steps_side else None
    other: dict[str, dict[str, float]] = (
        json.loads(other_path.read_text()) if other_path and other_path.exists() else {}
    )
    deadline = None if args.max_minutes is None else time.monotonic() + 60.0 * args.max_minutes
    documents, results, code = [], {}, 0
    for table in tables:
        cases = study_cases(table, args.data, args.images)
        inputs, outdir = root / "inputs" / table, root / "batch" / table
        inputs.mkdir(parents=True, exist_ok=True)
        for case in cases:
            write_inputs(case, args.data, inputs, args.side)
        if args.phase == "fits" and code in (0, 1):
            manifest = inputs / "manifest.jsonl"
            manifest.write_text(
                "".join(json.dumps(r) + "\n" for r in manifest_rows(cases, candidates, table, args.cap))
            )
            code = run_batch(manifest, outdir, args, deadline)
        if args.phase == "steps":
            print(f"fast_study: timing {len(candidates)} steps on {cases[0].name} ({args.side} px)", flush=True)
            steps[table] = time_steps(table, inputs, cases[0], candidates, args.repeats)
            steps[table + ":machine"] = machine()
            steps_path.write_text(json.dumps(steps, indent=1))
        rows = [{"name": c.name, "fits": {n: fit_entry(c, outdir, inputs, n) for n in names}} for c in cases]
        summary = summarise(table, rows, steps.get(table, {}), names, other.get(table))
        results[table] = {"rows": rows, **summary}
        documents.append(markdown(table, summary, args.steps_side if other.get(table) else None))
    text = "\n\n".join(documents)
    root.mkdir(parents=True, exist_ok=True)
    (root / "fast_study.json").write_text(
        json.dumps(
            {
                "side": args.side,
                "candidates": [c.__dict__ for c in candidates],
                "machine": machine(),
                "tables": results,
            },
            indent=1,
            default=str,
        )  # fmt: skip
    )
    (root / "fast_study.md").write_text(text + "\n")
    print(text, flush=True)
    return 0 if code in (0, 1) else 130


if __name__ == "__main__":
    sys.exit(main())
