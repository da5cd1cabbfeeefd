"""Non-Gaussian noise: DIP with the matching loss against DIP with MSE and a classic baseline, per image and noise.

Not a test: minutes per fit. For each image and noise (``--noise`` spec) it makes the noisy observation from the
resized clean image, fits the denoising preset (EMA, auto-stop with ``--stop-patience``) once with the loss that
matches the noise (poisson for Poisson, l1 for impulse, mse for Gaussian) and once with MSE, and runs the baseline
(Anscombe + Gaussian filter for Poisson, median filter for impulse, Gaussian filter for Gaussian noise) tuned with
the reference, which favours it. Reports the image ``dipc fit`` returns (the auto-stop choice) and the best EMA PSNR
its history saw, so the gap says whether auto-stop works with that loss. Prints a table, writes
``noise_quality.json``.

    python benchmarks/noise_quality.py --size 96 --iterations 1200 --stop-patience 300
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
if not __package__:  # run as `python benchmarks/X.py`: the repo root, so `benchmarks.*` imports as under `-m`
    sys.path.insert(0, str(ROOT))

from benchmarks.cases import grid_main, grid_parser  # noqa: E402
from benchmarks.quality import fit_size  # noqa: E402
from dip_compile.baselines import anscombe_filter, gaussian_filter, median_filter  # noqa: E402
from dip_compile.checkpoint import load_checkpoint  # noqa: E402
from dip_compile.imageio import load_image, save_image  # noqa: E402
from dip_compile.metrics import psnr  # noqa: E402
from dip_compile.noise import parse_noise  # noqa: E402
from dip_compile.restore import FitJob, run_job  # noqa: E402

MATCHING = {"gaussian": "mse", "poisson": "poisson", "impulse": "l1"}
SIGMAS = (0.5, 0.75, 1.0, 1.5, 2.0, 3.0)


def baseline(kind: str, value: float, noisy: torch.Tensor, clean: torch.Tensor) -> tuple[float, str]:
    """The best PSNR of the noise's classic filter over its parameter grid, and the parameter."""
    if kind == "impulse":
        results = {f"median {k}x{k}": median_filter(noisy, k) for k in (3, 5)}
    elif kind == "poisson":
        results = {f"Anscombe + Gaussian {s:g}": anscombe_filter(noisy, value, s) for s in SIGMAS}
    else:
        results = {f"Gaussian {s:g}": gaussian_filter(noisy, s) for s in SIGMAS}
    scores = {name: psnr(img.clamp(0, 1), clean).item() for name, img in results.items()}
    best = max(scores, key=scores.__getitem__)
    return scores[best], best


def fit(out: Path, name: str, image: Path, spec: str, loss: str, args: argparse.Namespace) -> dict[str, Any]:
    job = FitJob(
        output=out / f"{name}-{loss}.png",
        task="denoise",
        image=image,
        noise=spec,
        settings={
            "loss": loss,
            "iterations": args.iterations,
            "stop_patience": args.stop_patience,
            "log_every": 10,
            "backend": "auto",
            "precision": "auto",
        },
        checkpoint=out / f"{name}-{loss}.ckpt",
        report=out / f"{name}-{loss}.json",
        force=True,
        quiet=True,
    )
    t0 = time.perf_counter()
    with open(out / f"{name}-{loss}.log", "w") as log:
        run_job(job, console_file=log)
    report = json.loads(job.report.read_text())  # type: ignore[union-attr]
    ema = report["history"]["psnr_reference_ema"]
    best = max(range(len(ema)), key=ema.__getitem__)
    return {
        "loss": loss,
        "psnr": report["final_psnr"],
        "best_ema_psnr": ema[best],
        "best_iteration": report["history"]["iteration"][best],
        "chosen_iteration": report.get("stop", {}).get("chosen_iteration")
        if isinstance(report.get("stop"), dict)
        else None,
        "iterations": report["iterations"],
        "stop_reason": report.get("stop_reason"),
        "seconds": time.perf_counter() - t0,
    }


def run(data: Path, out: Path, image_name: str, spec: str, args: argparse.Namespace) -> dict[str, Any]:
    noise = parse_noise(spec)
    name = f"{Path(image_name).stem}-{spec.replace(':', '')}"
    clean_path = out / f"{Path(image_name).stem}-{args.size}.png"
    save_image(fit_size(load_image(data / image_name), args.size), clean_path, overwrite=True)
    matching = MATCHING[noise.kind]
    fits = [fit(out, name, clean_path, spec, matching, args)]
    if matching != "mse":
        fits.append(fit(out, name, clean_path, spec, "mse", args))
    problem = load_checkpoint(out / f"{name}-{matching}.ckpt").problem
    assert problem.reference is not None
    noisy, clean = problem.observation, problem.reference
    base_psnr, base_name = baseline(noise.kind, noise.value, noisy, clean)
    return {
        "case": name,
        "image": image_name,
        "size": args.size,
        "noise": spec,
        "noisy_psnr": psnr(noisy, clean).item(),
        "baseline_psnr": base_psnr,
        "baseline": base_name,
        "fits": fits,
    }


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| image, noise | noisy | baseline (tuned) | DIP, matching loss: returned (best EMA @ it) | DIP, MSE: returned (best EMA @ it) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        cells = []
        for f in r["fits"]:
            cells.append(
                f"{f['loss']}: **{f['psnr']:.2f}** ({f['best_ema_psnr']:.2f} @ {f['best_iteration']}; {f['stop_reason']} "
                f"at {f['iterations']})"
            )
        if len(cells) == 1:
            cells.append("(mse is the matching loss)")
        lines.append(
            f"| {r['image']} {r['size']} px, {r['noise']} | {r['noisy_psnr']:.2f} | {r['baseline_psnr']:.2f} "
            f"({r['baseline']}) | {cells[0]} | {cells[1]} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = grid_parser(__doc__, "noise", size=96, iterations=1200)
    parser.add_argument("--noises", nargs="+", default=["poisson:10", "poisson:30", "impulse:0.1"])
    parser.add_argument("--stop-patience", type=int, default=300)
    return grid_main(
        parser,
        argv,
        "noises",
        lambda a, image, spec: run(a.data, a.out, image, spec, a),
        table,
        "noise_quality.json",
    )


if __name__ == "__main__":
    raise SystemExit(main())
