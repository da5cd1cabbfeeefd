"""Deblurring: DIP (the deblur preset, as ``dipc fit deblur --from-reference``) against Wiener and Richardson-Lucy.

Not a test: minutes per case. For each image and kernel it blurs the resized reference with the fit's own operator,
adds Gaussian noise (``--sigma`` on the 0-255 scale; 2.55 = 1%), fits, and compares with Wiener deconvolution and
Richardson-Lucy on the same observation. The baselines are tuned with the reference (the best NSR on a grid, the
best iteration count), which favours them; DIP reports the image ``dipc fit`` returns (the EMA at the last
iteration) and the best EMA PSNR its history saw. Prints a table, writes ``deblur_quality.json`` and a picture per
case (blurred | Wiener | DIP | reference).

    python benchmarks/deblur_quality.py --size 128 --iterations 1000
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if not __package__:  # run as `python benchmarks/X.py`: the repo root, so `benchmarks.*` imports as under `-m`
    sys.path.insert(0, str(ROOT))

from benchmarks.cases import grid_main, grid_parser  # noqa: E402
from benchmarks.quality import fit_size  # noqa: E402
from dip_compile.baselines import richardson_lucy, wiener_deconvolve  # noqa: E402
from dip_compile.checkpoint import load_checkpoint  # noqa: E402
from dip_compile.imageio import load_image, save_image, save_side_by_side  # noqa: E402
from dip_compile.metrics import psnr  # noqa: E402
from dip_compile.restore import FitJob, run_job  # noqa: E402

NSR = (1e-4, 3e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 1e-1)
RL_ITERATIONS = (5, 10, 20, 30, 50, 100)


def run(data: Path, out: Path, image_name: str, spec: str, size: int, iterations: int, sigma: float) -> dict[str, Any]:
    name = f"{Path(image_name).stem}-{spec.replace(':', '').replace(',', '_')}"
    sharp = out / f"{name}-sharp.png"
    save_image(fit_size(load_image(data / image_name), size), sharp)
    job = FitJob(
        output=out / f"{name}-dip.png",
        task="deblur",
        image=sharp,
        from_reference=True,
        sigma=sigma,
        settings={"kernel": spec, "iterations": iterations, "log_every": 10, "backend": "auto", "precision": "auto"},
        checkpoint=out / f"{name}.ckpt",
        report=out / f"{name}.json",
        force=True,
        quiet=True,
    )
    t0 = time.perf_counter()
    with open(out / f"{name}.log", "w") as log:
        run_job(job, console_file=log)
    seconds = time.perf_counter() - t0
    report = json.loads(job.report.read_text())  # type: ignore[union-attr]
    ckpt = load_checkpoint(job.checkpoint)  # type: ignore[arg-type]
    problem = ckpt.problem
    assert problem.reference is not None and problem.kernel is not None
    ref, obs, kernel = problem.reference, problem.observation, problem.kernel
    wiener = {nsr: wiener_deconvolve(obs, kernel, nsr) for nsr in NSR}
    wiener_psnr = {nsr: psnr(img, ref).item() for nsr, img in wiener.items()}
    best_nsr = max(wiener_psnr, key=wiener_psnr.__getitem__)
    rl_psnr = {n: psnr(richardson_lucy(obs, kernel, n), ref).item() for n in RL_ITERATIONS}
    best_rl = max(rl_psnr, key=rl_psnr.__getitem__)
    history = report["history"]
    ema = history["psnr_reference_ema"]
    best = max(range(len(ema)), key=ema.__getitem__)
    dip = load_image(job.output)
    save_side_by_side([obs, wiener[best_nsr], dip[None], ref], out / f"{name}-compare.png", overwrite=True)
    return {
        "case": name,
        "image": image_name,
        "kernel": spec,
        "kernel_size": list(kernel.shape),
        "size": size,
        "sigma": sigma,
        "iterations": report["iterations"],
        "seconds": seconds,
        "blurred_psnr": psnr(obs, ref).item(),
        "wiener_psnr": wiener_psnr[best_nsr],
        "wiener_nsr": best_nsr,
        "rl_psnr": rl_psnr[best_rl],
        "rl_iterations": best_rl,
        "dip_psnr": report["final_psnr"],
        "dip_best_ema_psnr": ema[best],
        "dip_best_iteration": history["iteration"][best],
        "dip_psnr_by_iteration": dict(zip(history["iteration"], ema, strict=True)),
    }


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| image, kernel | blurred + noise | Wiener (best NSR) | Richardson-Lucy (best its) | DIP returned | DIP best EMA (iteration) | DIP - Wiener |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['image']} {r['size']} px, {r['kernel']} | {r['blurred_psnr']:.2f} | {r['wiener_psnr']:.2f} "
            f"({r['wiener_nsr']:g}) | {r['rl_psnr']:.2f} ({r['rl_iterations']}) | **{r['dip_psnr']:.2f}** "
            f"({r['iterations']} it) | {r['dip_best_ema_psnr']:.2f} ({r['dip_best_iteration']}) | "
            f"{r['dip_psnr'] - r['wiener_psnr']:+.2f} dB |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = grid_parser(__doc__, "deblur", size=128, iterations=1000)
    parser.add_argument("--kernels", nargs="+", default=["gaussian:2", "motion:9,30"])
    parser.add_argument("--sigma", type=float, default=2.55, help="noise std on the 0-255 scale (2.55 = 1%%)")
    return grid_main(
        parser,
        argv,
        "kernels",
        lambda a, image, spec: run(a.data, a.out, image, spec, a.size, a.iterations, a.sigma),
        table,
        "deblur_quality.json",
    )


if __name__ == "__main__":
    raise SystemExit(main())
