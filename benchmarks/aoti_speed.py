"""Would an AOTInductor package regenerate faster than the ONNX file? (not a test; the answer decides --format aoti)

Exports a checkpoint's inference module (``--image output``, frozen BatchNorm) with ``torch.export`` and
``torch._inductor.aoti_compile_and_package``, and as ONNX; then times, interleaved, the AOTI package, ONNX Runtime
(CPU, empty feed) and the torch inference module in eager mode. Writes JSON to benchmarks/results/aoti_speed.json.

    python benchmarks/export_speed.py --nets inpaint --size 512     # leaves benchmarks/results/export_inpaint_512.ckpt
    python benchmarks/aoti_speed.py benchmarks/results/export_inpaint_512.ckpt
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from dip_compile import exporters
from dip_compile.checkpoint import load_checkpoint
from dip_compile.replay import regenerate as replay

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    plan = exporters.plan_export(load_checkpoint(args.checkpoint), image="output")
    folder = Path(tempfile.mkdtemp())
    t0 = time.perf_counter()
    package = torch._inductor.aoti_compile_and_package(
        torch.export.export(plan.module, (plan.noise,)), package_path=str(folder / "model.pt2")
    )
    compile_s = time.perf_counter() - t0
    aoti = torch._inductor.aoti_load_package(package)
    exporters.write_onnx(plan, folder / "model.onnx")
    session, _ = replay.open_session(folder / "model.onnx", "cpu")

    def run_aoti() -> torch.Tensor:
        with torch.no_grad():
            return aoti(plan.noise)

    def run_eager() -> object:
        with torch.no_grad():
            return plan.module(plan.noise)

    runners = {"aoti": run_aoti, "onnxruntime": lambda: replay.run(session), "torch eager (frozen BN)": run_eager}
    exact = exporters.agreement(run_aoti(), plan.target)
    for fn in runners.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(args.repeats):
        for name, fn in runners.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    result = {
        "checkpoint": str(args.checkpoint),
        "aoti_compile_s": compile_s,
        "aoti_exactness": exact,
        "median_s": {name: statistics.median(ts) for name, ts in times.items()},
        "min_s": {name: min(ts) for name, ts in times.items()},
    }
    print(json.dumps(result, indent=2))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "aoti_speed.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
