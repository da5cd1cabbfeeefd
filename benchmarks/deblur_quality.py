"""Deblurring: DIP (the deblur preset, as ``dipc fit deblur --from-reference``) against Wiener and Richardson-Lucy.

Not a test: minutes per case. For each image and kernel it blurs the resized reference with the fit's own operator,
adds Gaussian noise (``--sigma`` on the 0-255 scale; 2.55 = 1%), fits, and compares with Wiener deconvolution and
Richardson-Lucy on the same observation. The baselines are tuned with the reference (the best NSR on a grid, the
best iteration count), which favours them; DIP reports the image ``dipc fit`` returns (the preset's: the EMA at
the held-out stop since 2026-12-07, ``--iterations`` its cap; the EMA at the last iteration with ``--stop fixed``
among the fit's options) and the best EMA PSNR its history saw. Prints a table, writes ``deblur_quality.json`` and a picture per
case (blurred | Wiener | DIP | reference).

    python benchmarks/deblur_quality.py --size 128 --iterations 1000
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path[:0] = [] if __package__ else [str(Path(__file__).resolve().parents[1])]  # as `python benchmarks/X.py`

from benchmarks.common import IMAGES, RESULTS, Row, best_ema, fit, grid_main, markdown, study_parser, write_case
from dip_compile.baselines import richardson_lucy, wiener_deconvolve
from dip_compile.checkpoint import load_checkpoint
from dip_compile.imageio import load_image, save_side_by_side
from dip_compile.metrics import psnr

NSR = (1e-4, 3e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 1e-1)
RL_ITERATIONS = (5, 10, 20, 30, 50, 100)


def run(args: argparse.Namespace, image_name: str, spec: str) -> Row:
    out = args.out
    name = f"{Path(image_name).stem}-{spec.replace(':', '').replace(',', '_')}"
    sharp = write_case(args.data, image_name, args.size, out / f"{name}-sharp.png")
    ckpt, report_path = out / f"{name}.ckpt", out / f"{name}.json"
    seconds = fit(
        ["deblur", str(sharp), "-o", str(out / f"{name}-dip.png"), "--from-reference", "--sigma", str(args.sigma),
         "--kernel", spec, "--iterations", str(args.iterations), "--log-every", "10", "--checkpoint", str(ckpt),
         "--report", str(report_path), "--force", "-q", *args.fit_args],
        out / f"{name}.log",
    )  # fmt: skip
    report = json.loads(report_path.read_text())
    problem = load_checkpoint(ckpt).problem
    assert problem.reference is not None and problem.kernel is not None
    ref, obs, kernel = problem.reference, problem.observation, problem.kernel
    wiener = {nsr: wiener_deconvolve(obs, kernel, nsr) for nsr in NSR}
    wiener_psnr = {nsr: psnr(img, ref).item() for nsr, img in wiener.items()}
    best_nsr = max(wiener_psnr, key=wiener_psnr.__getitem__)
    rl_psnr = {n: psnr(richardson_lucy(obs, kernel, n), ref).item() for n in RL_ITERATIONS}
    best_rl = max(rl_psnr, key=rl_psnr.__getitem__)
    history = report["history"]
    best, best_at = best_ema(report)
    dip = load_image(out / f"{name}-dip.png")
    save_side_by_side([obs, wiener[best_nsr], dip[None], ref], out / f"{name}-compare.png", overwrite=True)
    return {
        "case": name,
        "image": image_name,
        "kernel": spec,
        "kernel_size": list(kernel.shape),
        "size": args.size,
        "sigma": args.sigma,
        "iterations": report["iterations"],
        "seconds": seconds,
        "blurred_psnr": psnr(obs, ref).item(),
        "wiener_psnr": wiener_psnr[best_nsr],
        "wiener_nsr": best_nsr,
        "rl_psnr": rl_psnr[best_rl],
        "rl_iterations": best_rl,
        "dip_psnr": report["final_psnr"],
        "dip_best_ema_psnr": best,
        "dip_best_iteration": best_at,
        "dip_psnr_by_iteration": dict(zip(history["iteration"], history["psnr_reference_ema"], strict=True)),
    }


def table(rows: list[Row]) -> str:
    head = ["image, kernel", "blurred + noise", "Wiener (best NSR)", "Richardson-Lucy (best its)", "DIP returned",
            "DIP best EMA (iteration)", "DIP - Wiener"]  # fmt: skip
    return markdown(
        head,
        (
            [f"{r['image']} {r['size']} px, {r['kernel']}", f"{r['blurred_psnr']:.2f}",
             f"{r['wiener_psnr']:.2f} ({r['wiener_nsr']:g})", f"{r['rl_psnr']:.2f} ({r['rl_iterations']})",
             f"**{r['dip_psnr']:.2f}** ({r['iterations']} it)",
             f"{r['dip_best_ema_psnr']:.2f} ({r['dip_best_iteration']})", f"{r['dip_psnr'] - r['wiener_psnr']:+.2f} dB"]
            for r in rows
        ),
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = study_parser(
        __doc__, RESULTS / "deblur", table=True, images=IMAGES, size=128, iterations=1000, fit_args=True, resume=True
    )
    parser.add_argument("--kernels", nargs="+", default=["gaussian:2", "motion:9,30"])
    parser.add_argument("--sigma", type=float, default=2.55, help="noise std on the 0-255 scale (2.55 = 1%%)")
    args = parser.parse_args(argv)
    return grid_main(args, args.kernels, run, table, "deblur_quality.json", "kernel")


if __name__ == "__main__":
    sys.exit(main())
