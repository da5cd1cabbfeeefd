"""ONNX through torch's own exporter (``torch.onnx.export(..., dynamo=True)``), then a small ``onnx`` post-pass for what
the exporter does not do: fp16 storage of the convolution weights, the fixed noise as the default of the ``noise``
input, and the metadata. Every file passes ONNX's checker with full shape inference."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..export_options import Weights
from ..replay import regenerate as replay
from ..version import __version__
from .plan import ExportPlan
from .torch_formats import dynamic_batch

DOC = "Deep Image Prior network with its fixed noise: run with an empty feed to regenerate the restored image."


def exported_program(plan: ExportPlan) -> Any:
    """torch.onnx's ONNXProgram of the inference module: input ``noise`` (dynamic batch, or batch 1 for the portable
    profile), output ``image``."""
    example, dynamic = (plan.noise, None) if plan.portable else dynamic_batch(plan)
    quiet, logger = io.StringIO(), logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)  # progress lines and "torchvision is not installed" notes
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
            warnings.simplefilter("ignore")
            return torch.onnx.export(
                plan.module,
                (example,),
                dynamo=True,
                input_names=["noise"],
                output_names=["image"],
                dynamic_shapes=dynamic,
                optimize=plan.weights == Weights.fp32,  # fp16: keep BN apart from the rounded weights
                verbose=False,
            )
    finally:
        logger.setLevel(level)


def _half_conv_weights(model: Any) -> None:
    """Stores every Conv weight and bias as fp16, cast back to fp32 by a Cast node in front of the graph."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    names = {name for n in model.graph.node if n.op_type == "Conv" for name in n.input[1:] if name in inits}
    casts = []
    for name in sorted(names):
        array = numpy_helper.to_array(inits[name]).astype(np.float16)
        half = numpy_helper.from_array(array, f"{name}_fp16")
        model.graph.initializer.remove(inits[name])
        model.graph.initializer.append(half)
        casts.append(helper.make_node("Cast", [half.name], [name], to=TensorProto.FLOAT, name=f"cast_{name}"))
    nodes = casts + list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    assert isinstance(model, onnx.ModelProto)


def to_onnx(plan: ExportPlan, noise_file: str | None = None) -> Any:
    """The ONNX model: input ``noise`` (its initializer is the fixed noise when embedded in the runtime profile, so an
    empty feed works), output ``image`` (N, C, H, W) in [0, 1], the metadata as model properties, sealed by
    ``integrity_sha256`` over the graph (weights, noise) and the metadata, which regenerate.py checks."""
    import onnx
    from onnx import helper, numpy_helper

    model = exported_program(plan).model_proto
    for node in model.graph.node:  # the exporter's per-node stack traces: bytes, and the exporting machine's paths
        del node.metadata_props[:]
        node.doc_string = ""
    if plan.weights == Weights.fp16:
        _half_conv_weights(model)
    if plan.embed_noise and not plan.portable:
        model.graph.initializer.append(numpy_helper.from_array(plan.noise.numpy().astype(np.float32), "noise"))
    model.producer_name, model.producer_version, model.doc_string = "dip-compile", __version__, DOC
    meta = dict(plan.metadata)
    if plan.noise_beside:
        meta["noise_file"] = noise_file or "noise.npy"
    meta["integrity_sha256"] = replay.integrity(model.graph.SerializeToString(deterministic=True), meta)
    del model.metadata_props[:]
    helper.set_model_props(model, meta)
    onnx.checker.check_model(model, full_check=True)
    return model


def noise_path(path: str | Path) -> Path:
    """Where the portable profile puts the fixed noise: ``OUT.noise.npy`` beside ``OUT.onnx``."""
    path = Path(path)
    return path.with_name(path.stem + ".noise.npy")


def write_onnx(plan: ExportPlan, path: str | Path, *, overwrite: bool = True) -> Path:
    """Writes the model (and, for the portable profile with embedded noise, ``OUT.noise.npy`` first)."""
    from ..imageio import atomic_write

    beside = noise_path(path)
    data = to_onnx(plan, beside.name).SerializeToString()
    if plan.noise_beside:

        def write_noise(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                np.save(f, plan.noise.numpy().astype(np.float32), allow_pickle=False)

        atomic_write(beside, write_noise, overwrite=overwrite)
    return atomic_write(path, lambda tmp: tmp.write_bytes(data), overwrite=overwrite)


def run_onnx(path_or_bytes: str | Path | bytes, noise: np.ndarray | None = None, provider: str = "cpu") -> np.ndarray:
    """The image (N, C, H, W) an exported ONNX model returns (empty feed unless ``noise`` is given)."""
    session, _ = replay.open_session(path_or_bytes, provider)
    return replay.run(session, noise)
