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
from pathlib import Path

sys.path[:0] = [] if __package__ else [str(Path(__file__).resolve().parents[1])]  # as `python benchmarks/X.py`

import torch

from benchmarks.common import IMAGES, RESULTS, Row, best_ema, fit, grid_main, markdown, study_parser, write_case
from dip_compile.baselines import anscombe_filter, gaussian_filter, median_filter
from dip_compile.checkpoint import load_checkpoint
from dip_compile.metrics import psnr
from dip_compile.noise import parse_noise

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


def fit_loss(args: argparse.Namespace, name: str, image: Path, spec: str, loss: str) -> Row:
    """``dipc fit denoise`` of the noisy image with ``loss``: what it returned and the best EMA PSNR it saw."""
    stem = args.out / f"{name}-{loss}"
    seconds = fit(
        ["denoise", str(image), "-o", f"{stem}.png", "--noise", spec, "--loss", loss, "--iterations",
         str(args.iterations), "--stop-patience", str(args.stop_patience), "--log-every", "10",
         "--checkpoint", f"{stem}.ckpt", "--report", f"{stem}.json", "--force", "-q", *args.fit_args],
        stem.with_suffix(".log"),
    )  # fmt: skip
    report = json.loads(stem.with_suffix(".json").read_text())
    best, best_at = best_ema(report)
    stop = report.get("stop")
    return {
        "loss": loss,
        "psnr": report["final_psnr"],
        "best_ema_psnr": best,
        "best_iteration": best_at,
        "chosen_iteration": stop.get("chosen_iteration") if isinstance(stop, dict) else None,
        "iterations": report["iterations"],
        "stop_reason": report.get("stop_reason"),
        "seconds": seconds,
    }


def run(args: argparse.Namespace, image_name: str, spec: str) -> Row:
    noise = parse_noise(spec)
    name = f"{Path(image_name).stem}-{spec.replace(':', '')}"
    clean_path = write_case(args.data, image_name, args.size, args.out / f"{Path(image_name).stem}-{args.size}.png")
    matching = MATCHING[noise.kind]
    fits = [fit_loss(args, name, clean_path, spec, loss) for loss in dict.fromkeys((matching, "mse"))]
    problem = load_checkpoint(args.out / f"{name}-{matching}.ckpt").problem
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


def table(rows: list[Row]) -> str:
    head = ["image, noise", "noisy", "baseline (tuned)", "DIP, matching loss: returned (best EMA @ it)",
            "DIP, MSE: returned (best EMA @ it)"]  # fmt: skip
    lines = []
    for r in rows:
        cells = [
            f"{f['loss']}: **{f['psnr']:.2f}** ({f['best_ema_psnr']:.2f} @ {f['best_iteration']}; "
            f"{f['stop_reason']} at {f['iterations']})"
            for f in r["fits"]
        ] + ["(mse is the matching loss)"]
        lines.append([f"{r['image']} {r['size']} px, {r['noise']}", f"{r['noisy_psnr']:.2f}",
                      f"{r['baseline_psnr']:.2f} ({r['baseline']})", *cells[:2]])  # fmt: skip
    return markdown(head, lines)


def main(argv: list[str] | None = None) -> int:
    parser = study_parser(
        __doc__, RESULTS / "noise", table=True, images=IMAGES, size=96, iterations=1200, fit_args=True, resume=True
    )
    parser.add_argument("--noises", nargs="+", default=["poisson:10", "poisson:30", "impulse:0.1"])
    parser.add_argument("--stop-patience", type=int, default=300)
    args = parser.parse_args(argv)
    return grid_main(args, args.noises, run, table, "noise_quality.json", "noise")


if __name__ == "__main__":
    sys.exit(main())
