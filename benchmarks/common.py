"""What the studies share, written once: where data and results live, the case images, the machine a figure was
taken on, fits and batches run as a user runs them (``dipc fit``'s and ``dipc batch``'s own command lines, so a
study never builds a job by hand), timing, markdown tables, and result files rewritten after every row (an
interrupted study keeps what it measured)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shlex
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    import torch

    from dip_compile.restore import FitJob

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "benchmarks" / "results"
IMAGES = ["F16_GT.png", "kate.png"]  # the case studies' images unless --images says
Row = dict[str, Any]


# --- the command line -------------------------------------------------------------------------------------------


def exit_with_parent(parent: int) -> None:
    """A process pool's initializer: the worker ends (exit code 1) once its parent ``parent`` is gone, killed by a
    timeout or a signal, instead of sleeping forever as an orphan that waits for work (or finishing a fit no one
    will read)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def study_parser(
    doc: str,
    out: Optional[Path] = None,
    *,
    data: bool = True,
    threads: bool = True,
    table: bool = False,
    images: Optional[list[str]] = None,
    size: Optional[int] = None,
    iterations: Optional[int] = None,
    fit_args: bool = False,
    resume: bool = False,
) -> argparse.ArgumentParser:
    """A study's parser (its docstring's first paragraph as description) with the options most studies take:
    ``--data`` (the paper's images), ``--out`` (default ``out``), ``--threads``, ``--table JSON...`` (print the
    table of saved runs, fit nothing), given their defaults ``--images``, ``--size`` and ``--iterations``, and for
    studies that run ``dipc fit``, ``--fit-args`` (more of its options for every fit), and ``--resume``."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    if data:
        parser.add_argument("--data", type=Path, default=DATA, help="folder with the paper's images")
    if out is not None:
        parser.add_argument("--out", type=Path, default=out)
    if threads:
        parser.add_argument("--threads", type=int, help="torch threads (OMP_NUM_THREADS of a subprocess)")
    if table:
        parser.add_argument("--table", nargs="+", type=Path, metavar="JSON", help="print the table of saved runs")
    if resume:
        parser.add_argument(
            "--resume", action="store_true", help="keep the rows in --out, run only the cases they lack"
        )
    if images is not None:
        parser.add_argument("--images", nargs="+", default=images, help="files under --data (or skimage:NAME)")
    if size is not None:
        parser.add_argument("--size", type=int, default=size, help="the case images' side (px)")
    if iterations is not None:
        parser.add_argument("--iterations", type=int, default=iterations)
    if fit_args:
        parser.add_argument(
            "--fit-args", type=shlex.split, default=[], help="more dipc fit options for every fit, one string"
        )
    return parser


def set_threads(threads: Optional[int]) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


def saved_rows(paths: Iterable[Path], key: str) -> list[Row]:
    """The rows under ``key`` of saved result files, in order (``--table``)."""
    return [row for path in paths for row in json.loads(path.read_text())[key]]


# --- case images ------------------------------------------------------------------------------------------------


def centre_crop(image: torch.Tensor, size: int) -> torch.Tensor:
    """The centred ``size`` square of (..., H, W), at the image's own resolution (smaller sides kept whole)."""
    h, w = image.shape[-2:]
    top, left = max(0, (h - size) // 2), max(0, (w - size) // 2)
    return image[..., top : top + size, left : left + size].contiguous()


def fit_size(
    image: torch.Tensor, size: int | None, resample: int = Image.Resampling.LANCZOS, crop_only: bool = False
) -> torch.Tensor:
    """Resizes (C, H, W) so the short side is ``size`` and centre-crops a ``size`` square (unchanged when size is
    None); with ``crop_only`` the image keeps its resolution and only the centre square is cut out."""
    import torch

    if size is None:
        return image
    if crop_only:
        return centre_crop(image, size)
    c, h, w = image.shape
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    array = (image.permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)
    pil = Image.fromarray(array[..., 0] if c == 1 else array).resize((nw, nh), resample)
    out = np.asarray(pil, dtype=np.float32) / 255.0
    out = out[None] if out.ndim == 2 else out.transpose(2, 0, 1)
    top, left = (nh - size) // 2, (nw - size) // 2
    return torch.from_numpy(np.ascontiguousarray(out[:, top : top + size, left : left + size]))


def case_image(data: Path, name: str) -> torch.Tensor:
    """A file under ``data``, or ``skimage:NAME``: a sample image that ships inside scikit-image (no download), as
    (C, H, W) in [0, 1]; transparency is laid on white, grayscale stays one channel."""
    import torch

    from dip_compile.imageio import load_image

    if not name.startswith("skimage:"):
        return load_image(data / name)
    from skimage import data as samples

    array = np.asarray(getattr(samples, name.split(":", 1)[1])()).astype(np.float32)
    array = array / 255.0 if array.max() > 1 else array
    if array.ndim == 2:
        array = array[None]
    else:
        if array.shape[-1] == 4:  # RGBA over white
            array = array[..., :3] * array[..., 3:] + (1 - array[..., 3:])
        array = array.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(array))


def write_case(
    data: Path,
    name: str,
    size: int | None,
    path: Path,
    resample: int = Image.Resampling.LANCZOS,
    crop_only: bool = False,
) -> Path:
    """The case image resized and centre-cropped (``fit_size``) as a PNG at ``path``, for a fit to read."""
    from dip_compile.imageio import save_image

    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(fit_size(case_image(data, name), size, resample, crop_only), path, overwrite=True)
    return path


def masked_psnr(x: torch.Tensor, y: torch.Tensor, region: torch.Tensor) -> float:
    """PSNR over the pixels where ``region`` (H, W) is 1, all channels."""
    sel = region.bool().expand_as(x.reshape(-1, *region.shape))
    diff = (x.reshape(sel.shape) - y.reshape(sel.shape))[sel]
    return float(-10.0 * diff.pow(2).mean().clamp_min(1e-12).log10())


def best_ema(report: Row) -> tuple[float, int]:
    """The best EMA PSNR against the reference in a fit's report history, and its iteration."""
    history = report["history"]
    ema = history["psnr_reference_ema"]
    best = max(range(len(ema)), key=ema.__getitem__)
    return ema[best], history["iteration"][best]


# --- the machine ------------------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    """The CPU model, its vector flags that decide ``auto``'s precision, the cores and the load when asked."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    model = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "")
    flags_line = next((line for line in lines if line.startswith("flags")), "")
    flags = " ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f" {f}" in flags_line)
    return {
        "cpu": model or platform.processor(),
        "cpu_flags": flags,
        "cores": os.cpu_count(),
        "load_average": os.getloadavg(),
        "python": platform.python_version(),
    }


def environment() -> dict[str, Any]:
    """What every result file records beside its figures: the machine, the platform, torch and its threads."""
    import torch

    return {
        "machine": machine(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


# --- results ----------------------------------------------------------------------------------------------------


def write_json(path: Path, data: Any, indent: Optional[int] = 2) -> None:
    """Writes ``data`` whole or not at all (a temporary file renamed over ``path``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=indent, default=str) + "\n")
    os.replace(tmp, path)


class Results:
    """A study's result file, rewritten after every row: ``{**head, key: rows}``; with ``resume``, the rows an
    earlier run left there come first (``run_grid`` then fits only the cases they lack)."""

    def __init__(
        self, path: Path, key: str, head: Optional[Row] = None, indent: Optional[int] = 2, resume: bool = False
    ) -> None:
        self.path, self.key, self.indent = path, key, indent
        self.rows: list[Row] = list(json.loads(path.read_text())[key]) if resume and path.exists() else []
        self.head = environment() if head is None else head

    def add(self, row: Row, **more: Any) -> Row:
        self.rows.append(row)
        self.save(**more)
        return row

    def save(self, **more: Any) -> None:
        self.head.update(more)
        write_json(self.path, {**self.head, self.key: self.rows}, self.indent)


def markdown(head: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(map(str, row)) + " |" for row in rows])


def run_grid(
    images: Sequence[str],
    specs: Sequence[str],
    run_one: Callable[[str, str], Row],
    table: Callable[[list[Row]], str],
    results: Results,
    spec_key: str,
) -> list[Row]:
    """``run_one(image, spec)`` for every pair that ``results`` has no row of (its rows name them as ``image`` and
    ``spec_key``), printing its table row and saving ``results`` after each."""
    done = {(row["image"], row[spec_key]) for row in results.rows}
    for image in images:
        for spec in specs:
            if (image, spec) in done:
                continue
            print(f"{image} {spec} ...", flush=True)
            results.add(run_one(image, spec))
            print(table(results.rows[-1:]).splitlines()[-1], flush=True)
    print(table(results.rows))
    return results.rows


def grid_main(
    args: argparse.Namespace,
    specs: Sequence[str],
    run_one: Callable[[argparse.Namespace, str, str], Row],
    table: Callable[[list[Row]], str],
    name: str,
    spec_key: str,
) -> int:
    """A case study's run: the table of saved runs (``--table``), or every image with every spec into ``name``
    (with ``--resume``, those its earlier rows lack)."""
    if args.table:
        print(table(saved_rows(args.table, "cases")))
        return 0
    set_threads(args.threads)
    results = Results(args.out / name, "cases", resume=args.resume)
    run_grid(args.images, specs, lambda image, spec: run_one(args, image, spec), table, results, spec_key)
    return 0


# --- timing -----------------------------------------------------------------------------------------------------


def interleaved(runners: Mapping[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds of each runner, one run of each in turn (load from other processes hits them alike), after
    ``warmup`` untimed runs each."""
    for _ in range(warmup):
        for fn in runners.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(repeats):
        for name, fn in runners.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def spread(times: Sequence[float]) -> dict[str, float]:
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times)}


# --- fits and batches as a user runs them -----------------------------------------------------------------------


def dipc(*args: str) -> list[str]:
    """The command line of ``dipc ARGS`` in this interpreter."""
    return [sys.executable, "-m", "dip_compile.cli", *args]


def fit_job(args: Sequence[str]) -> FitJob:
    """``dipc fit ARGS`` as its job, not run: exactly the job the CLI builds (``DipError`` for bad options)."""
    from dip_compile.cli import parse_fit_args

    return parse_fit_args(list(args))


def fit(args: Sequence[str], log: Path) -> float:
    """Runs ``dipc fit ARGS`` in this process, its progress into ``log``; its wall seconds. A fit that fails stops
    the study in one line, as ``dipc fit`` would."""
    from dip_compile.errors import DipError
    from dip_compile.restore import run_job

    start = time.perf_counter()
    try:
        with open(log, "w") as console:
            code = run_job(fit_job(args), console_file=console)
    except DipError as exc:
        raise SystemExit(f"dipc fit {shlex.join(args)}: {exc}") from None
    if code:
        raise SystemExit(f"dipc fit {shlex.join(args)}: exit code {code}, see {log}")
    return time.perf_counter() - start


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Holds ``path`` (an flock) around a read-modify-write of a shared results file: runs side by side (shards, or
    columns with their own ``--out``) merge into the same committed scores when each ends. (Windows has no flock:
    runs side by side are not guarded there.)"""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        try:
            import fcntl
        except ImportError:
            yield
            return
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def add_shard_option(parser: argparse.ArgumentParser) -> None:
    """``--shard I/N``: N processes side by side share a study's fits (``dipc batch --shard``)."""
    parser.add_argument(
        "--shard",
        metavar="I/N",
        help="fit only every N-th fit of each table from the I-th (dipc batch --shard): N processes side by side "
        "share the fits, each with its own manifest; any of them, or --report, scores what is on disk",
    )


def check_shard(parser: argparse.ArgumentParser, shard: Optional[str]) -> Optional[str]:
    """``--shard`` checked with ``dipc batch``'s own rule before a manifest is named after it (one line, exit 2),
    in its normal form ``I/N``."""
    if not shard:
        return None
    from dip_compile.batch.jobs import ManifestError, parse_shard

    try:
        index, count = parse_shard(shard)
    except ManifestError as exc:
        parser.error(str(exc))
    return f"{index}/{count}"


def manifest_name(shard: Optional[str]) -> str:
    """The manifest's file name: one per shard, so that shards side by side never write each other's."""
    return f"manifest-{shard.replace('/', '-of-')}.jsonl" if shard else "manifest.jsonl"


def run_batch(
    manifest: Path,
    outdir: Path,
    options: Sequence[str] = (),
    threads: Optional[int] = None,
    deadline: Optional[float] = None,
    capture: bool = False,
    environ: Optional[dict[str, str]] = None,
    name: str = "dipc batch",
    echo: bool = False,
) -> subprocess.CompletedProcess[str]:
    """Runs ``dipc batch MANIFEST -o OUTDIR OPTIONS`` until it ends or ``deadline`` (time.monotonic()) passes; at
    the deadline it sends the batch Ctrl-C (every running fit saves its checkpoint), so a rerun continues."""
    command = dipc("batch", str(manifest), "-o", str(outdir), *options)
    if echo:
        print("$ " + " ".join(command), flush=True)
    env = {**os.environ, **(environ or {}), **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    pipe = subprocess.PIPE if capture else None
    process = subprocess.Popen(command, env=env, stdout=pipe, stderr=pipe, text=True)
    try:
        out, err = process.communicate(timeout=None if deadline is None else max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        print(f"{name}: time is up; stopping the batch (a rerun continues)", flush=True)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate()
    except KeyboardInterrupt:  # the batch got the same Ctrl-C and saves its fits
        out, err = process.communicate()
    return subprocess.CompletedProcess(command, process.returncode, out, err)
