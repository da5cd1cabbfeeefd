"""Exported networks: exactness, file size, and regeneration time with ONNX Runtime vs torch eager (not a test).

For the paper's kate inpainting net and F16 denoising net at 512x512, fits a few iterations (so the weights are
not just their initialisation), saves a checkpoint, and exports it as ONNX with frozen (folded) and batch
(live-statistics) BatchNorm, fp32 and fp16 weights, plus the EMA image for F16 and TorchScript. Then:

* exactness of each ONNX Runtime (CPU) image against the fit's image (``Fitter.output()``, or the EMA image):
  max abs difference in [0, 1], share of identical 8-bit pixels, largest 8-bit difference;
* file size against the fp32 weights and the fixed noise the file carries;
* regeneration time: ONNX Runtime CPU (empty feed) vs torch eager on the same network with train-mode
  BatchNorm (and the TorchScript export), interleaved one run each in turn, median of ``--repeats``.

``--aoti CKPT`` asks instead whether an AOTInductor package would regenerate faster than the ONNX file (the answer
decides ``--format aoti``): it compiles the checkpoint's inference module (``--image output``, frozen BatchNorm) with
``torch._inductor.aoti_compile_and_package`` and times it, interleaved, against ONNX Runtime and torch eager.

    nice -n 5 python benchmarks/export_speed.py                       # both nets, 512x512, 3 fit iterations
    python benchmarks/export_speed.py --nets denoise --size 128 --iterations 1 --repeats 3   # quick look
    python benchmarks/export_speed.py --aoti benchmarks/results/export_inpaint_512.ckpt

Prints tables and writes JSON to benchmarks/results/export_speed.json (aoti_speed.json with ``--aoti``).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path[:0] = [] if __package__ else [str(Path(__file__).resolve().parents[1])]  # as `python benchmarks/X.py`

import torch

from benchmarks.common import (
    DATA,
    RESULTS,
    Row,
    centre_crop,
    environment,
    interleaved,
    markdown,
    spread,
    study_parser,
    write_json,
)
from dip_compile import exporters
from dip_compile.checkpoint import load_checkpoint, save_checkpoint
from dip_compile.config import Structure, Upsample
from dip_compile.fitting import Fitter
from dip_compile.imageio import load_image, load_mask
from dip_compile.presets import preset
from dip_compile.problem import add_noise, make_problem
from dip_compile.replay import regenerate as replay

# (BatchNorm, weights, image, noise) of each ONNX file written; the EMA image where the fit keeps one
VARIANTS = [
    ("frozen", "fp32", "output", "embedded"),
    ("batch", "fp32", "output", "embedded"),
    ("frozen", "fp16", "output", "embedded"),
    ("batch", "fp16", "output", "embedded"),
    ("frozen", "fp32", "output", "seed"),
    ("frozen", "fp16", "output", "seed"),
]


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
        image = centre_crop(load_image(DATA / "kate.png"), size)
        mask = centre_crop(load_mask(DATA / "kate_mask.png", (512, 512)), size)
        config = preset("inpaint").replace(iterations=iterations, log_every=1, seed=seed)
        problem = make_problem(config, image, mask=mask, reference=image)
    else:
        clean = centre_crop(load_image(DATA / "F16_GT.png"), size)
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


def no_grad(fn: Callable[[], Any]) -> Callable[[], Any]:
    return torch.no_grad()(fn)


def bench_net(net: str, size: int, iterations: int, repeats: int, reuse: bool = False) -> Row:
    fitter, ckpt_path = fitted(net, size, iterations, reuse=reuse)
    ckpt = load_checkpoint(ckpt_path)
    params = sum(p.numel() for p in fitter.net.parameters())
    out: Row = {"net": net, "size": size, "fit_iterations": iterations, "parameters": params,
                "weights_fp32_bytes": params * 4, "noise_bytes": fitter.net_input.numel() * 4, "variants": []}  # fmt: skip
    runners: dict[str, Callable[[], Any]] = {}
    for bn, weights, image, noise in VARIANTS + (
        [("frozen", "fp32", "ema", "embedded")] if fitter.ema is not None else []
    ):
        plan = exporters.plan_export(ckpt, bn=bn, weights=weights, image=image, noise=noise)
        path = RESULTS / f"export_{net}_{size}_{bn}_{weights}_{image}_{noise}.onnx"
        t0 = time.perf_counter()
        exporters.write_onnx(plan, path)
        export_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        session, _ = replay.open_session(path, "cpu")
        load_s = time.perf_counter() - t0
        check = exporters.agreement(replay.run(session), plan.target)
        out["variants"].append({"bn": bn, "weights": weights, "image": image, "noise": noise,
                                "file_bytes": path.stat().st_size, "write_s": export_s, "session_load_s": load_s,
                                **check, "passes_target": exporters.passes(check)})  # fmt: skip
        print(f"[{net}] {bn:6s} {weights} {image:6s} {noise:8s}: max abs {check['max_abs_diff']:.2e}, identical "
              f"{100 * check['identical_8bit']:.3f}%, max 8-bit {check['max_8bit_diff']}, "
              f"{path.stat().st_size / 2**20:.2f} MiB", flush=True)  # fmt: skip
        if (image, weights, noise) == ("output", "fp32", "embedded"):
            runners[f"onnxruntime {bn}"] = functools.partial(replay.run, session)
            if bn == "frozen":
                exporters.write_torch(plan, RESULTS / f"export_{net}_{size}.pt", "torchscript")
                script = torch.jit.load(str(RESULTS / f"export_{net}_{size}.pt"))
                exporters.write_torch(plan, RESULTS / f"export_{net}_{size}.pt2", "pt2")
                pt2_module, pt2_noise, _ = exporters.load_pt2(RESULTS / f"export_{net}_{size}.pt2")
    net_module, net_input, crop = fitter.net, fitter.net_input, fitter.crop
    runners["torch eager (train-mode BN)"] = no_grad(lambda: crop(net_module(net_input)))  # as the fit computes
    runners["torchscript frozen"] = no_grad(lambda: script())
    runners["pt2 frozen (torch.export)"] = no_grad(lambda: pt2_module(pt2_noise))
    times = interleaved(runners, repeats)  # (warm-up: allocator, oneDNN primitive caches, ORT arenas)
    eager = spread(times["torch eager (train-mode BN)"])["median_s"]
    out["timing"] = {
        name: {**spread(ts), "runs": len(ts), "speedup_vs_eager": eager / spread(ts)["median_s"]}
        for name, ts in times.items()
    }
    return out


def show(results: list[Row]) -> None:
    print("Exactness and size of the ONNX export (ONNX Runtime CPU vs the fit's image)")
    head = ["net", "BN", "weights", "image", "noise", "max abs diff", "identical 8-bit", "max 8-bit diff", "target",
            "file MiB", "weights fp32 MiB", "noise MiB", "file / weights"]  # fmt: skip
    print(markdown(head, (
        [f"{r['net']} {r['size']}", v["bn"], v["weights"], v["image"], v["noise"], f"{v['max_abs_diff']:.2e}",
         f"{100 * v['identical_8bit']:.3f}%", v["max_8bit_diff"], "yes" if v["passes_target"] else "no",
         f"{v['file_bytes'] / 2**20:.2f}", f"{r['weights_fp32_bytes'] / 2**20:.2f}", f"{r['noise_bytes'] / 2**20:.2f}",
         f"{v['file_bytes'] / r['weights_fp32_bytes']:.3f}"]
        for r in results for v in r["variants"]
    )))  # fmt: skip
    print("\nRegeneration time of one image (median, interleaved runs)")
    print(markdown(["net", "runtime", "median s", "min-max s", "speedup vs torch eager"], (
        [f"{r['net']} {r['size']}", name, f"{v['median_s']:.3f}", f"{v['min_s']:.3f}-{v['max_s']:.3f}",
         f"{v['speedup_vs_eager']:.2f}x"]
        for r in results for name, v in r["timing"].items()
    )))  # fmt: skip


def aoti(checkpoint: Path, repeats: int) -> Row:
    """An AOTInductor package of the checkpoint's inference module against ONNX Runtime and torch eager."""
    plan = exporters.plan_export(load_checkpoint(checkpoint), image="output")
    folder = Path(tempfile.mkdtemp())
    t0 = time.perf_counter()
    package = torch._inductor.aoti_compile_and_package(
        torch.export.export(plan.module, (plan.noise,)), package_path=str(folder / "model.pt2")
    )
    compile_s = time.perf_counter() - t0
    compiled = torch._inductor.aoti_load_package(package)
    exporters.write_onnx(plan, folder / "model.onnx")
    session, _ = replay.open_session(folder / "model.onnx", "cpu")
    run_aoti = no_grad(lambda: compiled(plan.noise))
    runners = {"aoti": run_aoti, "onnxruntime": lambda: replay.run(session),
               "torch eager (frozen BN)": no_grad(lambda: plan.module(plan.noise))}  # fmt: skip
    times = interleaved(runners, repeats)
    return {
        "checkpoint": str(checkpoint),
        "aoti_compile_s": compile_s,
        "aoti_exactness": exporters.agreement(run_aoti(), plan.target),
        "median_s": {name: spread(ts)["median_s"] for name, ts in times.items()},
        "min_s": {name: min(ts) for name, ts in times.items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = study_parser(__doc__, RESULTS / "export_speed.json", data=False, threads=False)
    parser.add_argument("--nets", default="inpaint,denoise",
                        help="comma list: inpaint (kate), denoise (F16), seed (F16, seed structure)")  # fmt: skip
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--iterations", type=int, default=3, help="fit iterations before exporting")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per runtime (median reported)")
    parser.add_argument(
        "--reuse", action="store_true", help="reuse the checkpoints an earlier run saved (skip fitting)"
    )
    parser.add_argument("--aoti", type=Path, metavar="CKPT", help="time an AOTInductor package of CKPT instead")
    args = parser.parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    import onnxruntime

    if args.aoti:
        result = aoti(args.aoti, args.repeats)
        print(json.dumps(result, indent=2))
        write_json(RESULTS / "aoti_speed.json", result)
        return 0
    before = environment()
    results = [bench_net(n, args.size, args.iterations, args.repeats, args.reuse) for n in args.nets.split(",")]
    show(results)
    payload = {"results": results, **before, "machine_at_end": environment()["machine"],
               "onnxruntime": onnxruntime.__version__, "command": " ".join(sys.argv)}  # fmt: skip
    write_json(args.out, payload)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
