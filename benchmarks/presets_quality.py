"""Every preset on its notebook image at a reduced scale: a row per preset, run through ``dipc fit`` and exported.

Not a test: it runs for minutes (about one to two per preset at 128 px on 2 cores). For each preset it fits the
notebook's image (resized so its short side is ``--size`` and centre-cropped to a square, at least the network's
smallest canvas), with the preset's own network and settings except the iteration count (capped by
``--iterations``), exactly as ``dipc fit TASK IMAGE --preset NAME`` does; then exports the checkpoint to ONNX and
regenerates the image with ONNX Runtime. It prints a table and writes ``presets_quality.json`` and a side-by-side
picture per preset (``--compare``) to ``--out``.

    python benchmarks/presets_quality.py                       # 128 px, at most 600 iterations per preset
    python benchmarks/presets_quality.py --presets flash kate-98 --size 256 --iterations 1000
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
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
if not __package__:  # run as `python benchmarks/X.py`: the repo root, so `benchmarks.*` imports as under `-m`
    sys.path.insert(0, str(ROOT))

from benchmarks.quality import fit_size  # noqa: E402
from dip_compile import exporters, presets  # noqa: E402
from dip_compile.checkpoint import load_checkpoint  # noqa: E402
from dip_compile.export_options import ExportOptions  # noqa: E402
from dip_compile.imageio import load_image, save_image  # noqa: E402
from dip_compile.restore import FitJob, run_job  # noqa: E402

# preset -> (image, mask or flash image, how the observation is made)
SOURCES: dict[str, tuple[str, str | None, dict[str, Any]]] = {
    "f16": ("F16_GT.png", None, {"sigma": 25.0}),
    "f16-sigma50": ("F16_GT.png", None, {"sigma": 50.0}),
    "snail": ("snail.jpg", None, {}),  # a real JPEG: no clean reference
    "kate": ("kate.png", "kate_mask.png", {"reference": True}),  # the photo is whole under the mask:
    "vase": ("vase.png", "vase_mask.png", {"reference": True}),  # PSNR against it (for library's object removal
    "library": ("library.png", "library_mask.png", {"reference": True}),  # it counts the removed objects too)
    "barbara": ("restoration/barbara.png", None, {}),  # the preset drops 50% of the pixels
    "kate-98": ("restoration/kate.png", None, {}),  # the preset drops 98% of the pixels
    "sr-x4": ("zebra_GT.png", None, {"from_reference": True}),
    "sr-x8": ("zebra_GT.png", None, {"from_reference": True}),
    "flash": ("cave01_01_noflash.jpg", "cave01_00_flash.jpg", {}),
    # blurred here with the fit's own operator, then 1% noise: deblur_quality.py's first case
    "deblur": ("F16_GT.png", None, {"from_reference": True, "sigma": 2.55}),
}
# settings a preset cannot run without (``dipc fit`` flags with no preset default)
SETTINGS: dict[str, dict[str, Any]] = {"deblur": {"kernel": "gaussian:2"}}


def prepare(data: Path, tmp: Path, name: str, size: int) -> tuple[FitJob, int]:
    """The job ``dipc fit`` would run for this preset on the resized notebook image, and the side used."""
    chosen = presets.get(name)
    image_name, extra, how = SOURCES[name]
    side = max(size, chosen.config.net.min_side)
    image = tmp / f"{name}.png"
    save_image(fit_size(load_image(data / image_name), side), image)
    how = {**how, "reference": image} if how.get("reference") else how
    job = FitJob(output=tmp / f"{name}-out.png", task=str(chosen.task), image=image, preset=name, **how)
    job.settings = dict(SETTINGS.get(name, {}))
    if extra is not None:
        resample = Image.Resampling.NEAREST if "mask" in extra else Image.Resampling.LANCZOS
        extra_path = tmp / f"{name}-{'mask' if 'mask' in extra else 'flash'}.png"
        save_image(fit_size(load_image(data / extra), side, resample), extra_path)
        job.mask, job.flash = (extra_path, None) if "mask" in extra else (None, extra_path)
    return job, side


def run(data: Path, out: Path, name: str, size: int, iterations: int) -> dict[str, Any]:
    chosen = presets.get(name)
    job, side = prepare(data, out, name, size)
    count = min(iterations, chosen.config.iterations)
    job.settings |= {"iterations": count, "log_every": 10, "backend": "auto", "precision": "auto"}  # as dipc fit
    job.checkpoint, job.report, job.compare = out / f"{name}.ckpt", out / f"{name}.json", out / f"{name}-compare.png"
    job.force, job.quiet = True, True
    t0 = time.perf_counter()
    with open(out / f"{name}.log", "w") as log:
        code = run_job(job, console_file=log)
    seconds = time.perf_counter() - t0
    report = json.loads(job.report.read_text())
    written = exporters.export_checkpoints(
        [job.checkpoint], out / f"{name}.onnx", ExportOptions(verify=True, force=True)
    )
    check = written[0].check or {}
    losses = report["history"]["loss"]
    ckpt = load_checkpoint(job.checkpoint)
    return {
        "preset": name,
        "task": str(chosen.task),
        "image": SOURCES[name][0],
        "size": f"{ckpt.problem.size[1]}x{ckpt.problem.size[0]}",
        "side": side,
        "iterations": report["iterations"],
        "preset_iterations": chosen.config.iterations,
        "exit_code": code,
        "seconds": seconds,
        "seconds_per_iteration": seconds / max(1, report["iterations"]),
        "parameters": chosen.network_parameters(),
        "first_loss": losses[0],
        "last_loss": losses[-1],
        "input_psnr": report.get("input_psnr"),
        "final_psnr": report.get("final_psnr"),
        "image_source": report.get("image_source"),
        "backtracks": report.get("backtracks"),
        "export_identical_pixels": check.get("identical_8bit"),
        "export_max_abs_diff": check.get("max_abs_diff"),
        "plan": report.get("plan"),
    }


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| preset | image (size) | iterations | loss first -> last | corrupted PSNR | DIP PSNR | export identical 8-bit | s/it |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        psnr_in = "-" if r["input_psnr"] is None else f"{r['input_psnr']:.2f}"
        psnr_out = "-" if r["final_psnr"] is None else f"**{r['final_psnr']:.2f}**"
        same = "-" if r["export_identical_pixels"] is None else f"{100 * r['export_identical_pixels']:.3f}%"
        lines.append(
            f"| {r['preset']} | {r['image']} ({r['size']}) | {r['iterations']} of {r['preset_iterations']} | "
            f"{r['first_loss']:.2e} -> {r['last_loss']:.2e} | {psnr_in} | {psnr_out} | {same} | "
            f"{r['seconds_per_iteration']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "presets")
    parser.add_argument("--presets", nargs="+", choices=presets.NAMES, default=list(presets.NAMES))
    parser.add_argument("--size", type=int, default=128, help="short side of the resized image (px)")
    parser.add_argument("--iterations", type=int, default=600, help="cap on each preset's iterations")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--table", nargs="+", type=Path, metavar="JSON", help="print the table of saved runs and exit")
    args = parser.parse_args(argv)
    if args.table:
        saved = {r["preset"]: r for path in args.table for r in json.loads(path.read_text())["presets"]}
        print(table([saved[name] for name in presets.NAMES if name in saved]))  # a later file's row wins
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.data.is_dir():
        parser.error(f"data folder {args.data} not found (pass --data)")
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.presets:
        print(f"{name} ...", flush=True)
        rows.append(run(args.data, args.out, name, args.size, args.iterations))
        print(table(rows[-1:]).splitlines()[-1], flush=True)
        result = {
            "machine": {
                "platform": platform.platform(),
                "processor": platform.processor(),
                "threads": torch.get_num_threads(),
            },
            "torch": torch.__version__,
            "size": args.size,
            "iterations_cap": args.iterations,
            "presets": rows,
        }
        (args.out / "presets_quality.json").write_text(json.dumps(result, indent=2))
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
