#!/usr/bin/env python3
"""Regenerate a Deep Image Prior result from its exported ONNX model, with onnxruntime, numpy and pillow only.

    python export/regenerate.py model.onnx -o restored.png [--provider auto|cpu|cuda] [--check fit.png] [--info]

The model carries the fitted network and the fixed noise it was fed (the initializer of its ``noise`` input),
so an empty feed returns the restored image (N, C, H, W) in [0, 1]; ``--noise other.npy`` feeds other noise.
This file is also ``dip_compile.replay.regenerate``: ``dipc regenerate`` runs this same code. It must never
import torch or dip_compile (a test runs it with torch made unimportable).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import stat
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

FORMAT = "dip-compile-export"
VERSION = 1
PROVIDERS = ("auto", "cpu", "cuda")


class ReplayError(ValueError):
    """A problem with the user's input (bad model file, existing output): one line, exit code 2."""


# --- the model ----------------------------------------------------------------------------------------------

def open_session(model: str | Path | bytes, provider: str = "auto") -> tuple[Any, str]:
    """An onnxruntime session of a dip-compile export and the provider it runs on; CUDA falls back to CPU."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise ReplayError("regenerating needs onnxruntime: pip install onnxruntime (or onnxruntime-gpu)") from None

    if provider not in PROVIDERS:
        raise ReplayError(f"unknown provider {provider!r}; choose auto, cpu or cuda")
    name = "model" if isinstance(model, bytes) else str(model)
    if not isinstance(model, bytes):
        path = Path(model)
        if not path.exists():
            raise ReplayError(f"model not found: {path}")
        if path.is_dir():
            raise ReplayError(f"model {path} is a folder, not an ONNX file")
        model = str(path)
    wanted = ["CPUExecutionProvider"]
    if provider != "cpu" and "CUDAExecutionProvider" in ort.get_available_providers():
        wanted.insert(0, "CUDAExecutionProvider")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    # A missing CUDA runtime is reported as an error by onnxruntime's default logger; we report it in one line.
    ort.set_default_logger_severity(4)
    try:
        session = ort.InferenceSession(model, options, providers=wanted)
    except Exception as exc:  # onnxruntime raises its own pybind exception types for unreadable models
        first = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0]
        reason = first.split(" failed:", 1)[-1].strip()  # drop onnxruntime's "... Load model from PATH failed:"
        if reason.startswith("/") and ") " in reason:  # and its source location and C++ signature
            reason = reason.rsplit(") ", 1)[-1]
        raise ReplayError(f"{name} is not a readable ONNX model (corrupted, truncated or unsupported: "
                          f"{reason[:120]})") from None
    finally:
        ort.set_default_logger_severity(2)
    meta = metadata(session)
    if meta.get("format") != FORMAT:
        raise ReplayError(f"{name} is an ONNX model but not a dip-compile export (no {FORMAT} metadata)")
    if meta.get("format_version") != str(VERSION):
        raise ReplayError(f"{name} has export format version {meta.get('format_version')}; "
                          f"this program reads version {VERSION}")
    used = "cuda" if "CUDAExecutionProvider" in session.get_providers() else "cpu"
    if provider == "cuda" and used != "cuda":
        print("note: the CUDA provider is not usable here; running on the CPU", file=sys.stderr)
    return session, used


def metadata(session: Any) -> dict[str, str]:
    return dict(session.get_modelmeta().custom_metadata_map)


def seed_noise(seed: int, shape: tuple[int, ...], scale: float) -> np.ndarray:
    """torch.rand(shape, generator=torch.Generator().manual_seed(seed)) * scale, bit for bit, without torch:
    torch's CPU generator is MT19937 seeded like numpy's RandomState, and torch.rand keeps the low 24 bits of
    each 32-bit draw as k * 2**-24."""
    count = int(np.prod(shape))
    raw = np.random.RandomState(int(seed) % 2**32).randint(0, 2**32, size=count, dtype=np.uint32)
    uniform = (raw & np.uint32(2**24 - 1)).astype(np.float32) * np.float32(2.0**-24)
    return (uniform * np.float32(scale)).reshape(shape)


def shipped_noise(meta: dict[str, str]) -> np.ndarray:
    """The fixed noise of a ``--noise seed`` export, rebuilt from its seed and checked against its checksum."""
    import hashlib

    try:
        shape = tuple(int(s) for s in meta["noise_shape"].split("x"))
        noise = seed_noise(int(meta["noise_seed"]), shape, float(meta["noise_scale"]))
    except (KeyError, ValueError):
        raise ReplayError("the model stores no noise and its metadata cannot rebuild it") from None
    digest = "sha256:" + hashlib.sha256(noise.astype("<f4").tobytes()).hexdigest()
    if digest != meta.get("noise_sha256"):
        raise ReplayError("the noise rebuilt from the seed does not match the model's noise checksum")
    return noise


def run(session: Any, noise: np.ndarray | None = None) -> np.ndarray:
    """The image (N, C, H, W) float32 in [0, 1]: on the shipped noise (empty feed) or on ``noise``."""
    feed = {}
    if noise is None and metadata(session).get("noise") == "seed":
        noise = shipped_noise(metadata(session))
    if noise is not None:
        # an input with an initializer is listed by onnxruntime as an overridable initializer, not as an input
        args = [a for a in session.get_inputs() + session.get_overridable_initializers() if a.name == "noise"]
        expected = args[0].shape
        noise = np.ascontiguousarray(noise, dtype=np.float32)
        if noise.ndim == 3:
            noise = noise[None]
        if noise.ndim != 4 or list(noise.shape[1:]) != list(expected[1:]):
            want = "x".join(str(s) for s in expected[1:])
            raise ReplayError(f"noise has shape {'x'.join(map(str, noise.shape))}; the model takes (N)x{want}")
        feed["noise"] = noise
    return session.run(["image"], feed)[0]


# --- images -------------------------------------------------------------------------------------------------

def to_uint8(image: np.ndarray) -> np.ndarray:
    """(H, W, C) uint8 from (C, H, W) or (1, C, H, W) in [0, 1], rounded as dip-compile's PNG writer rounds."""
    if image.ndim == 4:
        image = image[0]
    array = np.clip(np.asarray(image, dtype=np.float32), 0, 1).transpose(1, 2, 0)
    return np.round(array * 255.0).astype(np.uint8)


def load_png(path: str | Path, channels: int) -> np.ndarray:
    """(H, W, C) uint8 of an image file, as RGB or grayscale to match ``channels``."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.exists():
        raise ReplayError(f"image to check against not found: {path}")
    try:
        with Image.open(path) as im:
            array = np.asarray(im.convert("L" if channels == 1 else "RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ReplayError(f"cannot read {path}: not a readable image ({exc.__class__.__name__})") from None
    return array[..., None] if array.ndim == 2 else array


def compare(image: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """Agreement of ``image`` with ``reference`` (both (..., C, H, W) float in [0, 1], or (H, W, C) uint8 for
    the reference): max absolute difference in [0, 1], share of identical 8-bit pixels, largest 8-bit difference."""
    ours = to_uint8(image).astype(np.int16)
    if reference.dtype == np.uint8:
        theirs_float = reference.astype(np.float32).transpose(2, 0, 1) / 255.0
        theirs = reference.astype(np.int16)
    else:
        theirs_float = reference[0] if reference.ndim == 4 else reference
        theirs = to_uint8(reference).astype(np.int16)
    mine = image[0] if image.ndim == 4 else image
    if ours.shape != theirs.shape:
        raise ReplayError(f"image sizes differ: {ours.shape[1]}x{ours.shape[0]}x{ours.shape[2]} vs "
                          f"{theirs.shape[1]}x{theirs.shape[0]}x{theirs.shape[2]} (width x height x channels)")
    diff8 = np.abs(ours - theirs)
    return {"max_abs_diff": float(np.max(np.abs(mine.astype(np.float64) - theirs_float.astype(np.float64)))),
            "identical_8bit": float(np.mean(diff8 == 0)), "max_8bit_diff": int(diff8.max())}


def check_input(path: str | Path, what: str) -> Path:
    """Fails in one line unless ``path`` is an existing regular file (a FIFO or a device would hang or never end)."""
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ReplayError(f"{what} not found: {path}") from None
    except OSError as exc:
        raise ReplayError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if stat.S_ISDIR(st.st_mode):
        raise ReplayError(f"{what} {path} is a folder, not a file")
    if not stat.S_ISREG(st.st_mode):
        raise ReplayError(f"{what} {path} is not a regular file (a pipe, socket or device)")
    if not os.access(path, os.R_OK):
        raise ReplayError(f"cannot read {what} {path}: permission denied")
    return path


def check_output(path: str | Path, force: bool) -> Path:
    path = Path(path)
    if path.is_dir():
        raise ReplayError(f"output {path} is a folder")
    if (path.exists() or path.is_symlink()) and not force:
        raise ReplayError(f"output {path} exists; pass --force to overwrite it")
    if path.exists() and not path.is_file():
        raise ReplayError(f"output {path} is not a regular file")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise ReplayError(f"output folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise ReplayError(f"output folder {folder} is not writable")
    return path


# --- writing files: atomically, with the mode open() would give, never replacing what appeared meanwhile --------

TEMP_SUFFIX = ".tmp"


def _umask() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # no /proc: read it by setting it (and put it back at once)
    os.umask(mask)
    return mask


def _temp_prefix(path: Path) -> str:
    return f".{path.name}.{os.getpid()}."


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. EPERM: it exists, owned by someone else
        return True
    return True


def clean_stale_temps(path: Path) -> list[Path]:
    """Removes ``.NAME.<pid>.*.tmp`` files beside ``path`` left by a writer that was killed (its pid is gone)."""
    folder = path.parent if str(path.parent) else Path(".")
    removed = []
    with contextlib.suppress(OSError):
        for candidate in folder.glob(f".{glob_escape(path.name)}.*{TEMP_SUFFIX}"):
            middle = candidate.name[len(path.name) + 2:].split(".", 1)[0]
            if middle.isdigit() and int(middle) != os.getpid() and not _pid_alive(int(middle)):
                with contextlib.suppress(OSError):
                    candidate.unlink()
                    removed.append(candidate)
    return removed


def glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def _conflict_path(path: Path) -> Path:
    for n in range(1, 1000):
        candidate = path.with_name(f"{path.stem}.{n}{path.suffix}")
        if not candidate.exists():
            return candidate
    raise ReplayError(f"output {path} exists and no free name was found beside it")


def write_atomic(path: str | Path, write: Callable[[Path], None], *, overwrite: bool = True) -> Path:
    """Calls ``write(tmp)`` on a temp file beside ``path`` and publishes it only once complete.

    The file gets the mode a plain ``open()`` would give: an existing file's mode is kept, a new one gets 0666 minus
    the umask. Without ``overwrite`` the rename is exclusive (a hard link): if another process created ``path``
    while this one worked, nothing is replaced and the result is kept under a free sibling name, which the error
    names. A failure (a full disk) or an interrupt leaves no temp file and the old file untouched.
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    clean_stale_temps(path)
    try:
        fd, name = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=TEMP_SUFFIX, dir=folder)
    except OSError as exc:
        raise _write_error(path, exc) from None
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        try:
            mode = stat.S_IMODE(path.stat().st_mode) if overwrite and path.is_file() else 0o666 & ~_umask()
        except OSError:
            mode = 0o666 & ~_umask()
        os.chmod(tmp, mode)
        if overwrite:
            os.replace(tmp, path)
        else:
            _publish_exclusive(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise _write_error(path, exc) from None
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return path


def _publish_exclusive(tmp: Path, path: Path) -> None:
    try:
        os.link(tmp, path)
    except FileExistsError:
        kept = _conflict_path(path)
        os.replace(tmp, kept)
        raise ReplayError(f"output {path} was created by another process while this one ran; nothing was "
                          f"overwritten and this result was written to {kept}") from None
    except OSError as exc:  # a file system without hard links: check, then rename (not race-free there)
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise
        if path.exists():
            kept = _conflict_path(path)
            os.replace(tmp, kept)
            raise ReplayError(f"output {path} was created by another process while this one ran; nothing was "
                              f"overwritten and this result was written to {kept}") from None
        os.replace(tmp, path)
        return
    tmp.unlink()


def _write_error(path: Path, exc: OSError) -> ReplayError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return ReplayError(f"no space left on the device while writing {path}; the previous file, if any, is "
                           f"untouched")
    if exc.errno == errno.EFBIG:
        return ReplayError(f"cannot write {path}: file too large for this file system or process limit")
    return ReplayError(f"cannot write {path}: {exc.strerror or exc}")


def save_png(image: np.ndarray, path: str | Path, *, overwrite: bool = True) -> Path:
    """Writes the image as PNG, atomically (see ``write_atomic``)."""
    from PIL import Image

    array = to_uint8(image)
    pil = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
    return write_atomic(path, lambda tmp: pil.save(tmp, format="PNG"), overwrite=overwrite)


# --- the program --------------------------------------------------------------------------------------------

def regenerate(model: str | Path, output: str | Path | None, *, provider: str = "auto", check: str | Path | None = None,
               noise: str | Path | None = None, force: bool = False) -> dict[str, Any]:
    """Runs the model and writes its image; returns what happened (provider, seconds, the check's numbers)."""
    import time

    if output is not None:
        check_output(output, force)
    session, used = open_session(model, provider)
    fed = None
    if noise is not None:
        try:
            fed = np.load(noise)
        except (OSError, ValueError) as exc:
            raise ReplayError(f"cannot read noise {noise}: {exc.__class__.__name__}") from None
    t0 = time.perf_counter()
    image = run(session, fed)
    seconds = time.perf_counter() - t0
    result: dict[str, Any] = {"provider": used, "seconds": seconds, "shape": list(image.shape),
                              "metadata": metadata(session)}
    if check is not None:
        result["check"] = compare(image[:1], load_png(check, image.shape[1]))
    if output is not None:
        save_png(image[:1], output, overwrite=force)
        result["output"] = str(output)
    return result


def passes(check: dict[str, float]) -> bool:
    """The export target: at least 99.9% identical 8-bit pixels and none off by more than 1."""
    return check["identical_8bit"] >= 0.999 and check["max_8bit_diff"] <= 1


def describe(meta: dict[str, str]) -> str:
    keys = ("task", "image_size", "iterations", "seed", "image", "bn", "weights", "loss", "psnr_observation",
            "psnr_reference", "noise_sha256", "package_version", "torch_version")
    return "\n".join(f"{k}: {meta[k]}" for k in keys if meta.get(k))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="regenerate", description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="a dip-compile ONNX export")
    parser.add_argument("-o", "--output", help="PNG to write")
    parser.add_argument("--provider", default="auto", choices=PROVIDERS, help="onnxruntime provider (CUDA falls back to CPU)")
    parser.add_argument("--check", help="compare with this PNG (e.g. the fit's output): max abs diff, identical 8-bit pixels")
    parser.add_argument("--noise", help="a .npy of other noise to feed instead of the shipped one")
    parser.add_argument("--info", action="store_true", help="print the model's metadata as JSON and exit")
    parser.add_argument("--force", action="store_true", help="overwrite an existing output")
    args = parser.parse_args(argv)
    try:
        if args.info:
            session, _ = open_session(args.model, "cpu")
            print(json.dumps(metadata(session), indent=2, sort_keys=True))
            return 0
        if args.output is None and args.check is None:
            raise ReplayError("nothing to do: give -o OUT.png and/or --check PNG")
        result = regenerate(args.model, args.output, provider=args.provider, check=args.check, noise=args.noise,
                            force=args.force)
    except ReplayError as exc:
        print(f"regenerate: error: {exc}", file=sys.stderr)
        return 2
    return report(result)


def report(result: dict[str, Any]) -> int:
    """Prints the outcome; the exit code is 1 when a --check misses the export target."""
    h, w = result["shape"][-2:]
    where = f" -> {result['output']}" if "output" in result else ""
    print(f"regenerated {w}x{h} on {result['provider']} in {result['seconds']:.3f} s{where}")
    check = result.get("check")
    if check is None:
        return 0
    ok = passes(check)
    print(f"check: max abs diff {check['max_abs_diff']:.3g}, identical 8-bit pixels {100 * check['identical_8bit']:.3f}%, "
          f"max 8-bit diff {check['max_8bit_diff']} ({'OK' if ok else 'MISMATCH'})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
