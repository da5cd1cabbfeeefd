"""Quality benchmark against the paper: the presets on the paper's images through ``dipc batch``, with baselines.

Not a test: it runs for minutes to hours. It writes the cases' inputs and one manifest, runs them as one
``dipc batch`` (so the figures are what a user of ``dipc batch`` gets; ``--pack``/``--ray`` pass through), then
reads each job's report and checkpoint for the baselines, writes a side-by-side PNG per case (input | baseline |
DIP | reference), ``quality.json`` in ``--out``, and prints a table. What was run (image size, iteration caps,
stopping window/patience, threads, seconds per iteration) is recorded next to every number.

    python benchmarks/quality.py                        # the full presets at full size (hours on a CPU)
    python benchmarks/quality.py --quick                # small crops and capped iterations (minutes)
    python benchmarks/quality.py --size 128 --iterations 1000 --denoise-iterations 2500 --stop-patience 400

Cases: kate inpainting with its mask (PSNR over the image and over the hole), F16 denoising at sigma 25 (noisy
input; the fixed count and the auto-stopped fit as two jobs; the best PSNR the fit saw = oracle), zebra x4
super-resolution (bicubic vs DIP), and text-mask and random-hole inpainting on one more image (diffusion fill as the
baseline).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path[:0] = [] if __package__ else [str(Path(__file__).resolve().parents[1])]  # as `python benchmarks/X.py`

from PIL import Image

from benchmarks.common import (
    RESULTS,
    Row,
    environment,
    markdown,
    masked_psnr,
    run_batch,
    saved_rows,
    study_parser,
    write_case,
    write_json,
)
from dip_compile import presets
from dip_compile.baselines import diffusion_fill
from dip_compile.checkpoint import load_checkpoint
from dip_compile.imageio import load_image, save_side_by_side
from dip_compile.metrics import psnr

CASES = ("kate", "denoise", "sr", "text", "holes")
QUICK = dict(size=64, iterations=400, denoise_iterations=1500, stop_window=50, stop_patience=300)


def manifest_rows(args: argparse.Namespace, inputs: Path) -> list[Row]:
    """One ``dipc batch`` row per case, its inputs written to ``inputs`` at the benchmark's size."""

    def sized(name: str, resample: int = Image.Resampling.LANCZOS) -> str:
        path = inputs / (Path(name).stem + ".png")
        return write_case(args.data, name, args.size, path, resample, crop_only=args.crop).name

    cap = ["--iterations", str(args.iterations)] if args.iterations else []
    rows: list[Row] = []
    for case in args.cases:
        if case == "kate":
            mask = sized("kate_mask.png", Image.Resampling.NEAREST)
            rows.append(dict(image=sized("kate.png"), task="inpaint", output="kate", options=cap, mask=mask,
                             reference="kate.png"))  # fmt: skip
        elif case == "denoise":
            stop = ["--stop-window", str(args.stop_window), "--stop-patience", str(args.stop_patience)]
            its = ["--iterations", str(args.denoise_iterations)] if args.denoise_iterations else []
            for name in args.denoise_images:
                label = "denoise" if name == "F16_GT.png" else f"denoise-{Path(name).stem}"
                base = dict(image=sized(name), task="denoise")
                rows.append(base | dict(output=f"{label}-fixed", options=["--sigma", "25", "--stop", "fixed", *its]))
                rows.append(base | dict(output=label, options=["--sigma", "25", "--stop", "auto", *stop, *its]))
        elif case == "sr":
            options = ["--from-reference", "--factor", "4", *cap]
            rows.append(dict(image=sized("zebra_GT.png"), task="super-resolve", output="sr", options=options))
        else:
            flag = ["--text"] if case == "text" else ["--holes", str(args.holes)]
            rows.append(dict(image=sized(args.extra_image), task="inpaint", output=case, options=[*flag, *cap]))
    return rows


def case_row(outdir: Path, name: str, args: argparse.Namespace, pictures: Path) -> Row:
    """A case's figures from the batch's report and checkpoint, with the baselines on the same observation."""
    report = json.loads((outdir / f"{name}.json").read_text())
    problem = load_checkpoint(outdir / "checkpoints" / f"{name}.ckpt").problem
    assert problem.reference is not None
    ref, view = problem.reference.cpu(), problem.corrupted_view().cpu()
    result = load_image(outdir / f"{name}.png")[None]
    config = report["config"]
    preset = presets.BY_NAME.get(config.get("preset"))
    row: Row = {
        "case": name,
        "task": report["task"],
        "params": {
            "height": report["image_size"]["height"],
            "width": report["image_size"]["width"],
            "iterations_run": report["iterations"],
            "preset_iterations": preset.config.iterations if preset else config["iterations"],
            **{k: config[k] for k in ("lr", "reg_noise_std", "ema", "stop", "stop_window", "stop_patience")},
            "scaling": "full size" if args.size is None else ("centre crop" if args.crop else "resized"),
        },
        "seconds": report["wall_seconds"],
        "seconds_per_iteration": report["wall_seconds"] / max(report["iterations"], 1),
        "stop_reason": report["stop_reason"],
        "chosen_iteration": report["chosen_iteration"],
        "input_psnr": report["input_psnr"],
        "dip_psnr": report["final_psnr"],
        "best_psnr_seen": [report.get("best_psnr_seen"), report.get("best_psnr_iteration")],
    }
    panels = [view]
    if problem.mask is not None:
        mask = problem.mask.cpu().reshape(problem.mask.shape[-2:])
        hole = 1 - mask
        filled = diffusion_fill(view, mask)
        kept = result * hole + view * mask  # what --keep-known returns
        row["hole_fraction"] = float(hole.mean())
        row["diffusion_fill_psnr"] = float(psnr(filled, ref))
        row["psnr_hole"] = {
            "masked_input": masked_psnr(view, ref, hole),
            "diffusion_fill": masked_psnr(filled, ref, hole),
            "dip": masked_psnr(result, ref, hole),
        }
        row["dip_known_kept_psnr"] = float(psnr(kept, ref))
        panels.append(filled)
    save_side_by_side([*panels, result, ref], pictures / f"{name}.png", overwrite=True)
    return row


def cells(r: Row) -> list[str]:
    """A case's table row: what it is, the baseline, DIP and notes."""
    p = r["params"]
    best, at = r["best_psnr_seen"]
    seen = f"best seen {best:.2f} @ {at}" if best is not None else ""
    if "psnr_hole" in r:
        h = r["psnr_hole"]
        base = (
            f"masked {r['input_psnr']:.2f} (hole {h['masked_input']:.2f}); "
            f"diffusion {r['diffusion_fill_psnr']:.2f} (hole {h['diffusion_fill']:.2f})"
        )
        dip = f"raw {r['dip_psnr']:.2f}, known pixels kept {r['dip_known_kept_psnr']:.2f} (hole {h['dip']:.2f})"
        notes = f"hole {100 * r['hole_fraction']:.0f}% of pixels; {seen}"
    elif r["task"] == "denoise" and p["stop"] == "auto":
        base = f"noisy {r['input_psnr']:.2f}"
        dip = f"auto {r['dip_psnr']:.2f} (oracle {best:.2f}: gap {best - r['dip_psnr']:.2f} dB)"
        notes = (
            f"chose {r['chosen_iteration']}, {r['stop_reason']} at {p['iterations_run']}; oracle @ {at}; "
            f"W={p['stop_window']} P={p['stop_patience']}"
        )
    elif r["task"] == "denoise":
        base, dip, notes = f"noisy {r['input_psnr']:.2f}", f"fixed {r['dip_psnr']:.2f}", seen
    else:
        base, dip, notes = f"bicubic {r['input_psnr']:.2f}", f"{r['dip_psnr']:.2f}", f"x4; {seen}"
    size = f"{p['width']}x{p['height']} {p['scaling']}"
    its = f"{p['iterations_run']} of {p['preset_iterations']}"
    return [r["case"], size, its, base, dip, notes, f"{r['seconds_per_iteration']:.2f}"]


def table(rows: list[Row]) -> str:
    head = ["case", "size", "iterations", "baseline PSNR (dB)", "DIP PSNR (dB)", "notes", "s/it"]
    return markdown(head, map(cells, rows))


def main(argv: list[str] | None = None) -> int:
    parser = study_parser(__doc__, RESULTS, table=True)
    parser.add_argument("--json", default="quality.json", help="name of the JSON file in --out")
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    parser.add_argument("--size", type=int, help="resize the short side to this and centre-crop a square")
    parser.add_argument("--crop", action="store_true", help="with --size: cut the centre square without resizing")
    parser.add_argument("--iterations", type=int, help="cap on the inpainting and super-resolution iterations")
    parser.add_argument("--denoise-iterations", type=int, help="denoising iterations (preset 3000)")
    parser.add_argument("--stop-window", type=int, default=100)
    parser.add_argument("--stop-patience", type=int, default=1000)
    parser.add_argument("--denoise-images", nargs="+", default=["F16_GT.png"], help="images for the denoising case")
    parser.add_argument("--extra-image", default="F16_GT.png", help="image for the text and random-hole cases")
    parser.add_argument("--holes", type=float, default=0.5, help="fraction of pixels dropped in the random-hole case")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pack", type=int, default=1, help="dipc batch --pack")
    parser.add_argument("--ray", action="store_true", help="dipc batch --ray")
    parser.add_argument("--quick", action="store_true", help=f"defaults for a run of minutes: {QUICK}")
    args = parser.parse_args(argv)
    if args.table:
        print(table(saved_rows(args.table, "cases")))
        return 0
    if args.quick:
        for key, value in QUICK.items():
            if getattr(args, key) in (None, parser.get_default(key)):
                setattr(args, key, value)
    if not args.data.is_dir():
        parser.error(f"data folder {args.data} not found (pass --data)")
    inputs, outdir = args.out / "quality-inputs", args.out / "quality-batch"
    inputs.mkdir(parents=True, exist_ok=True)
    print(f"quality benchmark: {vars(args)}", flush=True)
    rows = manifest_rows(args, inputs)
    manifest = inputs / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    options = ["--checkpoints", "--seed", str(args.seed), "--log-every", "5", "--pack", str(args.pack)]
    t0 = time.perf_counter()
    done = run_batch(manifest, outdir, [*options, *(["--ray"] if args.ray else [])], args.threads)
    if done.returncode != 0:
        raise SystemExit(f"dipc batch failed with exit code {done.returncode}")
    seconds = time.perf_counter() - t0
    cases = [case_row(outdir, row["output"], args, args.out) for row in rows]
    run = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    write_json(args.out / args.json, {"run": run, "batch_seconds": seconds, **environment(), "cases": cases})
    print(table(cases))
    return 0


if __name__ == "__main__":
    sys.exit(main())
