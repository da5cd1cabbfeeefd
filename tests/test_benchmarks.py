"""benchmarks/: every module imports as ``benchmarks.X`` (nothing runs, no ``sys.path`` edit)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
MODULES = sorted(p.stem for p in BENCHMARKS.glob("*.py") if p.stem != "__init__")


def test_the_benchmarks_are_a_package_of_the_scripts_here():
    assert (BENCHMARKS / "__init__.py").is_file()
    assert {"quality", "cases", "stopping_study", "schedule_study", "presets_quality"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_every_benchmark_imports_without_editing_sys_path(name: str):
    before = list(sys.path)
    module = importlib.import_module(f"benchmarks.{name}")
    assert module.__name__ == f"benchmarks.{name}"
    assert sys.path == before  # the script-mode shim stays out of the way of an import
    assert callable(getattr(module, "main", None)) or name == "cases"  # cases.py is the grid helpers only
