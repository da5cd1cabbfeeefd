"""Which setting returns nearly the defaults' image in a fraction of their time: the study behind ``--fast``.

Not a test: hours on a 2-core CPU at 256 px, days at full size. Every candidate (``CANDIDATES``: a named list of
``dipc fit`` options) is fitted through ``dipc batch`` (the product's path: a rerun skips the finished fits and resumes
the interrupted ones) next to ``dipc fit TASK``'s defaults, on the paper's own images (``TABLES``: CSet9 at sigma 25
from the paper's noisy files, Set5 x4 with the paper's crop and Lanczos input, two Table 1 images; for deblurring, which
no paper table has, CSet9's ground truth blurred and made noisy by the fit itself) at their full size
(``--scale full``) or as centre crops of ``--side`` px (``--scale crop``), and scored with the paper's protocol
(benchmarks/paper_tables.py). Per task it reports each candidate's PSNR against the defaults (mean and worst over the
images), its iterations, its wall time and that time as a share of the defaults', and picks:

* ``--fast``: the quickest candidate within 0.5 dB of the defaults on the mean and on the worst image;
* the issue's target: that one in a fifth of the defaults' time or less;
* a new default: a candidate within 0.1 dB (mean and worst) at half the defaults' time or less on every task.

The wall time is one of two, and the results say which (``timed``): with ``--time-steps`` (a short phase that must
run ALONE: the median of three short fits per candidate and image size, the candidates taking turns), the iterations
each fit ran times its candidate's milliseconds per iteration timed alone on all cores, so the fits themselves can run
beside other work (PSNR and iterations do not depend on the load); without, each fit's own fitting seconds from its
report, summed over resumes, which mean something only when every fit ran alone.

A candidate whose options the installed ``dipc fit`` does not take (a generator or stopping rule not merged yet) is
reported as unavailable, with the CLI's reason; a fit that fails is reported with its error. The results go to
``--out``/SCALE/fast_study.json and fast_study.md (committed: the docs' numbers cite them); the inputs and fits beside
them are not.

    python -m benchmarks.fast_study --scale crop --max-minutes 120            # 256 px crops; a rerun continues
    python -m benchmarks.fast_study --scale full --only F16 --candidates w32,c2f-50
    python -m benchmarks.fast_study --scale crop --report                     # only score what is on disk
    python -m benchmarks.fast_study --scale crop --time-steps --report        # ALONE: time each step, then score
    python -m benchmarks.fast_study --scale crop --reprice elsewhere/crop256/steps.json   # the shares on that CPU
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
from PIL import Image

sys.path[:0] = [] if __package__ else [str(Path(__file__).resolve().parents[1])]  # as `python benchmarks/X.py`

from benchmarks.common import DATA, RESULTS, add_shard_option, check_shard, fit, fit_job, machine, manifest_name
from benchmarks.paper_tables import Case, batch_row, cases_of, fit_entry, fmt, run_batch, write_inputs


@dataclass(frozen=True)
class Candidate:
    """A setting tried against the defaults: ``dipc fit`` options added to the task's default ones. ``tables``:
    the tables it is tried on (empty: all)."""

    name: str
    options: tuple[str, ...]
    why: str
    tables: tuple[str, ...] = ()


@dataclass(frozen=True)
class Table:
    """One task of the study: the paper_tables table and case group it takes its images from, and which images."""

    task: str
    group: str
    images: tuple[str, ...]  # the images' names in the paper's folder (F16_GT.png: F16)
    source: str = ""  # paper_tables' table of the group ("": the study's table name)
    # ``dipc fit`` options every fit of the table adds: with ``--from-reference`` the fit makes its observation from
    # the group's ground truth (which is then the image it is given) with the task's own operator
    problem: tuple[str, ...] = ()


TABLES: dict[str, Table] = {
    "denoise": Table("denoise", "CSet9 sigma 25", ("F16", "baboon", "peppers")),
    "sr": Table("super-resolve", "Set5 x4", ("bird", "butterfly", "head", "woman")),
    # images that chose nothing: x4 super-resolution's --fast (drp-250) was chosen on Set5's bird and butterfly
    "sr14": Table("super-resolve", "Set14 x4", ("baboon", "comic", "zebra", "monarch"), source="sr"),
    "table1": Table("inpaint", "Table 1", ("Cameraman256", "peppers256")),  # 256 px: the full size stays affordable
    # no paper table deblurs: CSet9's ground truth blurred by a Gaussian of 2 px with noise of 1% (docs/fit.md's example)
    "deblur": Table(
        "deblur",
        "CSet9 sigma 25",
        ("F16", "baboon", "peppers"),
        source="denoise",
        problem=("--from-reference", "--kernel", "gaussian:2", "--sigma", "2.55"),
    ),
}
TASK_OF = {name: table.task for name, table in TABLES.items()}


def stops_at_its_count(task: str) -> bool:
    """Whether the task's default preset runs a fixed count (denoising and deblurring stop on held-out pixels)."""
    from dip_compile.presets import preset

    return preset(task).stop == "fixed"


FIXED = tuple(n for n, t in TABLES.items() if stops_at_its_count(t.task))  # the tables whose defaults run a fixed count
SR = tuple(n for n, t in TABLES.items() if t.task == "super-resolve")  # the super-resolution tables (x4)

# The defaults first; one line per candidate. ``--iterations-scale S`` is this study's shorthand for a share S of the
# default preset's iterations (a cap where auto-stop runs).
CANDIDATES: tuple[Candidate, ...] = (
    Candidate("defaults", (), "dipc fit TASK: the task's default preset, auto-stop and EMA where it has them"),
    # narrower networks (the first study: docs/fast.md)
    Candidate("w64", ("--channels", "64"), "64 channels per level: about a quarter of the convolutions' work"),
    Candidate(
        "w64-cap5k",
        ("--channels", "64", "--iterations-scale", "1.66667"),
        "64 channels, the cap at 5/3 of the preset's (f16: 5000): at full size the narrow net reaches f16's cap",
        ("denoise", "deblur"),
    ),
    Candidate(
        "w64f16-cap5k",
        ("--channels", "16,64,64,64,64", "--iterations-scale", "1.66667"),
        "w64-cap5k with 16 channels at the finest level, whose full-resolution layers are most of a step's work",
        ("denoise", "deblur"),
    ),
    Candidate(
        "w64f32-cap5k",
        ("--channels", "32,64,64,64,64", "--iterations-scale", "1.66667"),
        "w64-cap5k with 32 channels at the finest level",
        ("denoise", "deblur"),
    ),
    Candidate(
        "w64-cap5k-ramp600",
        ("--channels", "64", "--iterations-scale", "1.66667", "--reg-noise-ramp", "600"),
        "w64-cap5k with the input perturbation grown in over 600 iterations (prior_probes.py: an earlier image)",
        ("denoise", "deblur"),
    ),
    Candidate("w48", ("--channels", "48"), "48 channels per level"),
    Candidate("w32", ("--channels", "32"), "32 channels per level"),
    Candidate("w64-lr2", ("--channels", "64", "--lr", "0.02"), "64 channels at twice the learning rate"),
    Candidate("w32-lr2", ("--channels", "32", "--lr", "0.02"), "32 channels at twice the learning rate"),
    Candidate("w64-d4", ("--channels", "64", "--depth", "4"), "64 channels, 4 levels"),
    Candidate("w64-in8", ("--channels", "64", "--input-depth", "8"), "64 channels and 8 input noise channels"),
    Candidate("w32-half", ("--channels", "32", "--iterations-scale", "0.5"), "32 channels, half the iterations", FIXED),
    Candidate("w64-half", ("--channels", "64", "--iterations-scale", "0.5"), "64 channels, half the iterations", FIXED),
    Candidate(
        "w64-3q", ("--channels", "64", "--iterations-scale", "0.75"), "64 channels, 3/4 of the iterations", FIXED
    ),
    Candidate("w128-half", ("--iterations-scale", "0.5"), "the default net, half the iterations", FIXED),
    Candidate(
        "w64-third",
        ("--channels", "64", "--iterations-scale", "0.3333"),
        "64 channels, a third of the iterations",
        FIXED,
    ),
    Candidate(
        "w32-third",
        ("--channels", "32", "--iterations-scale", "0.3333"),
        "32 channels, a third of the iterations",
        FIXED,
    ),
    Candidate(
        "w64-1700",
        ("--channels", "64", "--iterations-scale", "0.2833"),
        "64 channels, 1700 of the 6001 iterations: where w64-holdout-finish's curves were within 0.5 dB on Table 1",
        ("table1",),
    ),
    # coarse to fine: a share of the iterations at half resolution
    Candidate("c2f-25", ("--coarse-share", "0.25"), "a quarter of the iterations at half size"),
    Candidate("c2f-50", ("--coarse-share", "0.5"), "half of the iterations at half size"),
    Candidate("c2f-75", ("--coarse-share", "0.75"), "three quarters of the iterations at half size"),
    Candidate("w64-c2f-50", ("--channels", "64", "--coarse-share", "0.5"), "64 channels, half at half size"),
    Candidate("w32-c2f-50", ("--channels", "32", "--coarse-share", "0.5"), "32 channels, half at half size"),
    Candidate(
        "w64-3q-c2f-50",
        ("--channels", "64", "--iterations-scale", "0.75", "--coarse-share", "0.5"),
        "64 channels, 3/4 of the iterations, half of them at half size",
        FIXED,
    ),
    # Deep Random Projector: random frozen convolutions, the input and BatchNorm fitted
    Candidate("drp", ("--generator", "drp"), "Deep Random Projector"),
    Candidate(
        "drp-2k",
        ("--generator", "drp", "--iterations", "2000"),
        "Deep Random Projector, 2000 iterations (the paper's code runs 5001; its curve gives the shorter counts)",
        FIXED,
    ),
    Candidate(
        "drp-500",
        ("--generator", "drp", "--iterations", "500"),
        "Deep Random Projector, 500 iterations",
        SR,
    ),
    Candidate(
        "drp-250",
        ("--generator", "drp", "--iterations", "250"),
        "Deep Random Projector, 250 iterations (drp-500's curves peaked at 200-250 on Set5 x4 at 256 px)",
        SR,
    ),
    # the stopping rules (docs/stopping.md): the length decided by 5% of the observed pixels held out of the fit
    Candidate(
        "holdout",
        ("--stop", "holdout"),
        "stop at the held-out error's minimum, return the image there (denoising's default rule)",
        FIXED,
    ),
    Candidate(
        "holdout-finish",
        ("--stop", "holdout", "--stop-finish", "200"),
        "stop at the held-out error's minimum, then 200 iterations on all pixels (noise-free tasks)",
        FIXED,
    ),
    Candidate(
        "w64-holdout-finish",
        ("--channels", "64", "--stop", "holdout", "--stop-finish", "200"),
        "64 channels, the held-out stop and 200 iterations on all pixels",
        FIXED,
    ),
    Candidate(
        "w32-holdout-finish",
        ("--channels", "32", "--stop", "holdout", "--stop-finish", "200"),
        "32 channels, the held-out stop and 200 iterations on all pixels",
        FIXED,
    ),
)
BY_NAME = {c.name: c for c in CANDIDATES}
# The candidate each task's ``--fast`` is (its tasks.Fast record; tests/test_fast.py checks they build the same fit).
SHIPPED = {"denoise": "w64-cap5k", "super-resolve": "drp-250", "inpaint": "w64-third", "deblur": "w64-cap5k"}
MAX_LOSS_DB = 0.5  # --fast: at most this much below the defaults, on the mean and on the worst image
TARGET_SHARE = 1 / 5  # the issue's target share of the defaults' wall time
DEFAULT_LOSS_DB, DEFAULT_SHARE = 0.1, 0.5  # a new default: this close at this share, on every task


def default_iterations(table: str) -> int:
    """The default preset's iteration count for the table's task (a cap where auto-stop runs)."""
    from dip_compile.presets import preset

    return preset(TASK_OF[table], factor=4 if table in SR else None).iterations


def options_of(candidate: Candidate, table: str, cap: Optional[int] = None) -> list[str]:
    """The candidate's ``dipc fit`` options for one table, after the table's own (its ``problem``);
    ``--iterations-scale`` is this study's shorthand for a share of the default preset's iterations, and ``cap`` (a
    smoke test) bounds every fit's iterations."""
    out, it, iterations = list(TABLES[table].problem), iter(candidate.options), None
    for flag in it:
        if flag == "--iterations-scale":
            iterations = round(float(next(it)) * default_iterations(table))
        else:
            out.append(flag)
    if cap is not None:
        iterations = min(cap, iterations or cap)
    return out + (["--iterations", str(iterations)] if iterations is not None else [])


TIMING_ITERATIONS = 25  # a step-timing fit's length (its first step, which plans and warms up, is not counted)
STOP_FLAGS = ("--stop", "--stop-finish", "--iterations")  # the options a timing fit replaces (each takes a value)


def timing_options(candidate: Candidate, table: str) -> list[str]:
    """The candidate's options for a short fixed-length fit that times its step: its network, generator, precision
    and coarse share (the coarse phase keeps its share of a timing fit's steps); its stopping rule and length
    replaced, since a held-out share only leaves pixels out of the loss."""
    out, it = [], iter(options_of(candidate, table))
    for flag in it:
        if flag in STOP_FLAGS:
            next(it)
        else:
            out.append(flag)
    return [*out, "--stop", "fixed", "--iterations", str(TIMING_ITERATIONS)]


def size_of(case: Case, inputs: Path) -> str:
    """The restored image's size, WxH (the reference's): what a step's cost depends on."""
    with Image.open(inputs / case.reference) as reference:
        return f"{reference.width}x{reference.height}"


def time_steps(
    cases: list[Case], inputs: Path, candidates: list[Candidate], table: str, repeats: int = 3
) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Milliseconds per steady iteration of each candidate at each image size of ``cases`` (``NAME@WxH``): the median
    of ``repeats`` short fits through ``dipc fit`` on all cores, and every sample. The candidates take turns (each
    round times every one once), so a change of the machine's speed during the timing falls on all of them rather
    than on the ones timed last. Run ALONE: these are the study's times."""
    task, jobs = TASK_OF[table], {}
    by_size = {size_of(c, inputs): c for c in cases}  # one image of each size
    for candidate in candidates:
        for size, case in by_size.items():
            args = [task, str(inputs / case.image)]
            args += ["--mask", str(inputs / case.mask)] if case.mask else []
            args += ["--factor", str(case.factor)] if case.factor else []
            jobs[f"{candidate.name}@{size}"] = [*args, *timing_options(candidate, table)]
    samples: dict[str, list[float]] = {key: [] for key in jobs}
    for _ in range(repeats):
        for key, args in jobs.items():
            if key not in samples:
                continue
            try:
                samples[key].append(step_ms(args))
            except SystemExit as exc:  # the fit refused (the study reports its own fits' errors)
                print(f"fast_study: {table} {key}: not timed: {exc}", flush=True)
                del samples[key]
    medians = {key: float(np.median(ms)) for key, ms in samples.items()}
    for key, ms in samples.items():
        print(f"fast_study: {table} {key}: {medians[key]:.0f} ms/it ({min(ms):.0f}-{max(ms):.0f})", flush=True)
    return medians, samples


def step_ms(args: list[str]) -> float:
    """One ``dipc fit ARGS`` in a scratch folder: its steady milliseconds per iteration (from its report)."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        fit([*args, "-o", f"{tmp}/out.png", "--report", str(report)], Path(tmp) / "log.txt")
        return 1000.0 / float(json.loads(report.read_text())["iterations_per_second"])


def image_of(case: Case) -> str:
    """The paper's name of a case's image (F16-s25: F16; Set5-x4-bird: bird)."""
    if case.table == "denoise":
        return case.name.rsplit("-s", 1)[0]
    return case.name.split("-", 2)[2] if case.table == "sr" else case.name


def study_cases(table: str, data: Path, only: Optional[list[str]] = None) -> list[Case]:
    """The table's images the study fits (those of ``TABLES`` found under ``data``, in its order), or with ``only``
    those whose case name contains one of its words."""
    spec = TABLES[table]
    found = {image_of(c): c for c in cases_of(spec.source or table, data) if c.group == spec.group}
    chosen = [found[name] for name in spec.images if name in found]
    if "--from-reference" in spec.problem:  # the fit is given the ground truth and degrades it itself
        chosen = [
            dataclasses.replace(c, name=f"{image_of(c)}-{table}", task=spec.task, image=c.reference, sigma=None)
            for c in chosen
        ]
    return [c for c in chosen if not only or any(word in c.name for word in only)]


def unavailable(candidate: Candidate, table: str) -> Optional[str]:
    """Why the installed ``dipc fit`` refuses the candidate's options for this table (None: it takes them): parsed
    and validated as ``dipc batch`` validates a row before any fit, without reading a file."""
    from dip_compile.errors import DipError
    from dip_compile.restore import validate_job

    task = TASK_OF[table]
    extra = {"super-resolve": ["--factor", "4"], "inpaint": ["--mask", "mask.png"]}.get(task, [])
    try:
        validate_job(fit_job([task, "in.png", "-o", "out.png", *extra, *options_of(candidate, table)]), device=False)
    except DipError as exc:
        return str(exc)
    return None


def failures(outdir: Path) -> dict[str, str]:
    """The batch's failed jobs and their errors (its summary.json, and each shard's summary-I-of-N.json), by job
    name."""
    out: dict[str, str] = {}
    for path in sorted(outdir.glob("summary*.json")):
        jobs = json.loads(path.read_text()).get("jobs", [])
        out.update({j["job"]: j.get("error") or "failed" for j in jobs if j.get("status") == "failed"})
    return out


def entry(case: Case, outdir: Path, inputs: Path, name: str, failed: dict[str, str]) -> dict[str, Any]:
    """One fit's row: paper_tables' (PSNR by the paper's protocol, iterations, stop, fitting seconds summed over
    resumes) with its coarse phase; or why there is none."""
    found = fit_entry(case, outdir, inputs, name)
    job = f"{case.name}-{name}"
    if found["status"] != "done":
        return {"status": "failed", "error": failed[job]} if job in failed else found
    found["coarse"] = json.loads((outdir / f"{job}.json").read_text()).get("coarse")
    return found


def estimate(rows: list[dict[str, Any]], steps: dict[str, float]) -> None:
    """Gives each finished fit whose candidate's step was timed at its image's size ``estimated_seconds``: its
    iterations times those milliseconds (in place; ``rows`` carry their ``size``)."""
    for row in rows:
        for name, f in row["fits"].items():
            ms = steps.get(f"{name}@{row.get('size')}")
            if ms is not None and f.get("iterations"):
                f["step_ms"], f["estimated_seconds"] = ms, f["iterations"] * ms / 1000.0


def psnr_curves(report: dict[str, Any]) -> list[list[Optional[float]]]:
    """The report's PSNR curves against the reference, one entry per record (None where not computed): the step's
    output, its EMA and, in reports since 2026-12-06, the image a fit stopped there would return (every fifth
    record and the last); none for a fit without ``--reference``."""
    history = report.get("history") or {}
    return [history[k] for k in ("psnr_reference", "psnr_reference_ema", "psnr_returned") if history.get(k)]


def first_within(report: dict[str, Any], target: float) -> Optional[int]:
    """The first recorded iteration at which the fit held an image (its output, its EMA or the image it would have
    returned) within ``MAX_LOSS_DB`` of ``target``; None if it never did."""
    series = psnr_curves(report)
    for i, iteration in enumerate((report.get("history") or {}).get("iteration") or []):
        if any(within(s[i], target) for s in series):
            return int(iteration)
    return None


def within(psnr: Optional[float], target: float) -> bool:
    return psnr is not None and psnr >= target - MAX_LOSS_DB


def returned_curve(report: dict[str, Any]) -> list[Optional[float]]:
    """The PSNR curve of the image a fit stopped at each recorded iteration would return, one entry per record
    (None where not computed): the report's own ``psnr_returned`` where it has one; for older reports its EMA's
    where it keeps one, else its output's (the step's output, for the perturbed input where the fit perturbs it,
    which scores at or a little below the network on its fixed input that such a fit returns: the estimates are
    cautious)."""
    history = report.get("history") or {}
    for key in ("psnr_returned", "psnr_reference_ema"):
        series = history.get(key) or []
        if any(p is not None for p in series):
            return list(series)
    return list(history.get("psnr_reference") or [])


def within_from(report: dict[str, Any], target: float) -> Optional[int]:
    """The first recorded iteration from which the returned image stays within ``MAX_LOSS_DB`` of ``target`` to
    the fit's last record: where a fixed count of the same fit would be as good (None: never, or no curve).
    Records without a value (between two returned images' PSNRs) neither start nor break such a run."""
    found: Optional[int] = None
    iterations = (report.get("history") or {}).get("iteration") or []
    for iteration, p in zip(iterations, returned_curve(report), strict=False):
        if p is None:
            continue
        if not within(p, target):
            found = None
        elif found is None:
            found = int(iteration)
    return found


def floors(rows: list[dict[str, Any]], outdir: Path) -> None:
    """Gives each finished fit ``first_within``: the first iteration at which it came within ``MAX_LOSS_DB`` of the
    image the defaults returned (both in the reports' own PSNR, the whole image in RGB), and with a timed step
    ``floor_seconds``, what it had cost by then. No stopping rule can return that quality sooner, so the share of
    those seconds is the floor of what any stopping rule could make of the candidate (in place). A fit whose report
    has no PSNR curve gets none (no floor, rather than "never")."""
    for row in rows:
        base = outdir / f"{row['name']}-defaults.json"
        if row["fits"]["defaults"].get("status") != "done" or not base.exists():
            continue
        target = json.loads(base.read_text()).get("final_psnr")
        for name, f in row["fits"].items():
            path = outdir / f"{row['name']}-{name}.json"
            if f.get("status") != "done" or target is None or not path.exists():
                continue
            report = json.loads(path.read_text())
            if not psnr_curves(report):
                continue
            f["first_within"] = first_within(report, target)
            f["within_from"] = within_from(report, target)
            if f["first_within"] is not None and "step_ms" in f:
                f["floor_seconds"] = f["first_within"] * f["step_ms"] / 1000.0


def floor_share(pairs: list[tuple[dict[str, Any], dict[str, Any]]]) -> Optional[float]:
    """The candidate's ``floor_seconds`` over the defaults' estimated seconds, summed over the images; None unless
    every image has both (a candidate that never came within ``MAX_LOSS_DB`` on an image has no floor)."""
    if not pairs or not all("floor_seconds" in f and "estimated_seconds" in b for f, b in pairs):
        return None
    return sum(f["floor_seconds"] for f, _ in pairs) / sum(b["estimated_seconds"] for _, b in pairs)


def count_floor(pairs: list[tuple[dict[str, Any], dict[str, Any]]]) -> dict[str, Any]:
    """For a fixed-count task: the shortest count of the candidate's fit from which every image's returned image
    stays within ``MAX_LOSS_DB`` of the defaults' (``within_from``'s largest; an estimate from the curves of the
    fits as they ran, for a study candidate of that count to confirm), and with timed steps its share of the
    defaults' time. Empty unless every image has a curve within."""
    found = [f.get("within_from") for f, _ in pairs]
    if not pairs or any(c is None for c in found):
        return {}
    count = max(int(c) for c in found if c is not None)
    out: dict[str, Any] = {"count_floor": count}
    if all("step_ms" in f and "estimated_seconds" in b for f, b in pairs):
        spent = sum(count * f["step_ms"] / 1000.0 for f, _ in pairs)
        out["count_share"] = spent / sum(b["estimated_seconds"] for _, b in pairs)
    return out


def summarise(
    rows: list[dict[str, Any]], names: list[str], absent: dict[str, str], fixed: bool = False
) -> dict[str, Any]:
    """Per candidate: PSNR against the defaults on the images both finished (mean and worst), mean iterations and
    seconds, and the share of the defaults' time (its seconds over theirs, summed over those images: the
    estimated seconds where both have them on every image, ``timed: steps``, else the fits' own, ``timed: fits``);
    then the quickest candidate that gives up at most ``MAX_LOSS_DB`` on the mean and the worst image, finished on
    every image. ``absent``: the unavailable candidates and why; ``fixed``: the task runs a fixed count, so each
    candidate also gets its ``count_floor``."""
    out: dict[str, Any] = {}
    for name in names:
        if name in absent:
            out[name] = {"status": "unavailable", "why": absent[name]}
            continue
        pairs = [
            (r["fits"][name], r["fits"]["defaults"])
            for r in rows
            if r["fits"][name].get("psnr") is not None and r["fits"]["defaults"].get("psnr") is not None
        ]
        errors = sorted({r["fits"][name]["error"] for r in rows if r["fits"][name].get("status") == "failed"})
        e: dict[str, Any] = {"status": "done" if len(pairs) == len(rows) else "partial", "images": len(pairs)}
        e["of"], e["errors"] = len(rows), errors
        if pairs:
            deltas = [f["psnr"] - b["psnr"] for f, b in pairs]
            timed = "steps" if all("estimated_seconds" in f for pair in pairs for f in pair) else "fits"
            key = "estimated_seconds" if timed == "steps" else "seconds"
            seconds, base = [f[key] or 0.0 for f, _ in pairs], [b[key] or 0.0 for _, b in pairs]
            e.update(
                timed=timed,
                psnr=float(np.mean([f["psnr"] for f, _ in pairs])),
                delta_db=float(np.mean(deltas)),
                worst_delta_db=float(min(deltas)),
                iterations=float(np.mean([f.get("iterations") or 0 for f, _ in pairs])),
                seconds=float(np.mean(seconds)),
                time_share=sum(seconds) / sum(base) if sum(base) > 0 else None,
                floor_share=floor_share(pairs),
                never_within=sum(1 for f, _ in pairs if "first_within" in f and f["first_within"] is None),
                **(count_floor(pairs) if fixed else {}),
            )
        out[name] = e

    def within(name: str, db: float, share: float) -> bool:
        e = out[name]
        return (
            name != "defaults"
            and e.get("status") == "done"
            and e.get("time_share") is not None
            and min(e["delta_db"], e["worst_delta_db"]) >= -db
            and e["time_share"] <= share
        )

    fast = [n for n in names if within(n, MAX_LOSS_DB, float("inf"))]
    winner = min(fast, key=lambda n: out[n]["time_share"], default=None)
    return {
        "candidates": out,
        "fast": winner,
        "meets_target": bool(winner and out[winner]["time_share"] <= TARGET_SHARE),
        "default_worthy": [n for n in names if within(n, DEFAULT_LOSS_DB, DEFAULT_SHARE)],
    }


def new_default(results: dict[str, dict[str, Any]]) -> list[str]:
    """The candidates within ``DEFAULT_LOSS_DB`` at ``DEFAULT_SHARE`` of the time or less on every task studied."""
    tables = [r for r in results.values() if r["rows"]]
    if not tables:
        return []
    worthy = [set(r["default_worthy"]) for r in tables]
    return sorted(set.intersection(*worthy))


def floor_text(e: dict[str, Any]) -> str:
    """The floor column: the share, or on how many images the candidate never came within ``MAX_LOSS_DB``."""
    if e.get("never_within"):
        return f"never on {e['never_within']} of {e['images']}"
    return fmt(e.get("floor_share"))


TIMED = {"steps": "iterations x ms/it timed alone", "fits": "the fits' own seconds"}


def cell_seconds(fit: dict[str, Any]) -> str:
    """A fit's seconds in the per-image table, saying which: its iterations at its candidate's step timed alone where
    that was timed (the fits may have run beside other work), else its own fitting seconds."""
    if "estimated_seconds" in fit:
        return f"{fit['estimated_seconds']:.0f} s at {fit['step_ms']:.0f} ms/it timed alone"
    return f"{fit['seconds']:.0f} s of its own fitting"


def markdown(table: str, result: dict[str, Any], names: list[str]) -> str:
    """The task's summary table and its per-image table."""
    spec = TABLES[table]
    images = ", ".join(r["name"] for r in result["rows"]) or "none found"
    # a table whose fits degrade their image themselves (deblur) names its ground truth and the options doing it
    source = f"{spec.group}'s ground truth, `{' '.join(spec.problem)}`" if spec.problem else spec.group
    lines = [
        f"#### {spec.task}: {source} ({images})",
        "",
        "| candidate | images | PSNR | vs defaults, mean / worst | iterations | seconds | share of the defaults' time |"
        " timed by | floor: share when first within 0.5 dB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, e in result["candidates"].items():
        if e["status"] == "unavailable":
            lines.append(f"| {name} | unavailable: {e['why'].replace('|', '/')} | | | | | | | |")
            continue
        if not e.get("images"):
            why = "; ".join(e["errors"]).replace("|", "/") or "not run yet"
            lines.append(f"| {name} | 0 of {e['of']}: {why} | | | | | | | |")
            continue
        count = f"{e['images']}" + ("" if e["images"] == e["of"] else f" of {e['of']}")
        lines.append(
            f"| {name} | {count} | {e['psnr']:.2f} | {e['delta_db']:+.2f} / {e['worst_delta_db']:+.2f} | "
            f"{e['iterations']:.0f} | {e['seconds']:.0f} | {fmt(e.get('time_share'))} | {TIMED[e['timed']]} | "
            f"{floor_text(e)} |"
        )
    fast = result["fast"]
    share = fmt(result["candidates"][fast]["time_share"]) if fast else "-"
    lines += [
        "",
        f"Quickest within {MAX_LOSS_DB} dB (mean and worst): **{fast or 'none'}** (share {share}); in a fifth of "
        f"the time or less: {result['meets_target']}; within {DEFAULT_LOSS_DB} dB at half the time or less: "
        f"{', '.join(result['default_worthy']) or 'none'}",
        "",
    ]
    counts = [
        f"{n} from {e['count_floor']} iterations" + (f" (share {fmt(e['count_share'])})" if "count_share" in e else "")
        for n, e in result["candidates"].items()
        if "count_floor" in e
    ]
    if counts:
        lines += [
            f"A fixed count within {MAX_LOSS_DB} dB of the defaults on every image, from the fits' own curves (an "
            f"estimate for a candidate of that count to confirm): {'; '.join(counts)}",
            "",
        ]
    shown = [n for n in names if result["candidates"][n]["status"] != "unavailable"]
    lines += ["| image | " + " | ".join(shown) + " |", "|" + " --- |" * (len(shown) + 1)]
    for row in result["rows"]:
        cells = []
        for n in shown:
            f = row["fits"][n]
            if f.get("psnr") is None:
                cells.append(f.get("status", "-"))
                continue
            within = f", within {MAX_LOSS_DB} dB at {f['first_within']}" if f.get("first_within") is not None else ""
            cells.append(f"{f['psnr']:.2f} dB, {f['iterations']} it, {cell_seconds(f)}{within}")
        lines.append(f"| {row['name']} ({row.get('size', '')}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def reprice(study: dict[str, Any], steps: dict[str, Any]) -> dict[str, Any]:
    """The committed study's shares on another machine: each fit's iterations (which do not depend on the CPU's
    speed) times the milliseconds per iteration that ``steps`` (a ``steps.json`` of ``--time-steps``, run there with
    another ``--out``) timed at its image's size, summed over the images both it and the defaults finished, as
    ``summarise`` sums them. A candidate, or a table, without a timing at every size it needs is left out."""
    tables: dict[str, Any] = {}
    for table, result in study["tables"].items():
        timed = steps.get("tables", {}).get(table, {})
        shares = {}
        for name, e in result["candidates"].items():
            if name == "defaults" or e.get("status") != "done":
                continue
            pairs = [(r["fits"][name], r["fits"]["defaults"], r["size"]) for r in result["rows"]]
            try:
                seconds = sum(f["iterations"] * timed[f"{name}@{size}"] for f, _, size in pairs)
                base = sum(b["iterations"] * timed[f"defaults@{size}"] for _, b, size in pairs)
            except (KeyError, TypeError):  # not timed at a size there, or a fit without iterations
                continue
            shares[name] = {
                "share": seconds / base,
                "committed_share": e.get("time_share"),
                "delta_db": e.get("delta_db"),
                "worst_delta_db": e.get("worst_delta_db"),
                "shipped": name == SHIPPED.get(result["task"]),
            }
        if shares:
            tables[table] = {"task": result["task"], "steps_ms": timed, "candidates": shares}
    runs = steps.get("runs", [])
    return {"machine": runs[-1]["before"] if runs else None, "tables": tables}


def reprice_markdown(priced: dict[str, Any]) -> str:
    lines = [
        "| table | candidate | vs defaults, mean / worst (dB) | share of the defaults' time there | in the study |",
        "| --- | --- | --- | --- | --- |",
    ]
    for table, t in priced["tables"].items():
        for name, c in t["candidates"].items():
            mark = " (`--fast`)" if c["shipped"] else ""
            lines.append(
                f"| {table} | {name}{mark} | {c['delta_db']:+.2f} / {c['worst_delta_db']:+.2f} | "
                f"**{c['share']:.2f}** | {fmt(c['committed_share'])} |"
            )
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", choices=("crop", "full"), default="crop", help="the images whole, or crops")
    parser.add_argument("--side", type=int, default=256, help="--scale crop: the centre crop's side")
    parser.add_argument("--tables", default=",".join(TABLES), help=f"comma-separated: {', '.join(TABLES)}")
    parser.add_argument("--candidates", default=",".join(BY_NAME), help="comma-separated names (defaults always)")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="only the images whose case name contains one")
    parser.add_argument("--data", type=Path, default=DATA, help="holds paper/")
    parser.add_argument("--out", type=Path, default=RESULTS / "fast_study")
    parser.add_argument("--cap", type=int, help="bound every fit's iterations (a smoke test of the pipeline)")
    parser.add_argument("--report", action="store_true", help="fit nothing: score what is on disk")
    parser.add_argument(
        "--time-steps",
        action="store_true",
        help=f"ALONE: time each candidate's step ({TIMING_ITERATIONS}-iteration fits, the candidates taking turns) at "
        "each image size into steps.json before scoring; the shares then come from those times",
    )
    parser.add_argument(
        "--time-repeats", type=int, default=3, help="--time-steps: timing fits per candidate and size (the median)"
    )
    parser.add_argument("--device", default="auto", help="dipc batch --device")
    parser.add_argument("--threads", type=int, help="OMP_NUM_THREADS of the batch")
    add_shard_option(parser)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint-every", type=float, default=60.0)
    parser.add_argument("--max-minutes", type=float, help="stop the fits after this long (a rerun continues)")
    parser.add_argument(
        "--reprice",
        type=Path,
        metavar="STEPS",
        help="fit and time nothing: price the committed results' iterations with another machine's steps.json "
        "(--time-steps --report with another --out, run ALONE there) and write the shares there beside it",
    )
    parser.add_argument("-q", "--quiet", action="store_true")
    args = parser.parse_args(argv)
    args.pack, args.ray = 1, False  # what paper_tables.run_batch reads: one fit at a time, for its wall time

    tables = [t for t in args.tables.split(",") if t]
    names = ["defaults", *[n for n in args.candidates.split(",") if n and n != "defaults"]]
    unknown = [t for t in tables if t not in TABLES] + [n for n in names if n not in BY_NAME]
    if unknown:
        parser.error(f"unknown: {', '.join(unknown)} (tables: {', '.join(TABLES)}; candidates: {', '.join(BY_NAME)})")
    args.shard = check_shard(parser, args.shard)
    if args.time_repeats < 1:
        parser.error(f"--time-repeats must be 1 or more, not {args.time_repeats}")
    side = None if args.scale == "full" else args.side
    root = args.out / ((f"crop{side}" if side else "full") + (f"-cap{args.cap}" if args.cap else ""))
    if args.reprice is not None:
        missing = [str(p) for p in (root / "fast_study.json", args.reprice) if not p.is_file()]
        if missing:
            parser.error(f"--reprice: {', '.join(missing)} not found")
        priced = reprice(json.loads((root / "fast_study.json").read_text()), json.loads(args.reprice.read_text()))
        (args.reprice.parent / "shares.json").write_text(json.dumps(priced, indent=1) + "\n")
        print(reprice_markdown(priced), flush=True)
        return 0
    if not (args.data / "paper").is_dir():
        parser.error(f"{args.data / 'paper'} not found (pass --data: the folder that holds paper/)")
    deadline = None if args.max_minutes is None else time.monotonic() + 60.0 * args.max_minutes
    started = machine()
    steps_path = root / "steps.json"  # (the tables' timings, kept across runs)
    timings = json.loads(steps_path.read_text()) if steps_path.exists() else {"tables": {}}
    results: dict[str, Any] = {}
    code = 0
    for table in tables:
        cases = study_cases(table, args.data, args.only)
        inputs, outdir = root / "inputs" / table, root / "batch" / table
        inputs.mkdir(parents=True, exist_ok=True)
        for case in cases:
            write_inputs(case, args.data, inputs, side)
        here = [n for n in names if not BY_NAME[n].tables or table in BY_NAME[n].tables]
        absent = {n: why for n in here if (why := unavailable(BY_NAME[n], table)) is not None}
        fitted = [BY_NAME[n] for n in here if n not in absent]
        if cases and not args.report and code in (0, 1):
            manifest = inputs / manifest_name(args.shard)
            rows = [batch_row(c, f"{c.name}-{f.name}", options_of(f, table, args.cap)) for c in cases for f in fitted]
            manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
            print(f"fast_study: {table}, {len(cases)} images x {len(fitted)} candidates, crop {side}", flush=True)
            code = run_batch(manifest, outdir, args, deadline)
        if cases and args.time_steps:
            before = machine()
            found, samples = time_steps(cases, inputs, fitted, table, args.time_repeats)
            timings["tables"][table] = {**timings["tables"].get(table, {}), **found}
            run = {"table": table, "before": before, "after": machine(), "repeats": args.time_repeats}
            timings.setdefault("runs", []).append({**run, "samples_ms": samples})
            steps_path.write_text(json.dumps(timings, indent=1) + "\n")
        failed = failures(outdir)
        rows = [{"name": c.name, "fits": {n: entry(c, outdir, inputs, n, failed) for n in here}} for c in cases]
        for row, case in zip(rows, cases, strict=True):
            row["size"] = size_of(case, inputs)
        estimate(rows, timings["tables"].get(table, {}))
        floors(rows, outdir)
        results[table] = {"task": TASK_OF[table], "rows": rows, **summarise(rows, here, absent, table in FIXED)}
    # the tables of earlier runs at this scale stay (a run of one table does not drop the others' results)
    saved_path = root / "fast_study.json"
    saved = json.loads(saved_path.read_text()).get("tables", {}) if saved_path.exists() else {}
    results = {t: results.get(t) or saved[t] for t in TABLES if t in results or t in saved}
    documents = [markdown(t, r, list(r["candidates"])) for t, r in results.items()]
    verdict = new_default(results)
    head = (
        f"Scale: {'full size' if side is None else f'{side} px centre crops'}"
        + (f", iterations capped at {args.cap}" if args.cap else "")
        + f"; a new default (within {DEFAULT_LOSS_DB} dB at half the time or less on every task): "
        + (", ".join(verdict) or "none")
    )
    root.mkdir(parents=True, exist_ok=True)
    document = {
        "scale": args.scale,
        "side": side,
        "cap": args.cap,
        "command": " ".join(["python -m benchmarks.fast_study", *(argv if argv is not None else sys.argv[1:])]),
        "date": time.strftime("%Y-%m-%d"),
        "machine_at_start": started,
        "machine_at_end": machine(),
        "candidates": [asdict(BY_NAME[n]) for n in names],
        "step_timings": timings,
        "tables": results,
        "new_default": verdict,
    }
    (root / "fast_study.json").write_text(json.dumps(document, indent=1, default=str) + "\n")
    text = head + "\n\n" + "\n\n".join(documents)
    (root / "fast_study.md").write_text(text + "\n")
    print(text, flush=True)
    return 0 if code in (0, 1) else 130


if __name__ == "__main__":
    sys.exit(main())
