"""How close ``network.fit_bytes`` (the pre-flight memory estimate of ``dipc fit``) comes to the real peak (not a test).

For each net (the paper's denoising and kate inpainting nets) and size, a child process fits 2 iterations of the
preset (eager fp32) on a random image and reports its peak RSS minus the RSS before the fit; the table puts the
estimate beside it. Prints a table and writes JSON to benchmarks/results/memory_estimate.json.

    python benchmarks/memory_estimate.py --nets denoise,inpaint --sizes 128,256
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"


def measure(net: str, size: int) -> dict[str, Any]:
    """In this (child) process: the fit's peak RSS growth and the estimate, in bytes."""
    import torch

    from dip_compile.fitting import Fitter
    from dip_compile.network import fit_bytes
    from dip_compile.presets import preset
    from dip_compile.problem import make_problem

    torch.set_num_threads(2)
    config = preset(net).replace(iterations=2, stop="fixed", backend="eager", precision="fp32")
    image = torch.rand(3, size, size, generator=torch.Generator().manual_seed(0))
    mask = {"mask": torch.ones(size, size)} if net == "inpaint" else {}
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    problem = make_problem(config, image, **mask)
    Fitter(config, problem).run()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {
        "net": net,
        "size": size,
        "measured_bytes": peak - before,
        "estimate_bytes": fit_bytes(config.net, problem.canvas),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nets", default="denoise,inpaint")
    parser.add_argument("--sizes", default="128,256")
    parser.add_argument("--child", nargs=2, metavar=("NET", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child[0], int(args.child[1]))))
        return
    rows = []
    for net in args.nets.split(","):
        for size in map(int, args.sizes.split(",")):
            done = subprocess.run(
                [sys.executable, __file__, "--child", net, str(size)], capture_output=True, text=True, check=True
            )
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    from rich.console import Console
    from rich.table import Table

    table = Table(title="fit_bytes estimate vs measured peak RSS growth (2 iterations, eager fp32)")
    for col in ("net", "size", "measured MiB", "estimate MiB", "estimate / measured"):
        table.add_column(col, justify="right")
    for r in rows:
        m, e = r["measured_bytes"] / 2**20, r["estimate_bytes"] / 2**20
        table.add_row(r["net"], str(r["size"]), f"{m:.0f}", f"{e:.0f}", f"{e / m:.2f}")
    Console().print(table)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "memory_estimate.json").write_text(json.dumps(rows, indent=2))
    print(f"wrote {RESULTS / 'memory_estimate.json'}")


if __name__ == "__main__":
    main()
