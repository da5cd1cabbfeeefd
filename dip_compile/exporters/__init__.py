"""Exporting a fitted DIP network with its fixed noise, so the restored image can be regenerated without dip-compile.

One plan per checkpoint (:mod:`.plan`): the inference module (:mod:`.inference`: the fitted network with its
BatchNorm made explicit, the crop, the stored correction of an EMA / auto-stop / known-pixels image, the clamp),
the fixed noise, the image to reproduce, and the metadata. The formats are written by torch's own exporters:
ONNX with ``torch.onnx.export(..., dynamo=True)`` plus a small ``onnx`` post-pass (:mod:`.onnx_format`), ``.pt2``
with ``torch.export`` and the legacy TorchScript ``.pt`` (:mod:`.torch_formats`). Any network ``dipc fit`` can fit
exports without a change here. :mod:`.job` is what ``dipc export`` runs.
"""

from ..replay import regenerate as replay
from .inference import InferenceModule, capture_bn_statistics, explicit_batchnorm, half_rounded
from .job import Written, agreement, export_checkpoints, fit_image_note, output_paths, passes, run_file
from .onnx_format import run_onnx, to_onnx, write_onnx
from .plan import ExportPlan, image_kind, noise_checksum, plan_export
from .torch_formats import load_pt2, pt2_bytes, run_pt2, run_torchscript, torchscript_bytes, write_torch

__all__ = [
    "ExportPlan",
    "InferenceModule",
    "Written",
    "agreement",
    "capture_bn_statistics",
    "explicit_batchnorm",
    "export_checkpoints",
    "fit_image_note",
    "half_rounded",
    "image_kind",
    "load_pt2",
    "noise_checksum",
    "output_paths",
    "passes",
    "plan_export",
    "pt2_bytes",
    "replay",
    "run_file",
    "run_onnx",
    "run_pt2",
    "run_torchscript",
    "to_onnx",
    "torchscript_bytes",
    "write_onnx",
    "write_torch",
]
