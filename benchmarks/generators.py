"""Generators head to head: time to a restored image for skip, convdecoder and deepdecoder on one denoising case.

Not a test: minutes per generator. All generators fit the same noisy crop (F16, sigma 25 by default) with the f16
preset's loop (lr, perturbation, EMA, backtracking) and a fixed iteration count, one after the other in one run.
Per generator: parameters, GFLOP per iteration (forward + backward, ``torch.utils.flop_counter``), seconds per
iteration, the best EMA PSNR and when it was reached, and the wall-clock seconds and iterations until the EMA PSNR
first came within 0.5 dB of the skip net's best. Prints a table, writes ``generators.json``.

    python benchmarks/generators.py --size 256 --iterations 1500
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
if not __package__:  # run as `python benchmarks/X.py`: the repo root, so `benchmarks.*` imports as under `-m`
    sys.path.insert(0, str(ROOT))

from benchmarks.quality import fit_size  # noqa: E402
from dip_compile.fitting import Fitter, LogRecord  # noqa: E402
from dip_compile.imageio import load_image  # noqa: E402
from dip_compile.network import count_parameters  # noqa: E402
from dip_compile.noise import Noise  # noqa: E402
from dip_compile.presets import preset  # noqa: E402
from dip_compile.problem import make_problem  # noqa: E402

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


def run(name: str, changes: dict[str, Any], problem_args: tuple, iterations: int, precision: str) -> dict[str, Any]:
    clean, noisy = problem_args
    config = preset("denoise").replace(iterations=iterations, stop="fixed", log_every=10, precision=precision)
    config = config.replace(net=dataclasses.replace(config.net, **changes))
    problem = make_problem(config, noisy, reference=clean)
    fitter = Fitter(config, problem, device="cpu")
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


def reach(row: dict[str, Any], target: float) -> tuple[int, float] | None:
    """(iteration, seconds) at which the EMA PSNR first reached ``target``."""
    return next(((it, sec) for it, sec, p in row["curve"] if p >= target), None)


def table(rows: list[dict[str, Any]]) -> str:
    skip = next(r for r in rows if r["generator"] == "skip")
    target = skip["best_psnr"] - 0.5
    skip_reach = reach(skip, target)
    lines = [
        f"target: {target:.2f} dB (the skip net's best EMA PSNR - 0.5 dB)",
        "| generator | parameters | GFLOP / it | s / it | best EMA PSNR (iteration, s) | reaches target: iteration, s | speed-up vs skip |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        got = reach(r, target)
        when = "never" if got is None else f"{got[0]}, {got[1]:.0f} s"
        speed = "-" if got is None or skip_reach is None else f"{skip_reach[1] / got[1]:.2f}x"
        lines.append(
            f"| {r['generator']} | {r['parameters']:,} | {r['gflop_per_iteration']:.1f} | {r['seconds_per_iteration']:.3f} "
            f"| {r['best_psnr']:.2f} ({r['best_iteration']}, {r['best_seconds']:.0f} s) | {when} | {speed} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--image", default="F16_GT.png")
    parser.add_argument("--size", type=int, default=256, help="the centre crop's side (px), at full resolution")
    parser.add_argument("--sigma", type=float, default=25.0)
    parser.add_argument("--iterations", type=int, default=1500)
    parser.add_argument("--generators", nargs="+", choices=list(GENERATORS), default=list(GENERATORS))
    parser.add_argument("--precision", default="auto", help="auto picks bf16 on CPUs with AVX512-BF16 or AMX")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--table", type=Path, metavar="JSON", help="print the table of a saved run and exit")
    args = parser.parse_args(argv)
    if args.table:
        print(table(json.loads(args.table.read_text())["generators"]))
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    clean = fit_size(load_image(args.data / args.image), args.size, crop_only=True)
    noisy = Noise("gaussian", args.sigma).apply(clean, seed=0)
    rows = []
    for name in args.generators:
        print(f"{name} ...", flush=True)
        rows.append(run(name, GENERATORS[name], (clean, noisy), args.iterations, args.precision))
        args.out.mkdir(parents=True, exist_ok=True)
        result = {
            "machine": platform.platform(),
            "torch": torch.__version__,
            "image": args.image,
            "size": args.size,
            "sigma": args.sigma,
            "iterations": args.iterations,
            "threads": torch.get_num_threads(),
            "generators": rows,
        }
        (args.out / "generators.json").write_text(json.dumps(result, indent=2))
    if any(r["generator"] == "skip" for r in rows):
        print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
