"""Peak memory and time per iteration of a fit, beside the pre-flight estimate of ``dipc fit`` (not a test).

For each net (the paper's denoising and kate inpainting nets), size, precision, ``--save-memory`` setting and
allocator setting (``--kept``: freed memory kept after the first step, as fits do where memory allows, or glibc's
own throughout), a child process fits ``--iterations`` iterations of the preset (eager, fixed stop) on a random
image and reports its peak RSS minus the RSS before the fit and the seconds per iteration after the first; the
table puts ``estimate.estimate`` beside them. Prints a table and writes JSON to
benchmarks/results/memory_estimate.json.

``--fit JSON...`` fits the estimate's constants to measured rows and prints them beside the values in use (the rows
must come from this version, which records the parts and the allocator setting): ``estimate.KEEP`` per precision
(reduced or not), ``--save-memory`` setting and allocator setting, and ``estimate.OVERHEAD_BYTES`` per allocator
setting, by least squares, peak - state - images = KEEP[reduced, save, kept] * activations + overhead[kept]; and
``allocator.GROWTH``, the largest ratio of a row's peak with freed memory kept to the same case's without.

    python benchmarks/memory_estimate.py --nets denoise,inpaint --sizes 256,512 --precisions fp32,bf16 --kept both
    python benchmarks/memory_estimate.py --fit benchmarks/results/memory_estimate.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path[:0] = [] if __package__ else [str(Path(__file__).resolve().parents[1])]  # as `python benchmarks/X.py`

from benchmarks.common import RESULTS, ROOT, markdown, study_parser, write_json


def measure(net: str, size: int, precision: str, save_memory: bool, kept: bool, iterations: int) -> dict[str, Any]:
    """In this (child) process: the fit's peak RSS growth and seconds per iteration, and the estimate."""
    import dataclasses

    import torch

    from dip_compile import allocator
    from dip_compile.estimate import estimate, probe_seconds
    from dip_compile.fitting import Fitter
    from dip_compile.presets import preset
    from dip_compile.problem import make_problem

    torch.set_num_threads(2)
    config = preset(net).replace(
        iterations=iterations,
        stop="fixed",
        backend="auto" if precision == "auto" else "eager",
        precision=precision,
        save_memory=save_memory,
    )
    image = torch.rand(3, size, size, generator=torch.Generator().manual_seed(0))
    mask = {"mask": torch.ones(size, size)} if net == "inpaint" else {}
    before = allocator.peak_rss() or 0  # this process's own (ru_maxrss would keep its parent's across exec)
    problem = make_problem(config, image, **mask)
    fitter = Fitter(config, problem)
    fitter.plan = dataclasses.replace(fitter.plan, kept_memory=kept and fitter.plan.kept_memory)
    result = fitter.run()
    peak = allocator.peak_rss() or 0
    guess = estimate(config, problem.canvas, image.shape[0], "cpu")
    probe = probe_seconds(config, problem.canvas, image.shape[0], "cpu")
    return {
        "net": net,
        "size": size,
        "precision": str(fitter.plan.precision),
        "save_memory": save_memory,
        "kept_memory": fitter.plan.kept_memory,
        "measured_bytes": peak - before,
        "estimate_bytes": guess.peak_bytes,
        "estimate_base_bytes": guess.base_bytes,
        "activation_bytes": guess.activation_bytes,
        "state_bytes": guess.state_bytes,
        "image_bytes": guess.image_bytes,
        "seconds_per_iteration": (result.fit_seconds - result.first_step_seconds) / max(1, iterations - 1),
        "estimate_seconds": probe,
    }


def fit_constants(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Least squares, for each allocator setting apart: measured - state - images = KEEP[reduced, save, kept] *
    activations + overhead (one factor per precision kind and --save-memory setting, one overhead per setting); and
    the growth, the largest ratio of a case's peak with freed memory kept to its peak without."""
    import numpy as np

    missing = [r for r in rows if "activation_bytes" not in r or "kept_memory" not in r]
    if missing:
        raise SystemExit(f"{len(missing)} rows lack activation_bytes or kept_memory: measure them with this version")
    pairs = [(reduced, save) for reduced in (False, True) for save in (False, True)]
    keep: dict[tuple[bool, bool, bool], float] = {}
    overhead: dict[bool, float] = {}
    for kept in (False, True):
        chosen = [r for r in rows if bool(r["kept_memory"]) == kept]
        if not chosen:
            continue
        design = np.array(
            [[r["activation_bytes"] * ((r["precision"] != "fp32", bool(r["save_memory"])) == k) for k in pairs] + [1.0]
             for r in chosen]
        )  # fmt: skip
        target = np.array([r["measured_bytes"] - r["state_bytes"] - r["image_bytes"] for r in chosen], dtype=float)
        solution, *_ = np.linalg.lstsq(design, target, rcond=None)
        keep.update({(*k, kept): float(v) for k, v in zip(pairs, solution[:4], strict=True)})
        overhead[kept] = float(solution[4]) / 2**20
    case = ("net", "size", "precision", "save_memory")
    glibc = {tuple(r[c] for c in case): r["measured_bytes"] for r in rows if not r["kept_memory"]}
    growth = [
        r["measured_bytes"] / glibc[k] for r in rows if r["kept_memory"] and (k := tuple(r[c] for c in case)) in glibc
    ]
    return {"keep": keep, "overhead_mib": overhead, "growth": max(growth, default=float("nan"))}


def main(argv: list[str] | None = None) -> int:
    parser = study_parser(__doc__, data=False, threads=False)
    parser.add_argument("--nets", default="denoise")
    parser.add_argument("--sizes", default="256,512,1024")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--save-memory", choices=("off", "on", "both"), default="both")
    parser.add_argument(
        "--kept", choices=("off", "on", "both"), default="both", help="freed memory kept (allocator.py)"
    )
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    parser.add_argument("--fit", nargs="+", type=Path, metavar="JSON", help="fit the constants to saved rows and exit")
    args = parser.parse_args(argv)
    if args.fit:
        from dip_compile.allocator import GROWTH
        from dip_compile.estimate import KEEP, OVERHEAD_BYTES

        fitted = fit_constants([row for path in args.fit for row in json.loads(path.read_text())])
        keep = ", ".join(f"{k}: {v:.2f}" for k, v in fitted["keep"].items())
        print(f"KEEP = {{{keep}}} (in use: {KEEP})")
        overhead = ", ".join(f"{k}: {v:.0f} MiB" for k, v in fitted["overhead_mib"].items())
        print(f"OVERHEAD_BYTES = {{{overhead}}} (in use: {OVERHEAD_BYTES})")
        print(f"GROWTH = {fitted['growth']:.2f} (in use: {GROWTH})")
        return 0
    if args.child:
        net, size, precision, save, kept = args.child
        print(json.dumps(measure(net, int(size), precision, save == "on", kept == "on", args.iterations)))
        return 0
    saves = ["off", "on"] if args.save_memory == "both" else [args.save_memory]
    keeps = ["off", "on"] if args.kept == "both" else [args.kept]
    rows = []
    for net in args.nets.split(","):
        for size in map(int, args.sizes.split(",")):
            for precision in args.precisions.split(","):
                for save, kept in itertools.product(saves, keeps):
                    command = [sys.executable, "-m", "benchmarks.memory_estimate", "--iterations", str(args.iterations)]
                    command += ["--child", net, str(size), precision, save, kept]
                    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
                    if done.returncode:
                        print(f"{net} {size} {precision} save-memory {save} kept {kept}: failed\n{done.stderr[-2000:]}")
                        continue
                    rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
                    print(json.dumps(rows[-1]), flush=True)
    print(f"estimate vs measured peak RSS growth and s/iteration ({args.iterations} iterations, eager)")
    head = ["net", "size", "precision", "save", "kept", "MiB", "est. MiB", "est/meas", "s/it", "est. s/it", "est/meas"]
    lines = []
    for r in rows:
        m, e = r["measured_bytes"] / 2**20, r["estimate_bytes"] / 2**20
        s, es = r["seconds_per_iteration"], r["estimate_seconds"]
        save, kept = ("on" if r[k] else "off" for k in ("save_memory", "kept_memory"))
        lines.append([r["net"], r["size"], r["precision"], save, kept, f"{m:.0f}", f"{e:.0f}", f"{e / m:.2f}", f"{s:.2f}",
                      f"{es:.2f}", f"{es / s:.2f}"])  # fmt: skip
    print(markdown(head, lines))
    write_json(RESULTS / "memory_estimate.json", rows)
    print(f"wrote {RESULTS / 'memory_estimate.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
