"""Which stopping rule ends soonest without losing quality, no clean image needed (not a test: minutes per case).

Each case (image x noise) is fitted ONCE with the denoising preset for ``--iterations`` iterations, recording every
5th iteration's running variance (ES-WMV, ``--stop auto``), with ``--holdout S`` the error on the held-out pixels
(``--stop holdout``: the fit then leaves that share of the noisy pixels out of its loss), and the PSNR of the EMA image
and of the raw output. Every rule is then replayed on those curves, exactly as the stopper would run it:

* ``patience P``: stop once P iterations pass without a new variance minimum (today's rule, P = 300);
* ``rise R``: stop once the variance exceeds its minimum so far by the fraction R (after at least 50 iterations
  past the minimum, so one noisy sample does not end the fit);
* ``holdout P/T`` (cases fitted with ``--holdout``): stop once P iterations pass without a held-out error at least
  T (relative) below the last such minimum, returning the EMA 99 iterations after the held-out minimum (or at it,
  in the row marked "no lag").

The variance rules return the EMA 99 iterations after the variance minimum (the stopper's lag), or at the minimum when
the run stopped sooner; minima before iteration 300 (the burn-in) do not count, except in the rows marked "no
burn-in". Per rule the table gives the mean and worst gap to the best PSNR the whole run ever reached, EMA or raw
output (dB), and the mean run length as a share of the fixed run, and per case where each rule stopped. Prints tables,
writes ``stopping_study.json`` (PSNR only: the fits' times are left out, the study runs beside other work).

    python benchmarks/stopping_study.py --size 96 --iterations 3000 --images F16_GT.png kate.png zebra_GT.png \
        --noises gaussian:25 gaussian:50
    python benchmarks/stopping_study.py --size 128 --iterations 1800 --holdout 0.05 --noises gaussian:25 \
        --images F16_GT.png skimage:immunohistochemistry skimage:gravel  # scikit-image's own sample images
    python benchmarks/stopping_study.py --replay benchmarks/results/schedule/schedule_study_256.json  # its runs
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path[:0] = [] if __package__ else [str(Path(__file__).resolve().parents[1])]  # as `python benchmarks/X.py`

import torch

from benchmarks.common import RESULTS, Results, case_image, fit_size, set_threads, study_parser
from dip_compile.fitting import Fitter
from dip_compile.noise import parse_noise
from dip_compile.presets import preset
from dip_compile.problem import make_problem
from dip_compile.stopping import BURN_IN_WINDOWS, HoldoutStopper, Stopper, VarianceStopper, ema_lag

PATIENCES = (100, 200, 300, 500, 1000)
RISES = (0.05, 0.1, 0.2, 0.5)
MIN_PAST = 50
RULES = [("patience", p) for p in PATIENCES] + [("rise", r) for r in RISES]
# (patience, tolerance, lag): the stopper's lag (the EMA's mean age, LAG below) and once without it
HOLDOUT_RULES = [(p, t, -1) for p in (100, 150, 200, 300, 500) for t in (0.0, 0.003, 0.01, 0.02, 0.05)]
HOLDOUT_RULES += [(300, 0.003, 0)]
LOG_EVERY = 5  # the curves' (and so the replayed rules') resolution in iterations
IMAGES = ["F16_GT.png", "kate.png", "zebra_GT.png"]
BURN_IN = BURN_IN_WINDOWS * preset("denoise").stop_window  # the stopper counts no minimum before this iteration
LAG = ema_lag(preset("denoise"))  # it keeps the EMA this many iterations after the minimum
MIN_ITERATIONS = preset("denoise").stop_window + LOG_EVERY  # the first point of the curves: one full window


def too_short(iterations: int) -> str | None:
    """Why a study of ``iterations`` per fit would record no curve (None: it records one)."""
    if iterations >= MIN_ITERATIONS:
        return None
    return (
        f"--iterations {iterations} records no curve: the variance needs a full window first ({MIN_ITERATIONS} or more)"
    )


class Recorder:
    """Stands in for the fit's stopper (never stopping): feeds it and a shadow ES-WMV stopper with the preset's
    window, and records the variance and, under --stop holdout, the held-out error every ``LOG_EVERY`` iterations."""

    def __init__(self, inner: Stopper, shadow: VarianceStopper) -> None:
        self.inner, self.shadow = inner, shadow
        self.variance: dict[int, float] = {}
        self.held_error: dict[int, float] = {}

    def update(self, out: torch.Tensor, iteration: int, keep: torch.Tensor | None = None) -> None:
        self.shadow.update(out, iteration, keep)
        if self.inner is not self.shadow:
            self.inner.update(out, iteration, keep)
        if iteration % LOG_EVERY == 0:
            if self.shadow.count >= self.shadow.window:
                self.variance[iteration] = float(self.shadow.var.item())
            if isinstance(self.inner, HoldoutStopper):
                self.held_error[iteration] = float(self.inner.error.item())

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def curves(
    image: torch.Tensor,
    spec: str,
    iterations: int,
    seed: int,
    preset_name: str = "f16",
    holdout: float = 0.0,
    **changes: Any,
) -> dict[str, Any]:
    """The variance, EMA and output PSNR (and with ``holdout``, the held-out error of a fit that leaves that share
    of the noisy pixels out) every ``LOG_EVERY`` iterations of one fixed-length fit of the preset, with ``changes``
    to its settings (learning rate, schedule, device, precision)."""
    config = preset("denoise", name=preset_name, output_channels=image.shape[0]).replace(
        **{
            "precision": "auto",
            "backend": "auto",
            **changes,
            "iterations": iterations,
            "stop": "holdout" if holdout else "fixed",
            "stop_holdout": holdout or 0.05,
            "stop_finish": 0,
            "stop_patience": 10**9,
            "log_every": LOG_EVERY,
            "seed": seed,
        }
    )
    noisy = parse_noise(spec).apply(image, seed=seed)
    fitter = Fitter(config, make_problem(config, noisy, reference=image))
    shadow = VarianceStopper("wmv", config.stop_window, 10**9, config.stop_alpha, fitter.device, LOG_EVERY, LAG)
    recorder = Recorder(fitter.stopper or shadow, shadow)
    fitter.stopper = recorder
    started = time.perf_counter()
    fitter.run()
    seconds = time.perf_counter() - started
    history = fitter.history
    logged = [int(i) for i in history["iteration"] if i is not None]
    psnr = dict(zip(logged, history["psnr_reference_ema"], strict=True))
    raw = dict(zip(logged, history["psnr_reference"], strict=True))
    its = sorted(set(recorder.variance) & set(psnr))
    recorded = {
        "iteration": its,
        "variance": [recorder.variance[i] for i in its],
        "psnr_ema": [psnr[i] for i in its],
        "psnr_output": [raw[i] for i in its],
        "seconds": seconds,
    }
    if holdout:
        recorded.update(holdout=holdout, held_error=[recorder.held_error[i] for i in its])
    return recorded


def replay(c: dict[str, Any], rule: str, value: float, burn_in: int = BURN_IN) -> tuple[int, int]:
    """(stop iteration, chosen iteration) of a rule on a case's curves; minima before ``burn_in`` do not count."""
    best_var, best_it = float("inf"), c["iteration"][0]
    for it, var in zip(c["iteration"], c["variance"], strict=True):
        if it < burn_in:
            continue
        if var < best_var:
            best_var, best_it = var, it
        past = it - best_it
        if rule == "patience" and past >= value:
            return it, best_it
        if rule == "rise" and past >= MIN_PAST and var > best_var * (1 + value):
            return it, best_it
    return c["iteration"][-1], best_it


def replay_holdout(c: dict[str, Any], patience: int, tolerance: float) -> tuple[int, int]:
    """(stop iteration, held-out minimum) of ``HoldoutStopper``'s rule on a case's held-out error curve."""
    best, best_it, mark, mark_it = float("inf"), c["iteration"][0], float("inf"), 0
    for it, error in zip(c["iteration"], c["held_error"], strict=True):
        if error < best:
            best, best_it = error, it
        if error < mark * (1 - tolerance):
            mark, mark_it = error, it
        if it - mark_it >= patience:
            return it, best_it
    return c["iteration"][-1], best_it


def psnr_at(c: dict[str, Any], iteration: int) -> float:
    """The EMA PSNR at the last record at or before ``iteration``."""
    return next(p for it, p in zip(reversed(c["iteration"]), reversed(c["psnr_ema"]), strict=True) if it <= iteration)


def best_seen(c: dict[str, Any]) -> float:
    """The best PSNR of the run: its EMA image's or its raw output's, whichever was higher."""
    return max(c["psnr_ema"] + c.get("psnr_output", []))


def kept_psnr(c: dict[str, Any], chosen: int, stop: int, lag: int = LAG) -> float:
    """The PSNR of the image the stopper returns: the EMA ``lag`` iterations after the minimum when the fit got
    there, else at the minimum (the curves' last record at or before that iteration)."""
    return psnr_at(c, chosen + lag if chosen + lag <= stop else chosen)


def load_cases(path: Path) -> list[dict[str, Any]]:
    """The curves of a saved study to replay: this study's ``cases``, ``schedule_study.py``'s ``runs`` (the same
    recording per image, noise and schedule, so each run replays as a case), or a folder of ``dipc fit --report``
    files of held-out fits with a reference (``report_case``: the batch folders of fast_study.py, for one)."""
    if path.is_dir():
        found = [report_case(json.loads(p.read_text()), p.stem) for p in sorted(path.glob("*.json"))]
        cases = [c for c in found if c is not None]
        if not cases:
            raise ValueError(f"{path}: no report of a --stop holdout fit with a --reference and its error curve")
        return cases
    saved = json.loads(path.read_text())
    if "cases" in saved:
        return list(saved["cases"])
    if "runs" in saved:
        return list(saved["runs"])
    raise ValueError(f"{path}: no 'cases' (stopping_study.py) or 'runs' (schedule_study.py) to replay")


def report_case(report: dict[str, Any], name: str) -> dict[str, Any] | None:
    """A ``dipc fit --report``'s curves as a case: the held-out error the stopper read (``stop.errors``, one every
    ``stop.error_every`` iterations up to ``stop.errors_until``) and the reference PSNR of the EMA image and the
    output at the same iterations. None for a report without them (another rule, no reference, a fit before the
    curve was reported)."""
    stop, history = report.get("stop") or {}, report.get("history") or {}
    errors, until, every = stop.get("errors"), stop.get("errors_until"), stop.get("error_every")
    if stop.get("rule") != "holdout" or not (errors and until and every) or "psnr_reference_ema" not in history:
        return None
    error_at = {until - every * k: e for k, e in enumerate(reversed(errors))}
    ema = dict(zip(history["iteration"], history["psnr_reference_ema"], strict=True))
    output = dict(zip(history["iteration"], history["psnr_reference"], strict=True))
    its = [it for it in history["iteration"] if it in error_at]
    return {
        "image": name,
        "iteration": its,
        "held_error": [error_at[it] for it in its],
        "psnr_ema": [ema[it] for it in its],
        "psnr_output": [output[it] for it in its],
    }


def summarise(cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every rule, the variance ones with and without the burn-in, replayed on every case: the gaps to the best PSNR
    and run shares. The held-out rules only where every case was fitted with held-out pixels."""
    summary = []

    def row(rule: str, value: Any, burn_in: int, runs: list[tuple[int, float]]) -> dict[str, Any]:
        gaps = [best_seen(c) - got for c, (_, got) in zip(cases, runs, strict=True)]
        shares = [stop / c["iteration"][-1] for c, (stop, _) in zip(cases, runs, strict=True)]
        return {
            "rule": rule,
            "value": value,
            "burn_in": burn_in,
            "mean_gap_db": sum(gaps) / len(gaps),
            "worst_gap_db": max(gaps),
            "mean_run_share": sum(shares) / len(shares),
            "stops": [f"{stop} ({gap:.2f})" for (stop, _), gap in zip(runs, gaps, strict=True)],
        }

    for burn_in in (BURN_IN, 0) if all("variance" in c for c in cases) else ():  # (fit reports have none)
        for rule, value in RULES:
            runs = []
            for c in cases:
                stop, chosen = replay(c, rule, value, burn_in)
                runs.append((stop, kept_psnr(c, chosen, stop)))
            summary.append(row(rule, value, burn_in, runs))
    if cases and all("held_error" in c for c in cases):
        for patience, tolerance, lag in HOLDOUT_RULES:
            runs = []
            for c in cases:
                stop, chosen = replay_holdout(c, patience, tolerance)
                runs.append((stop, kept_psnr(c, chosen, stop, LAG if lag < 0 else lag)))
            label = f"{patience}/{tolerance:g}" + ("" if lag < 0 else f" lag {lag}")
            summary.append(row("holdout", label, 0, runs))
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = study_parser(__doc__, RESULTS / "stopping", images=IMAGES, size=96, iterations=3000)
    parser.add_argument("--noises", nargs="+", default=["gaussian:25", "gaussian:50"])
    parser.add_argument(
        "--holdout", type=float, default=0.0, help="fit with --stop holdout, this share held out (0: all pixels)"
    )
    parser.add_argument(
        "--replay",
        type=Path,
        help="replay the rules on a saved JSON's curves (this study's or schedule_study.py's) or on a folder of "
        "held-out fits' reports, fit nothing",
    )
    args = parser.parse_args(argv)
    if not args.replay and (why := too_short(args.iterations)):
        parser.error(why)
    set_threads(args.threads)
    cases = load_cases(args.replay) if args.replay else []
    results = Results(args.out / "stopping_study.json", "cases", indent=None)
    for name in [] if args.replay else args.images:
        image = fit_size(case_image(args.data, name), args.size)
        for spec in args.noises:
            print(f"{name} {spec} ...", flush=True)
            recorded = curves(image, spec, args.iterations, 0, holdout=args.holdout)
            recorded.pop("seconds")  # beside other work: no timing
            cases.append(results.add({"image": name, "noise": spec, "size": args.size, **recorded}))
    summary = summarise(cases)
    print(f"{'rule':>26} | mean gap dB | worst gap dB | mean run share | per case: stop it (gap dB)")
    for row in summary:
        burn = "" if row["burn_in"] or row["rule"] == "holdout" else " no burn-in"
        label = f"{row['rule']}{burn} {row['value']:g}" if row["rule"] != "holdout" else f"holdout {row['value']}"
        print(
            f"{label:>26} | {row['mean_gap_db']:11.3f} | {row['worst_gap_db']:12.3f} | "
            f"{row['mean_run_share']:14.2f} | {', '.join(row['stops'])}"
        )
    if not args.replay:
        results.save(rules=summary)
        print(f"wrote {results.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
