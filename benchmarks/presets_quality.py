"""Every preset on its notebook image at a reduced scale: a row per preset, run through ``dipc fit`` and exported.

Not a test: it runs for minutes (about one to two per preset at 128 px on 2 cores). For each preset it fits the
notebook's image (resized so its short side is ``--size`` and centre-cropped to a square, at least the network's
smallest canvas), with the preset's own network and settings except the iteration count (capped by
``--iterations``), exactly as ``dipc fit TASK IMAGE --preset NAME`` does; then exports the checkpoint to ONNX and
regenerates the image with ONNX Runtime. It prints a table and writes ``presets_quality.json`` and a side-by-side
picture per preset (``--compare``) to ``--out``.

    python benchmarks/presets_quality.py                       # 128 px, at most 600 iterations per preset
    python benchmarks/presets_quality.py --presets flash kate-98 --size 256 --iterations 1000
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path[:0] = [] if __package__ else [str(Path(__file__).resolve().parents[1])]  # as `python benchmarks/X.py`

from PIL import Image

from benchmarks.common import RESULTS, Results, Row, fit, markdown, saved_rows, set_threads, study_parser, write_case
from dip_compile import exporters, presets
from dip_compile.checkpoint import load_checkpoint
from dip_compile.export_options import ExportOptions

IMAGE = "{image}"  # in a preset's options: the path of its resized image
# preset -> (image, mask or flash image, the ``dipc fit`` options that make its observation)
SOURCES: dict[str, tuple[str, str | None, tuple[str, ...]]] = {
    "f16": ("F16_GT.png", None, ("--sigma", "25")),
    "f16-sigma50": ("F16_GT.png", None, ("--sigma", "50")),
    "snail": ("snail.jpg", None, ()),  # a real JPEG: no clean reference
    "kate": ("kate.png", "kate_mask.png", ("--reference", IMAGE)),  # the photo is whole under the mask:
    "vase": ("vase.png", "vase_mask.png", ("--reference", IMAGE)),  # PSNR against it (for library's object removal
    "library": ("library.png", "library_mask.png", ("--reference", IMAGE)),  # it counts the removed objects too)
    "barbara": ("restoration/barbara.png", None, ()),  # the preset drops 50% of the pixels
    "kate-98": ("restoration/kate.png", None, ()),  # the preset drops 98% of the pixels
    "sr-x4": ("zebra_GT.png", None, ("--from-reference",)),
    "sr-x8": ("zebra_GT.png", None, ("--from-reference",)),
    "flash": ("cave01_01_noflash.jpg", "cave01_00_flash.jpg", ()),
    # blurred here with the fit's own operator, then 1% noise: deblur_quality.py's first case; the kernel is a
    # setting no preset gives
    "deblur": ("F16_GT.png", None, ("--from-reference", "--sigma", "2.55", "--kernel", "gaussian:2")),
}


def prepare(data: Path, out: Path, name: str, size: int, iterations: int) -> tuple[list[str], int]:
    """The ``dipc fit`` arguments of this preset on the resized notebook image (written to ``out``, with the fit's
    files), its iterations capped, and the side used."""
    chosen = presets.get(name)
    image_name, extra, options = SOURCES[name]
    side = max(size, chosen.config.net.min_side)
    image = write_case(data, image_name, side, out / f"{name}.png")
    args = [str(chosen.task), str(image), "-o", str(out / f"{name}-out.png"), "--preset", name]
    args += [str(image) if option == IMAGE else option for option in options]
    if extra is not None:
        kind = "mask" if "mask" in extra else "flash"
        resample = Image.Resampling.NEAREST if kind == "mask" else Image.Resampling.LANCZOS
        args += [f"--{kind}", str(write_case(data, extra, side, out / f"{name}-{kind}.png", resample))]
    args += ["--iterations", str(min(iterations, chosen.config.iterations)), "--log-every", "10"]
    args += ["--checkpoint", str(out / f"{name}.ckpt"), "--report", str(out / f"{name}.json")]
    return [*args, "--compare", str(out / f"{name}-compare.png")], side


def run(data: Path, out: Path, name: str, size: int, iterations: int, fit_args: list[str]) -> Row:
    chosen = presets.get(name)
    args, side = prepare(data, out, name, size, iterations)
    ckpt, report_path = out / f"{name}.ckpt", out / f"{name}.json"
    seconds = fit([*args, "--force", "-q", *fit_args], out / f"{name}.log")
    report = json.loads(report_path.read_text())
    written = exporters.export_checkpoints([ckpt], out / f"{name}.onnx", ExportOptions(verify=True, force=True))
    check = written[0].check or {}
    losses = report["history"]["loss"]
    problem = load_checkpoint(ckpt).problem
    return {
        "preset": name,
        "task": str(chosen.task),
        "image": SOURCES[name][0],
        "size": f"{problem.size[1]}x{problem.size[0]}",
        "side": side,
        "iterations": report["iterations"],
        "preset_iterations": chosen.config.iterations,
        "exit_code": 0,
        "seconds": seconds,
        "seconds_per_iteration": seconds / max(1, report["iterations"]),
        "parameters": chosen.network_parameters(),
        "first_loss": losses[0],
        "last_loss": losses[-1],
        **{k: report.get(k) for k in ("input_psnr", "final_psnr", "image_source", "backtracks", "plan")},
        "export_identical_pixels": check.get("identical_8bit"),
        "export_max_abs_diff": check.get("max_abs_diff"),
    }


def table(rows: list[Row]) -> str:
    head = ["preset", "image (size)", "iterations", "loss first -> last", "corrupted PSNR", "DIP PSNR",
            "export identical 8-bit", "s/it"]  # fmt: skip

    def cells(r: Row) -> list[str]:
        same = r["export_identical_pixels"]
        return [
            r["preset"], f"{r['image']} ({r['size']})", f"{r['iterations']} of {r['preset_iterations']}",
            f"{r['first_loss']:.2e} -> {r['last_loss']:.2e}",
            "-" if r["input_psnr"] is None else f"{r['input_psnr']:.2f}",
            "-" if r["final_psnr"] is None else f"**{r['final_psnr']:.2f}**",
            "-" if same is None else f"{100 * same:.3f}%", f"{r['seconds_per_iteration']:.2f}",
        ]  # fmt: skip

    return markdown(head, map(cells, rows))


def main(argv: list[str] | None = None) -> int:
    parser = study_parser(__doc__, RESULTS / "presets", table=True, size=128, iterations=600, fit_args=True)
    parser.add_argument("--presets", nargs="+", choices=presets.NAMES, default=list(presets.NAMES))
    args = parser.parse_args(argv)
    if args.table:
        saved = {r["preset"]: r for r in saved_rows(args.table, "presets")}  # a later file's row wins
        print(table([saved[name] for name in presets.NAMES if name in saved]))
        return 0
    set_threads(args.threads)
    if not args.data.is_dir():
        parser.error(f"data folder {args.data} not found (pass --data)")
    results = Results(args.out / "presets_quality.json", "presets")
    for name in args.presets:
        print(f"{name} ...", flush=True)
        row = run(args.data, args.out, name, args.size, args.iterations, args.fit_args)
        results.add(row, size=args.size, iterations_cap=args.iterations)
        print(table(results.rows[-1:]).splitlines()[-1], flush=True)
    print(table(results.rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
