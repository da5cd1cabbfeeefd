"""Shared tiny data: smooth synthetic images and small network settings, so the suite runs in minutes on 2 cores.

The CPU is faked: ``auto`` resolves as on a CPU without native bf16 (``DIPC_TEST_AUTO_PRECISION=fp32``, the default)
or with it (``=bf16``), whatever CPU runs the suite. ``make test`` runs the suite both ways.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dip_compile import acceleration
from dip_compile.acceleration import Capability
from dip_compile.config import FitConfig, NetConfig
from dip_compile.presets import preset

AUTO_PRECISION = os.environ.get("DIPC_TEST_AUTO_PRECISION", "fp32")
if AUTO_PRECISION not in ("fp32", "bf16"):
    raise ValueError(f"DIPC_TEST_AUTO_PRECISION must be fp32 or bf16, got {AUTO_PRECISION!r}")
FAKE_CPU = Capability(
    "cpu",
    f"faked CPU ({'AVX512-BF16' if AUTO_PRECISION == 'bf16' else 'AVX2'})",
    fast_bf16=AUTO_PRECISION == "bf16",
    fast_fp16=False,
)

# For slow tests whose settings are explicit (nothing resolves through the faked CPU): one pass of make test is enough
ONCE = pytest.mark.skipif(
    AUTO_PRECISION == "bf16", reason="explicit settings, the same in both passes: runs in the fp32 pass only"
)

TINY_NET = NetConfig(input_depth=8, channels_down=(16, 16, 16), channels_up=(16, 16, 16), channels_skip=(4, 4, 4))


def smooth_image(height: int = 32, width: int = 32, channels: int = 3, seed: int = 0) -> torch.Tensor:
    """A smooth (C, H, W) image in [0.1, 0.9]: the kind of structure DIP fits long before noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    planes = []
    for _ in range(channels):
        fx, fy, phase = rng.uniform(0.5, 2.0), rng.uniform(0.5, 2.0), rng.uniform(0, 6.28)
        planes.append(0.5 + 0.4 * np.sin(2 * np.pi * (fx * x / width + fy * y / height) + phase))
    return torch.from_numpy(np.stack(planes).astype(np.float32))


def tiny_config(task: str = "denoise", **changes) -> FitConfig:
    """The task's preset on the tiny net, with the changes given."""
    base = preset(task, factor=changes.pop("factor", 4), output_channels=changes.pop("channels", 3))
    net = dataclasses.replace(TINY_NET, output_channels=base.net.output_channels, upsample=base.net.upsample)
    return base.replace(net=net, **changes)


def dipc(*args: object) -> tuple[int, str]:
    """Runs the console entry point in-process, as a user's shell would: (exit code, stderr)."""
    from dip_compile.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
    return code, err.getvalue()


def save_png(image: torch.Tensor | np.ndarray, path: Path) -> Path:
    array = image.numpy() if isinstance(image, torch.Tensor) else image
    if array.ndim == 3:
        array = array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0)
    Image.fromarray(np.round(np.clip(array, 0, 1) * 255).astype(np.uint8)).save(path)
    return path


@pytest.fixture(autouse=True, scope="session")
def fake_cpu_capability():
    """What ``auto`` picks on a CPU depends on the fake, never on the machine running the tests."""
    real = acceleration.capability
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(acceleration, "capability", lambda device: FAKE_CPU if device.type == "cpu" else real(device))
        yield FAKE_CPU


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """The tests fit tiny nets: one thread is as fast uncontended and ~10x faster when the 2 cores are shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def image_png(tmp_path: Path) -> Path:
    return save_png(smooth_image(32, 32), tmp_path / "image.png")
