"""The README lists every choice of every option from the same Enums the CLI and FitConfig use."""

from pathlib import Path

import pytest

from dip_compile.config import Backend, Precision, StopRule, StopVariant, Structure, Upsample

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


@pytest.mark.parametrize("choice", [Backend, Precision, StopRule, StopVariant, Structure, Upsample])
def test_readme_lists_every_value_of_each_option(choice):
    listed = "|".join(choice.values())
    flat = " ".join(README.split())
    assert listed in flat, f"README should list {listed}"
