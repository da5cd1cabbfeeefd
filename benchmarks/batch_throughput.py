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

import json
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

sys.path[:0] = [] if __package__ else [str(Path(__file__).resolve().parents[1])]  # as `python benchmarks/X.py`

from benchmarks.common import (
    RESULTS,
    Results,
    Row,
    case_image,
    environment,
    fit_size,
    markdown,
    run_batch,
    saved_rows,
    study_parser,
)
from dip_compile.imageio import save_image

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
        image = case_image(data, name)
        save_image(fit_size(image.expand(3, -1, -1), size), folder / f"{i:02d}-{Path(name).stem}.png", overwrite=True)
    return folder


def run_mode(images: Path, out: Path, mode: str, iterations: int, threads: int | None, fit_args: Sequence[str]) -> Row:
    target = out / f"{images.name}-{mode}"
    shutil.rmtree(target, ignore_errors=True)
    options = ["--task", "denoise", "--sigma", "25", "--iterations", str(iterations), "--stop", "fixed", "-q"]
    t0 = time.perf_counter()
    done = run_batch(images, target, [*options, *MODES[mode], *fit_args], threads, capture=True,
                     environ={"RAY_ADDRESS": ""})  # fmt: skip
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


def table(rows: list[Row]) -> str:
    head = ["size", "mode", "flags", "images", "wall s", "images/hour", "vs one at a time", "mean PSNR (dB)"]
    return markdown(
        head,
        ([r["size"], r["mode"], f"`{r['flags'] or '(none)'}`", r["jobs"], f"{r['seconds']:.1f}",
          f"{r['images_per_hour']:.0f}", f"{r['ratio']:.2f}x", f"{r['mean_psnr']:.2f}"] for r in rows),
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = study_parser(__doc__, RESULTS / "batch", table=True, iterations=50, fit_args=True)
    parser.add_argument("--sizes", default="128", help="comma-separated square sizes")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--modes", default="sequential,pack4,pack8,ray2", help=f"of {', '.join(MODES)}")
    parser.add_argument("--json", default="batch_throughput.json", help="name of the JSON file in --out")
    args = parser.parse_args(argv)
    if args.table:
        print(table(saved_rows(args.table, "rows")))
        return 0
    modes = args.modes.split(",")
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        parser.error(f"unknown mode(s) {unknown}; choose from {', '.join(MODES)}")
    run = {k: str(v) for k, v in vars(args).items()}
    results = Results(args.out / args.json, "rows", {"run": run, **environment()})
    for size in (int(s) for s in args.sizes.split(",")):
        images = make_images(args.data, args.out, args.images, size)
        base = None
        for mode in modes:
            row = {"size": size, **run_mode(images, args.out, mode, args.iterations, args.threads, args.fit_args)}
            base = base or row["images_per_hour"]
            results.add(row | {"ratio": row["images_per_hour"] / base})
            print(f"{size} px {mode}: {row['seconds']:.1f} s, {row['images_per_hour']:.0f} images/hour", flush=True)
    print(table(results.rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
