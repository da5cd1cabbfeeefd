"""dip-compile: Deep Image Prior restoration with a compiled fitting core and exportable results.

The names a user needs, imported on first use (PEP 562), so ``import dip_compile`` stays cheap (no torch)::

    import dip_compile

    result = dip_compile.restore_image("photo.png", "denoise", iterations=1500, checkpoint="fit.ckpt")
    dip_compile.save_image(result.image, "restored.png")
    dip_compile.export_checkpoints(["fit.ckpt"], "restored.onnx", verify=True)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .version import __version__

# public name -> the module that defines it, imported on first access (no name here may be a submodule's:
# `from . import restore` would then find the attribute instead of the module)
_LAZY = {
    "restore_image": "api",
    "preset": "presets",
    "FitConfig": "config",
    "NetConfig": "config",
    "Fitter": "fitting",
    "FitResult": "fitting",
    "load_image": "imageio",
    "save_image": "imageio",
    "save_checkpoint": "checkpoint",
    "load_checkpoint": "checkpoint",
    "export_checkpoints": "exporters",
    "DipError": "errors",
}

__all__ = ["__version__", *sorted(_LAZY)]

if TYPE_CHECKING:  # for type checkers and editors: the same names, imported eagerly
    from .api import restore_image as restore_image
    from .checkpoint import load_checkpoint as load_checkpoint
    from .checkpoint import save_checkpoint as save_checkpoint
    from .config import FitConfig as FitConfig
    from .config import NetConfig as NetConfig
    from .errors import DipError as DipError
    from .exporters import export_checkpoints as export_checkpoints
    from .fitting import FitResult as FitResult
    from .fitting import Fitter as Fitter
    from .imageio import load_image as load_image
    from .imageio import save_image as save_image
    from .presets import preset as preset


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later accesses skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
