"""Speed of one fitting iteration per backend and precision, interleaved in one process (not a test).

For each net (the paper's inpainting and denoising nets) and size, every backend x precision variant gets its
own Fitter (same seed), is warmed up, and then the variants take turns one iteration at a time, so load from
other processes hits all of them alike. An iteration is what ``Fitter.iterate`` does: perturbation, forward,
degradation, loss, backward, backtracking, Adam, EMA. Prints a table and writes JSON to benchmarks/results/.

    python benchmarks/fit_speed.py --nets denoise --sizes 256 --backends eager,auto --precisions fp32
    python benchmarks/fit_speed.py --sizes 256,512 --iterations 3 --warmup 1           # all variants
    python benchmarks/fit_speed.py --memory ...       # adds each variant's peak memory (one child process each)
    python benchmarks/fit_speed.py --quality 300      # F16 sigma 25, 256 crop: PSNR of eager fp32 vs auto
    python benchmarks/fit_speed.py --variants eager/fp32,auto/fp32,auto-nchw/fp32   # the layout auto gives fp32

A variant is BACKEND/PRECISION; the backend may end in -nographs (no CUDA graphs), -nchw or -nhwc (the activations'
layout forced either way, whatever auto chose for this CPU) to time what one choice of the plan is worth.

Columns: ms/iter median and spread (min-max), speedup over eager fp32 of the same run, GFLOP/s from torch's
flop counter (convolutions and matmuls of one step), the fraction of this machine's measured fp32 and bf16
matmul peak, compile seconds (first step minus a steady step), and peak memory.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path[:0] = [] if __package__ else [str(Path(__file__).resolve().parents[1])]  # as `python benchmarks/X.py`

import torch

from benchmarks.common import DATA, RESULTS, centre_crop
from dip_compile import allocator
from dip_compile.acceleration import capability
from dip_compile.config import FitConfig
from dip_compile.fitting import Fitter
from dip_compile.imageio import load_image
from dip_compile.metrics import psnr
from dip_compile.presets import preset
from dip_compile.problem import Problem, add_noise, make_problem


def matmul_peak(dtype: torch.dtype, device: torch.device, seconds: float = 1.0, n: int | None = None) -> float:
    """Best GFLOP/s of square n x n matmuls: the hardware ceiling convolutions (im2col/GEMM-like) can approach. The
    default n on a CPU in bf16 (256) is the yardstick docs/fast.md's shares were first stated against; 2048 reaches
    about 2.6x more on the AMX Xeon (docs/fast.md, "Per iteration")."""
    n = n or (2048 if device.type == "cuda" else (1024 if dtype == torch.float32 else 256))
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    best, t_end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        t0 = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = max(best, 2 * n**3 / (time.perf_counter() - t0) / 1e9)
    return best


def make_case(net: str, size: int, device: torch.device, seed: int = 0) -> tuple[FitConfig, Problem]:
    """The paper preset on synthetic data of the given size (speed does not depend on the pixels)."""
    config = preset(net).replace(stop="fixed", seed=seed, device=str(device))
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(3, size, size, generator=g)
    mask = (torch.rand(size, size, generator=g) > 0.5).float() if net == "inpaint" else None
    return config, make_problem(config, image, mask=mask, reference=image.unsqueeze(0))


def step_flops(config: FitConfig, problem: Problem, device: torch.device) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    fitter = Fitter(config.replace(backend="eager", precision="fp32"), problem, device=device)
    with FlopCounterMode(display=False) as counter:
        fitter.iterate()
    return counter.get_total_flops()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


SUFFIXES: dict[str, dict[str, Any]] = {  # a backend's suffix: the change to auto's plan whose worth the variant times
    "-nographs": {"cuda_graphs": False},
    "-nchw": {"channels_last": False},
    "-nhwc": {"channels_last": True},
}


def variant_fitter(config: FitConfig, problem: Problem, device: torch.device, backend: str, precision: str) -> Fitter:
    """The Fitter of one variant; a backend ending in one of ``SUFFIXES`` gets that change to its plan."""
    suffix = next((s for s in SUFFIXES if backend.endswith(s)), "")
    plain = backend.removesuffix(suffix) if suffix else backend
    fitter = Fitter(config.replace(backend=plain, precision=precision), problem, device)
    if suffix:
        why = "; ".join(filter(None, (fitter.plan.reason, f"{suffix[1:]} forced by fit_speed")))
        fitter.plan = dataclasses.replace(fitter.plan, **SUFFIXES[suffix], reason=why)
        fitter.step = fitter.make_step()
    return fitter


def time_variants(
    config: FitConfig,
    problem: Problem,
    device: torch.device,
    variants: list[tuple[str, str]],
    warmup: int,
    iterations: int,
) -> dict[str, dict[str, Any]]:
    fitters: dict[str, Fitter] = {}
    rows: dict[str, dict[str, Any]] = {}
    for backend, precision in variants:
        name = f"{backend}/{precision}"
        fitter = variant_fitter(config, problem, device, backend, precision)
        sync(device)
        t0 = time.perf_counter()
        fitter.iterate()
        sync(device)
        first = time.perf_counter() - t0
        for _ in range(max(warmup - 1, 0)):
            fitter.iterate()
        sync(device)
        fitters[name] = fitter
        rows[name] = {
            "backend": backend,
            "precision": precision,
            "plan": fitter.plan.describe(),
            "first_step_s": first,
            "times_s": [],
        }
        print(f"  {name}: {fitter.plan.describe()}; first step {first:.1f} s", flush=True)
    for _ in range(iterations):
        for name, fitter in fitters.items():
            sync(device)
            t0 = time.perf_counter()
            loss, _ = fitter.iterate()
            sync(device)
            rows[name]["times_s"].append(time.perf_counter() - t0)
            rows[name]["loss_after"] = float(loss)  # same seeds: variants should agree closely
    for name in fitters:
        row = rows[name]
        row["median_ms"] = 1000 * statistics.median(row["times_s"])
        row["min_ms"], row["max_ms"] = 1000 * min(row["times_s"]), 1000 * max(row["times_s"])
        row["compile_s"] = max(row["first_step_s"] - row["median_ms"] / 1000, 0.0)
    return rows


def child_peak_memory(net: str, size: int, backend: str, precision: str, iterations: int) -> float:
    """Peak resident memory (MiB) of a fresh process that runs the variant (imports and data included)."""
    cmd = [sys.executable, __file__, "--child", f"{net},{size},{backend},{precision},{iterations}"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
    return float(out)


def child(spec: str) -> None:
    net, size, backend, precision, iterations = spec.split(",")
    device = torch.device("cpu")
    config, problem = make_case(net, int(size), device)
    fitter = variant_fitter(config, problem, device, backend, precision)
    for _ in range(int(iterations)):
        fitter.iterate()
    print((allocator.peak_rss() or 0) / 2**20)  # this process's own peak (ru_maxrss keeps the parent's)


def cuda_peak_memory(
    config: FitConfig, problem: Problem, device: torch.device, backend: str, precision: str, iterations: int
) -> float:
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fitter = variant_fitter(config, problem, device, backend, precision)
    for _ in range(iterations):
        fitter.iterate()
    sync(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2**20


def quality(iterations: int, device: torch.device, size: int = 256) -> dict[str, Any]:
    """F16 at sigma 25, centre crop: PSNR to the clean crop after the same iterations, eager fp32 vs auto."""
    clean = centre_crop(load_image(DATA / "F16_GT.png"), size)
    noisy = add_noise(clean, 25 / 255, seed=0)
    out: dict[str, Any] = {"image": "F16_GT.png", "crop": size, "sigma": 25, "iterations": iterations}
    for backend, precision in (("eager", "fp32"), ("auto", "auto")):
        config = preset("denoise").replace(
            iterations=iterations,
            stop="fixed",
            backend=backend,
            precision=precision,
            log_every=max(iterations // 10, 1),
        )
        problem = make_problem(config, noisy, reference=clean.unsqueeze(0))
        fitter = Fitter(config, problem, device=device)
        result = fitter.run()
        assert problem.reference is not None
        ref = problem.reference.cpu()
        key = f"{backend}/{precision}"
        out[key] = {
            "plan": result.plan,
            "psnr_output": float(psnr(fitter.output().cpu(), ref)),
            "psnr_returned": float(psnr(result.image, ref)),
            "image_source": result.image_source,
            "iterations_per_second": result.iterations_per_second,
            "first_step_seconds": result.first_step_seconds,
        }
        print(
            f"  {key}: {result.plan}; PSNR output {out[key]['psnr_output']:.3f} dB, "
            f"returned ({result.image_source}) {out[key]['psnr_returned']:.3f} dB",
            flush=True,
        )
    a, b = out["eager/fp32"], out["auto/auto"]
    out["psnr_difference_db"] = b["psnr_returned"] - a["psnr_returned"]
    out["psnr_output_difference_db"] = b["psnr_output"] - a["psnr_output"]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nets", default="inpaint,denoise")
    parser.add_argument("--sizes", default="256,512")
    parser.add_argument("--backends", default="eager,inductor,auto")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--variants", help="BACKEND/PRECISION list instead of --backends x --precisions")
    parser.add_argument("--iterations", type=int, default=5, help="timed iterations per variant")
    parser.add_argument("--warmup", type=int, default=2, help="untimed iterations per variant (the first compiles)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--memory", action="store_true", help="measure peak memory (child process per variant)")
    parser.add_argument("--quality", type=int, default=0, help="iterations of the F16 PSNR check (0 = skip)")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--no-extras", action="store_true", help="no EMA, no backtracking: the step and Adam alone")
    parser.add_argument("--out", type=Path, default=RESULTS / "fit_speed.json")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        child(args.child)
        return 0
    from rich.console import Console
    from rich.table import Table

    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else ("cpu" if args.device == "auto" else args.device)
    )
    cap = capability(device)
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    peaks = {"fp32": matmul_peak(torch.float32, device), "bf16": matmul_peak(torch.bfloat16, device)}
    report: dict[str, Any] = {
        "device": str(device),
        "capability": cap.__dict__,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "loadavg_at_start": load,
        "matmul_peak_gflops": peaks,
        "warmup": args.warmup,
        "iterations": args.iterations,
        "cases": [],
    }
    print(
        f"{device} {cap.isa}, {torch.get_num_threads()} threads, load {' '.join(load)}; matmul peak "
        f"fp32 {peaks['fp32']:.1f} GFLOP/s, bf16 {peaks['bf16']:.1f} GFLOP/s",
        flush=True,
    )
    variants = [
        (b, p)
        for b in args.backends.split(",")
        for p in args.precisions.split(",")
        if not (b == "auto") or p == args.precisions.split(",")[0]
    ]
    variants = [("auto", "auto") if b == "auto" else (b, p) for b, p in variants]
    if args.variants:
        variants = [(b, p) for b, _, p in (v.partition("/") for v in args.variants.split(","))]
    if ("eager", "fp32") not in variants:
        variants.insert(0, ("eager", "fp32"))
    console = Console(width=200)
    for net in [] if args.skip_speed else args.nets.split(","):
        for size in map(int, args.sizes.split(",")):
            config, problem = make_case(net, size, device)
            if args.no_extras:
                config = config.replace(ema=None, backtrack_db=None)
            print(f"{net} {size}x{size}{' (no EMA, no backtracking)' if args.no_extras else ''}:", flush=True)
            flops = step_flops(config, problem, device)
            rows = time_variants(config, problem, device, variants, args.warmup, args.iterations)
            base = rows["eager/fp32"]["median_ms"]
            table = Table(title=f"{net} net, {size}x{size}, {device} ({cap.isa}), {flops / 1e9:.1f} GFLOP/iter")
            for col in (
                "variant",
                "plan",
                "ms/iter (min-max)",
                "speedup",
                "GFLOP/s",
                "% fp32 peak",
                "% bf16 peak",
                "compile s",
                "peak MiB",
            ):
                table.add_column(col)
            for name, row in rows.items():
                row["speedup"] = base / row["median_ms"]
                row["gflops"] = flops / 1e9 / (row["median_ms"] / 1000)
                row["fraction_fp32_peak"] = row["gflops"] / peaks["fp32"]
                row["fraction_bf16_peak"] = row["gflops"] / peaks["bf16"]
                if args.memory:
                    b, p = row["backend"], row["precision"]
                    row["peak_mib"] = (
                        cuda_peak_memory(config, problem, device, b, p, 2)
                        if device.type == "cuda"
                        else child_peak_memory(net, size, b, p, 2)
                    )
                table.add_row(
                    name,
                    row["plan"].split(":")[0],
                    f"{row['median_ms']:.0f} ({row['min_ms']:.0f}-{row['max_ms']:.0f})",
                    f"{row['speedup']:.2f}x",
                    f"{row['gflops']:.1f}",
                    f"{100 * row['fraction_fp32_peak']:.0f}%",
                    f"{100 * row['fraction_bf16_peak']:.0f}%",
                    f"{row['compile_s']:.1f}",
                    f"{row['peak_mib']:.0f}" if "peak_mib" in row else "-",
                )
            console.print(table)
            report["cases"].append({"net": net, "size": size, "gflop_per_iteration": flops / 1e9, "variants": rows})
    if args.quality:
        print(f"quality: F16 sigma 25, 256x256 crop, {args.quality} iterations", flush=True)
        report["quality"] = quality(args.quality, device)
        print(f"  PSNR difference auto - eager fp32: {report['quality']['psnr_difference_db']:+.3f} dB")
    with open("/proc/loadavg") as f:
        report["loadavg_at_end"] = f.read().split()[:3]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
