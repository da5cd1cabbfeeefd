"""Which auto-stop rule ends soonest without losing quality (not a test: minutes per case).

Each case (image x noise) is fitted ONCE with the denoising preset for ``--iterations`` iterations, recording every
5th iteration's running variance (ES-WMV, the stopper ``dipc fit`` uses) and the PSNR of the EMA image the fit would
return at that iteration. Every rule is then replayed on those curves, exactly as the stopper would run it:

* ``patience P``: stop once P iterations pass without a new variance minimum (today's rule, P = 1000);
* ``rise R``: stop once the variance exceeds its minimum so far by the fraction R (after at least 50 iterations
  past the minimum, so one noisy sample does not end the fit).

Either way the image returned is the EMA 99 iterations after the variance minimum (the stopper's lag), or at the
minimum when the run stopped sooner; minima before iteration 300 (the burn-in) do not count, except in the rows
marked "no burn-in". Per rule the table gives the mean and worst gap to the best PSNR the whole run ever reached (dB) and the mean run length as a share of the fixed run,
and per case where each rule stopped. Prints tables, writes ``stopping_study.json``.

    python benchmarks/stopping_study.py --size 96 --iterations 3000 --images F16_GT.png kate.png zebra_GT.png \
        --noises gaussian:25 gaussian:50
    python benchmarks/stopping_study.py --replay benchmarks/results/schedule/schedule_study_256.json  # its runs
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
if not __package__:  # run as `python benchmarks/X.py`: the repo root, so `benchmarks.*` imports as under `-m`
    sys.path.insert(0, str(ROOT))

from benchmarks.quality import fit_size  # noqa: E402
from dip_compile.fitting import Fitter  # noqa: E402
from dip_compile.imageio import load_image  # noqa: E402
from dip_compile.noise import parse_noise  # noqa: E402
from dip_compile.presets import preset  # noqa: E402
from dip_compile.problem import make_problem  # noqa: E402
from dip_compile.stopping import BURN_IN_WINDOWS, VarianceStopper, ema_lag  # noqa: E402

PATIENCES = (100, 200, 300, 500, 1000)
RISES = (0.05, 0.1, 0.2, 0.5)
MIN_PAST = 50
RULES = [("patience", p) for p in PATIENCES] + [("rise", r) for r in RISES]
LOG_EVERY = 5  # the curves' (and so the replayed rules') resolution in iterations
BURN_IN = BURN_IN_WINDOWS * preset("denoise").stop_window  # the stopper counts no minimum before this iteration
LAG = ema_lag(preset("denoise"))  # it keeps the EMA this many iterations after the minimum


def curves(
    image: torch.Tensor, spec: str, iterations: int, seed: int, preset_name: str = "f16", **changes: Any
) -> dict[str, Any]:
    """The variance and EMA PSNR every ``LOG_EVERY`` iterations of one fixed-length fit of the preset, with
    ``changes`` to its settings (learning rate, schedule, device, precision)."""
    variances: dict[int, float] = {}
    original = VarianceStopper.update

    def recording(self: VarianceStopper, out: torch.Tensor, iteration: int, keep: Any = None) -> None:
        original(self, out, iteration, keep)
        if self.count >= self.window and iteration % LOG_EVERY == 0:
            variances[iteration] = float(self.var.item())

    config = preset("denoise", name=preset_name).replace(
        **{
            "precision": "auto",
            "backend": "auto",
            **changes,
            "iterations": iterations,
            "stop": "auto",
            "stop_patience": 10**9,
            "log_every": LOG_EVERY,
            "seed": seed,
        }
    )
    noisy = parse_noise(spec).apply(image, seed=seed)
    fitter = Fitter(config, make_problem(config, noisy, reference=image))
    VarianceStopper.update = recording  # type: ignore[method-assign]
    try:
        started = time.perf_counter()
        fitter.run()
        seconds = time.perf_counter() - started
    finally:
        VarianceStopper.update = original  # type: ignore[method-assign]
    history = fitter.history
    psnr = dict(zip(map(int, history["iteration"]), history["psnr_reference_ema"], strict=True))
    its = sorted(set(variances) & set(psnr))
    return {
        "iteration": its,
        "variance": [variances[i] for i in its],
        "psnr_ema": [psnr[i] for i in its],
        "seconds": seconds,
    }


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


def kept_psnr(c: dict[str, Any], chosen: int, stop: int, lag: int = LAG) -> float:
    """The PSNR of the image the stopper returns: the EMA ``lag`` iterations after the minimum when the fit got
    there, else at the minimum (the curves' last record at or before that iteration)."""
    kept = chosen + lag if chosen + lag <= stop else chosen
    return next(p for it, p in zip(reversed(c["iteration"]), reversed(c["psnr_ema"]), strict=True) if it <= kept)


def load_cases(path: Path) -> list[dict[str, Any]]:
    """The curves of a saved study to replay: this study's ``cases``, or ``schedule_study.py``'s ``runs`` (the same
    recording per image, noise and schedule, so each run replays as a case)."""
    saved = json.loads(path.read_text())
    if "cases" in saved:
        return list(saved["cases"])
    if "runs" in saved:
        return list(saved["runs"])
    raise ValueError(f"{path}: no 'cases' (stopping_study.py) or 'runs' (schedule_study.py) to replay")


def summarise(cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every rule, with and without the burn-in, replayed on every case: the gaps to the best PSNR and run shares."""
    summary = []
    for burn_in in (BURN_IN, 0):
        for rule, value in RULES:
            gaps, shares, per_case = [], [], []
            for c in cases:
                stop, chosen = replay(c, rule, value, burn_in)
                best = max(c["psnr_ema"])
                got = kept_psnr(c, chosen, stop)
                gaps.append(best - got)
                shares.append(stop / c["iteration"][-1])
                per_case.append(f"{stop} ({best - got:.2f})")
            summary.append(
                {
                    "rule": rule,
                    "value": value,
                    "burn_in": burn_in,
                    "mean_gap_db": sum(gaps) / len(gaps),
                    "worst_gap_db": max(gaps),
                    "mean_run_share": sum(shares) / len(shares),
                    "stops": per_case,
                }
            )
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "stopping")
    parser.add_argument("--images", nargs="+", default=["F16_GT.png", "kate.png", "zebra_GT.png"])
    parser.add_argument("--noises", nargs="+", default=["gaussian:25", "gaussian:50"])
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--iterations", type=int, default=3000)
    parser.add_argument("--threads", type=int)
    parser.add_argument(
        "--replay",
        type=Path,
        help="replay the rules on a saved JSON's curves (this study's or schedule_study.py's), fit nothing",
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    path = args.out / "stopping_study.json"
    cases = load_cases(args.replay) if args.replay else []
    if not args.replay:
        args.out.mkdir(parents=True, exist_ok=True)
        for name in args.images:
            image = fit_size(load_image(args.data / name), args.size)
            for spec in args.noises:
                print(f"{name} {spec} ...", flush=True)
                cases.append(
                    {"image": name, "noise": spec, "size": args.size, **curves(image, spec, args.iterations, 0)}
                )
                result = {"machine": platform.platform(), "torch": torch.__version__, "cases": cases}
                path.write_text(json.dumps(result))
    summary = summarise(cases)
    print(f"{'rule':>26} | mean gap dB | worst gap dB | mean run share | per case: stop it (gap dB)")
    for row in summary:
        label = f"{row['rule']}{'' if row['burn_in'] else ' no burn-in'} {row['value']:g}"
        print(
            f"{label:>26} | {row['mean_gap_db']:11.3f} | {row['worst_gap_db']:12.3f} | "
            f"{row['mean_run_share']:14.2f} | {', '.join(row['stops'])}"
        )
    if not args.replay:
        result = {"machine": platform.platform(), "torch": torch.__version__, "cases": cases, "rules": summary}
        path.write_text(json.dumps(result))
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
