"""The suite's own machinery (tests/conftest.py), run in an inner pytest session with this very conftest: which
tests the bf16 pass leaves out, and CI's requirement that the browser test runs."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from conftest import smooth_image, tiny_config
from dip_compile.fitting import Fitter
from dip_compile.problem import make_problem

CONFTEST = Path(__file__).with_name("conftest.py")


@pytest.fixture(autouse=True, scope="module")
def torchs_lazy_imports() -> None:
    """A first fit imports hundreds of torch modules (dynamo, inductor); imported inside an inner session they would
    be dropped after it and registered twice by the next one."""
    config = tiny_config(iterations=1)
    Fitter(config, make_problem(config, smooth_image(32, 32))).run(1)


THREE_TESTS = """
import os

import pytest
import torch

from dip_compile import acceleration


def test_asks():
    assert acceleration.capability(torch.device("cpu")).device == "cpu"


def test_never_asks():
    pass


@pytest.mark.skipif(os.environ["DIPC_TEST_AUTO_PRECISION"] != "bf16", reason="bf16 only")
def test_bf16_only():
    pass
"""


def inner_session(pytester: pytest.Pytester, test_source: str) -> None:
    """A repository of one test file beside a copy of the conftest (whose digest then covers only these two)."""
    tests = pytester.mkdir("tests")
    (tests / "conftest.py").write_text(CONFTEST.read_text())
    (tests / "test_inner.py").write_text(test_source)


def reports(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, precision: str) -> list[pytest.TestReport]:
    """The inner session's reports, as ``make test``'s pass of this precision makes them."""
    monkeypatch.setenv("DIPC_TEST_AUTO_PRECISION", precision)
    monkeypatch.delenv("DIPC_REQUIRE_BROWSER", raising=False)  # CI's: not what this session is about
    result = pytester.runpytest_inprocess("tests", "--import-mode=importlib")
    return list(result.reprec.getreports("pytest_runtest_logreport"))


def outcomes(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, precision: str) -> dict[str, str]:
    kept = [r for r in reports(pytester, monkeypatch, precision) if r.when == "call" or r.skipped]
    return {r.nodeid.split("::")[-1]: r.outcome for r in kept}


def test_the_bf16_pass_skips_only_tests_that_passed_in_the_fp32_pass_without_asking(pytester, monkeypatch):
    inner_session(pytester, THREE_TESTS)
    assert outcomes(pytester, monkeypatch, "fp32") == {
        "test_asks": "passed",
        "test_never_asks": "passed",
        "test_bf16_only": "skipped",
    }
    assert outcomes(pytester, monkeypatch, "bf16") == {
        "test_asks": "passed",  # auto resolves otherwise here
        "test_never_asks": "skipped",  # the same code as in the fp32 pass
        "test_bf16_only": "passed",  # the fp32 pass learnt nothing about it
    }


def test_require_browser_stops_the_session_when_a_browser_module_is_missing(pytester, monkeypatch):
    inner_session(pytester, 'import pytest\n\n\ndef test_browser():\n    pytest.importorskip("playwright.sync_api")\n')
    monkeypatch.setenv("DIPC_REQUIRE_BROWSER", "1")
    monkeypatch.setenv("DIPC_CHROMIUM", "/usr/bin/true")  # Chromium is there; playwright is not
    monkeypatch.setitem(sys.modules, "playwright.sync_api", None)
    result = pytester.runpytest_inprocess("tests", "--import-mode=importlib")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "*DIPC_REQUIRE_BROWSER is set but the browser test lacks the Python module "
            "playwright.sync_api (make test installs them*"
        ]
    )


def test_a_big_network_in_a_bf16_step_fails_its_test_before_any_step(pytester, monkeypatch):
    inner_session(
        pytester,
        """
import torch

from dip_compile.fitting import Fitter
from dip_compile.presets import preset
from dip_compile.problem import make_problem


def test_the_denoising_preset_under_auto():
    config = preset("denoise").replace(precision="auto", iterations=1)
    Fitter(config, make_problem(config, torch.rand(3, 32, 32)))
""",
    )
    assert outcomes(pytester, monkeypatch, "fp32") == {"test_the_denoising_preset_under_auto": "passed"}
    [report] = [r for r in reports(pytester, monkeypatch, "bf16") if r.when == "call"]
    assert report.failed and "a bf16 step of a 2,217,831-weight network on the CPU" in report.longreprtext
