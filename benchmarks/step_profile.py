"""Where one fitting iteration's time goes: torch.profiler over steady iterations of a preset's step (not a test).

Groups the CPU time of the profiled operators into what the step is made of (convolutions forward and backward,
BatchNorm, LeakyReLU, padding, upsampling, concatenation, layout and dtype conversions, Adam, EMA, the loss and the
auto-stop statistics) and prints ms per iteration and the share of the step, beside the step's GFLOP/s and the
share of this machine's measured matmul peak (as fit_speed.py). Run it ALONE: nothing else computing.

    python -m benchmarks.step_profile --net denoise --size 512 --iterations 6
    python -m benchmarks.step_profile --net denoise --size 512 --channels 32     # denoising's --fast network
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Optional

sys.path[:0] = [] if __package__ else [str(Path(__file__).resolve().parents[1])]  # as `python benchmarks/X.py`

import torch

from benchmarks.common import RESULTS
from benchmarks.fit_speed import make_case, matmul_peak, step_flops
from dip_compile.acceleration import capability
from dip_compile.allocator import freed_memory_kept
from dip_compile.fitting import Fitter

# (category, pattern over the operator's name), first match wins: the top-level aten ops the step launches.
CATEGORIES: tuple[tuple[str, str], ...] = (
    ("conv backward", r"convolution_backward|mkldnn_convolution_backward"),
    ("conv forward", r"aten::(_?convolution|mkldnn_convolution|conv2d)$"),
    ("batchnorm", r"batch_norm"),
    ("leaky relu", r"leaky_relu"),
    ("padding", r"pad"),
    ("upsampling", r"upsample|interpolate"),
    ("concatenation", r"aten::cat"),
    ("optimizer (Adam)", r"_fused_adam|adam|_foreach_(addcdiv|addcmul|sqrt|lerp|mul|add|div)"),
    ("layout / dtype copies", r"aten::(copy_|to|_to_copy|contiguous|clone|empty_like)$"),
    ("input noise", r"aten::normal_"),  # the regularisation noise drawn each step (before "norm" below takes it)
    ("loss and statistics", r"mse|mean|sum|var|sub|pow|norm"),
)


def category(name: str) -> str:
    return next((c for c, pattern in CATEGORIES if re.search(pattern, name)), "other")


def profile_step(fitter: Fitter, iterations: int) -> tuple[dict[str, float], list[tuple[str, float]], float]:
    """ms per iteration by category, the top operators (self CPU ms per iteration) and the wall ms per iteration."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        for _ in range(iterations):
            fitter.iterate()
        wall = (time.perf_counter() - t0) * 1000 / iterations
    by_category: dict[str, float] = {}
    ops = []
    for event in prof.key_averages():
        ms = event.self_cpu_time_total / 1000 / iterations
        by_category[category(event.key)] = by_category.get(category(event.key), 0.0) + ms
        ops.append((event.key, ms))
    ops.sort(key=lambda item: -item[1])
    return dict(sorted(by_category.items(), key=lambda item: -item[1])), ops[:15], wall


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--net", default="denoise", help="a task whose default preset is profiled")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--channels", type=int, help="channels per level (32: the --fast network of denoising)")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument(
        "--system-malloc", action="store_true", help="glibc's own settings (the step before allocator.py)"
    )
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS / "step_profile.json")
    args = parser.parse_args(argv)

    device = torch.device("cpu")
    config, problem = make_case(args.net, args.size, device)
    if args.channels:
        levels = (args.channels,) * config.net.depth
        config = config.replace(net=dataclasses.replace(config.net, channels_down=levels, channels_up=levels))
    config = config.replace(precision=args.precision, backend=args.backend)
    flops = step_flops(config, problem, device)
    fitter = Fitter(config, problem, device=device)
    if args.system_malloc:
        fitter.plan = dataclasses.replace(fitter.plan, kept_memory=False)
    with freed_memory_kept(fitter.plan.kept_memory):
        return report(args, fitter, flops)


def report(args: argparse.Namespace, fitter: Fitter, flops: int) -> int:
    for _ in range(args.warmup):
        fitter.iterate()
    unprofiled = []
    for _ in range(args.iterations):
        t0 = time.perf_counter()
        fitter.iterate()
        unprofiled.append(1000 * (time.perf_counter() - t0))
    steady = statistics.median(unprofiled)
    by_category, ops, wall = profile_step(fitter, args.iterations)
    bf16 = fitter.plan.describe().find("bf16") >= 0
    peak = matmul_peak(torch.bfloat16 if bf16 else torch.float32, fitter.device)
    large_peak = matmul_peak(torch.bfloat16 if bf16 else torch.float32, fitter.device, n=2048)
    gflops = flops / (steady / 1000) / 1e9
    total = sum(by_category.values())
    print(f"{args.net} net at {args.size} px: {fitter.plan.describe()}; {capability(fitter.device)}")
    print(f"{steady:.0f} ms per iteration (median of {args.iterations}; {wall:.0f} profiled), {flops / 1e9:.0f} GFLOP, {gflops:.0f} GFLOP/s = "
          f"{100 * gflops / peak:.0f}% of the measured {'bf16' if bf16 else 'fp32'} matmul peak ({peak:.0f} GFLOP/s), "
          f"{100 * gflops / large_peak:.0f}% of 2048x2048 matmuls' ({large_peak:.0f} GFLOP/s)")  # fmt: skip
    print("\n| part of the step | ms per iteration | share |\n|---|---|---|")
    for name, ms in by_category.items():
        print(f"| {name} | {ms:.1f} | {100 * ms / total:.0f}% |")
    print("\ntop operators (self CPU ms per iteration):")
    for name, ms in ops:
        print(f"  {ms:8.1f}  {name}")
    record: dict[str, Any] = {
        "net": args.net,
        "size": args.size,
        "channels": args.channels,
        "plan": fitter.plan.describe(),
        "capability": str(capability(fitter.device)),
        "ms_per_iteration": steady,
        "ms_per_iteration_profiled": wall,
        "gflop": flops / 1e9,
        "peak_gflops": peak,
        "share_of_peak": gflops / peak,
        "peak_2048_gflops": large_peak,
        "share_of_peak_2048": gflops / large_peak,
        "by_category_ms": by_category,
        "top_ops_ms": ops,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
