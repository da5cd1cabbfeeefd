"""When is the restored image ready? ``dipc fit`` against the paper's loop, in wall-clock seconds (not a test).

For each case (image, noise) on a centre square of ``--size``, in the same run, one after the other:

* ``dipc fit denoise`` with its defaults (auto precision and backend, auto-stop), run as a user runs it (a
  subprocess, timed from start to exit: the image is on disk at exit). Its report's history gives when each EMA
  PSNR was reached (fitting seconds), so also when the fit first came within 0.5 and 0.1 dB of the best PSNR it
  ever reached.
* the reference: the loop the paper describes, written here from its text, not from this package's fitting code:
  the same network and fixed noise input, eager fp32, Adam (lr 0.01), the input perturbed by N(0, 1/30) noise each
  iteration, the preset's fixed iteration count, EMA 0.99 of the outputs, and backtracking (weights restored when
  the PSNR to the observation drops by more than 5 dB). Its EMA PSNR is read every 10 iterations.

Reported per case: when dipc's output file first held an image within 0.5 (and 0.1) dB of the best PSNR its fit
ever reached (the file is polled while it runs: auto-stop writes its current choice), when the run ended, the PSNR
returned; when the reference's EMA first reached that same quality (best - 0.5 dB); and their ratio: how many times
sooner dipc's image is on disk.
Prints a table, writes ``time_to_quality.json``.

    python benchmarks/time_to_quality.py --size 256 --images F16_GT.png --noises gaussian:25
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path[:0] = [] if __package__ else [str(Path(__file__).resolve().parents[1])]  # as `python benchmarks/X.py`

import torch

from benchmarks.common import RESULTS, Results, case_image, dipc, fit_size, markdown, study_parser
from dip_compile.errors import DipError
from dip_compile.imageio import load_image, save_image
from dip_compile.metrics import psnr
from dip_compile.network import build_network, make_input
from dip_compile.noise import parse_noise
from dip_compile.presets import preset


def first_time(seconds: list[float], values: list[float], target: float) -> float | None:
    return next((s for s, v in zip(seconds, values, strict=True) if v >= target), None)


def run_dipc(noisy: Path, clean: Path, work: Path, options: list[str]) -> dict[str, Any]:
    """Runs ``dipc fit`` as a user does and watches its output file: while it fits, auto-stop writes the image it
    would return (at most every 10 s) whenever the variance reaches a new minimum, so each version's PSNR and the
    second it appeared on disk are recorded."""
    out, report = work / "dipc.png", work / "dipc.json"
    command = dipc("fit", "denoise", str(noisy), "-o", str(out))
    command += ["--reference", str(clean), "--report", str(report), "--force", "-q", *options]
    reference = load_image(clean)
    on_disk: list[tuple[float, float]] = []
    seen = None

    def look() -> None:
        nonlocal seen
        try:
            stamp = out.stat().st_mtime_ns
            if stamp != seen:
                image = load_image(out)
                seen = stamp
                on_disk.append((time.perf_counter() - started, psnr(image, reference).item()))
        except (OSError, DipError):
            pass  # not there yet

    started = time.perf_counter()
    process = subprocess.Popen(command)
    while process.poll() is None:
        look()
        time.sleep(0.5)
    total = time.perf_counter() - started
    if process.returncode:
        raise SystemExit(f"dipc fit failed with exit code {process.returncode}")
    look()
    data = json.loads(report.read_text())
    history = data["history"]
    ema, seconds = history["psnr_reference_ema"], history["seconds"]
    best = max(ema)
    disk_seconds, disk_psnr = [t for t, _ in on_disk], [p for _, p in on_disk]
    return {
        "total_seconds": total,
        "psnr": data["final_psnr"],
        "best_psnr": best,
        "iterations": data["iterations"],
        "chosen_iteration": data["chosen_iteration"],
        "on_disk": on_disk,
        # the first second an image within 0.5 / 0.1 dB of the best PSNR the fit ever reached was on disk
        "within_0.5_seconds": first_time(disk_seconds, disk_psnr, best - 0.5),
        "within_0.1_seconds": first_time(disk_seconds, disk_psnr, best - 0.1),
        # when the fit's EMA first got there (fitting seconds, from the report's history)
        "fit_within_0.5_seconds": first_time(seconds, ema, best - 0.5),
    }


REFERENCE_EVERY = 10  # the reference loop's EMA PSNR is read every this many iterations


def run_reference(noisy: torch.Tensor, clean: torch.Tensor, iterations: int, seed: int = 0) -> dict[str, Any]:
    """The paper's loop, plainly: returns its EMA PSNR every 10 iterations with the seconds since it started."""
    started = time.perf_counter()
    config = preset("denoise")
    torch.manual_seed(seed)
    net = build_network(config.net)
    h, w = noisy.shape[-2:]
    net_input = make_input(config.net, h, w, seed=seed)
    observation = noisy.unsqueeze(0)
    optimizer = torch.optim.Adam(net.parameters(), lr=0.01)
    ema: torch.Tensor | None = None
    last_psnr, saved = float("-inf"), [p.detach().clone() for p in net.parameters()]
    seconds, values = [], []
    for i in range(iterations):
        optimizer.zero_grad()
        out = net(net_input + torch.randn_like(net_input) / 30)
        loss = torch.nn.functional.mse_loss(out, observation)
        loss.backward()
        now = psnr(out.detach(), observation).item()
        if last_psnr - now > 5:  # backtrack: the last good weights, and skip this step
            with torch.no_grad():
                for p, s in zip(net.parameters(), saved, strict=True):
                    p.copy_(s)
            continue
        saved = [p.detach().clone() for p in net.parameters()]
        last_psnr = now
        optimizer.step()
        ema = out.detach() if ema is None else ema * 0.99 + out.detach() * 0.01
        if (i + 1) % REFERENCE_EVERY == 0:
            seconds.append(time.perf_counter() - started)
            values.append(psnr(ema[0], clean).item())
    return {"seconds": seconds, "psnr_ema": values, "total_seconds": time.perf_counter() - started}


def main(argv: list[str] | None = None) -> int:
    parser = study_parser(__doc__, RESULTS / "time_to_quality", threads=False, images=["F16_GT.png"], size=256)
    parser.add_argument("--noises", nargs="+", default=["gaussian:25"])
    parser.add_argument("--iterations", type=int, help="the reference's count (default: the preset's)")
    parser.add_argument("--options", default="", help="more dipc fit options, one string")
    parser.add_argument("--skip-reference", action="store_true", help="time dipc only")
    args = parser.parse_args(argv)
    iterations = args.iterations or preset("denoise").iterations
    if iterations < REFERENCE_EVERY:
        parser.error(f"--iterations {iterations}: the reference loop records its PSNR every {REFERENCE_EVERY}")
    results = Results(args.out / "time_to_quality.json", "cases")
    for name in args.images:
        clean = fit_size(case_image(args.data, name), args.size)
        for spec in args.noises:
            noisy = parse_noise(spec).apply(clean, seed=0)
            with tempfile.TemporaryDirectory() as tmp:
                work = Path(tmp)
                save_image(clean, work / "clean.png")
                save_image(noisy.clamp(0, 1), work / "noisy.png")
                noisy = load_image(work / "noisy.png")  # both fit the very same (8-bit) observation
                print(f"{name} {spec}: dipc fit ...", flush=True)
                dipc_run = run_dipc(work / "noisy.png", work / "clean.png", work, args.options.split())
            row: dict[str, Any] = {"image": name, "noise": spec, "size": args.size, "dipc": dipc_run}
            if not args.skip_reference:
                print(f"{name} {spec}: reference loop, {iterations} iterations ...", flush=True)
                ref = run_reference(noisy, clean, iterations)
                target = dipc_run["best_psnr"] - 0.5  # the quality of dipc's first good-enough image on disk
                reached = first_time(ref["seconds"], ref["psnr_ema"], target)
                row["reference"] = {
                    "total_seconds": ref["total_seconds"],
                    "best_psnr": max(ref["psnr_ema"]),
                    "seconds_to_target": reached,
                    "curve": list(zip(ref["seconds"], ref["psnr_ema"], strict=True)),
                }
                ready = dipc_run["within_0.5_seconds"]
                row["sooner"] = None if reached is None or ready is None else reached / ready
            results.add(row)
    print(table(results.rows))
    return 0


def table(rows: list[dict[str, Any]]) -> str:
    head = ["case", "dipc: image within 0.5 dB of its best on disk at", "within 0.1 dB at", "run ends at",
            "returned PSNR", "best seen", "reference: that PSNR at", "reference best", "sooner"]  # fmt: skip

    def sec(value: float | None) -> str:
        return "never" if value is None else f"{value:.0f} s"

    def cells(r: dict[str, Any]) -> list[str]:
        d, ref = r["dipc"], r.get("reference")
        mine = [f"{r['image']} {r['noise']} {r['size']} px", sec(d["within_0.5_seconds"]),
                sec(d["within_0.1_seconds"]), f"{d['total_seconds']:.0f} s", f"{d['psnr']:.2f}", f"{d['best_psnr']:.2f}"]  # fmt: skip
        if not ref:
            return [*mine, "-", "-", "-"]
        sooner = f"{r['sooner']:.2f}x" if r.get("sooner") else "-"
        return [*mine, sec(ref["seconds_to_target"]), f"{ref['best_psnr']:.2f}", sooner]

    return markdown(head, map(cells, rows))


if __name__ == "__main__":
    sys.exit(main())
