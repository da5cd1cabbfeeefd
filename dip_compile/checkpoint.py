"""The checkpoint format: one ``torch.save`` file of plain tensors and containers (loadable with ``weights_only``).

It holds the problem (observation, mask, reference, sizes), the configuration and the whole fitting state, so a
checkpoint alone is enough to resume a fit, regenerate its image or export its network.
"""

from __future__ import annotations

import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .config import FitConfig
from .degradations import make_operator
from .errors import DipError
from .fitting import Fitter
from .imageio import atomic_write
from .problem import Problem

FORMAT = "dip-compile-checkpoint"
VERSION = 1


@dataclass
class Checkpoint:
    config: FitConfig
    problem: Problem
    state: dict[str, Any]
    meta: dict[str, Any]

    @property
    def iteration(self) -> int:
        return int(self.state["iteration"])

    def fitter(self, device: str | torch.device | None = None, config: FitConfig | None = None) -> Fitter:
        """A fitter in exactly the saved state; ``config`` may change settings that do not alter the state."""
        fitter = Fitter(config or self.config, self.problem, device=device)
        fitter.load_state_dict(self.state)
        return fitter


def save_checkpoint(fitter: Fitter, path: str | Path) -> Path:
    p = fitter.problem
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "meta": {"package_version": __version__, "torch_version": str(torch.__version__)},
        "config": fitter.config.to_dict(),
        "problem": {
            "task": p.task, "size": list(p.size), "canvas": list(p.canvas),
            "observation": p.observation.cpu(),
            "mask": None if p.mask is None else p.mask.cpu(),
            "reference": None if p.reference is None else p.reference.cpu(),
        },
        "state": fitter.state_dict(),
    }
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


def load_checkpoint(path: str | Path) -> Checkpoint:
    path = Path(path)
    if not path.exists():
        raise DipError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise DipError(f"checkpoint {path} is a folder")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, pickle.UnpicklingError, KeyError):
        raise DipError(f"{path} is not a readable dip-compile checkpoint (corrupted or truncated, "
                       f"or another kind of file)") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise DipError(f"{path} is not a dip-compile checkpoint")
    if payload.get("version") != VERSION:
        raise DipError(f"{path} has checkpoint format version {payload.get('version')}; "
                       f"this dip-compile reads version {VERSION}")
    try:
        config = FitConfig.from_dict(payload["config"])
        prob = payload["problem"]
        mask = prob["mask"]
        channels = prob["observation"].shape[1]
        operator = make_operator(config.task, mask=mask, factor=config.factor, channels=channels)
        problem = Problem(prob["task"], prob["observation"], operator, tuple(prob["size"]), tuple(prob["canvas"]),
                          mask, prob["reference"])
        state = payload["state"]
        int(state["iteration"])
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise DipError(f"{path} is a damaged dip-compile checkpoint ({exc.__class__.__name__}: {exc})") from None
    return Checkpoint(config, problem, state, payload.get("meta", {}))
