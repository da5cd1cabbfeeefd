"""Quality benchmark against the paper: the presets on the paper's images, with baselines and auto-stop analysis.

Not a test: it runs for minutes to hours. For each case it writes a side-by-side PNG (input | baseline | DIP |
reference) and all numbers to ``quality.json`` in ``--out``, and prints a table. What was run (image size,
iteration caps, stopping window/patience, threads, seconds per iteration) is recorded next to every number.

    python benchmarks/quality.py                        # the full presets at full size (hours on a CPU)
    python benchmarks/quality.py --quick                # small crops and capped iterations (minutes)
    python benchmarks/quality.py --size 128 --iterations 1000 --denoise-iterations 2500 --stop-patience 400

Cases: kate inpainting with its mask (PSNR over the image and over the hole), F16 denoising at sigma 25 (noisy
input, output at the preset's count, auto-stopped output, best iteration = oracle), zebra x4 super-resolution
(bicubic vs DIP), and text-mask and random-hole inpainting on one more image (diffusion fill as the baseline).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dip_compile.baselines import diffusion_fill  # noqa: E402
from dip_compile.config import FitConfig  # noqa: E402
from dip_compile.degradations import random_holes_mask, text_mask  # noqa: E402
from dip_compile.fitting import Fitter  # noqa: E402
from dip_compile.imageio import load_image, save_side_by_side  # noqa: E402
from dip_compile.metrics import psnr  # noqa: E402
from dip_compile.presets import preset  # noqa: E402
from dip_compile.problem import add_noise, downsample_reference, make_problem  # noqa: E402
from dip_compile.stopping import VarianceStopper  # noqa: E402

CASES = ("kate", "denoise", "sr", "text", "holes")
QUICK = dict(size=64, iterations=400, denoise_iterations=1500, stop_window=50, stop_patience=300)


def fit_size(
    image: torch.Tensor, size: int | None, resample: int = Image.Resampling.LANCZOS, crop_only: bool = False
) -> torch.Tensor:
    """Resizes so the short side is ``size`` and centre-crops a ``size`` square (unchanged when size is None).

    With ``crop_only`` the image keeps its resolution and only the centre square is cut out."""
    if size is None:
        return image
    c, h, w = image.shape
    if crop_only:
        top, left = max(0, (h - size) // 2), max(0, (w - size) // 2)
        return image[:, top : top + size, left : left + size].contiguous()
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    array = (image.permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)
    pil = Image.fromarray(array[..., 0] if c == 1 else array).resize((nw, nh), resample)
    out = np.asarray(pil, dtype=np.float32) / 255.0
    out = out[None] if out.ndim == 2 else out.transpose(2, 0, 1)
    top, left = (nh - size) // 2, (nw - size) // 2
    return torch.from_numpy(np.ascontiguousarray(out[:, top : top + size, left : left + size]))


def masked_psnr(x: torch.Tensor, y: torch.Tensor, region: torch.Tensor) -> float:
    """PSNR over the pixels where ``region`` (H, W) is 1, all channels."""
    sel = region.bool().expand_as(x.reshape(-1, *region.shape))
    diff = (x.reshape(sel.shape) - y.reshape(sel.shape))[sel]
    return float(-10.0 * torch.log10(diff.pow(2).mean().clamp_min(1e-12)))


class Tracker:
    """One stopping rule watched alongside a fit: where it would stop and what it would return."""

    def __init__(self, name: str, stopper: VarianceStopper, keep_ema: bool) -> None:
        self.name, self.stopper, self.keep_ema = name, stopper, keep_ema
        self.trigger: int | None = None
        self.chosen: int | None = None
        self.image: torch.Tensor | None = None

    def update(self, fitter: Fitter, out: torch.Tensor) -> None:
        if self.trigger is not None:
            return
        self.stopper.update(out, fitter.iteration, keep=fitter.ema if self.keep_ema else None)
        chosen = self.stopper.chosen_iteration()
        if chosen is not None and fitter.iteration - chosen >= self.stopper.patience:
            self.trigger, self.chosen = fitter.iteration, chosen
            assert self.stopper.best_image is not None
            self.image = self.stopper.best_image.clone()

    def finish(self) -> None:
        """A rule that never fired returns its best-so-far image (as ``dipc fit`` does when iterations run out)."""
        if self.trigger is None and self.stopper.best_image is not None:
            self.chosen, self.image = self.stopper.chosen_iteration(), self.stopper.best_image.clone()


def run_fit(config: FitConfig, problem, iterations: int, trackers: list[Tracker], label: str) -> dict[str, Any]:
    """Runs ``iterations`` steps, recording PSNR of the raw output (and EMA) to the reference every iteration."""
    fitter = Fitter(config, problem, device="cpu")
    ref = problem.reference
    raw, ema = [], []
    t0 = time.perf_counter()
    for i in range(iterations):
        _, out = fitter.iterate()
        raw.append(float(psnr(out, ref)))
        if fitter.ema is not None:
            ema.append(float(psnr(fitter.ema, ref)))
        for tracker in trackers:
            tracker.update(fitter, out)
        if (i + 1) % 50 == 0 or i + 1 == iterations:
            spent = time.perf_counter() - t0
            print(
                f"  [{label}] {i + 1}/{iterations}  PSNR {raw[-1]:.2f}"
                + (f" (EMA {ema[-1]:.2f})" if ema else "")
                + f"  {spent / (i + 1):.2f} s/it",
                flush=True,
            )
    for tracker in trackers:
        tracker.finish()
    seconds = time.perf_counter() - t0
    return {"fitter": fitter, "raw": raw, "ema": ema, "seconds": seconds, "seconds_per_iteration": seconds / iterations}


def best(series: list[float]) -> tuple[float, int]:
    i = int(np.argmax(series))
    return series[i], i + 1


def params(config: FitConfig, iterations: int, preset_iterations: int, size: tuple[int, ...]) -> dict[str, Any]:
    return {
        "height": size[0],
        "width": size[1],
        "iterations_run": iterations,
        "preset_iterations": preset_iterations,
        "lr": config.lr,
        "reg_noise_std": config.reg_noise_std,
        "ema": config.ema,
        "backtrack_db": config.backtrack_db,
        "net": {
            "structure": config.net.structure,
            "channels_down": config.net.channels_down,
            "channels_skip": config.net.channels_skip,
            "upsample": config.net.upsample,
        },
    }


# --- the cases -------------------------------------------------------------------------------------------------


def inpaint_case(name: str, image: torch.Tensor, mask: torch.Tensor, args, out_dir: Path) -> dict[str, Any]:
    config = preset("inpaint", output_channels=image.shape[0]).replace(seed=args.seed)
    iterations = min(config.iterations, args.iterations) if args.iterations else config.iterations
    problem = make_problem(config, image, mask=mask, reference=image)
    fit = run_fit(config, problem, iterations, [], name)
    result = fit["fitter"].output().cpu()
    ref, hole = image.unsqueeze(0), (1 - mask)
    masked = problem.observation.cpu()
    filled = diffusion_fill(masked, mask)
    row = {
        "case": name,
        "task": "inpaint",
        "hole_fraction": float(hole.mean()),
        "params": params(config, iterations, config.iterations, tuple(image.shape[-2:])),
        "seconds": fit["seconds"],
        "seconds_per_iteration": fit["seconds_per_iteration"],
        "psnr": {
            "masked_input": float(psnr(masked, ref)),
            "diffusion_fill": float(psnr(filled, ref)),
            "dip": float(psnr(result, ref)),
        },
        "psnr_hole": {
            "masked_input": masked_psnr(masked, ref, hole),
            "diffusion_fill": masked_psnr(filled, ref, hole),
            "dip": masked_psnr(result, ref, hole),
        },
        "best_psnr_seen": best(fit["raw"]),
    }
    save_side_by_side([masked, filled, result, ref], out_dir / f"{name}.png")
    return row


def denoise_case(name: str, image: torch.Tensor, args, out_dir: Path) -> dict[str, Any]:
    config = preset("denoise", output_channels=image.shape[0]).replace(
        seed=args.seed, stop_window=args.stop_window, stop_patience=args.stop_patience
    )
    iterations = args.denoise_iterations or config.iterations
    noisy = add_noise(image, 25 / 255.0, seed=args.noise_seed)
    problem = make_problem(config, noisy, reference=image)
    w, p, dev = config.stop_window, config.stop_patience, torch.device("cpu")
    trackers = [
        Tracker("wmv_ema", VarianceStopper("wmv", w, p, config.stop_alpha, dev), keep_ema=True),
        Tracker("wmv_raw", VarianceStopper("wmv", w, p, config.stop_alpha, dev), keep_ema=False),
        Tracker("emv_raw", VarianceStopper("emv", w, p, config.stop_alpha, dev), keep_ema=False),
        Tracker("emv_ema", VarianceStopper("emv", w, p, config.stop_alpha, dev), keep_ema=True),
    ]
    fit = run_fit(config.replace(stop="fixed"), problem, iterations, trackers, name)
    ref = image.unsqueeze(0)
    fixed = fit["fitter"].image()[0].cpu()  # what --stop fixed returns at the last iteration (the EMA)
    oracle_ema, oracle_raw = best(fit["ema"]), best(fit["raw"])
    auto = {}
    for t in trackers:
        value = float(psnr(t.image, ref)) if t.image is not None else None
        oracle = oracle_ema if t.keep_ema else oracle_raw
        auto[t.name] = {
            "triggered_at": t.trigger,
            "chosen_iteration": t.chosen,
            "psnr": value,
            "oracle_psnr": oracle[0],
            "oracle_iteration": oracle[1],
            "gap_db": None if value is None else oracle[0] - value,
        }
    main = trackers[0]
    row = {
        "case": name,
        "task": "denoise",
        "sigma": 25,
        "noise_seed": args.noise_seed,
        "params": params(config, iterations, config.iterations, tuple(image.shape[-2:]))
        | {"stop_window": w, "stop_patience": p, "stop_alpha": config.stop_alpha},
        "seconds": fit["seconds"],
        "seconds_per_iteration": fit["seconds_per_iteration"],
        "psnr": {
            "noisy_input": float(psnr(noisy.unsqueeze(0), ref)),
            "fixed_count": float(psnr(fixed, ref)),
            "auto": auto[main.name]["psnr"],
            "oracle": oracle_ema[0],
        },
        "fixed_count_iteration": iterations,
        "auto": auto,
        "psnr_curve_every_10": {"raw": fit["raw"][9::10], "ema": fit["ema"][9::10]},
    }
    panels = [noisy.unsqueeze(0), fixed, main.image if main.image is not None else fixed, ref]
    save_side_by_side(panels, out_dir / f"{name}.png")
    return row


def sr_case(image: torch.Tensor, args, out_dir: Path) -> dict[str, Any]:
    config = preset("super-resolve", factor=4, output_channels=image.shape[0]).replace(seed=args.seed)
    iterations = min(config.iterations, args.iterations) if args.iterations else config.iterations
    low, high = downsample_reference(image, 4)
    problem = make_problem(config, low, reference=high)
    fit = run_fit(config, problem, iterations, [], "sr")
    result = fit["fitter"].output().cpu()
    ref, bicubic = high.unsqueeze(0), problem.corrupted_view().cpu()
    row = {
        "case": "sr",
        "task": "super-resolve",
        "factor": 4,
        "params": params(config, iterations, config.iterations, tuple(high.shape[-2:])),
        "seconds": fit["seconds"],
        "seconds_per_iteration": fit["seconds_per_iteration"],
        "psnr": {"bicubic": float(psnr(bicubic, ref)), "dip": float(psnr(result, ref))},
        "best_psnr_seen": best(fit["raw"]),
    }
    save_side_by_side([bicubic, result, ref], out_dir / "sr.png")
    return row


# --- the table -------------------------------------------------------------------------------------------------


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| case | size | iterations | baseline PSNR (dB) | DIP PSNR (dB) | notes | s/it |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        p, size = r["params"], f"{r['params']['width']}x{r['params']['height']} {r['params'].get('scaling', 'resized')}"
        its = f"{p['iterations_run']} of {p['preset_iterations']}"
        if r["task"] == "inpaint":
            base = (
                f"masked {r['psnr']['masked_input']:.2f} (hole {r['psnr_hole']['masked_input']:.2f}); "
                f"diffusion {r['psnr']['diffusion_fill']:.2f} (hole {r['psnr_hole']['diffusion_fill']:.2f})"
            )
            # known pixels pasted back: only the hole differs, so its PSNR follows from the hole PSNR
            composite = r["psnr_hole"]["dip"] - 10 * np.log10(r["hole_fraction"])
            dip = f"raw {r['psnr']['dip']:.2f}, known pixels kept {composite:.2f} (hole {r['psnr_hole']['dip']:.2f})"
            notes = f"hole {100 * r['hole_fraction']:.0f}% of pixels; best seen {r['best_psnr_seen'][0]:.2f} @ {r['best_psnr_seen'][1]}"
        elif r["task"] == "denoise":
            a = r["auto"]["wmv_ema"]
            base = f"noisy {r['psnr']['noisy_input']:.2f}"
            auto = "n/a" if a["psnr"] is None else f"{a['psnr']:.2f}"
            dip = (
                f"fixed@{r['fixed_count_iteration']} {r['psnr']['fixed_count']:.2f}; auto {auto}; "
                f"oracle {r['psnr']['oracle']:.2f}"
            )
            trig = "did not fire" if a["triggered_at"] is None else f"fired @ {a['triggered_at']}"
            gaps = ", ".join(
                f"{k} {v['gap_db']:.2f} dB (chose {v['chosen_iteration']}, "
                + ("no stop" if v["triggered_at"] is None else f"stop {v['triggered_at']}")
                + ")"
                for k, v in r["auto"].items()
                if v["gap_db"] is not None
            )
            notes = (
                f"auto ES-WMV on EMA chose {a['chosen_iteration']}, {trig}; oracle @ {a['oracle_iteration']}; "
                f"W={p['stop_window']} P={p['stop_patience']}; gaps: {gaps}"
            )
        else:
            base = f"bicubic {r['psnr']['bicubic']:.2f}"
            dip = f"{r['psnr']['dip']:.2f}"
            notes = f"x4; best seen {r['best_psnr_seen'][0]:.2f} @ {r['best_psnr_seen'][1]}"
        lines.append(f"| {r['case']} | {size} | {its} | {base} | {dip} | {notes} | {r['seconds_per_iteration']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data", type=Path, default=ROOT.parent / "shared" / "data", help="folder with the paper's images"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
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
    parser.add_argument("--noise-seed", type=int, default=0)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--quick", action="store_true", help=f"defaults for a run of minutes: {QUICK}")
    parser.add_argument("--table", nargs="+", type=Path, metavar="JSON", help="print the table of saved runs and exit")
    args = parser.parse_args(argv)
    if args.table:
        print(table([row for path in args.table for row in json.loads(path.read_text())["cases"]]))
        return 0
    if args.quick:
        for key, value in QUICK.items():
            if getattr(args, key) in (None, parser.get_default(key)):
                setattr(args, key, value)
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.data.is_dir():
        parser.error(f"data folder {args.data} not found (pass --data)")
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"quality benchmark: {vars(args)}, threads {torch.get_num_threads()}", flush=True)

    def sized(image: torch.Tensor, resample: int = Image.Resampling.LANCZOS) -> torch.Tensor:
        return fit_size(image, args.size, resample, crop_only=args.crop)

    rows = []
    for case in args.cases:
        t0 = time.perf_counter()
        if case == "kate":
            image = sized(load_image(args.data / "kate.png"))
            mask_image = load_image(args.data / "kate_mask.png")
            mask = (sized(mask_image, Image.Resampling.NEAREST)[0] > 0.5).float()
            rows.append(inpaint_case("kate", image, mask, args, args.out))
        elif case == "denoise":
            for name in args.denoise_images:
                label = "denoise" if name == "F16_GT.png" else f"denoise-{Path(name).stem}"
                rows.append(denoise_case(label, sized(load_image(args.data / name)), args, args.out))
        elif case == "sr":
            rows.append(sr_case(sized(load_image(args.data / "zebra_GT.png")), args, args.out))
        else:
            image = sized(load_image(args.data / args.extra_image))
            h, w = image.shape[-2:]
            mask = text_mask(h, w) if case == "text" else random_holes_mask(h, w, args.holes, seed=args.seed)
            rows.append(inpaint_case(case, image, mask, args, args.out))
        for row in rows:
            row["params"].setdefault(
                "scaling", "full size" if args.size is None else ("centre crop" if args.crop else "resized")
            )
        print(f"{case}: done in {time.perf_counter() - t0:.0f} s", flush=True)
        report = {
            "run": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "machine": platform.processor() or platform.machine(),
            "cases": rows,
        }
        (args.out / args.json).write_text(json.dumps(report, indent=2))  # rewritten after each case
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
