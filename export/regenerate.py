#!/usr/bin/env python3
"""Regenerate a Deep Image Prior result from its exported ONNX model, with onnxruntime, numpy and pillow only.

    python export/regenerate.py model.onnx -o restored.png [--provider auto|cpu|cuda] [--check fit.png] [--info]
                                [--allow-unsealed]

The model carries the fitted network and the fixed noise it was fed (the initializer of its ``noise`` input),
so an empty feed returns the restored image (N, C, H, W) in [0, 1]; ``--noise other.npy`` feeds other noise.
This file is also ``dip_compile.replay.regenerate``: ``dipc regenerate`` runs this same code. It must never
import torch or dip_compile (a test runs it with torch made unimportable).

Before running, the model is checked against what its metadata records: the embedded noise against ``noise_sha256``
(this needs the ``onnx`` package, present wherever dip_compile is installed; without it that check is skipped
silently, onnxruntime cannot read initializers), the integrity seal (a model without one is refused unless
``--allow-unsealed``: removing the seal is an edit too), a ``--noise seed`` model's ``noise_shape`` against its declared
``noise`` input (before any noise is allocated), and afterwards the image against ``image_width``/``image_height``.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import glob
import hashlib
import json
import math
import os
import stat
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "dip-compile-export"
VERSION = 1
PROVIDERS = ("auto", "cpu", "cuda")
QUIET = 4  # onnxruntime's log severity "fatal": its errors reach the user as our one line instead


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
        model = str(check_input(model, "model"))
    wanted = ["CPUExecutionProvider"]
    if provider != "cpu" and "CUDAExecutionProvider" in ort.get_available_providers():
        wanted.insert(0, "CUDAExecutionProvider")
    options = ort.SessionOptions()
    # Errors only as our one line: onnxruntime's session logger would print its own error lines first (a model that
    # fails while running), and its default logger reports a missing CUDA runtime as an error.
    options.log_severity_level = QUIET
    ort.set_default_logger_severity(QUIET)
    try:
        session = ort.InferenceSession(model, options, providers=wanted)
    except Exception as exc:  # onnxruntime raises its own pybind exception types for unreadable models
        raise ReplayError(
            f"{name} is not a readable ONNX model (corrupted, truncated or unsupported: {_ort_reason(exc)})"
        ) from None
    finally:
        ort.set_default_logger_severity(2)
    meta = metadata(session)
    if meta.get("format") != FORMAT:
        raise ReplayError(f"{name} is an ONNX model but not a dip-compile export (no {FORMAT} metadata)")
    if meta.get("format_version") != str(VERSION):
        raise ReplayError(
            f"{name} has export format version {meta.get('format_version')}; this program reads version {VERSION}"
        )
    used = "cuda" if "CUDAExecutionProvider" in session.get_providers() else "cpu"
    if provider == "cuda" and used != "cuda":
        print("note: the CUDA provider is not usable here; running on the CPU", file=sys.stderr)
    return session, used


def _ort_reason(exc: Exception) -> str:
    """The part of an onnxruntime exception a user can act on, short and on one line."""
    first = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0]
    reason = first.split(" failed:", 1)[-1].strip()  # drop onnxruntime's "... Load model from PATH failed:"
    if reason.startswith("/") and ") " in reason:  # and its source location and C++ signature
        reason = reason.rsplit(") ", 1)[-1]
    reason = reason.removeprefix("[ONNXRuntimeError] : ").split("Status Message: ")[-1]
    return reason[:160]


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


MAX_NOISE_VALUES = 2**28  # 1 GiB of float32; DIP's largest inputs (32 x 1024 x 1024) are 2**25


def noise_input(session: Any) -> Any | None:
    """The model's ``noise`` argument: a graph input, or (when it has an initializer) an overridable initializer."""
    args = [a for a in session.get_inputs() + session.get_overridable_initializers() if a.name == "noise"]
    return args[0] if args else None


def check_noise_shape(shape: Sequence[int], arg: Any | None, what: str = "noise") -> tuple[int, ...]:
    """Refuses noise whose shape disagrees with the model's static ``noise`` dims or is absurdly large, before any
    of it is allocated or read (a shape comes from metadata or a .npy header, both under the user's control)."""
    if arg is None:
        raise ReplayError("the model has no noise input")
    shape = tuple(int(s) for s in shape)
    declared = list(arg.shape)
    if (
        len(shape) != len(declared)
        or min(shape, default=0) < 1
        or any(isinstance(d, int) and d != s for d, s in zip(declared, shape, strict=True))
    ):
        want = "x".join(str(d) if isinstance(d, int) else "(N)" for d in declared)
        raise ReplayError(f"{what} has shape {'x'.join(map(str, shape))}; the model takes {want}")
    values = math.prod(shape)
    if values > MAX_NOISE_VALUES:
        raise ReplayError(
            f"{what} has shape {'x'.join(map(str, shape))}: {values} values, more than the "
            f"{MAX_NOISE_VALUES} this program accepts"
        )
    return shape


def shipped_noise(meta: dict[str, str], arg: Any | None) -> np.ndarray:
    """The fixed noise of a ``--noise seed`` export, rebuilt from its seed and checked against its checksum; its
    recorded shape is checked against the model's ``noise`` input first (altered metadata must not allocate)."""
    try:
        shape = tuple(int(s) for s in meta["noise_shape"].split("x"))
        seed, scale = int(meta["noise_seed"]), float(meta["noise_scale"])
    except (KeyError, ValueError):
        raise ReplayError("the model stores no noise and its metadata cannot rebuild it") from None
    noise = seed_noise(seed, check_noise_shape(shape, arg, "the noise its metadata records"), scale)
    if checksum(noise) != meta.get("noise_sha256"):
        raise ReplayError("the noise rebuilt from the seed does not match the model's noise checksum")
    return noise


def integrity(graph: bytes, meta: dict[str, str]) -> str:
    """The seal of an export: sha256 over its serialized graph (weights, noise) and its metadata (except this
    field). A model edited after export no longer matches."""
    fields = {k: v for k, v in meta.items() if k != "integrity_sha256"}
    digest = hashlib.sha256(graph)
    digest.update(json.dumps(fields, sort_keys=True).encode())
    return "sha256:" + digest.hexdigest()


def read_proto(model: str | Path | bytes) -> Any | None:
    """The model as an ``onnx`` ModelProto, read once for every check of its contents; None without the ``onnx``
    package (the checks are then skipped)."""
    try:
        import onnx
    except ImportError:
        return None
    try:
        if isinstance(model, bytes):
            return onnx.load_from_string(model)
        return onnx.load(str(model), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and onnx's own errors; onnxruntime read it already
        raise ReplayError(f"cannot read the model to check it ({exc.__class__.__name__})") from None


UNSEALED = (
    "the model carries no integrity seal (integrity_sha256), so edits to its weights, noise or metadata cannot be "
    "detected; pass --allow-unsealed to run it anyway"
)


def check_integrity(proto: Any | None, meta: dict[str, str]) -> str:
    """``ok``, ``unsealed`` (an export older than the seal) or ``unchecked`` (no ``onnx`` package); an altered
    model is a one-line ReplayError."""
    if "integrity_sha256" not in meta:
        return "unsealed"
    if proto is None:
        return "unchecked"
    if integrity(proto.graph.SerializeToString(deterministic=True), meta) != meta["integrity_sha256"]:
        raise ReplayError(
            "the model was altered after export: its weights, graph or metadata differ from what "
            "dip-compile wrote (integrity_sha256 does not match)"
        )
    return "ok"


def noise_beside(model: str | Path, meta: dict[str, str]) -> np.ndarray:
    """The fixed noise a portable export keeps beside the model (``noise_file``), checked against its checksum."""
    name = meta["noise_file"]
    if Path(name).name != name:
        raise ReplayError(f"the model's noise_file {name!r} is not a plain file name: the metadata was altered")
    noise = load_noise(Path(model).parent / name)
    if checksum(np.asarray(noise)) != meta.get("noise_sha256"):
        raise ReplayError(f"{name} does not match the model's noise checksum: not this model's noise")
    return noise


def checksum(noise: np.ndarray) -> str:
    """sha256 of the noise as little-endian float32 in C order: the exporter's ``noise_sha256``."""
    return "sha256:" + hashlib.sha256(np.ascontiguousarray(noise, dtype="<f4").tobytes()).hexdigest()


def check_embedded_noise(proto: Any | None, meta: dict[str, str]) -> None:
    """Refuses a model whose embedded noise is not the one its metadata's checksum records (the file was altered).
    Needs the ``onnx`` package to read the initializer (``proto`` is None without it: the check is skipped)."""
    if proto is None:
        return
    from onnx import numpy_helper

    tensor = next((t for t in proto.graph.initializer if t.name == "noise"), None)
    if tensor is None:
        return  # not embedded: run() says what is missing
    noise = numpy_helper.to_array(tensor)
    if noise.dtype != np.float32 or checksum(noise) != meta.get("noise_sha256"):
        raise ReplayError("the model's noise does not match its recorded checksum: the file was altered")


def load_noise(path: str | Path) -> np.ndarray:
    """A .npy of noise, memory-mapped (its shape is checked before any of it is read) and never unpickled."""
    path = check_input(path, "noise")
    try:
        noise = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        reason = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0][:120]
        raise ReplayError(f"cannot read noise {path}: not a readable .npy array ({reason})") from None
    if not isinstance(noise, np.ndarray):  # an .npz archive
        noise.close()
        raise ReplayError(f"noise {path} is an .npz archive; give one array as .npy")
    if noise.dtype.kind not in "fiu":
        raise ReplayError(f"noise {path} holds {noise.dtype} values; give real numbers")
    return noise


def recorded_size(meta: dict[str, str]) -> tuple[int, int] | None:
    """(height, width) of the image the export recorded, or None when it records none."""
    try:
        if "image_width" in meta and "image_height" in meta:
            return int(meta["image_height"]), int(meta["image_width"])
        if "image_size" in meta:
            width, height = meta["image_size"].split("x")
            return int(height), int(width)
    except ValueError:
        raise ReplayError("the model's recorded image size is not readable: the file was altered") from None
    return None


def run(session: Any, noise: np.ndarray | None = None) -> np.ndarray:
    """The image (N, C, H, W) float32 in [0, 1]: on the shipped noise (empty feed) or on ``noise``. A model that
    needs an input nobody gives, or whose image is not the size it records, is a one-line ReplayError."""
    meta = metadata(session)
    arg = noise_input(session)
    if noise is None and meta.get("noise") == "seed":
        noise = shipped_noise(meta, arg)
    feed = {}
    if noise is not None:
        if noise.ndim == 3:
            noise = noise[None]
        check_noise_shape(noise.shape, arg)
        feed["noise"] = np.ascontiguousarray(noise, dtype=np.float32)
    missing = [a.name for a in session.get_inputs() if a.name not in feed]
    if "noise" in missing:
        raise ReplayError(
            "the model stores no noise (its noise input has no initializer) and its metadata does "
            "not say how to rebuild it: feed noise with --noise FILE.npy"
        )
    if missing:
        raise ReplayError(
            f"the model needs input {', '.join(missing)}, which it does not carry and this program "
            f"cannot feed: not a model dip-compile wrote, or an altered one"
        )
    if "image" not in [o.name for o in session.get_outputs()]:
        raise ReplayError("the model has no image output: not a model dip-compile wrote, or an altered one")
    try:
        image = session.run(["image"], feed)[0]
    except Exception as exc:  # onnxruntime's own types: a graph that loads but cannot run (altered weights)
        raise ReplayError(
            f"the model failed to run: not a model dip-compile wrote, or an altered one ({_ort_reason(exc)})"
        ) from None
    if image.ndim != 4:
        raise ReplayError(f"the model returned a {image.ndim}-D image, not (N, C, H, W): the file was altered")
    size = recorded_size(meta)
    if size is not None and tuple(image.shape[2:]) != size:
        raise ReplayError(
            f"the model returned a {image.shape[3]}x{image.shape[2]} image but records "
            f"{size[1]}x{size[0]}: the file was altered"
        )
    return image


# --- images -------------------------------------------------------------------------------------------------


def to_uint8(image: np.ndarray) -> np.ndarray:
    """(H, W, C) uint8 from (C, H, W) or (1, C, H, W) in [0, 1], rounded as dip-compile's PNG writer rounds.
    NaN becomes 0 and inf is clipped, defined rather than whatever the float-to-int cast gives (``compare``
    counts such values, so a diverged image cannot pass a check)."""
    if image.ndim == 4:
        image = image[0]
    array = np.clip(np.nan_to_num(np.asarray(image, dtype=np.float32), nan=0.0), 0, 1).transpose(1, 2, 0)
    return np.round(array * 255.0).astype(np.uint8)


def load_png(path: str | Path, channels: int) -> np.ndarray:
    """(H, W, C) uint8 of an image file, as RGB or grayscale to match ``channels``."""
    from PIL import Image, UnidentifiedImageError

    path = check_input(path, "image to check against")
    try:
        with Image.open(path) as im:
            array = np.asarray(im.convert("L" if channels == 1 else "RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ReplayError(f"cannot read {path}: not a readable image ({exc.__class__.__name__})") from None
    return array[..., None] if array.ndim == 2 else array


def compare(image: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """Agreement of ``image`` with ``reference`` (both (..., C, H, W) float in [0, 1], or (H, W, C) uint8 for
    the reference): max absolute difference in [0, 1], share of identical 8-bit pixels, largest 8-bit difference,
    and the number of NaN/inf values in ``image`` (which its 8-bit form cannot show)."""
    ours = to_uint8(image).astype(np.int16)
    if reference.dtype == np.uint8:
        theirs_float = reference.astype(np.float32).transpose(2, 0, 1) / 255.0
        theirs = reference.astype(np.int16)
    else:
        theirs_float = reference[0] if reference.ndim == 4 else reference
        theirs = to_uint8(reference).astype(np.int16)
    mine = image[0] if image.ndim == 4 else image
    if ours.shape != theirs.shape:
        raise ReplayError(
            f"image sizes differ: {ours.shape[1]}x{ours.shape[0]}x{ours.shape[2]} vs "
            f"{theirs.shape[1]}x{theirs.shape[0]}x{theirs.shape[2]} (width x height x channels)"
        )
    diff8 = np.abs(ours - theirs)
    return {
        "max_abs_diff": float(np.max(np.abs(mine.astype(np.float64) - theirs_float.astype(np.float64)))),
        "identical_8bit": float(np.mean(diff8 == 0)),
        "max_8bit_diff": int(diff8.max()),
        "nonfinite": int(np.count_nonzero(~np.isfinite(mine))),
    }


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


def output_path(path: str | Path) -> Path:
    """``path`` as an output file's Path, refusing before any work a spelling that names a folder (a trailing
    separator, which ``Path`` would drop: ``-o newdir/`` wrote a file called ``newdir``) and a file name too long
    for the folder once written through its temporary name (``write_atomic``). Give it the user's own spelling."""
    if names_folder(path):
        raise ReplayError(f"output {os.fspath(path)} ends with a path separator: give a file name, not a folder")
    path = Path(path)
    limit = _name_max(path.parent) - TEMP_EXTRA_BYTES
    size = len(os.fsencode(path.name))
    if size > limit:
        raise ReplayError(
            f"output file name {path.name[:24]}... is too long: {size} bytes, at most {limit} in {path.parent} "
            f"(with the temporary name it is first written under)"
        )
    return path


def names_folder(path: str | Path) -> bool:
    """Whether the user's spelling ends with a separator (only text can: a Path has dropped it)."""
    text = os.fspath(path)
    return text.endswith(os.sep) or (os.altsep is not None and text.endswith(os.altsep))


def _name_max(folder: Path) -> int:
    """The longest file name ``folder``'s file system takes (255 where it cannot say, e.g. no such folder yet)."""
    try:
        return int(os.pathconf(folder, "PC_NAME_MAX"))
    except (OSError, ValueError, AttributeError):
        return 255


def check_output(path: str | Path, force: bool) -> Path:
    """Fails in one line, before any work, unless ``path`` (the user's spelling: see ``output_path``) can be written:
    not a folder, not existing without ``force``, in an existing folder this process can write."""
    path = output_path(path)
    try:
        return _check_output(path, force)
    except OSError as exc:  # e.g. ENAMETOOLONG: the whole path exceeds the system's limit
        raise ReplayError(f"cannot use output {path}: {exc.strerror or exc}") from None


def _check_output(path: Path, force: bool) -> Path:
    if path.is_dir():
        raise ReplayError(f"output {path} is a folder")
    if (path.exists() or path.is_symlink()) and not force:
        raise ReplayError(f"output {path} exists; pass --force to overwrite it")
    if path.exists() and not path.is_file():
        raise ReplayError(f"output {path} is not a regular file")
    folder = path.parent
    if not folder.is_dir():
        raise ReplayError(f"output folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise ReplayError(f"output folder {folder} is not writable")
    try:  # os.access says yes to root everywhere: a temp file proves it (read-only mounts, /proc, quotas)
        fd, probe = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=TEMP_SUFFIX, dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ReplayError(f"output folder {folder} is not writable: {exc.strerror or exc}") from None
    return path


# --- writing files: atomically, with the mode open() would give, never replacing what appeared meanwhile --------

TEMP_SUFFIX = ".tmp"
# what a temp name adds to the file's: ".NAME.<pid>.<8 random>.tmp", for a pid of up to 7 digits (Linux's maximum)
TEMP_EXTRA_BYTES = len("..") + 7 + len(".") + 8 + len(TEMP_SUFFIX)


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
    folder = path.parent
    removed = []
    with contextlib.suppress(OSError):
        for candidate in folder.glob(f".{glob.escape(path.name)}.*{TEMP_SUFFIX}"):
            middle = candidate.name[len(path.name) + 2 :].split(".", 1)[0]
            if middle.isdigit() and int(middle) != os.getpid() and not _pid_alive(int(middle)):
                with contextlib.suppress(OSError):
                    candidate.unlink()
                    removed.append(candidate)
    return removed


def _conflict_path(path: Path) -> Path:
    for n in range(1, 1000):
        candidate = path.with_name(f"{path.stem}.{n}{path.suffix}")
        if not candidate.exists():
            return candidate
    raise ReplayError(f"output {path} exists and no free name was found beside it")


def write_atomic(path: str | Path, write: Callable[[Path], object], *, overwrite: bool = True) -> Path:
    """Calls ``write(tmp)`` on a temp file beside ``path`` and publishes it only once complete.

    The file gets the mode a plain ``open()`` would give: an existing file's mode is kept, a new one gets 0666 minus
    the umask. Without ``overwrite`` the rename is exclusive (a hard link): if another process created ``path``
    while this one worked, nothing is replaced and the result is kept under a free sibling name, which the error
    names. A failure (a full disk) or an interrupt leaves no temp file and the old file untouched.
    """
    path = Path(path)
    folder = path.parent
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
        _keep_beside(tmp, path)
    except OSError as exc:  # a file system without hard links: check, then rename (not race-free there)
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise
        if path.exists():
            _keep_beside(tmp, path)
        os.replace(tmp, path)
        return
    tmp.unlink()


def _keep_beside(tmp: Path, path: Path) -> None:
    """``path`` appeared while this process worked: keep its file, move ours to a free sibling name, and say so."""
    kept = _conflict_path(path)
    os.replace(tmp, kept)
    raise ReplayError(
        f"output {path} was created by another process while this one ran; nothing was "
        f"overwritten and this result was written to {kept}"
    )


def _write_error(path: Path, exc: OSError) -> ReplayError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return ReplayError(f"no space left on the device while writing {path}; the previous file, if any, is untouched")
    if exc.errno == errno.ENAMETOOLONG:
        return ReplayError(f"cannot write {path}: its name is too long for this file system")
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


def regenerate(
    model: str | Path,
    output: str | Path | None,
    *,
    provider: str = "auto",
    check: str | Path | None = None,
    noise: str | Path | None = None,
    force: bool = False,
    allow_unsealed: bool = False,
) -> dict[str, Any]:
    """Runs the model and writes its image; returns what happened (provider, seconds, the check's numbers).
    Every input is checked before the model runs. A model without a seal is refused unless ``allow_unsealed``:
    whoever edits a weight can delete the seal as easily, so its absence must not pass silently."""
    import time

    if output is not None:
        check_output(output, force)
    fed = None if noise is None else load_noise(noise)
    if check is not None:
        check_input(check, "image to check against")
    session, used = open_session(model, provider)
    meta = metadata(session)
    proto = read_proto(model)
    if check_integrity(proto, meta) == "unsealed" and not allow_unsealed:
        raise ReplayError(UNSEALED)
    if fed is None and meta.get("noise_file"):
        fed = noise_beside(model, meta)
    elif fed is None and meta.get("noise") != "seed":
        check_embedded_noise(proto, meta)
    del proto  # the session holds the model; do not keep a second copy while it runs
    t0 = time.perf_counter()
    image = run(session, fed)
    seconds = time.perf_counter() - t0
    result: dict[str, Any] = {"provider": used, "seconds": seconds, "shape": list(image.shape), "metadata": meta}
    result["image"] = image
    if check is not None:
        result["check"] = compare(image[:1], load_png(check, image.shape[1]))
    if output is not None:
        save_png(image[:1], output, overwrite=force)
        result["output"] = str(output)
    return result


def info(model: str | Path) -> tuple[str, int]:
    """The model's metadata as JSON with its ``integrity`` (ok, unsealed, unchecked, or altered: exit code 1)."""
    check_input(model, "model")
    session, _ = open_session(model, "cpu")
    meta = metadata(session)
    try:
        meta["integrity"], code = check_integrity(read_proto(model), meta), 0
    except ReplayError as exc:
        meta["integrity"], code = f"ALTERED: {exc}", 1
    return json.dumps(meta, indent=2, sort_keys=True), code


def passes(check: dict[str, float]) -> bool:
    """The export target: no NaN/inf, at least 99.9% identical 8-bit pixels and none off by more than 1."""
    return check["nonfinite"] == 0 and check["identical_8bit"] >= 0.999 and check["max_8bit_diff"] <= 1


def check_line(check: dict[str, float], verdict: str) -> str:
    """The numbers of a check and its verdict in one line; NaN/inf values are named, not hidden in the numbers."""
    if check["nonfinite"]:
        return f"{check['nonfinite']} non-finite values (NaN/inf) in the regenerated image: {verdict}"
    return (
        f"max abs diff {check['max_abs_diff']:.3g}, identical 8-bit pixels {100 * check['identical_8bit']:.3f}%, "
        f"max 8-bit diff {check['max_8bit_diff']} ({verdict})"
    )


def describe(meta: dict[str, str]) -> str:
    keys = (
        "task",
        "image_size",
        "iterations",
        "seed",
        "image",
        "bn",
        "weights",
        "loss",
        "psnr_observation",
        "psnr_reference",
        "noise_sha256",
        "package_version",
        "torch_version",
    )
    return "\n".join(f"{k}: {meta[k]}" for k in keys if meta.get(k))


ALLOW_UNSEALED_HELP = (
    "run a model that has no integrity seal (an export from before the seal, or one edited and stripped of it): "
    "its weights may have been changed undetectably"
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="regenerate", description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="a dip-compile ONNX export")
    parser.add_argument("-o", "--output", help="PNG to write")
    parser.add_argument(
        "--provider", default="auto", choices=PROVIDERS, help="onnxruntime provider (CUDA falls back to CPU)"
    )
    parser.add_argument(
        "--check", help="compare with this PNG (e.g. the fit's output): max abs diff, identical 8-bit pixels"
    )
    parser.add_argument("--noise", help="a .npy of other noise to feed instead of the shipped one")
    parser.add_argument("--info", action="store_true", help="print the model's metadata as JSON and exit")
    parser.add_argument("--force", action="store_true", help="overwrite an existing output")
    parser.add_argument("--allow-unsealed", action="store_true", help=ALLOW_UNSEALED_HELP)
    args = parser.parse_args(argv)
    try:
        if args.info:
            text, code = info(args.model)
            print(text)
            return code
        if args.output is None and args.check is None:
            raise ReplayError("nothing to do: give -o OUT.png and/or --check PNG")
        result = regenerate(
            args.model,
            args.output,
            provider=args.provider,
            check=args.check,
            noise=args.noise,
            force=args.force,
            allow_unsealed=args.allow_unsealed,
        )
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
    print(f"check: {check_line(check, 'OK' if ok else 'MISMATCH')}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
