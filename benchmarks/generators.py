"""Generators head to head: time to a restored image for skip, convdecoder and deepdecoder on one denoising case.

Not a test: minutes per generator. All generators fit the same noisy crop (F16, sigma 25 by default) with the f16
preset's loop (lr, perturbation, EMA, backtracking) and a fixed iteration count, one after the other in one run.
Per generator: parameters, GFLOP per iteration (forward + backward, ``torch.utils.flop_counter``), seconds per
iteration, the best EMA PSNR and when it was reached, and the wall-clock seconds and iterations until the EMA PSNR
first came within 0.5 dB of the skip net's best. Prints a table, writes ``generators.json``.

    python benchmarks/generators.py --size 256 --iterations 1500
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

sys.path[:0] = [] if __package__ else [str(Path(__file__).resolve().parents[1])]  # as `python benchmarks/X.py`

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.common import (
    RESULTS,
    Results,
    Row,
    case_image,
    fit_size,
    markdown,
    saved_rows,
    set_threads,
    study_parser,
)
from dip_compile.fitting import Fitter, LogRecord
from dip_compile.network import count_parameters
from dip_compile.noise import Noise
from dip_compile.presets import preset
from dip_compile.problem import make_problem

# (generator, NetConfig changes): the skip net is the paper's; the decoders' sizes follow their papers' choices scaled
# to a 256 px image (an 8x8 input, five x2 levels).
GENERATORS: dict[str, dict[str, Any]] = {
    "skip": {},
    "convdecoder": dict(generator="convdecoder", channels_up=(64,) * 5, kernel_up=(3,), input_depth=64),
    "deepdecoder": dict(generator="deepdecoder", channels_up=(128,) * 5, kernel_up=(1,), input_depth=128),
}


def gflop_per_iteration(fitter: Fitter) -> float:
    """Forward and backward of one fitting step, counted by torch (the optimizer step is left out)."""
    with FlopCounterMode(display=False) as counter:
        out = fitter.crop(fitter.net(fitter.net_input))
        fitter.problem.fidelity(fitter.problem.operator(out), fitter.problem.observation).backward()
    fitter.net.zero_grad(set_to_none=True)
    return counter.get_total_flops() / 1e9


def run(name: str, clean: torch.Tensor, noisy: torch.Tensor, iterations: int, precision: str) -> Row:
    config = preset("denoise").replace(iterations=iterations, stop="fixed", log_every=10, precision=precision)
    config = config.replace(net=dataclasses.replace(config.net, **GENERATORS[name]))
    fitter = Fitter(config, make_problem(config, noisy, reference=clean), device="cpu")
    gflop = gflop_per_iteration(fitter)
    times: list[tuple[int, float, float]] = []  # (iteration, seconds since start, EMA PSNR)
    t0 = time.perf_counter()

    def on_log(record: LogRecord) -> None:
        assert record.psnr_reference_ema is not None
        times.append((record.iteration, time.perf_counter() - t0, record.psnr_reference_ema))
        if record.iteration % 100 == 0:
            print(f"  [{name}] {record.iteration}/{iterations} EMA PSNR {record.psnr_reference_ema:.2f}", flush=True)

    fitter.run(on_log=on_log)
    best = max(times, key=lambda t: t[2])
    return {
        "generator": name,
        "summary": config.net.summary(),
        "parameters": count_parameters(fitter.net),
        "gflop_per_iteration": gflop,
        "seconds": time.perf_counter() - t0,
        "seconds_per_iteration": times[-1][1] / times[-1][0],
        "best_psnr": best[2],
        "best_iteration": best[0],
        "best_seconds": best[1],
        "curve": times,
        "plan": fitter.plan.describe(),
    }


def reach(row: Row, target: float) -> tuple[int, float] | None:
    """(iteration, seconds) at which the EMA PSNR first reached ``target``."""
    return next(((it, sec) for it, sec, p in row["curve"] if p >= target), None)


def table(rows: list[Row]) -> str:
    skip = next(r for r in rows if r["generator"] == "skip")
    target = skip["best_psnr"] - 0.5
    skip_reach = reach(skip, target)
    head = ["generator", "parameters", "GFLOP / it", "s / it", "best EMA PSNR (iteration, s)",
            "reaches target: iteration, s", "speed-up vs skip"]  # fmt: skip
    lines = []
    for r in rows:
        got = reach(r, target)
        when = "never" if got is None else f"{got[0]}, {got[1]:.0f} s"
        speed = "-" if got is None or skip_reach is None else f"{skip_reach[1] / got[1]:.2f}x"
        lines.append([r["generator"], f"{r['parameters']:,}", f"{r['gflop_per_iteration']:.1f}",
                      f"{r['seconds_per_iteration']:.3f}",
                      f"{r['best_psnr']:.2f} ({r['best_iteration']}, {r['best_seconds']:.0f} s)", when, speed])  # fmt: skip
    return f"target: {target:.2f} dB (the skip net's best EMA PSNR - 0.5 dB)\n" + markdown(head, lines)


def main(argv: list[str] | None = None) -> int:
    parser = study_parser(__doc__, RESULTS, table=True, iterations=1500)
    parser.add_argument("--image", default="F16_GT.png")
    parser.add_argument("--size", type=int, default=256, help="the centre crop's side (px), at full resolution")
    parser.add_argument("--sigma", type=float, default=25.0)
    parser.add_argument("--generators", nargs="+", choices=list(GENERATORS), default=list(GENERATORS))
    parser.add_argument("--precision", default="auto", help="auto picks bf16 on CPUs with AVX512-BF16 or AMX")
    args = parser.parse_args(argv)
    if args.table:
        print(table(saved_rows(args.table, "generators")))
        return 0
    set_threads(args.threads)
    clean = fit_size(case_image(args.data, args.image), args.size, crop_only=True)
    noisy = Noise("gaussian", args.sigma).apply(clean, seed=0)
    results = Results(args.out / "generators.json", "generators")
    results.head.update(image=args.image, size=args.size, sigma=args.sigma, iterations=args.iterations)
    for name in args.generators:
        print(f"{name} ...", flush=True)
        results.add(run(name, clean, noisy, args.iterations, args.precision))
    if any(r["generator"] == "skip" for r in results.rows):
        print(table(results.rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
