"""The checkpoint format: one ``torch.save`` file of plain tensors and containers (loadable with ``weights_only``).

It holds the problem (observation, mask, reference, sizes), the configuration and the whole fitting state, so a
checkpoint alone is enough to resume a fit, regenerate its image or export its network.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import torch

from .config import FitConfig
from .degradations import make_operator
from .errors import DipError
from .fitting import Fitter, ImageKind, describe_image, keeps_known, returned_image, returned_kind
from .imageio import atomic_write, check_input
from .losses import make_loss, make_regularizer
from .network import Network, build_network
from .problem import CenterCrop, Problem, canvas_for
from .tasks import spec
from .version import __version__

FORMAT = "dip-compile-checkpoint"
VERSION = 1


@dataclass(frozen=True)
class FitImages:
    """The images a saved fit has: its network output, EMA and auto-stop image (where it kept them), which of them
    it returned, and whether it returned that one with the observed pixels pasted in (inpainting --keep-known)."""

    output: torch.Tensor
    ema: torch.Tensor | None
    best: torch.Tensor | None
    returned: ImageKind
    known_pixels: bool
    problem: Problem
    perturbed: torch.Tensor | None = None  # the network on the last perturbed input, when the fit returns it

    def get(self, kind: ImageKind) -> torch.Tensor | None:
        return {
            ImageKind.output: self.output,
            ImageKind.ema: self.ema,
            ImageKind.best: self.best,
            ImageKind.perturbed: self.perturbed,
        }[kind]

    def fit_image(self) -> torch.Tensor:
        """The image ``dipc fit`` wrote."""
        return returned_image(
            self.returned,
            lambda: self.output,
            self.ema,
            self.best,
            self.problem,
            self.known_pixels,
            lambda: self.perturbed,
        )

    def describe(self) -> str:
        return describe_image(self.returned, self.known_pixels)


@dataclass
class Checkpoint:
    config: FitConfig
    problem: Problem
    state: dict[str, Any]
    meta: dict[str, Any]

    @property
    def iteration(self) -> int:
        return int(self.state["iteration"])

    def network(self) -> Network:
        """The fitted network on the CPU (no optimizer, no step plan: what export and reports need)."""
        net = build_network(self.config.net)
        net.load_state_dict(self.state["net"])
        return net.eval()  # harmless: BatchNorm here always normalises with the statistics of its input

    def fixed_input(self) -> torch.Tensor:
        """The fixed noise (or meshgrid) the network was fitted on: (1, input_depth, canvas height, canvas width)."""
        return self.state["net_input"].float()

    def images(self) -> FitImages:
        """The fit's images and which one it returned, as typed values."""
        net, crop = self.network(), CenterCrop(self.problem.canvas, self.problem.size)
        ema, best = self.state.get("ema"), self._best()
        kind = returned_kind(best, ema, self.config.final_image)
        perturbed = None
        with torch.no_grad():
            output = crop(net(self.fixed_input())).float()
            if kind == ImageKind.perturbed:
                last = self.state.get("last_input")
                perturbed = output if last is None else crop(net(last.float())).float()
        return FitImages(
            output,
            None if ema is None else ema.float(),
            None if best is None else best.float(),
            kind,
            keeps_known(self.config, self.problem),
            self.problem,
            perturbed,
        )

    def _best(self) -> torch.Tensor | None:
        stopper = self.state.get("stopper")
        return stopper.get("best_image") if isinstance(stopper, dict) else None

    def fitter(self, device: str | torch.device | None = None, config: FitConfig | None = None) -> Fitter:
        """A fitter in exactly the saved state; ``config`` may change settings that do not alter the state."""
        fitter = Fitter(config or self.config, self.problem, device=device)
        try:
            fitter.load_state_dict(self.state)
        except (RuntimeError, KeyError, TypeError, ValueError) as exc:  # a check in load_checkpoint missed it
            raise DipError(
                f"the checkpoint's fitting state cannot be restored ({exc.__class__.__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''})"
            ) from None
        return fitter


def save_checkpoint(fitter: Fitter, path: str | Path, *, overwrite: bool = True) -> Path:
    """Writes atomically; without ``overwrite`` an existing file (e.g. one made meanwhile by another run) is kept."""
    p = fitter.problem
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "meta": {"package_version": __version__, "torch_version": str(torch.__version__)},
        "config": fitter.config.to_dict(),
        "problem": {
            "task": str(p.task),
            "size": list(p.size),
            "canvas": list(p.canvas),
            "observation": p.observation.cpu(),
            "mask": None if p.mask is None else p.mask.cpu(),
            "reference": None if p.reference is None else p.reference.cpu(),
            "guide": None if p.guide is None else p.guide.cpu(),
            "kernel": None if p.kernel is None else p.kernel.cpu(),
            "notes": list(p.notes),
        },
        "state": fitter.state_dict(),
    }
    return atomic_write(path, lambda tmp: _torch_save(payload, tmp), overwrite=overwrite)


class _ReportingFile(io.RawIOBase):
    """A write-only file that remembers the OSError of a failed write: torch.save reports a full disk as a bare
    RuntimeError, and this lets the caller raise the OSError (ENOSPC) it really was."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.error: OSError | None = None

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        try:
            return self.raw.write(data)
        except OSError as exc:
            self.error = exc
            raise


def _torch_save(payload: dict[str, Any], path: Path) -> None:
    with open(path, "wb") as raw:
        out = _ReportingFile(raw)
        try:
            torch.save(payload, out)  # type: ignore[arg-type]  # a file object: torch calls write()
        except RuntimeError:
            if out.error is not None:
                raise out.error from None
            raise
        raw.flush()
        os.fsync(raw.fileno())


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Reads and validates a checkpoint: every tensor has the shape its configuration implies, so a damaged or
    edited file is refused in one line here instead of failing deep inside a resume or an export."""
    path = check_input(path, "checkpoint")
    try:
        with warnings.catch_warnings():  # torch warns (on stderr) before failing on a raw pickle
            warnings.simplefilter("ignore")
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except (
        RuntimeError,
        EOFError,
        OSError,
        ValueError,
        zipfile.BadZipFile,
        pickle.UnpicklingError,
        KeyError,
        AttributeError,
        TypeError,
        IndexError,
        UnicodeDecodeError,
        MemoryError,
        struct.error,  # a file of a few bytes: the legacy reader runs out of them
    ):
        raise DipError(
            f"{path} is not a readable dip-compile checkpoint (corrupted or truncated, or another kind of file)"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise DipError(f"{path} is not a dip-compile checkpoint")
    if payload.get("version") != VERSION:
        raise DipError(
            f"{path} has checkpoint format version {payload.get('version')}; this dip-compile reads version {VERSION}"
        )
    try:
        config = FitConfig.from_dict(payload["config"])
        prob = payload["problem"]
        problem = _problem(config, prob)
        state = payload["state"]
        _check_state(config, problem, state)
        _check_finite(prob, state)
    except NonFiniteError as exc:  # the file cannot tell a fit that blew up from one edited or damaged since
        raise DipError(f"{path} is a damaged dip-compile checkpoint, or one of a fit that diverged: {exc}") from None
    except DipError as exc:
        raise DipError(f"{path} is a damaged dip-compile checkpoint: {exc}") from None
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, RuntimeError) as exc:
        raise DipError(f"{path} is a damaged dip-compile checkpoint ({exc.__class__.__name__}: {exc})") from None
    meta = payload.get("meta", {})
    return Checkpoint(config, problem, state, meta if isinstance(meta, dict) else {})


def _shape(t: Any, what: str, shape: tuple[int, ...]) -> None:
    if not isinstance(t, torch.Tensor):
        raise DipError(f"{what} is missing")
    if tuple(t.shape) != shape:
        raise DipError(f"{what} has shape {tuple(t.shape)}, expected {shape}")


def _problem(config: FitConfig, prob: dict[str, Any]) -> Problem:
    size, canvas = tuple(int(s) for s in prob["size"]), tuple(int(s) for s in prob["canvas"])
    if len(size) != 2 or min(size) <= 0 or canvas != canvas_for(config.net, size):
        raise DipError(f"image size {size} and canvas {canvas} do not agree with its network")
    channels = config.net.output_channels
    low = (size[0] // config.factor, size[1] // config.factor)  # (the factor is 1 unless the task scales)
    _shape(prob["observation"], "the observation", (1, channels, *low))
    mask = prob["mask"]
    task = spec(config.task)
    if task.needs("mask"):
        _shape(mask, "the mask", size)
    if prob["reference"] is not None:
        _shape(prob["reference"], "the reference", (1, channels, *size))
    if prob["task"] != config.task:
        raise DipError(f"its problem is {prob['task']!r} but its configuration {config.task!r}")
    guide = prob.get("guide")
    if config.net.input_kind.guided:
        _shape(guide, "the guide image", (1, config.net.input_depth, *size))
    kernel = prob.get("kernel")
    if task.needs("kernel"):
        if not isinstance(kernel, torch.Tensor) or kernel.dim() != 2 or not 0 < kernel.numel():
            raise DipError("its blur kernel is missing or not 2-D")
    operator = make_operator(config.task, mask=mask, factor=config.factor, channels=channels, kernel=kernel)
    fidelity, regularizer = make_loss(str(config.loss), config.peak), make_regularizer(config.tv_weight)
    notes = prob.get("notes") or []  # (none in checkpoints written before notes were kept)
    if not isinstance(notes, list) or not all(isinstance(n, str) for n in notes):
        raise DipError("its notes are not a list of text")
    return Problem(
        str(config.task),
        prob["observation"],
        operator,
        size,
        canvas,
        mask,
        prob["reference"],
        guide,
        kernel,
        fidelity,
        regularizer,
        tuple(notes),
    )


def _check_state(config: FitConfig, problem: Problem, state: dict[str, Any]) -> None:
    iteration = int(state["iteration"])
    if not 0 <= iteration:
        raise DipError(f"its iteration count {iteration} is negative")
    with torch.device("meta"):  # shapes only: no memory, no work
        net = build_network(config.net)
    expected = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    params = [tuple(p.shape) for p in net.parameters()]
    if config.net.trains_input:  # the fitter's optimizer steps the input after the network's parameters
        params.append(config.net.input_shape(problem.canvas))
    weights = state["net"]
    if set(weights) != set(expected):
        raise DipError("its network weights do not belong to its network configuration")
    for key, shape in expected.items():
        _shape(weights[key], f"weight {key}", shape)
    for index, moments in dict(state["optimizer"]["state"]).items():
        if not 0 <= int(index) < len(params):
            raise DipError("its optimizer state does not belong to its network")
        for name in ("exp_avg", "exp_avg_sq"):
            _shape(moments[name], f"Adam state {name} of parameter {index}", params[int(index)])
    _shape(state["net_input"], "the network input", config.net.input_shape(problem.canvas))
    image = (1, config.net.output_channels, *problem.size)
    if state.get("ema") is not None:
        _shape(state["ema"], "the EMA image", image)
    if state.get("last_input") is not None:
        _shape(state["last_input"], "the last perturbed input", config.net.input_shape(problem.canvas))
    stopper = state.get("stopper")
    if isinstance(stopper, dict) and stopper.get("best_image") is not None:
        _shape(stopper["best_image"], "the auto-stop image", image)
    if isinstance(stopper, dict) and stopper.get("held") is not None:
        _shape(stopper["held"], "the held-out pixels", (1, 1, *problem.observation.shape[-2:]))


class NonFiniteError(DipError):
    """A checkpoint tensor holds NaN/inf."""


def _check_finite(prob: dict[str, Any], state: dict[str, Any]) -> None:
    """Refuses NaN/inf in any floating tensor a resume or an export reads: shapes alone let a damaged file resume,
    "complete" at once and return its stored image. The auto-stop's best variance starts at +inf and the backtrack
    PSNR at -inf, so those two may be infinite, never NaN."""
    named: list[tuple[str, Any]] = [(f"the {k}", prob.get(k)) for k in ("observation", "mask", "reference", "guide")]
    named.append(("the blur kernel", prob.get("kernel")))
    named += [(f"weight {k}", v) for k, v in state["net"].items()]
    for index, moments in dict(state["optimizer"]["state"]).items():
        named += [(f"Adam state {k} of parameter {index}", v) for k, v in dict(moments).items()]
    named += [("the network input", state["net_input"]), ("the EMA image", state.get("ema"))]
    named.append(("the last perturbed input", state.get("last_input")))
    named += [(f"backtrack copy {i}", t) for i, t in enumerate(state.get("backtrack_saved") or [])]
    stopper = state.get("stopper")
    stopper = stopper if isinstance(stopper, dict) else {}
    named += [(f"the auto-stop {k}", stopper.get(k)) for k in ("buffer", "sum", "sum_sq", "mean", "var", "best_image")]
    named += [("the held-out pixels", stopper.get("held")), ("the held-out error", stopper.get("error"))]
    for what, t in named:
        if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise NonFiniteError(f"{what} holds NaN or infinite values")
    for what, t in (
        ("the auto-stop best variance", stopper.get("best_var")),
        ("the held-out best error", stopper.get("best_error")),
        ("the held-out marked error", stopper.get("mark_error")),
        ("the backtrack PSNR", state.get("backtrack_psnr")),
    ):
        if isinstance(t, torch.Tensor) and t.is_floating_point() and bool(torch.isnan(t).any()):
            raise NonFiniteError(f"{what} is NaN")
