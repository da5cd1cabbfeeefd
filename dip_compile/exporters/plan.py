"""What an export writes, decided once for every format: the inference module, the fixed noise, the image it must
reproduce, and the metadata. Built from a checkpoint alone (no optimizer, no step plan, no stopper)."""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..checkpoint import Checkpoint, FitImages
from ..errors import DipError
from ..export_options import BatchNormMode, ExportImage, ExportOptions, NoiseMode, Profile, Weights
from ..fitting import ImageKind, describe_image
from ..metrics import psnr
from ..replay import regenerate as replay
from ..version import __version__
from .inference import InferenceModule, explicit_batchnorm, half_rounded

DEFAULTS = ExportOptions()
KNOWN_PIXELS = " + known pixels"  # describe_image()'s suffix when the fit pasted the observed pixels


@dataclass
class ExportPlan:
    """Everything an exporter writes."""

    module: InferenceModule  # noise -> image, float32, CPU, eval mode
    noise: torch.Tensor  # (1, D, Hc, Wc) float32: the fixed noise
    target: torch.Tensor  # (1, C, H, W): the image the export reproduces on ``noise``
    metadata: dict[str, str]
    weights: Weights
    embed_noise: bool = True  # False: the ONNX noise input has no initializer; regenerate.py rebuilds it from the seed
    portable: bool = False  # static batch 1, noise a plain input (its values beside the model when embedded)

    @property
    def noise_beside(self) -> bool:
        """The portable profile ships embedded noise as a ``.noise.npy`` file beside the ONNX model."""
        return self.portable and self.embed_noise

    @property
    def correction_bytes(self) -> int:
        correction = self.module.correction
        return 0 if correction is None else correction.numel() * 4

    @property
    def weight_bytes(self) -> int:
        """The fitted network's parameters in fp32 bytes: the least a file holding the weights needs."""
        return int(self.metadata["parameters"]) * 4


def noise_checksum(noise: torch.Tensor) -> str:
    """sha256 of the noise as little-endian float32 in C order, computed by the code regenerate.py checks it with."""
    return replay.checksum(noise.detach().cpu().float().numpy())


def _target(images: FitImages, image: ExportImage) -> tuple[torch.Tensor, str]:
    """The image the export reproduces and its metadata name (``ema``, ``best + known pixels``, ...)."""
    if image == ExportImage.fit:
        return images.fit_image(), images.returned.value + (KNOWN_PIXELS if images.known_pixels else "")
    found = images.get(ImageKind(image.value))
    if found is None:
        why = {ExportImage.ema: "the fit kept no EMA image", ExportImage.best: "the fit did not use --stop auto"}
        raise DipError(f"this checkpoint has no {image.value} image ({why.get(image, '')}); use --image fit")
    return found, image.value


def image_kind(source: str) -> str:
    """The metadata's name (``image``) for a fit's image description: the --image choice, ``KNOWN_PIXELS`` kept."""
    return source.replace(describe_image(ImageKind.best, False), ExportImage.best.value)


def _finite(tensors: Any) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors)


def plan_export(ckpt: Checkpoint, options: ExportOptions | None = None, **choices: Any) -> ExportPlan:
    """The inference module and metadata of a checkpoint's network: ``options``, or keyword choices over the
    defaults (``ExportOptions``' fields: ``image="output", bn="batch"``, strings or the Enums of ``export_options``)."""
    options = dataclasses.replace(options or DEFAULTS, **choices)
    net: nn.Module = ckpt.network()
    noise, problem = ckpt.fixed_input(), ckpt.problem
    if not _finite(net.parameters()):
        raise DipError("the fit diverged: its network weights contain NaN/inf; nothing to export")
    if options.noise == NoiseMode.seed:
        _check_seed_noise(ckpt, noise)
    images = ckpt.images()
    target, kind = _target(images, options.image)
    if not _finite([target]):
        raise DipError(f"the fit's {kind} image contains NaN/inf; nothing to export")
    if options.weights == Weights.fp16:
        net = half_rounded(net)  # statistics of the network whose weights ship
        if not _finite(net.parameters()):
            raise DipError("some network weights exceed fp16's range (65504); use --weights fp32")
    correction = None if kind == "output" else target - images.output
    module = InferenceModule(explicit_batchnorm(net, noise, options.bn), problem.canvas, problem.size, correction)
    meta = metadata(ckpt, images, options, kind, target, noise, net)
    module.eval().requires_grad_(False)  # an inference file: its outputs need no autograd
    return ExportPlan(
        module,
        noise.contiguous(),
        target.contiguous(),
        meta,
        options.weights,
        embed_noise=options.noise == NoiseMode.embedded,
        portable=options.profile == Profile.portable,
    )


IMAGE_NOTES = {
    "output": "network output on the fixed noise, BatchNorm in train mode (batch statistics)",
    "ema": "the fit's EMA image = network output + a stored constant correction (clipped to [0,1])",
    "best": "the auto-stop image = network output + a stored constant correction (clipped to [0,1])",
    "perturbed": "the network on the fit's last perturbed input (--paper-exact) = network output + a stored "
    "constant correction (clipped to [0,1])",
}


def _image_note(kind: str) -> str:
    base = kind.removesuffix(KNOWN_PIXELS)
    if kind == base:
        return IMAGE_NOTES[kind]
    return (
        f"the fit's image with its observed pixels kept (--keep-known): its {base} image in the holes and the "
        f"observed pixels elsewhere = network output + a stored constant correction (clipped to [0,1])"
    )


def metadata(
    ckpt: Checkpoint,
    images: FitImages,
    options: ExportOptions,
    kind: str,
    target: torch.Tensor,
    noise: torch.Tensor,
    net: nn.Module,
) -> dict[str, str]:
    """What a model says about itself (``regenerate.py --info``): provenance, the choices made, and checksums."""
    cfg, problem = ckpt.config, ckpt.problem
    frozen = options.bn == BatchNormMode.frozen
    embedded = options.noise == NoiseMode.embedded
    portable = options.profile == Profile.portable
    loss = problem.loss(target).item()
    meta: dict[str, Any] = {
        "format": replay.FORMAT,
        "format_version": str(replay.VERSION),
        "task": cfg.task,
        "image_size": f"{problem.size[1]}x{problem.size[0]}",
        "image_height": problem.size[0],
        "image_width": problem.size[1],
        "canvas": f"{problem.canvas[1]}x{problem.canvas[0]}",
        "channels": cfg.net.output_channels,
        "iterations": ckpt.iteration,
        "seed": cfg.seed,
        "image": kind,
        "image_option": options.image.value,
        "image_note": _image_note(kind),
        "fit_image": images.describe(),
        "bn": options.bn.value,
        "bn_note": "BatchNorm statistics frozen to those of the shipped noise (eval-mode BatchNorm, folded by the "
        "runtime); exact for the shipped noise"
        if frozen
        else "BatchNorm uses each sample's own statistics (InstanceNormalization), exact for any noise",
        "weights": options.weights.value,
        "weights_note": "convolution weights in fp32"
        if options.weights == Weights.fp32
        else "convolution weights stored in fp16 and cast to fp32 in the graph; BatchNorm in fp32 with the "
        "statistics of the fp16-rounded network (not bit-exact)",
        "loss": f"{loss:.8g}",
        "psnr_observation": f"{psnr(problem.operator(target), problem.observation).item():.4f}",
        "psnr_reference": f"{psnr(target, problem.reference).item():.4f}" if problem.reference is not None else "",
        "noise": options.noise.value,
        "profile": options.profile.value,
        "noise_note": "the fixed noise is the file noise_file beside the model (.npy); feed it to the noise input"
        if embedded and portable
        else "the fixed noise is the initializer of the noise input: an empty feed regenerates the image"
        if embedded
        else "the fixed noise is not stored: it is torch.rand(noise_shape) * noise_scale from a CPU generator "
        "seeded with noise_seed (MT19937), rebuilt by regenerate.py and checked against noise_sha256; other ONNX "
        "Runtime callers must feed it",
        "noise_seed": cfg.seed,
        "noise_sha256": noise_checksum(noise),
        "noise_shape": "x".join(str(s) for s in noise.shape),
        "noise_kind": cfg.net.input_kind,
        "noise_scale": cfg.net.input_scale,
        "parameters": sum(p.numel() for p in net.parameters()),
        "package_version": __version__,
        "torch_version": torch.__version__,
        "fit_package_version": ckpt.meta.get("package_version", ""),
        "fit_torch_version": ckpt.meta.get("torch_version", ""),
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "config": json.dumps(cfg.to_dict(), sort_keys=True),
    }
    return {k: str(v) for k, v in meta.items()}


def _check_seed_noise(ckpt: Checkpoint, noise: torch.Tensor) -> None:
    """--noise seed is only offered when the seed really rebuilds the checkpoint's noise, bit for bit."""
    cfg = ckpt.config.net
    if cfg.trains_input:
        raise DipError(
            f"--noise seed rebuilds the starting noise, but this {cfg.generator} fit fitted its input: use --noise "
            "embedded"
        )
    if not cfg.input_kind.drawn:
        raise DipError(f"--noise seed needs a random-noise input; this fit's input is a {cfg.input_kind}")
    rebuilt = replay.seed_noise(ckpt.config.seed, tuple(noise.shape), cfg.input_scale)
    if not np.array_equal(rebuilt, noise.numpy()):
        raise DipError("this checkpoint's noise cannot be rebuilt from its seed; use --noise embedded")
