"""Images per hour of ``dipc batch``: one fit at a time, packed fits (``--pack K``) and a local Ray.

Not a test: minutes. Makes N clean crops of the paper's images (short side resized to SIZE, centre square), then
runs the same batch (denoise preset, ``--sigma 25`` noise made from the clean image, fixed iterations) once per mode
as a ``dipc batch`` subprocess, timing the whole command (start-up, Ray's included). Prints a table and writes
``batch_throughput.json``.

    python benchmarks/batch_throughput.py --sizes 128 --images 8 --iterations 50
    python benchmarks/batch_throughput.py --sizes 64,128 --modes sequential,pack4
    python benchmarks/batch_throughput.py --sizes 256,512 --modes sequential,pack2,pack4,pack8 --fit-args "--device cuda"
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if not __package__:  # run as `python benchmarks/X.py`: the repo root, so `benchmarks.*` imports as under `-m`
    sys.path.insert(0, str(ROOT))

from benchmarks.quality import fit_size  # noqa: E402
from dip_compile.imageio import load_image, save_image  # noqa: E402

IMAGES = (
    "F16_GT.png",
    "kate.png",
    "vase.png",
    "library.png",
    "zebra_GT.png",
    "snail.jpg",
    "restoration/barbara.png",
    "cave01_01_noflash.jpg",
)
MODES = {
    "sequential": [],
    "pack2": ["--pack", "2"],
    "pack4": ["--pack", "4"],
    "pack8": ["--pack", "8"],
    "ray2": ["--ray", "--cpus-per-fit", "1"],  # a local Ray on this machine's cores: one single-threaded fit per core
}


def make_images(data: Path, out: Path, count: int, size: int) -> Path:
    folder = out / f"images-{size}"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        name = IMAGES[i % len(IMAGES)]
        image = load_image(data / name)
        if image.shape[0] == 1:
            image = image.expand(3, -1, -1)
        save_image(fit_size(image, size), folder / f"{i:02d}-{Path(name).stem}.png")
    return folder


def run_mode(
    images: Path, out: Path, mode: str, iterations: int, threads: int | None, fit_args: Sequence[str] = ()
) -> dict[str, Any]:
    target = out / f"{images.name}-{mode}"
    shutil.rmtree(target, ignore_errors=True)
    command = [sys.executable, "-m", "dip_compile.cli", "batch", str(images), "-o", str(target), "--task", "denoise"]
    command += ["--sigma", "25", "--iterations", str(iterations), "--stop", "fixed", "-q", *MODES[mode], *fit_args]
    env = {**os.environ, "RAY_ADDRESS": ""}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    t0 = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{mode}: dipc batch failed ({done.returncode}): {done.stderr[-2000:]}")
    jobs = json.loads((target / "summary.json").read_text())["jobs"]
    psnrs = [j["psnr"] for j in jobs if j["psnr"] is not None]
    return {
        "mode": mode,
        "flags": " ".join([*MODES[mode], *fit_args]),
        "jobs": len(jobs),
        "seconds": seconds,
        "images_per_hour": len(jobs) / seconds * 3600,
        "fit_seconds": sum(j["seconds"] or 0.0 for j in jobs),
        "mean_psnr": sum(psnrs) / len(psnrs) if psnrs else None,
    }


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| size | mode | flags | images | wall s | images/hour | vs one at a time | mean PSNR (dB) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['size']} | {r['mode']} | `{r['flags'] or '(none)'}` | {r['jobs']} | {r['seconds']:.1f} | "
            f"{r['images_per_hour']:.0f} | {r['ratio']:.2f}x | {r['mean_psnr']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "batch")
    parser.add_argument("--sizes", default="128", help="comma-separated square sizes")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--iterations", type=int, default=50)
    parser.add_argument("--modes", default="sequential,pack4,pack8,ray2", help=f"of {', '.join(MODES)}")
    parser.add_argument("--threads", type=int, help="OMP_NUM_THREADS of the in-process modes (default: all cores)")
    parser.add_argument("--fit-args", default="", help='dipc fit flags for every mode, e.g. "--device cuda"')
    parser.add_argument("--json", default="batch_throughput.json", help="name of the JSON file in --out")
    parser.add_argument("--table", type=Path, metavar="JSON", help="print the table of a saved run and exit")
    args = parser.parse_args(argv)
    if args.table:
        print(table(json.loads(args.table.read_text())["rows"]))
        return 0
    modes = args.modes.split(",")
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        parser.error(f"unknown mode(s) {unknown}; choose from {', '.join(MODES)}")
    args.out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    for size in (int(s) for s in args.sizes.split(",")):
        images = make_images(args.data, args.out, args.images, size)
        base = None
        for mode in modes:
            row = {
                "size": size,
                **run_mode(images, args.out, mode, args.iterations, args.threads, shlex.split(args.fit_args)),
            }
            base = base or row["images_per_hour"]
            row["ratio"] = row["images_per_hour"] / base
            rows.append(row)
            print(f"{size} px {mode}: {row['seconds']:.1f} s, {row['images_per_hour']:.0f} images/hour", flush=True)
    report = {
        "run": {k: str(v) for k, v in vars(args).items()},
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "rows": rows,
    }
    (args.out / args.json).write_text(json.dumps(report, indent=2))
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
