"""Shared tiny data: smooth synthetic images and small network settings, so the suite runs in minutes on 2 cores.

The CPU is faked: ``auto`` resolves as on a CPU without native bf16 (``DIPC_TEST_AUTO_PRECISION=fp32``, the default)
or with it (``=bf16``), whatever CPU runs the suite. ``make test`` runs the suite both ways; the fp32 pass records
which tests passed without ever asking the faked CPU (a test whose file's shared fixture asked counts as asking; a
test the fp32 pass skipped or failed is not recorded), and the bf16 pass that follows skips the recorded ones (they
run the same code either way), as long as no source changed.

A reduced-precision step of a network over ``BF16_PARAMETERS`` on the CPU fails its test at once: on a CPU without
native bf16 (CI's AVX2 machine) bf16 is emulated, about 100x slower than fp32, and the bf16 pass makes every ``auto``
fit bf16; such a test fits a small network or gives its precision.

``DIPC_REQUIRE_BROWSER`` (CI): the web page's browser test must run, so a missing part of it (gradio, gradio_client,
playwright, Chromium) stops the session at its start instead of skipping that test.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.util
import io
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from dip_compile import acceleration, fitting
from dip_compile.acceleration import Capability
from dip_compile.config import FitConfig, NetConfig
from dip_compile.presets import preset

pytest_plugins = ("pytester",)  # tests/test_suite.py runs this conftest in an inner session

AUTO_PRECISION = os.environ.get("DIPC_TEST_AUTO_PRECISION", "fp32")
if AUTO_PRECISION not in ("fp32", "bf16"):
    raise ValueError(f"DIPC_TEST_AUTO_PRECISION must be fp32 or bf16, got {AUTO_PRECISION!r}")
FAKE_CPU = Capability(
    "cpu",
    f"faked CPU ({'AVX512-BF16' if AUTO_PRECISION == 'bf16' else 'AVX2'})",
    fast_bf16=AUTO_PRECISION == "bf16",
    fast_fp16=False,
    fast_channels_last=AUTO_PRECISION == "bf16",  # every CPU with native bf16 has AVX-512: fp32 runs channels-last
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


# --- which tests ask the faked CPU (so the bf16 pass can leave out the others) ------------------------------------
RECORD_KEY = "dipc/tests-never-asking-the-faked-cpu"
_running: list[str] = [""]  # the test being set up, run or torn down
_shared_setup: list[str] = []  # scopes of the fixtures being set up: a shared one's value serves its whole file
_asked_tests: set[str] = set()  # tests that (or whose function-scoped fixtures) asked the faked CPU
_asked_files: set[str] = set()  # files whose module- or class-scoped fixtures asked it: all their tests count
_ran: set[str] = set()  # tests run in this pass
_passed: set[str] = set()  # tests whose body ran and passed in this pass (a skipped one tells nothing)


def _file(nodeid: str) -> str:
    return nodeid.split("::")[0]


def _sources_digest() -> str:
    """Changes when any source of the package or the suite does: a record is trusted only for the same code."""
    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted([*root.glob("dip_compile/**/*.py"), *root.glob("tests/**/*.py")]):
        digest.update(str(path.relative_to(root)).encode() + path.read_bytes())
    return digest.hexdigest()


def _fake_capability(real: Callable[[torch.device], Capability]) -> Callable[[torch.device], Capability]:
    def capability(device: torch.device) -> Capability:
        if device.type != "cpu":
            return real(device)
        if any(scope != "function" for scope in _shared_setup):
            _asked_files.add(_file(_running[0]))
        else:
            _asked_tests.add(_running[0])
        return FAKE_CPU

    return capability


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item) -> None:
    _running[0] = item.nodeid
    _ran.add(item.nodeid)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call" and report.passed:
        _passed.add(report.nodeid)


@pytest.hookimpl(hookwrapper=True)
def pytest_fixture_setup(fixturedef: pytest.FixtureDef[Any]) -> Iterator[None]:
    _shared_setup.append(fixturedef.scope)
    try:
        yield
    finally:
        _shared_setup.pop()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    cache = getattr(config, "cache", None)  # none under -p no:cacheprovider
    if AUTO_PRECISION != "bf16" or cache is None:
        return
    record = cache.get(RECORD_KEY, None)
    if not record or record.get("digest") != _sources_digest():
        return
    never = set(record["never_asked"])
    skip = pytest.mark.skip(reason="never asks the faked CPU: the fp32 pass ran this same code")
    for item in items:
        if item.nodeid in never:
            item.add_marker(skip)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    cache = getattr(session.config, "cache", None)
    if AUTO_PRECISION != "fp32" or cache is None or not _ran:
        return
    known = cache.get(RECORD_KEY, None) or {}
    digest = _sources_digest()
    never = set(known.get("never_asked", [])) if known.get("digest") == digest else set()
    asked = _asked_tests | {t for t in _ran if _file(t) in _asked_files}
    never = (never - _ran) | (_passed - asked)  # the tests of this pass decide for themselves; others keep theirs
    cache.set(RECORD_KEY, {"digest": digest, "never_asked": sorted(never)})


# --- no big network in a reduced-precision step on the CPU -------------------------------------------------------
BF16_PARAMETERS = 100_000  # the tests' small networks have 6-27 thousand weights, the presets' 2.2-3 million


def _small_networks_only(real: Callable[[fitting.Fitter], Any]) -> Callable[[fitting.Fitter], Any]:
    def make_step(fitter: fitting.Fitter) -> Any:
        weights = sum(p.numel() for p in fitter.net.parameters())
        if fitter.device.type == "cpu" and fitter.plan.precision != "fp32" and weights > BF16_PARAMETERS:
            pytest.fail(
                f"a {fitter.plan.precision} step of a {weights:,}-weight network on the CPU: emulated and about 100x "
                f"slower than fp32 on CPUs without native bf16 (make test's bf16 pass fakes one for auto); fit a "
                f"network of at most {BF16_PARAMETERS:,} weights (--channels, --depth) or give --precision fp32",
                pytrace=False,
            )
        return real(fitter)

    return make_step


@pytest.fixture(autouse=True, scope="session")
def small_networks_in_bf16():
    """See the module's docstring: a big network's bf16 step would cost minutes on the CI machine."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fitting.Fitter, "make_step", _small_networks_only(fitting.Fitter.make_step))
        yield


# --- CI's browser requirement ------------------------------------------------------------------------------------
BROWSER_MODULES = ("gradio", "gradio_client", "playwright.sync_api")


def chromium_path() -> str | None:
    """The browser of tests/test_ui.py: DIPC_CHROMIUM, else the system's Chromium (make test installs Debian's)."""
    return os.environ.get("DIPC_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


def missing_browser_parts() -> list[str]:
    missing = []
    for name in BROWSER_MODULES:
        try:
            found = importlib.util.find_spec(name) is not None
        except ModuleNotFoundError:  # its parent package is missing
            found = False
        if not found:
            missing.append(f"the Python module {name}")
    if chromium_path() is None:
        missing.append("chromium on PATH")
    return missing


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get("DIPC_REQUIRE_BROWSER") and (missing := missing_browser_parts()):
        raise pytest.UsageError(
            f"DIPC_REQUIRE_BROWSER is set but the browser test lacks {', '.join(missing)} "
            "(make test installs them: the dev and ui extras, and Chromium with apt-get)"
        )


@pytest.fixture(autouse=True, scope="session")
def fake_cpu_capability():
    """What ``auto`` picks on a CPU depends on the fake, never on the machine running the tests."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(acceleration, "capability", _fake_capability(acceleration.capability))
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
