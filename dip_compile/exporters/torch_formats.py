"""The torch formats of an export: ``pt2`` (``torch.export``, reloaded with ``torch.export.load`` alone) and the legacy
TorchScript ``.pt`` (``torch.jit`` is deprecated; kept while torch ships it). Both carry the fixed noise, so the
image comes back without any dip-compile code."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import warnings
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from .plan import ExportPlan

NOISE_FILE = "noise.npy.b64"  # pt2: the fixed noise beside the program (extra files are text: .npy in base64)
META_FILE = "dip_compile.json"


class Regenerator(nn.Module):
    """TorchScript: ``module()`` returns the image on the shipped noise, ``module(noise)`` on other noise."""

    def __init__(self, core: nn.Module, noise: torch.Tensor) -> None:
        super().__init__()
        self.core = core
        self.register_buffer("noise", noise.clone())

    def forward(self, noise: Optional[torch.Tensor] = None) -> torch.Tensor:  # noqa: UP045 (TorchScript)
        x = self.noise if noise is None else noise
        return self.core(x)


def dynamic_batch(plan: ExportPlan) -> tuple[torch.Tensor, dict[str, Any]]:
    """The example input and ``dynamic_shapes`` of an export whose batch stays free: two copies of the noise, since
    torch.export specialises a dimension traced at size 1."""
    example = plan.noise.expand(2, *plan.noise.shape[1:]).contiguous()
    return example, {"noise": {0: torch.export.Dim("batch", min=1, max=4096)}}


def _quiet() -> contextlib.ExitStack:
    stack = contextlib.ExitStack()
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")  # torch.jit's deprecation and tracer warnings
    return stack


def _meta(plan: ExportPlan, note: str) -> str:
    return json.dumps({**plan.metadata, "noise": "embedded", "noise_note": note}, sort_keys=True)


def torchscript_bytes(plan: ExportPlan) -> bytes:
    with _quiet():
        core = torch.jit.trace(plan.module, (plan.noise,), check_trace=False)
        module = torch.jit.script(Regenerator(core, plan.noise))
        buffer = io.BytesIO()
        extra = {META_FILE: _meta(plan, "the fixed noise is the module's noise buffer")}
        torch.jit.save(module, buffer, _extra_files=extra)
    return buffer.getvalue()


def pt2_bytes(plan: ExportPlan) -> bytes:
    """``torch.export`` of the inference module (dynamic batch), with the noise and metadata as extra files."""
    example, dynamic = dynamic_batch(plan)
    with _quiet():
        program = torch.export.export(plan.module, (example,), dynamic_shapes=dynamic)
    noise = io.BytesIO()
    np.save(noise, plan.noise.numpy(), allow_pickle=False)
    extra = {
        META_FILE: _meta(plan, f"the fixed noise is the extra file {NOISE_FILE}"),
        NOISE_FILE: base64.b64encode(noise.getvalue()).decode("ascii"),
    }
    buffer = io.BytesIO()
    torch.export.save(program, buffer, extra_files=extra)
    return buffer.getvalue()


def write_torch(plan: ExportPlan, path: str | Path, fmt: str, *, overwrite: bool = True) -> Path:
    from ..imageio import atomic_write

    data = pt2_bytes(plan) if fmt == "pt2" else torchscript_bytes(plan)
    return atomic_write(path, lambda tmp: tmp.write_bytes(data), overwrite=overwrite)


def run_torchscript(path: str | Path, noise: torch.Tensor | None = None) -> torch.Tensor:
    with _quiet():
        module = torch.jit.load(str(path), map_location="cpu")
        with torch.no_grad():
            return module() if noise is None else module(noise)


def load_pt2(path: str | Path) -> tuple[Any, torch.Tensor, dict[str, str]]:
    """(callable module, fixed noise, metadata) of a ``.pt2`` export, with torch alone."""
    extra = {NOISE_FILE: "", META_FILE: ""}
    program = torch.export.load(str(path), extra_files=extra)
    noise = np.load(io.BytesIO(base64.b64decode(extra[NOISE_FILE])), allow_pickle=False)
    return program.module(), torch.from_numpy(noise), json.loads(extra[META_FILE])


def run_pt2(path: str | Path, noise: torch.Tensor | None = None) -> torch.Tensor:
    module, fixed, _ = load_pt2(path)
    with torch.no_grad():
        return module(fixed if noise is None else noise)
