"""The paper's three tables, reproduced through ``dipc batch``, side by side with the paper and classical peers.

Not a test: at ``--scale paper`` it runs for many hours on a CPU. For each table it writes the inputs (crops made
with the table's protocol) and one ``dipc batch`` manifest under ``--out``, runs the manifest through ``dipc batch``
(the product's own path: resumable, ``--pack``, ``--ray``), computes the peers on the same crops, scores every result
with the paper's protocol and writes ``TABLE.json`` and ``TABLE.md`` (plus ``tables.md`` with all of them).
Rerunning the same command continues where it stopped: finished fits are skipped, interrupted ones resume from
their periodic checkpoint, the peers are cached in ``peers.json``.

    python benchmarks/paper_tables.py --table all --scale quick            # small crops, capped iterations
    python benchmarks/paper_tables.py --table denoise --scale paper --device cuda --pack 4 --max-minutes 8
    python benchmarks/paper_tables.py --table all --scale quick --report   # only score what is on disk

Tables (protocols and the paper's numbers in ../shared/data/README.md):
- ``table1``: inpainting, 50% of the pixels missing, 11 grayscale images; PSNR over all pixels.
- ``sr``: super-resolution x4 and x8 on Set5 and Set14: the ground truth centre-cropped to a multiple of 32, the
  input its PIL Lanczos resize by 1/factor; PSNR on the Y channel (BT.601, 16-235) less 4 px at every border.
- ``denoise``: CSet9 at sigma 25 and 50 from the paper's own noisy files; RGB PSNR over all pixels.

Each image is fitted in named columns (``COLUMNS``), each its own output NAME-COLUMN and its own column of the table:
the paper's settings (the notebook's preset and ``--paper-exact``: a fixed count, fp32, the output for the last
perturbed input) as given (``paper``), in fp32 or bf16 named (``paper-fp32``, ``paper-bf16``) and with the 2017
framework (``paper-2017``), and dip-compile's defaults (``dipc fit TASK`` with no preset: the task's default preset,
auto-stop and the EMA lag where the task has them). The quick scale fits only the columns that say something at its
crops (``Scale.settings``; ``--settings`` chooses); ``--seeds`` fits each column with several seeds
(NAME-COLUMN-sSEED) and reports their spread. The peers are baselines of this benchmark,
not product features: bicubic (SR), CBM3D (the ``bm3d`` package, free for non-commercial use only) and scikit-image's
non-local means (denoising), scikit-image's biharmonic and OpenCV's Telea inpainting (Table 1). Install them with
``pip install -e '.[bench]'``; a missing one is reported as missing, never silently dropped.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import sys
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

sys.path[:0] = [] if __package__ else [str(Path(__file__).resolve().parents[1])]  # as `python benchmarks/X.py`

import numpy as np
from PIL import Image

from benchmarks import common
from benchmarks.common import DATA, RESULTS, machine

TABLES = ("table1", "sr", "denoise")
SCORES = RESULTS / "paper_scores"  # committed: every paper-scale score, merged
SR_BORDER = 4  # pixels left out at every border when scoring super-resolution, as the paper's eval script
# scikit-image's non-local means filter strength h per sigma, in units of sigma: the best of --nlm-sweep on CSet9
# (benchmarks/results/paper_scores/nlm-sweep.json)
NLM_H = {25: 0.55, 50: 0.3}

# The paper's numbers (mean PSNR, dB) per group, and Table 1 per image: ../shared/data/README.md.
PAPER_TABLE1 = {
    "barbara": 32.22,
    "boat": 33.06,
    "house": 39.16,
    "Lena512": 36.16,
    "peppers256": 33.05,
    "Cameraman256": 29.8,
    "couple": 32.52,
    "fingerprint": 32.84,
    "hill": 32.77,
    "man": 32.20,
    "montage": 34.54,
}
PAPER_MEANS: dict[str, dict[str, float]] = {
    "Table 1": {"DIP": 33.48, "convolutional sparse coding": 31.19},
    "Set5 x4": {"DIP": 29.90, "bicubic": 28.43},
    "Set14 x4": {"DIP": 27.00, "bicubic": 26.05},
    "Set5 x8": {"bicubic": 24.37},  # (no DIP x8 means printed: the published outputs are scored with --authors)
    "Set14 x8": {"bicubic": 23.10},
    "CSet9 sigma 25": {"DIP one run": 29.22, "DIP averaged": 30.43, "CBM3D": 31.42, "NLM": 30.26},
}


@dataclass(frozen=True)
class Column:
    """A settings column: the ``dipc fit`` options every image of it gets (after the notebook's preset and
    ``--paper-exact`` where ``paper``), and what a reader should know of it."""

    note: str
    paper: bool = True
    options: tuple[str, ...] = ()


# Each column is fitted into NAME-COLUMN (NAME-COLUMN-sSEED for a seed other than --seed) and scored on its own.
FRAMEWORK_2017 = ("--bn-init", "uniform", "--align-corners")  # PyTorch 0.2/0.3, which the paper's outputs came from
TODAY = ("--bn-init", "ones", "--no-align-corners")  # today's PyTorch (--paper-exact alone fits the 2017 framework)
COLUMNS: dict[str, Column] = {
    "paper": Column("the notebook's preset and --paper-exact as given: fp32 and the 2017 framework since --paper-exact "
                    "chooses them (bf16 on an AMX CPU and today's framework before; each fit's report records both)"),
    "paper-fp32": Column("--paper-exact in fp32, today's framework (BatchNorm scales from 1, align_corners=False)",
                         options=("--precision", "fp32", *TODAY)),
    "paper-2017": Column("--paper-exact in fp32 with the 2017 framework (--bn-init uniform --align-corners)",
                         options=("--precision", "fp32", *FRAMEWORK_2017)),
    "paper-bf16": Column("--paper-exact in bf16, today's framework (the paper-fp32 column otherwise)",
                         options=("--precision", "bf16", *TODAY)),
    "defaults": Column("dipc fit TASK with no preset: the task's default preset, auto-stop and the EMA where it has "
                       "them", paper=False),
    "fast": Column("dipc fit TASK --fast: the defaults made cheaper as docs/fast.md says (a narrower net; for "
                   "inpainting a third of the iterations too; for x4 super-resolution the Deep Random Projector for "
                   "250 iterations); refused where no study backs it (x8)", paper=False,
                   options=("--fast",)),
}  # fmt: skip
SETTINGS = tuple(COLUMNS)


@dataclass(frozen=True)
class Scale:
    """How large the crops are and how long the fits run: ``paper`` is the paper's, ``quick`` a check of an hour."""

    crop: dict[str, Optional[int]]  # per table: the centre square's side (None: the whole protocol image)
    iterations: dict[str, Optional[int]]  # per table: a cap on every fit's iterations (None: the preset's)
    settings: dict[str, tuple[str, ...]]  # per table: the settings columns fitted unless --settings says
    note: str


SCALES = {
    "paper": Scale(
        crop={"table1": None, "sr": None, "denoise": None},
        iterations={"table1": None, "sr": None, "denoise": None},
        settings={table: ("paper", "defaults") for table in TABLES},
        note="the paper's images and iteration counts",
    ),
    "quick": Scale(
        crop={"table1": 64, "sr": 64, "denoise": 64},
        iterations={"table1": 1000, "sr": 400, "denoise": 800},
        # the columns that say something at 64 px: Table 1's defaults (lr 0.01) converge in the cap where the paper's
        # lr 0.001 does not; denoising's fixed 800 iterations of the paper settings overfit a 64 px crop, so only the
        # defaults' auto-stop runs; SR's defaults are its paper presets. At most 51,600 iterations in all
        settings={"table1": ("paper", "defaults"), "sr": ("paper",), "denoise": ("defaults",)},
        note="64 px centre crops and capped iterations: a check of the pipeline and the ranking, not the paper's numbers",
    ),
}


@dataclass(frozen=True)
class Case:
    """One image of one table: its batch inputs (relative to the table's input folder) and how it is scored."""

    table: str
    group: str  # the row group of the paper's table: "Table 1", "Set5 x4", "CSet9 sigma 25"
    name: str  # unique within the table; the batch job is NAME-SETTINGS
    task: str
    image: str
    reference: str
    paper_preset: str
    mask: Optional[str] = None
    factor: Optional[int] = None
    sigma: Optional[int] = None
    paper_psnr: Optional[float] = None


# --- the protocols ----------------------------------------------------------------------------------------------


def read(path: Path) -> np.ndarray:
    """A PNG as float64 on the 0-255 scale, (H, W) for grayscale or (H, W, 3)."""
    with Image.open(path) as im:
        return np.asarray(im.convert("L" if im.mode in ("L", "1", "P", "I;16") else "RGB"), dtype=np.float64)


def write(array: np.ndarray, path: Path) -> None:
    """Writes an 8-bit PNG unless the same pixels are already there (so a rerun keeps the batch's fingerprints)."""
    pixels = np.clip(np.round(array), 0, 255).astype(np.uint8)
    if path.exists() and np.array_equal(np.asarray(Image.open(path)), pixels):
        return
    tmp = path.with_name(path.name + ".tmp.png")
    Image.fromarray(pixels).save(tmp)
    os.replace(tmp, path)


def centre_crop(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """The centred ``height`` x ``width`` crop, offset (d - new) // 2 as the paper's notebooks."""
    h, w = array.shape[:2]
    top, left = (h - height) // 2, (w - width) // 2
    return array[top : top + height, left : left + width]


def protocol_crop(array: np.ndarray, multiple: int, side: Optional[int]) -> np.ndarray:
    """The crop to a multiple of ``multiple``, then (quick scale) the centred ``side`` square, a multiple too."""
    h, w = array.shape[:2]
    array = centre_crop(array, h - h % multiple, w - w % multiple)
    if side is not None:
        side = max(multiple, side - side % multiple)
        array = centre_crop(array, min(side, array.shape[0]), min(side, array.shape[1]))
    return array


def lanczos_downsample(array: np.ndarray, factor: int) -> np.ndarray:
    """The paper's low-resolution input: PIL's Lanczos (antialiased) resize by 1/factor of the 8-bit image."""
    pil = Image.fromarray(np.clip(np.round(array), 0, 255).astype(np.uint8))
    return np.asarray(pil.resize((pil.width // factor, pil.height // factor), Image.Resampling.LANCZOS), np.float64)


def paper_bicubic(full: np.ndarray, factor: int) -> np.ndarray:
    """The paper's bicubic column: the whole ground truth (a multiple of ``factor``) resized down by 1/factor and up
    again with PIL's bicubic; scored on the protocol's crop it gives the paper's 28.43 / 26.03 (Set5 / Set14 x4)."""
    pil = Image.fromarray(np.clip(np.round(full), 0, 255).astype(np.uint8))
    low = pil.resize((pil.width // factor, pil.height // factor), Image.Resampling.BICUBIC)
    return np.asarray(low.resize((low.width * factor, low.height * factor), Image.Resampling.BICUBIC), np.float64)


def y_channel(array: np.ndarray) -> np.ndarray:
    """Luma of ITU-R BT.601 on the 16-235 scale (MATLAB's rgb2ycbcr), of an RGB or grayscale image on 0-255."""
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    rgb = array / 255.0
    return 16.0 + 65.481 * rgb[..., 0] + 128.553 * rgb[..., 1] + 24.966 * rgb[..., 2]


def _decibels(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two arrays on the 0-255 scale, as they are."""
    mse = float(np.mean((a - b) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0**2 / mse)


def _eight_bit(x: np.ndarray) -> np.ndarray:
    """Rounded to 8-bit levels, as saved results are."""
    return np.round(np.clip(x, 0, 255))


def psnr(x: np.ndarray, y: np.ndarray) -> float:
    """PSNR in dB of two images on the 0-255 scale (both rounded to 8 bits first)."""
    return _decibels(_eight_bit(x), _eight_bit(y))


def sr_psnr(x: np.ndarray, y: np.ndarray, border: int = SR_BORDER) -> float:
    """The super-resolution score: PSNR of the Y channel (16-235) less ``border`` px at every side."""
    ya, yb = y_channel(_eight_bit(x)), y_channel(_eight_bit(y))
    inner = (slice(border, -border or None), slice(border, -border or None))
    return _decibels(ya[inner], yb[inner])


def score(case: Case, result: np.ndarray, reference: np.ndarray) -> float:
    return sr_psnr(result, reference) if case.table == "sr" else psnr(result, reference)


def structural_similarity(case: Case, result: np.ndarray, reference: np.ndarray) -> Optional[float]:
    """SSIM (``dip_compile.metrics.ssim``: scikit-image's, Gaussian window) on what the PSNR of the table sees: the
    Y channel less the border (on 0-255 / 255) for super-resolution, else every channel; both rounded to 8 bits
    first. None where the image is smaller than the window."""
    import torch

    from dip_compile.metrics import ssim, ssim_defined

    a, b = _eight_bit(result), _eight_bit(reference)
    if case.table == "sr":
        inner = (slice(SR_BORDER, -SR_BORDER), slice(SR_BORDER, -SR_BORDER))
        a, b = y_channel(a)[inner], y_channel(b)[inner]
    x, y = (torch.from_numpy(np.atleast_3d(v).transpose(2, 0, 1) / 255.0) for v in (a, b))
    return float(ssim(x, y)) if ssim_defined(x) else None


def scores(case: Case, result: np.ndarray, reference: np.ndarray) -> dict[str, Optional[float]]:
    """The table's PSNR and SSIM of ``result``."""
    return {"psnr": score(case, result, reference), "ssim": structural_similarity(case, result, reference)}


# --- the cases and their inputs ---------------------------------------------------------------------------------


def cases_of(table: str, data: Path) -> list[Case]:
    paper = data / "paper"
    if table == "table1":
        folder = paper / "inpainting" / "table1"
        names = sorted(p.name[: -len("_GT.png")] for p in folder.glob("*_GT.png"))
        return [
            Case(
                "table1",
                "Table 1",
                n,
                "inpaint",
                f"{n}_masked.png",
                f"{n}_GT.png",
                "barbara",
                mask=f"{n}_mask.png",
                paper_psnr=PAPER_TABLE1.get(n),
            )
            for n in names
        ]
    if table == "sr":
        out = []
        for factor in (4, 8):
            for dataset in ("Set5", "Set14"):
                folder = paper / "sr" / dataset / f"x{factor}"
                for p in sorted(folder.glob("*_GT.png")):
                    n = p.name[: -len("_GT.png")]
                    name = f"{dataset}-x{factor}-{n}"
                    out.append(
                        Case(
                            "sr",
                            f"{dataset} x{factor}",
                            name,
                            "super-resolve",
                            f"{name}_LR.png",
                            f"{name}_HR.png",
                            f"sr-x{factor}",
                            factor=factor,
                        )
                    )
        return out
    folder = paper / "denoising" / "CSet9"
    names = sorted(p.name[: -len("_GT.png")] for p in folder.glob("*_GT.png"))
    return [
        Case(
            "denoise",
            f"CSet9 sigma {sigma}",
            f"{n}-s{sigma}",
            "denoise",
            f"{n}_noisy{sigma}.png",
            f"{n}_GT.png",
            "f16" if sigma == 25 else "f16-sigma50",
            sigma=sigma,
        )
        for sigma in (25, 50)
        for n in names
    ]


def base_name(case: Case) -> str:
    """The image's name in the published folders: Set5-x4-bird -> bird, F16-s25 -> F16."""
    if case.table == "sr":
        return case.name.split("-", 2)[2]
    return case.name.rsplit("-s", 1)[0] if case.table == "denoise" else case.name


def source_folder(case: Case, data: Path) -> Path:
    paper = data / "paper"
    if case.table == "table1":
        return paper / "inpainting" / "table1"
    if case.table == "denoise":
        return paper / "denoising" / "CSet9"
    dataset, factor = case.group.split(" ")
    return paper / "sr" / dataset / factor


def write_inputs(case: Case, data: Path, inputs: Path, side: Optional[int]) -> None:
    """The case's files in ``inputs``: the protocol's crop (and at quick scale the centre square) of each."""
    src = source_folder(case, data)
    if case.table == "sr":
        assert case.factor is not None
        full = read(src / f"{base_name(case)}_GT.png")
        gt = protocol_crop(full, 32, side)
        write(gt, inputs / case.reference)
        write(lanczos_downsample(gt, case.factor), inputs / case.image)
        write(protocol_crop(paper_bicubic(full, case.factor), 32, side), inputs / f"{case.name}_paper_bicubic.png")
        return
    arrays = {name: read(src / name) for name in filter(None, (case.image, case.reference, case.mask))}
    if case.mask:
        arrays[case.mask] = resolve_black(case, arrays[case.mask], arrays[case.reference])
    for name, array in arrays.items():
        if side is not None:
            array = centre_crop(array, min(side, array.shape[0]), min(side, array.shape[1]))
        write(array, inputs / name)


def resolve_black(case: Case, mask: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Table 1's masks were read from the published masked inputs, where a missing pixel is 0, so a pixel that is
    black in the ground truth reads as missing whether it was known or not (511 in peppers256: its black first row
    and column, which the fit then fills with image content, and which decided 87% of biharmonic's squared error
    there). Such a pixel was known with the mask's odds (half): drawn so, per image with a fixed seed. The masked
    input is 0 there either way."""
    black = reference.reshape(*reference.shape[:2], -1).max(axis=-1) == 0
    missing = mask.reshape(*mask.shape[:2], -1).max(axis=-1) <= 127
    ambiguous = black & missing
    if not ambiguous.any():
        return mask
    share = float((~missing).sum()) / float((~ambiguous).sum())  # the known share of the unambiguous pixels
    known = np.random.default_rng(zlib.crc32(case.name.encode())).random(mask.shape[:2]) < share
    out = mask.copy()
    out[ambiguous & known] = 255
    return out


@dataclass(frozen=True)
class Run:
    """One column fitted with one seed: its label names the outputs (NAME-LABEL) and the table's column."""

    column: str
    seed: int
    label: str


def runs_of(columns: Iterable[str], seeds: Iterable[int], default_seed: int) -> list[Run]:
    """Every column with every seed; a seed other than the batch's ``--seed`` adds ``-sSEED`` to the label, so the
    default seed's fits keep the names (and a rerun the results) they had before ``--seeds``."""
    return [Run(c, s, c if s == default_seed else f"{c}-s{s}") for c in columns for s in dict.fromkeys(seeds)]


def column_options(case: Case, run: Run, cap: Optional[int], default_seed: int) -> list[str]:
    """The ``dipc fit`` options of ``case`` in ``run``'s column."""
    column = COLUMNS[run.column]
    options = ["--preset", case.paper_preset, "--paper-exact"] if column.paper else []
    options += column.options
    if cap is not None:
        options += ["--iterations", str(cap)]
    if run.seed != default_seed:
        options += ["--seed", str(run.seed)]
    return options


def manifest_rows(
    cases: Iterable[Case], runs: Iterable[Run], cap: Optional[int], default_seed: int = 0
) -> list[dict[str, Any]]:
    """One ``dipc batch`` row per case and run (output NAME-LABEL)."""
    runs = list(runs)
    return [
        batch_row(case, f"{case.name}-{run.label}", column_options(case, run, cap, default_seed))
        for case in cases
        for run in runs
    ]


def batch_row(case: Case, output: str, options: list[str]) -> dict[str, Any]:
    """The ``dipc batch`` manifest row that fits ``case`` with ``options`` into OUTDIR/``output``."""
    row: dict[str, Any] = dict(image=case.image, task=case.task, reference=case.reference, output=output)
    row["options"] = options
    if case.mask:
        row["mask"] = case.mask
    if case.factor:
        row["factor"] = case.factor
    return row


# --- the peers --------------------------------------------------------------------------------------------------


def peer_functions(table: str) -> dict[str, Callable[[Case, Path], np.ndarray]]:
    """name -> f(case, inputs folder) -> the peer's result on 0-255; each imports its package when it runs."""

    def bicubic(case: Case, inputs: Path) -> np.ndarray:
        lr = Image.open(inputs / case.image)
        with Image.open(inputs / case.reference) as hr:
            size = hr.size
        return np.asarray(lr.resize(size, Image.Resampling.BICUBIC), np.float64)

    def paper_bicubic(case: Case, inputs: Path) -> np.ndarray:
        return read(inputs / f"{case.name}_paper_bicubic.png")  # (made with the inputs: it needs the whole image)

    def cbm3d(case: Case, inputs: Path) -> np.ndarray:
        import bm3d

        noisy = read(inputs / case.image) / 255.0
        assert case.sigma is not None
        return np.asarray(bm3d.bm3d_rgb(noisy, case.sigma / 255.0)) * 255.0

    def nlm(case: Case, inputs: Path) -> np.ndarray:
        assert case.sigma is not None
        return non_local_means(read(inputs / case.image), case.sigma, NLM_H[case.sigma])

    def known(case: Case, inputs: Path) -> tuple[np.ndarray, np.ndarray]:
        assert case.mask is not None
        return read(inputs / case.image), read(inputs / case.mask) > 127

    def biharmonic(case: Case, inputs: Path) -> np.ndarray:
        from skimage.restoration import inpaint_biharmonic

        image, mask = known(case, inputs)
        return np.asarray(inpaint_biharmonic(image / 255.0, ~mask)) * 255.0

    def telea(case: Case, inputs: Path) -> np.ndarray:
        import cv2

        image, mask = known(case, inputs)
        holes = (~mask).astype(np.uint8) * 255
        return np.asarray(cv2.inpaint(image.astype(np.uint8), holes, 3, cv2.INPAINT_TELEA), np.float64)

    if table == "sr":
        return {"bicubic (same input as DIP)": bicubic, "bicubic (the paper's column)": paper_bicubic}
    if table == "denoise":
        return {"CBM3D": cbm3d, "NLM (scikit-image, tuned h)": nlm}
    return {"biharmonic (scikit-image)": biharmonic, "Telea (OpenCV)": telea}


def non_local_means(noisy: np.ndarray, sigma: float, h: float) -> np.ndarray:
    """scikit-image's fast non-local means (5x5 patches, 13x13 search) of a 0-255 image, filter strength h * sigma."""
    from skimage.restoration import denoise_nl_means

    s = sigma / 255.0
    out = denoise_nl_means(
        noisy / 255.0, h=h * s, sigma=s, patch_size=5, patch_distance=6, fast_mode=True, channel_axis=-1
    )
    return np.asarray(out) * 255.0


def nlm_sweep(cases: list[Case], inputs: Path, strengths: list[float]) -> dict[str, Any]:
    """Non-local means' mean PSNR per sigma and filter strength (h in units of sigma), per image too: what NLM_H
    is chosen from."""
    result: dict[str, Any] = {}
    for case in cases:
        assert case.sigma is not None
        noisy, reference = read(inputs / case.image), read(inputs / case.reference)
        per = result.setdefault(f"sigma {case.sigma}", {})
        for h in strengths:
            per.setdefault(f"{h:g}", {})[case.name] = psnr(non_local_means(noisy, case.sigma, h), reference)
    for per in result.values():
        for h, images in per.items():
            per[h] = {"mean": mean(images.values()), "images": images}
    return result


def inputs_digest(case: Case, inputs: Path) -> str:
    """A digest of the case's input files: what its peers' results depend on."""
    digest = hashlib.sha256()
    for name in filter(None, (case.image, case.mask, case.reference)):
        digest.update((inputs / name).read_bytes())
    return digest.hexdigest()[:16]


def run_peers(cases: list[Case], inputs: Path, cache_path: Path) -> dict[str, dict[str, Any]]:
    """Every peer on every case, cached by case name in ``cache_path`` with its inputs' digest (inputs made
    differently, as Table 1's masks since ``resolve_black``, are computed again; a peer that cannot run records
    why)."""
    cache: dict[str, dict[str, Any]] = json.loads(cache_path.read_text()) if cache_path.exists() else {}
    for case in cases:
        digest = inputs_digest(case, inputs)
        if cache.get(case.name, {}).get("inputs") != digest:
            cache[case.name] = {"inputs": digest}
        entry = cache[case.name]
        reference = read(inputs / case.reference)
        for name, peer in peer_functions(case.table).items():
            if "ssim" in entry.get(name, {}):  # (entries from before SSIM was scored are computed again)
                continue
            t0 = time.perf_counter()
            try:
                result = peer(case, inputs)
            except ImportError as exc:
                entry[name] = {"missing": f"{exc.name or exc} is not installed (pip install -e '.[bench]')"}
                continue
            entry[name] = {**scores(case, result, reference), "seconds": time.perf_counter() - t0}
        cache_path.write_text(json.dumps(cache, indent=1))
    return cache


# --- the authors' published outputs -------------------------------------------------------------------------------

# Per table, the published method -> the file suffixes tried in order, in the folders of the authors' site
# (DmitryUlyanov/dmitryulyanov.github.io, assets/deep-image-prior): x8's DIP outputs come with reg-noise 0.03 and 0.05,
# the x8 preset's is 0.05.
PUBLISHED: dict[str, dict[str, tuple[str, ...]]] = {
    "sr": {"DIP": ("deep_prior_005", "deep_prior"), "bicubic": ("bicubic",)},
    "denoise": {"DIP": ("deep_prior",), "CBM3D": ("bm3d",), "NLM": ("nlm",)},
    "table1": {"DIP": ("deep_prior",), "convolutional sparse coding": ("papyan",)},
}


def published_folder(case: Case, authors: Path) -> Path:
    """Where the site keeps ``case``'s published outputs (``authors``: its assets/deep-image-prior folder)."""
    if case.table == "sr":
        dataset, factor = case.group.split(" ")
        return authors / "SR" / dataset / factor
    if case.table == "denoise":
        return authors / "Denoising" / "Color" / str(case.sigma)
    return authors / "Reconstruction" / "Gray" / "50p"


def score_published(case: Case, authors: Path, inputs: Path, side: Optional[int]) -> dict[str, dict[str, Any]]:
    """Each published output of ``case`` cropped as its input was and scored with this table's protocol."""
    reference, folder = read(inputs / case.reference), published_folder(case, authors)
    entries: dict[str, dict[str, Any]] = {}
    for method, suffixes in PUBLISHED[case.table].items():
        path = next((p for p in (folder / f"{base_name(case)}_{x}.png" for x in suffixes) if p.exists()), None)
        if path is None:
            entries[method] = {"missing": f"no {base_name(case)}_{suffixes[0]}.png in {folder}"}
            continue
        image = read(path)
        if case.table == "sr":
            image = protocol_crop(image, 32, side)
        elif side is not None:
            image = centre_crop(image, min(side, image.shape[0]), min(side, image.shape[1]))
        if image.shape != reference.shape:
            entries[method] = {"missing": f"{path.name} is {image.shape}, the reference {reference.shape}"}
            continue
        entries[method] = {**scores(case, image, reference), "file": path.name}
    return entries


# --- the committed scores: every scored image of the paper's scale, merged from every run ---------------------

GROUPS = ("Table 1", "Set5 x4", "Set14 x4", "Set5 x8", "Set14 x8", "CSet9 sigma 25", "CSet9 sigma 50")


def case_row(case: Case, inputs: Path) -> dict[str, Any]:
    """What a table says of ``case`` before any result: its group, size, input PSNR and the paper's number."""
    with Image.open(inputs / case.reference) as ref:
        size = f"{ref.width}x{ref.height}"
    return {
        "name": case.name,
        "group": case.group,
        "size": size,
        "input_psnr": input_psnr(case, inputs),
        "paper_psnr": case.paper_psnr,
    }


def merge_row(store: dict[str, Any], row: dict[str, Any]) -> None:
    """Puts ``row``'s scores into ``store`` (by image name): finished fits, peers and published outputs replace the
    stored ones of the same label; what is not finished leaves the stored entry as it was."""
    kept = store.setdefault(row["name"], {"peers": {}, "authors": {}, "fits": {}})
    kept.update({k: row[k] for k in ("name", "group", "size", "input_psnr", "paper_psnr")})
    kept["peers"].update({k: v for k, v in row.get("peers", {}).items() if "psnr" in v})
    kept["authors"].update({k: v for k, v in row.get("authors", {}).items() if "psnr" in v})
    kept["fits"].update({k: v for k, v in row.get("fits", {}).items() if v.get("status") == "done"})


def label_order(label: str) -> tuple[int, str]:
    """Columns in ``COLUMNS``' order, each column's seeds after it."""
    column = max((c for c in COLUMNS if label == c or label.startswith(c + "-s")), key=len, default="")
    return (list(COLUMNS).index(column) if column else len(COLUMNS), label)


def render_store(table: str, store: dict[str, Any]) -> str:
    """The committed table: every stored image, its peers, the published outputs and every fitted column."""
    rows = sorted(store.values(), key=lambda r: (GROUPS.index(r["group"]), r["name"]))
    labels = sorted({label for r in rows for label in r["fits"]}, key=label_order)
    for r in rows:
        r["fits"] = {label: r["fits"].get(label, {"status": "not run yet"}) for label in labels}
    peers = list(dict.fromkeys(p for r in rows for p in r["peers"]))
    authors = list(dict.fromkeys(a for r in rows for a in r["authors"]))
    return markdown(table, rows, peers, labels, authors)


def update_store(scores_dir: Path, table: str, rows: Iterable[dict[str, Any]]) -> Path:
    """Merges ``rows`` into ``scores_dir/TABLE.json`` and writes ``TABLE.md`` from everything stored."""
    from dip_compile.imageio import atomic_write

    path = scores_dir / f"{table}.json"
    with common.locked(scores_dir / f".{table}.lock"):  # runs side by side each merge when they end
        stored: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {"table": table, "rows": {}}
        for row in rows:
            merge_row(stored["rows"], row)
        stored["columns"] = {name: column.note for name, column in COLUMNS.items()}
        text = json.dumps(stored, indent=1) + "\n"
        markdown = render_store(table, json.loads(text)["rows"]) + "\n"
        atomic_write(path, lambda tmp: tmp.write_text(text))
        atomic_write(scores_dir / f"{table}.md", lambda tmp: tmp.write_text(markdown))
    return path


def read_row_file(path: Path) -> list[dict[str, Any]]:
    """The lines of a ``--rows-out`` file: each {"table", "row", "crop", "iteration_cap"}."""
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [line for line in lines if isinstance(line, dict) and line.get("paper_tables_row")]


def merge_files(scores_dir: Path, sources: Iterable[Path]) -> list[Path]:
    """Merges the rows of ``--rows-out`` files (or of every .jsonl file of a folder) into the committed store; rows
    of another crop or a capped iteration count are not the paper's protocol and are left out, with a line."""
    by_table: dict[str, list[dict[str, Any]]] = {}
    for source in sources:
        for path in sorted(source.glob("*.jsonl")) if source.is_dir() else [source]:
            for line in read_row_file(path):
                if line.get("crop") is not None or line.get("iteration_cap") is not None:
                    name, crop, cap = line["row"]["name"], line.get("crop"), line.get("iteration_cap")
                    print(f"paper_tables: {path.name}: {name} left out (crop {crop}, iteration cap {cap})", flush=True)
                    continue
                by_table.setdefault(line["table"], []).append(line["row"])
    return [update_store(scores_dir, table, rows) for table, rows in by_table.items()]


def write_row_file(
    path: Path, table: str, rows: Iterable[dict[str, Any]], crop: Optional[int], cap: Optional[int]
) -> None:
    """Each image with a finished fit as one line of ``path`` (JSON Lines; a line of the same table and image is
    replaced), with the crop and iteration cap it ran at: one small file, what a device call brings back from
    directly under its $OUT."""
    kept = {(line["table"], line["row"]["name"]): line for line in read_row_file(path)} if path.exists() else {}
    for row in rows:
        if any(f.get("status") == "done" for f in row["fits"].values()):
            line = {"paper_tables_row": 1, "table": table, "crop": crop, "iteration_cap": cap, "row": row}
            kept[(table, row["name"])] = line
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(line) + "\n" for line in kept.values()))


# --- the batch --------------------------------------------------------------------------------------------------


def run_batch(manifest: Path, outdir: Path, args: argparse.Namespace, deadline: Optional[float]) -> int:
    """Runs the manifest through ``dipc batch`` until it ends or ``deadline`` (time.monotonic()) passes; at the
    deadline it sends the batch Ctrl-C (every running fit saves its checkpoint), so a rerun continues."""
    options = ["--seed", str(args.seed), "--checkpoint-every", str(args.checkpoint_every), "--device", args.device]
    options += ["--pack", str(args.pack), *(["--ray"] if args.ray else []), *(["-q"] if args.quiet else [])]
    options += ["--shard", args.shard] if args.shard else []
    return common.run_batch(
        manifest, outdir, options, args.threads, deadline, name="paper_tables", echo=True
    ).returncode


# --- scoring and the tables -------------------------------------------------------------------------------------


def fit_entry(case: Case, outdir: Path, inputs: Path, label: str) -> dict[str, Any]:
    """A finished fit's row (output NAME-LABEL): the protocol's PSNR and SSIM of the returned image, and from its
    report what ran; its seconds are the fitting seconds summed over resumes (the history's last record: a resumed
    fit's ``wall_seconds`` are only its last session's)."""
    name = f"{case.name}-{label}"
    image, report_path = outdir / f"{name}.png", outdir / f"{name}.json"
    if not (image.exists() and report_path.exists()):
        return {"status": "not run yet"}
    report = json.loads(report_path.read_text())
    config = report.get("config", {})
    return {
        "status": "done",
        **scores(case, read(image), read(inputs / case.reference)),
        "best_psnr_seen": report.get("best_psnr_seen"),
        "best_psnr_iteration": report.get("best_psnr_iteration"),
        "iterations": report.get("iterations"),
        "chosen_iteration": report.get("chosen_iteration"),
        "stop_reason": report.get("stop_reason"),
        "seconds": ((report.get("history") or {}).get("seconds") or [report.get("wall_seconds")])[-1],
        "resumed_from": report.get("resumed_from_iteration"),
        "device": report.get("device"),
        "precision": report.get("precision"),
        "preset": config.get("preset"),
        "seed": config.get("seed"),
        "framework": {k: config.get("net", {}).get(k) for k in ("bn_init", "align_corners")},
    }


def input_psnr(case: Case, inputs: Path) -> Optional[float]:
    """The corrupted input's PSNR (masked or noisy image); None for super-resolution, whose input is smaller."""
    if case.table == "sr":
        return None
    return psnr(read(inputs / case.image), read(inputs / case.reference))


def mean(values: Iterable[Optional[float]]) -> Optional[float]:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def fmt(value: Optional[float], digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def cell(entry: dict[str, Any]) -> str:
    """A scored entry as PSNR (SSIM); what it lacks as its status."""
    if entry.get("psnr") is None:
        return str(entry.get("status") or ("n/a" if "missing" in entry else "-"))
    ssim = entry.get("ssim")
    return fmt(entry["psnr"]) + ("" if ssim is None else f" ({ssim:.3f})")


def mean_cell(entries: list[dict[str, Any]]) -> str:
    return cell({"psnr": mean(e.get("psnr") for e in entries), "ssim": mean(e.get("ssim") for e in entries)})


def markdown(
    table: str, rows: list[dict[str, Any]], peers: list[str], labels: list[str], authors: Iterable[str] = ()
) -> str:
    """The table: per image the input, each peer, each published output of the authors and each fitted column as
    PSNR (SSIM), per group their means. A column's "best seen" is its report's: the best RGB PSNR of the whole image
    over the fit's log, not the protocol's score (SR: Y less the border), so it only compares within the column."""
    authors = list(authors)
    head = ["image", "size", "input"] + peers + [f"published {a}" for a in authors]
    for label in labels:
        head += [f"DIP {label}", f"{label}: best seen (RGB, whole image)", f"{label}: iterations, s"]
    head.append("paper")
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]

    def cells(r: dict[str, Any]) -> list[str]:
        out = [r["name"], r["size"], fmt(r["input_psnr"])]
        out += [cell(r["peers"].get(p, {})) for p in peers]
        out += [cell(r.get("authors", {}).get(a, {})) for a in authors]
        for label in labels:
            f = r["fits"][label]
            if f["status"] != "done":
                out += [f["status"], "", ""]
                continue
            ran = f"{f['iterations']}, {f['seconds']:.0f}" + (f", {f['precision']}" if f.get("precision") else "")
            out += [cell(f), fmt(f["best_psnr_seen"]), ran]
        out.append(fmt(r["paper_psnr"]))
        return out

    for group in dict.fromkeys(r["group"] for r in rows):
        members = [r for r in rows if r["group"] == group]
        lines += ["| " + " | ".join(cells(r)) + " |" for r in members]
        means = [f"**mean {group}**", "", fmt(mean(r["input_psnr"] for r in members))]
        means += [mean_cell([r["peers"].get(p, {}) for r in members]) for p in peers]
        means += [mean_cell([r.get("authors", {}).get(a, {}) for r in members]) for a in authors]
        for label in labels:
            done = [r["fits"][label] for r in members if r["fits"][label]["status"] == "done"]
            complete = len(done) == len(members)
            means += [
                mean_cell(done) + ("" if complete else f" ({len(done)} of {len(members)})"),
                fmt(mean(f["best_psnr_seen"] for f in done)),
                f"{sum(f['seconds'] or 0 for f in done):.0f} s",
            ]
        paper = PAPER_MEANS.get(group, {})
        means.append("; ".join(f"{k} {v:.2f}" for k, v in paper.items()))
        lines.append("| " + " | ".join(means) + " |")
    return "\n".join(lines)


def seed_spread(rows: list[dict[str, Any]], runs: list[Run]) -> dict[str, dict[str, Any]]:
    """Per column fitted with several seeds, per image the PSNR of each seed and their range (max - min)."""
    spread: dict[str, dict[str, Any]] = {}
    for column in dict.fromkeys(r.column for r in runs):
        labels = [r.label for r in runs if r.column == column]
        if len(labels) < 2:
            continue
        for row in rows:
            psnrs = [row["fits"][label].get("psnr") for label in labels]
            if all(p is not None for p in psnrs):
                seeds = [r.seed for r in runs if r.column == column]
                entry = {"seeds": seeds, "psnr": psnrs, "range": max(psnrs) - min(psnrs), "std": float(np.std(psnrs))}
                spread.setdefault(column, {})[row["name"]] = entry
    return spread


def spread_lines(spread: dict[str, dict[str, Any]]) -> str:
    lines = []
    for column, images in spread.items():
        for name, e in images.items():
            values = ", ".join(f"{p:.2f}" for p in e["psnr"])
            lines.append(
                f"- {column}, {name}, seeds {' '.join(map(str, e['seeds']))}: {values} (range {e['range']:.2f} dB)"
            )
    return "\n".join(lines)


def build_table(
    table: str,
    cases: list[Case],
    inputs: Path,
    outdir: Path,
    peers: dict[str, dict[str, Any]],
    labels: list[str],
    authors: Optional[dict[str, dict[str, Any]]] = None,
) -> tuple[list[dict[str, Any]], str]:
    """Every case scored: its row (``case_row``, the peers, the published outputs, each label's fit) and the table."""
    names = list(peer_functions(table))
    rows = [
        {
            **case_row(case, inputs),
            "peers": {k: v for k, v in peers.get(case.name, {}).items() if k in names},  # (not a cache's old names)
            "authors": (authors or {}).get(case.name, {}),
            "fits": {label: fit_entry(case, outdir, inputs, label) for label in labels},
        }
        for case in cases
    ]
    return rows, markdown(table, rows, names, labels, PUBLISHED[table] if authors else ())


def table_cases(table: str, args: argparse.Namespace, inputs: Path, side: Optional[int]) -> list[Case]:
    """The table's cases (``--only`` applied) with their inputs written from ``--data``; without ``--data``'s paper/
    (a lent GPU: only the working tree travels) the inputs a ``--prepare`` run wrote, as its cases.json lists them."""
    listed = inputs / "cases.json"
    if (args.data / "paper").is_dir():
        cases = cases_of(table, args.data)
        if args.only:
            cases = [c for c in cases if any(o in c.name for o in args.only)]
        inputs.mkdir(parents=True, exist_ok=True)
        for case in cases:
            write_inputs(case, args.data, inputs, side)
        known = {c["name"]: c for c in json.loads(listed.read_text())} if listed.exists() else {}
        known.update({c.name: dataclasses.asdict(c) for c in cases})
        listed.write_text(json.dumps(list(known.values()), indent=1) + "\n")
        return cases
    if not listed.exists():
        raise SystemExit(
            f"paper_tables: neither {args.data / 'paper'} nor {listed} (pass --data, or --inputs of a --prepare run)"
        )
    cases = [Case(**c) for c in json.loads(listed.read_text())]
    return [c for c in cases if not args.only or any(o in c.name for o in args.only)]


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--table", choices=(*TABLES, "all"), default="all")
    parser.add_argument("--scale", choices=tuple(SCALES), default="quick")
    parser.add_argument(
        "--settings", nargs="+", choices=SETTINGS, help="the columns fitted, each on its own (default: the scale's)"
    )
    parser.add_argument(
        "--seeds", nargs="+", type=int, help="fit every column with each of these seeds (NAME-COLUMN-sSEED)"
    )
    parser.add_argument("--data", type=Path, default=DATA, help="holds paper/")
    parser.add_argument("--out", type=Path, default=RESULTS / "paper_tables")
    parser.add_argument("--inputs", type=Path, help="the inputs' folder (TABLE/ in it; default OUT/SCALE/inputs)")
    parser.add_argument("--prepare", action="store_true", help="write the inputs and cases.json, fit nothing")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="only the cases whose name contains one of these")
    parser.add_argument("--crop", type=int, help="override the scale's centre-crop side (every table)")
    parser.add_argument("--iterations", type=int, help="override the scale's iteration cap (every table)")
    parser.add_argument("--device", default="auto", help="dipc batch --device")
    parser.add_argument("--pack", type=int, default=1, help="dipc batch --pack")
    parser.add_argument("--ray", action="store_true", help="dipc batch --ray")
    parser.add_argument("--threads", type=int, help="OMP_NUM_THREADS of the batch")
    common.add_shard_option(parser)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint-every", type=float, default=60.0, help="seconds between a fit's checkpoints")
    parser.add_argument("--max-minutes", type=float, help="stop the fits after this long (a rerun continues)")
    parser.add_argument("--no-peers", action="store_true", help="skip the classical peers")
    parser.add_argument("--report", action="store_true", help="fit nothing: score what is on disk and write tables")
    parser.add_argument(
        "--authors", type=Path, help="score the authors' published outputs in this folder (their site's "
        "assets/deep-image-prior) with the same protocol"
    )  # fmt: skip
    parser.add_argument(
        "--scores", type=Path, default=SCORES, help="the committed scores that a paper-scale run merges into"
    )
    parser.add_argument("--rows-out", type=Path, help="also write each scored image as a line of this .jsonl file")
    parser.add_argument(
        "--merge",
        nargs="+",
        type=Path,
        metavar="PATH",
        help="only merge these --rows-out files (or every .jsonl file of these folders) into --scores",
    )
    parser.add_argument(
        "--nlm-sweep", nargs="+", type=float, metavar="H", help="denoise: score non-local means at each filter "
        "strength (units of sigma) into --scores' nlm-sweep.json, fit nothing"
    )  # fmt: skip
    parser.add_argument("-q", "--quiet", action="store_true", help="no per-fit progress from dipc batch")
    args = parser.parse_args(argv)
    args.shard = common.check_shard(parser, args.shard)

    if args.merge:
        for path in merge_files(args.scores, args.merge):
            print(f"paper_tables: merged into {path} and {path.with_suffix('.md')}", flush=True)
        return 0
    scale = SCALES[args.scale]
    root = args.out / args.scale
    # only the paper's own protocol enters the committed scores
    record = args.scale == "paper" and args.crop is None and args.iterations is None and not args.prepare
    deadline = None if args.max_minutes is None else time.monotonic() + 60.0 * args.max_minutes
    tables = list(TABLES) if args.table == "all" else [args.table]
    started = time.perf_counter()
    documents, interrupted, failed = [], False, False
    for table in tables:
        side = args.crop if args.crop is not None else scale.crop[table]
        cap = args.iterations if args.iterations is not None else scale.iterations[table]
        settings = args.settings or list(scale.settings[table])
        runs = runs_of(settings, args.seeds or [args.seed], args.seed)
        labels = [run.label for run in runs]
        inputs, outdir = (args.inputs or root / "inputs") / table, root / "batch" / table
        cases = table_cases(table, args, inputs, side)
        manifest = inputs / common.manifest_name(args.shard)
        manifest.write_text("".join(json.dumps(r) + "\n" for r in manifest_rows(cases, runs, cap, args.seed)))
        if args.prepare:
            print(f"paper_tables: {len(cases)} {table} inputs in {inputs}", flush=True)
            continue
        if args.nlm_sweep:
            sweep = nlm_sweep(cases, inputs, args.nlm_sweep)
            command = "python benchmarks/paper_tables.py " + " ".join(argv or sys.argv[1:])
            args.scores.mkdir(parents=True, exist_ok=True)
            (args.scores / "nlm-sweep.json").write_text(json.dumps({"command": command, **sweep}, indent=1) + "\n")
            print(json.dumps({k: {h: v["mean"] for h, v in per.items()} for k, per in sweep.items()}), flush=True)
            return 0
        peers = {} if args.no_peers else run_peers(cases, inputs, root / f"peers-{table}.json")
        authors = {c.name: score_published(c, args.authors, inputs, side) for c in cases} if args.authors else None
        code = None
        if not args.report and not interrupted:
            print(f"paper_tables: {table}, {len(cases)} images x {labels}, crop {side}, cap {cap}", flush=True)
            code = run_batch(manifest, outdir, args, deadline)
            interrupted = code not in (0, 1)
            failed = failed or code == 1
        rows, text = build_table(table, cases, inputs, outdir, peers, labels, authors)
        spread = seed_spread(rows, runs)
        if spread:
            text += "\n\nSeed spread (PSNR of each seed):\n\n" + spread_lines(spread)
        result = {
            "table": table,
            "scale": args.scale,
            "scale_note": scale.note,
            "crop": side,
            "iteration_cap": cap,
            "settings": {run.label: COLUMNS[run.column].note + f" (seed {run.seed})" for run in runs},
            "seed_spread": spread,
            "batch_exit_code": code,
            "machine": machine(),
            "rows": rows,
        }
        root.mkdir(parents=True, exist_ok=True)
        (root / f"{table}.json").write_text(json.dumps(result, indent=1))
        (root / f"{table}.md").write_text(text + "\n")
        if args.rows_out:
            write_row_file(args.rows_out, table, rows, side, cap)
        if record:
            print(f"paper_tables: scores merged into {update_store(args.scores, table, rows)}", flush=True)
        documents.append(
            f"### {table} ({args.scale} scale: crop {side or 'none'}, iteration cap {cap or 'none'})\n\n{text}\n"
        )
        print(text, flush=True)
    if args.prepare:
        return 0
    (root / "tables.md").write_text("\n".join(documents))
    print(f"paper_tables: {time.perf_counter() - started:.0f} s; tables in {root}", flush=True)
    if interrupted:
        print("paper_tables: stopped before every fit finished; rerun the same command to continue", flush=True)
        return 130
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
