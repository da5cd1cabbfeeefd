"""Exported networks: exactness, file size, and regeneration time with ONNX Runtime vs torch eager (not a test).

For the paper's kate inpainting net and F16 denoising net at 512x512, fits a few iterations (so the weights are
not just their initialisation), saves a checkpoint, and exports it as ONNX with frozen (folded) and batch
(live-statistics) BatchNorm, fp32 and fp16 weights, plus the EMA image for F16 and TorchScript. Then:

* exactness of each ONNX Runtime (CPU) image against the fit's image (``Fitter.output()``, or the EMA image):
  max abs difference in [0, 1], share of identical 8-bit pixels, largest 8-bit difference;
* file size against the fp32 weights and the fixed noise the file carries;
* regeneration time: ONNX Runtime CPU (empty feed) vs torch eager on the same network with train-mode
  BatchNorm (and the TorchScript export), interleaved one run each in turn, median of ``--repeats``.

    nice -n 5 python benchmarks/export_speed.py                       # both nets, 512x512, 3 fit iterations
    python benchmarks/export_speed.py --nets denoise --size 128 --iterations 1 --repeats 3   # quick look

Prints a table and writes JSON to benchmarks/results/export_speed.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from dip_compile import exporters
from dip_compile.checkpoint import load_checkpoint, save_checkpoint
from dip_compile.config import Structure, Upsample
from dip_compile.fitting import Fitter
from dip_compile.imageio import load_image, load_mask
from dip_compile.presets import preset
from dip_compile.problem import add_noise, make_problem
from dip_compile.replay import regenerate as replay

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "benchmarks" / "results"


def center_crop(image: torch.Tensor, size: int) -> torch.Tensor:
    h, w = image.shape[-2:]
    top, left = max(0, (h - size) // 2), max(0, (w - size) // 2)
    return image[..., top : top + size, left : left + size].contiguous()


def fitted(net: str, size: int, iterations: int, seed: int = 0, reuse: bool = False) -> tuple[Fitter, Path]:
    """A few iterations of the paper's setting on the paper's image, saved as a checkpoint (or, with ``reuse``,
    the checkpoint an earlier run saved, when it has the same iteration count)."""
    path = RESULTS / f"export_{net}_{size}.ckpt"
    if reuse and path.exists():
        ckpt = load_checkpoint(path)
        if ckpt.iteration == iterations and ckpt.config.seed == seed:
            print(f"[{net}] reusing {path} ({iterations} iterations)", flush=True)
            return ckpt.fitter(device="cpu"), path
    if net == "inpaint":
        image = center_crop(load_image(DATA / "kate.png"), size)
        mask = center_crop(load_mask(DATA / "kate_mask.png", (512, 512)), size)
        config = preset("inpaint").replace(iterations=iterations, log_every=1, seed=seed)
        problem = make_problem(config, image, mask=mask, reference=image)
    else:
        clean = center_crop(load_image(DATA / "F16_GT.png"), size)
        config = preset("denoise").replace(iterations=iterations, log_every=1, seed=seed, stop="fixed")
        if net == "seed":  # the seed structure: skip after the down block, upsampling at the end of the up block
            config = config.replace(
                net=dataclasses.replace(config.net, structure=Structure.seed, upsample=(Upsample.bicubic,))
            )
        problem = make_problem(config, add_noise(clean, 25 / 255, seed), reference=clean)
    fitter = Fitter(config, problem)
    t0 = time.perf_counter()
    fitter.run(iterations)
    print(f"[{net}] fitted {iterations} iterations at {size}x{size} in {time.perf_counter() - t0:.1f} s", flush=True)
    save_checkpoint(fitter, path)
    return fitter, path


def timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench_net(net: str, size: int, iterations: int, repeats: int, reuse: bool = False) -> dict[str, Any]:
    fitter, ckpt_path = fitted(net, size, iterations, reuse=reuse)
    ckpt = load_checkpoint(ckpt_path)
    params = sum(p.numel() for p in fitter.net.parameters())
    noise_bytes = fitter.net_input.numel() * 4
    out: dict[str, Any] = {
        "net": net,
        "size": size,
        "fit_iterations": iterations,
        "parameters": params,
        "weights_fp32_bytes": params * 4,
        "noise_bytes": noise_bytes,
        "variants": [],
        "timing": {},
    }
    variants = [
        ("frozen", "fp32", "output", "embedded"),
        ("batch", "fp32", "output", "embedded"),
        ("frozen", "fp16", "output", "embedded"),
        ("batch", "fp16", "output", "embedded"),
        ("frozen", "fp32", "output", "seed"),
        ("frozen", "fp16", "output", "seed"),
    ]
    if fitter.ema is not None:
        variants.append(("frozen", "fp32", "ema", "embedded"))
    sessions: dict[str, Any] = {}
    for bn, weights, image, noise in variants:
        plan = exporters.plan_export(ckpt, bn=bn, weights=weights, image=image, noise=noise)
        path = RESULTS / f"export_{net}_{size}_{bn}_{weights}_{image}_{noise}.onnx"
        t0 = time.perf_counter()
        exporters.write_onnx(plan, path)
        export_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        session, _ = replay.open_session(path, "cpu")
        load_s = time.perf_counter() - t0
        got = replay.run(session)
        check = exporters.agreement(got, plan.target)
        row: dict[str, Any] = {
            "bn": bn,
            "weights": weights,
            "image": image,
            "noise": noise,
            "file_bytes": path.stat().st_size,
            "write_s": export_s,
            "session_load_s": load_s,
            **check,
            "passes_target": exporters.passes(check),
        }
        out["variants"].append(row)
        print(
            f"[{net}] {bn:6s} {weights} {image:6s} {noise:8s}: max abs {check['max_abs_diff']:.2e}, identical "
            f"{100 * check['identical_8bit']:.3f}%, max 8-bit {check['max_8bit_diff']}, "
            f"{row['file_bytes'] / 2**20:.2f} MiB",
            flush=True,
        )
        if image == "output" and weights == "fp32" and noise == "embedded":
            sessions[f"onnxruntime {bn}"] = session
            if bn == "frozen":
                ts_path = RESULTS / f"export_{net}_{size}.pt"
                exporters.write_torch(plan, ts_path, "torchscript")
                sessions["torchscript frozen"] = torch.jit.load(str(ts_path))
                pt2_path = RESULTS / f"export_{net}_{size}.pt2"
                exporters.write_torch(plan, pt2_path, "pt2")
                sessions["pt2 frozen"] = exporters.load_pt2(pt2_path)
    runners: dict[str, Callable[[], Any]] = {
        name: functools.partial(replay.run, s) for name, s in sessions.items() if name.startswith("onnxruntime")
    }
    script = sessions["torchscript frozen"]
    net_module, net_input, crop = fitter.net, fitter.net_input, fitter.crop

    def eager() -> torch.Tensor:
        with torch.no_grad():
            return crop(net_module(net_input))  # train-mode BatchNorm: batch statistics, as the fit computes

    def torchscript() -> torch.Tensor:
        with torch.no_grad():
            return script()

    pt2_module, pt2_noise, _ = sessions["pt2 frozen"]

    def pt2() -> torch.Tensor:
        with torch.no_grad():
            return pt2_module(pt2_noise)

    runners["torch eager (train-mode BN)"] = eager
    runners["torchscript frozen"] = torchscript
    runners["pt2 frozen (torch.export)"] = pt2
    for fn in runners.values():  # warm-up: allocator, oneDNN primitive caches, ORT arenas
        fn()
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(repeats):
        for name, fn in runners.items():
            times[name].append(timed(fn))
    eager_median = statistics.median(times["torch eager (train-mode BN)"])
    for name, ts in times.items():
        med = statistics.median(ts)
        out["timing"][name] = {
            "median_s": med,
            "min_s": min(ts),
            "max_s": max(ts),
            "runs": len(ts),
            "speedup_vs_eager": eager_median / med,
        }
    return out


def show(results: list[dict[str, Any]]) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(json.dumps(results, indent=2))
        return
    console = Console(width=170)
    t = Table(title="Exactness and size of the ONNX export (ONNX Runtime CPU vs the fit's image)")
    for col in (
        "net",
        "BN",
        "weights",
        "image",
        "noise",
        "max abs diff",
        "identical 8-bit",
        "max 8-bit diff",
        "target",
        "file MiB",
        "weights fp32 MiB",
        "noise MiB",
        "file / weights",
    ):
        t.add_column(col, justify="right")
    for r in results:
        for v in r["variants"]:
            t.add_row(
                f"{r['net']} {r['size']}",
                v["bn"],
                v["weights"],
                v["image"],
                v["noise"],
                f"{v['max_abs_diff']:.2e}",
                f"{100 * v['identical_8bit']:.3f}%",
                str(v["max_8bit_diff"]),
                "yes" if v["passes_target"] else "no",
                f"{v['file_bytes'] / 2**20:.2f}",
                f"{r['weights_fp32_bytes'] / 2**20:.2f}",
                f"{r['noise_bytes'] / 2**20:.2f}",
                f"{v['file_bytes'] / r['weights_fp32_bytes']:.3f}",
            )
    console.print(t)
    t = Table(title="Regeneration time of one image (median, interleaved runs)")
    for col in ("net", "runtime", "median s", "min-max s", "speedup vs torch eager"):
        t.add_column(col, justify="right")
    for r in results:
        for name, v in r["timing"].items():
            t.add_row(
                f"{r['net']} {r['size']}",
                name,
                f"{v['median_s']:.3f}",
                f"{v['min_s']:.3f}-{v['max_s']:.3f}",
                f"{v['speedup_vs_eager']:.2f}x",
            )
    console.print(t)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--nets",
        default="inpaint,denoise",
        help="comma list: inpaint (kate), denoise (F16), seed (F16, seed structure)",
    )
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--iterations", type=int, default=3, help="fit iterations before exporting")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per runtime (median reported)")
    parser.add_argument("--out", type=Path, default=RESULTS / "export_speed.json")
    parser.add_argument(
        "--reuse", action="store_true", help="reuse the checkpoints an earlier run saved (skip fitting)"
    )
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    import onnxruntime

    with open("/proc/loadavg") as f:
        load_before = f.read().split()[:3]
    results = [bench_net(n, args.size, args.iterations, args.repeats, args.reuse) for n in args.nets.split(",")]
    with open("/proc/loadavg") as f:
        load_after = f.read().split()[:3]
    show(results)
    payload = {
        "results": results,
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "torch_threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "loadavg_before": load_before,
        "loadavg_after": load_after,
        "command": " ".join(sys.argv),
    }
    args.out.write_text(json.dumps(payload, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
