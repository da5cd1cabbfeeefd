"""Which learning rate and schedule reach the paper's image in fewer iterations (not a test: minutes per fit).

Every case (image x Gaussian noise; sigma 25 takes the f16 preset, sigma 50 f16-sigma50) is fitted once per
schedule for ``--iterations`` iterations, recording every 5th iteration's running variance and the PSNR of the EMA
image the fit would return (``stopping_study.curves``, the same recording the stopping study replays). A schedule
is ``KIND:LR[:WARMUP]`` with KIND one of ``dipc fit --lr-schedule``'s; the first one given is the baseline (the
paper's constant 0.01). Per case and schedule:

* best: the best EMA PSNR of the run and the iteration it came at;
* to -0.5 / -0.1: the first iteration whose EMA PSNR is within 0.5 / 0.1 dB of the BASELINE's best;
* auto: the auto-stop default (patience 300) replayed on the curves: where it stops and the PSNR it returns.

The summary gives, per schedule, the worst and mean change of the best PSNR against the baseline and the mean
iteration ratios against the baseline (below 1: sooner). A schedule is worth keeping only where every case's best
stays within 0.1 dB of the baseline's. Fits run ``--jobs`` at a time (a GPU takes several at once).

    python benchmarks/schedule_study.py --size 256 --device cuda --jobs 6
    python benchmarks/schedule_study.py --table benchmarks/results/schedule/schedule_study_256.json
"""

from __future__ import annotations

import json
import multiprocessing
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

sys.path[:0] = [] if __package__ else [str(Path(__file__).resolve().parents[1])]  # as `python benchmarks/X.py`

import torch

from benchmarks.common import RESULTS, Results, case_image, environment, exit_with_parent, fit_size, study_parser
from benchmarks.stopping_study import IMAGES, curves, kept_psnr, replay, too_short

SCHEDULES = [
    "constant:0.01",
    "constant:0.02",
    "warmup:0.02:100",
    "cosine:0.01:100",
    "cosine:0.02:100",
    "cosine:0.03:100",
]
PATIENCE = 300  # the auto-stop default


def parse_schedule(spec: str) -> dict[str, Any]:
    kind, lr, *rest = spec.split(":")
    return {"lr_schedule": kind, "lr": float(lr), "lr_warmup": int(rest[0]) if rest else 100}


def preset_for(noise: str) -> str:
    return "f16-sigma50" if noise == "gaussian:50" else "f16"


def run_fit(task: dict[str, Any]) -> dict[str, Any]:
    """One fit in a worker process: the case's curves under one schedule."""
    torch.set_num_threads(task["threads"])
    image = fit_size(case_image(Path(task["data"]), task["image"]), task["size"])
    changes = {**parse_schedule(task["schedule"]), "device": task["device"], "precision": task["precision"]}
    changes["backend"] = task["backend"]
    recorded = curves(image, task["noise"], task["iterations"], 0, preset_for(task["noise"]), **changes)
    return {k: task[k] for k in ("image", "noise", "size", "schedule", "device", "precision", "backend")} | recorded


def first_within(c: dict[str, Any], target: float) -> int | None:
    return next((it for it, p in zip(c["iteration"], c["psnr_ema"], strict=True) if p >= target), None)


def analyse(runs: list[dict[str, Any]], schedules: list[str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Per-run rows against the baseline schedule of the same case, and one summary row per schedule."""
    base = {(r["image"], r["noise"]): r for r in runs if r["schedule"] == schedules[0]}
    rows = []
    for r in runs:
        b = base.get((r["image"], r["noise"]))
        if b is None:
            continue
        best_i = max(range(len(r["psnr_ema"])), key=r["psnr_ema"].__getitem__)
        stop, chosen = replay(r, "patience", PATIENCE)
        b_best = max(b["psnr_ema"])
        b_stop, b_chosen = replay(b, "patience", PATIENCE)
        rows.append(
            {
                "image": r["image"],
                "noise": r["noise"],
                "schedule": r["schedule"],
                "best_db": r["psnr_ema"][best_i],
                "best_iteration": r["iteration"][best_i],
                "best_change_db": r["psnr_ema"][best_i] - b_best,
                "to_0.5": first_within(r, b_best - 0.5),
                "to_0.1": first_within(r, b_best - 0.1),
                "base_to_0.5": first_within(b, b_best - 0.5),
                "base_to_0.1": first_within(b, b_best - 0.1),
                "auto_stop": stop,
                "auto_chosen": chosen,
                "auto_db": kept_psnr(r, chosen, stop),
                "base_auto_stop": b_stop,
                "base_auto_db": kept_psnr(b, b_chosen, b_stop),
                "seconds": r["seconds"],
            }
        )

    def ratio(row: dict[str, Any], key: str) -> float | None:
        got, ref = row[key], row[f"base_{key}"]
        return None if got is None or not ref else got / ref

    summary = []
    for s in schedules:
        mine = [row for row in rows if row["schedule"] == s]
        if not mine:
            continue
        changes = [row["best_change_db"] for row in mine]
        summary.append(
            {
                "schedule": s,
                "cases": len(mine),
                "worst_best_change_db": min(changes),
                "mean_best_change_db": statistics.mean(changes),
                **{
                    f"mean_ratio_{key}": statistics.mean(x)
                    if (x := [v for row in mine if (v := ratio(row, key))])
                    else None
                    for key in ("to_0.5", "to_0.1", "auto_stop")
                },
                "reached_0.1": sum(row["to_0.1"] is not None for row in mine),
                "mean_auto_change_db": statistics.mean(row["auto_db"] - row["base_auto_db"] for row in mine),
                "keep": min(changes) >= -0.1,
            }
        )
    return rows, summary


def table(rows: list[dict[str, Any]], summary: list[dict[str, Any]]) -> str:
    def it(v: int | None) -> str:
        return "-" if v is None else str(v)

    lines = ["| case | schedule | best dB (it) | change dB | to -0.5 | to -0.1 | auto stop (dB) |", "|---" * 7 + "|"]
    for r in rows:
        lines.append(
            f"| {r['image']} {r['noise']} | {r['schedule']} | {r['best_db']:.2f} ({r['best_iteration']}) | "
            f"{r['best_change_db']:+.2f} | {it(r['to_0.5'])} | {it(r['to_0.1'])} | {r['auto_stop']} ({r['auto_db']:.2f}) |"
        )
    lines += [
        "",
        "| schedule | cases | worst / mean change of best dB | iterations to -0.5 / -0.1 (x baseline) | "
        "reached -0.1 | auto-stop length (x) | auto image change dB | keep |",
        "|---" * 8 + "|",
    ]

    def x(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}"

    for s in summary:
        lines.append(
            f"| {s['schedule']} | {s['cases']} | {s['worst_best_change_db']:+.2f} / {s['mean_best_change_db']:+.2f} | "
            f"{x(s['mean_ratio_to_0.5'])} / {x(s['mean_ratio_to_0.1'])} | {s['reached_0.1']}/{s['cases']} | "
            f"{x(s['mean_ratio_auto_stop'])} | {s['mean_auto_change_db']:+.2f} | {'yes' if s['keep'] else 'no'} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = study_parser(
        __doc__, RESULTS / "schedule", threads=False, table=True, images=IMAGES, size=256, iterations=3000
    )
    parser.add_argument("--noises", nargs="+", default=["gaussian:25", "gaussian:50"])
    parser.add_argument("--schedules", nargs="+", default=SCHEDULES, help="KIND:LR[:WARMUP]; the first is the baseline")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--backend", default="eager")
    parser.add_argument("--jobs", type=int, default=1, help="fits at a time")
    args = parser.parse_args(argv)
    if not args.table and (why := too_short(args.iterations)):
        parser.error(why)
    if args.table:
        saved = [json.loads(path.read_text()) for path in args.table]
        print(table(*analyse([run for s in saved for run in s["runs"]], saved[0]["schedules"])))
        return 0
    for spec in args.schedules:
        parse_schedule(spec)
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    settings = ("size", "iterations", "device", "precision", "backend")
    tasks = [
        {"image": image, "noise": noise, "schedule": schedule, "data": str(args.data), "threads": threads}
        | {key: getattr(args, key) for key in settings}
        for schedule in args.schedules
        for image in args.images
        for noise in args.noises
    ]
    gpu = torch.cuda.get_device_name() if args.device.startswith("cuda") else None
    head = {**environment(), "gpu": gpu, "schedules": args.schedules, "iterations": args.iterations, "size": args.size}
    results = Results(args.out / f"schedule_study_{args.size}.json", "runs", head, indent=None)
    started = time.perf_counter()
    context = multiprocessing.get_context("spawn")  # CUDA cannot be forked
    pool = ProcessPoolExecutor(args.jobs, mp_context=context, initializer=exit_with_parent, initargs=(os.getpid(),))
    with pool:
        for future in as_completed([pool.submit(run_fit, t) for t in tasks]):
            run = results.add(future.result())
            print(
                f"{run['image']} {run['noise']} {run['schedule']}: best {max(run['psnr_ema']):.2f} dB, "
                f"{run['seconds']:.0f} s ({time.perf_counter() - started:.0f} s in)",
                flush=True,
            )
    rows, summary = analyse(results.rows, args.schedules)
    results.save(rows=rows, summary=summary)
    print(table(rows, summary))
    print(f"wrote {results.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
