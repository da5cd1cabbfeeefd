"""``--timelapse OUT.webp|gif``: the fit's image every N iterations as one animation, so a user sees the image form
(structure first, noise last: the Deep Image Prior's point) without opening hundreds of snapshots."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from .checks import is_whole
from .errors import DipError
from .imageio import atomic_write, to_pil

FORMATS = {".webp": "WEBP", ".gif": "GIF"}
FRAME_MS = 100  # ten frames a second: 300 frames of a 3000-iteration fit (every 10) play in 30 s
EVERY = 10  # iterations between frames when --timelapse-every is not given


def check(path: Path | None, every: int | None) -> None:
    """The one-line refusals of the options, before any work: --timelapse-every means nothing without --timelapse
    (a user who gave it expects an animation)."""
    if path is None:
        if every is not None:
            raise DipError("--timelapse-every only applies with --timelapse OUT.webp|gif: give that too, or drop it")
        return
    if path.suffix.lower() not in FORMATS:
        raise DipError(f"--timelapse writes an animation: give a path ending in .webp or .gif, got {path}")
    if every is not None and not is_whole(every, 1):
        raise DipError(f"--timelapse-every must be a whole number of iterations >= 1, got {every!r}")


class Timelapse:
    """The frames of one run, kept as 8-bit images (what the file holds; a quarter of the float tensors)."""

    def __init__(self, every: int | None = None) -> None:
        self.every = EVERY if every is None else every
        self.frames: list[Image.Image] = []
        self.last: int | None = None  # the iteration of the last frame

    def add(self, iteration: int, image: torch.Tensor) -> None:
        if iteration != self.last:
            self.frames.append(to_pil(image).convert("RGB"))
            self.last = iteration

    def save(self, path: Path, *, overwrite: bool = True) -> Path:
        """Written atomically; WebP losslessly, GIF with its 256-colour palette per frame."""
        if not self.frames:
            raise DipError(f"--timelapse {path}: the fit ran no iteration, so there is no frame to write")
        fmt = FORMATS[path.suffix.lower()]
        first, rest = self.frames[0], self.frames[1:]
        options = {"lossless": True} if fmt == "WEBP" else {"disposal": 1}

        def write(tmp: Path) -> None:
            first.save(tmp, format=fmt, save_all=True, append_images=rest, duration=FRAME_MS, loop=0, **options)

        return atomic_write(path, write, overwrite=overwrite)
