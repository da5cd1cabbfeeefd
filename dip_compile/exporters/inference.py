"""The inference module an export ships: the fitted network with its BatchNorm made explicit, the crop to the image
size, the stored correction of an EMA / auto-stop / known-pixels image, and the clamp, as one plain ``nn.Module``.

DIP computes its image with every BatchNorm normalising by the statistics of its input, and that input is the one
fixed noise, so those statistics are constants of the fit. Two ways to ship them:

* ``frozen``: each BatchNorm becomes an eval-mode ``BatchNorm2d`` holding the statistics captured on the fixed noise
  (exporters and runtimes fold it into the convolutions). Exact for the shipped noise; other noise is normalised
  with the shipped noise's statistics.
* ``batch``: each BatchNorm becomes an ``InstanceNorm2d`` with the same affine weights, which is what DIP's
  BatchNorm computes at batch 1: exact for any noise, each sample of a batch normalised as if it were alone.

Nothing here knows the network's structure: any module built from ``Conv2d``, ``BatchNorm2d`` and other standard
layers exports, so a new generator or preset needs no change here.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..export_options import BatchNormMode
from ..problem import crop_box


def capture_bn_statistics(net: nn.Module, noise: torch.Tensor) -> dict[nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    """Runs ``net`` once on ``noise`` and records, per BatchNorm, the batch mean and biased variance it used."""
    stats: dict[nn.Module, tuple[torch.Tensor, torch.Tensor]] = {}

    def hook(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        x = args[0].detach().double()
        stats[module] = (x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=False))

    handles = [m.register_forward_pre_hook(hook) for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    try:
        with torch.no_grad():
            net(noise)
    finally:
        for h in handles:
            h.remove()
    return stats


def _frozen(bn: nn.BatchNorm2d, mean: torch.Tensor, var: torch.Tensor) -> nn.BatchNorm2d:
    frozen = nn.BatchNorm2d(bn.num_features, eps=bn.eps, affine=bn.affine)
    if bn.affine:
        frozen.load_state_dict({"weight": bn.weight, "bias": bn.bias}, strict=False)
    assert frozen.running_mean is not None and frozen.running_var is not None
    frozen.running_mean.copy_(mean.float())
    frozen.running_var.copy_(var.float())
    return frozen.eval()


def _per_sample(bn: nn.BatchNorm2d) -> nn.InstanceNorm2d:
    norm = nn.InstanceNorm2d(bn.num_features, eps=bn.eps, affine=bn.affine, track_running_stats=False)
    if bn.affine:
        norm.load_state_dict({"weight": bn.weight, "bias": bn.bias})
    return norm


def explicit_batchnorm(net: nn.Module, noise: torch.Tensor, mode: BatchNormMode) -> nn.Module:
    """A copy of ``net`` in eval mode whose BatchNorms compute what DIP's did on ``noise`` (see the module doc)."""
    net = copy.deepcopy(net).eval()
    stats = capture_bn_statistics(net, noise) if mode == BatchNormMode.frozen else {}
    for parent in list(net.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.BatchNorm2d):
                new = _frozen(child, *stats[child]) if mode == BatchNormMode.frozen else _per_sample(child)
                setattr(parent, name, new)
    return net


def half_rounded(net: nn.Module) -> nn.Module:
    """A copy of ``net`` whose convolution weights and biases are rounded to fp16 (and kept in fp32), so statistics
    captured on it match the weights an fp16 file ships."""
    net = copy.deepcopy(net)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.copy_(m.weight.half().float())
                if m.bias is not None:
                    m.bias.copy_(m.bias.half().float())
    return net


class InferenceModule(nn.Module):
    """noise (N, D, Hc, Wc) -> image (N, C, H, W) in [0, 1]: network, crop, optional stored correction, clamp."""

    correction: torch.Tensor | None

    def __init__(
        self,
        net: nn.Module,
        canvas: tuple[int, int],
        size: tuple[int, int],
        correction: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.net = net
        self.box = crop_box(canvas, size)
        self.register_buffer("correction", None if correction is None else correction.detach().float().clone())

    def forward(self, noise: torch.Tensor) -> torch.Tensor:
        top, left, height, width = self.box
        image = self.net(noise)[:, :, top : top + height, left : left + width]
        if self.correction is not None:
            image = image + self.correction
        return image.clamp(0.0, 1.0)
