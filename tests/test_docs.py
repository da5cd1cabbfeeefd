"""The README lists every choice of every option, and every preset with its parameter count, from the same Enums
and registry the CLI and FitConfig use."""

from fractions import Fraction
from pathlib import Path

import pytest

from dip_compile import presets
from dip_compile.config import (
    Backend,
    Downsample,
    Generator,
    InputKind,
    Loss,
    Precision,
    StopRule,
    StopVariant,
    Structure,
    Upsample,
)

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
FLAT = " ".join(README.split())


@pytest.mark.parametrize(
    "choice", [Backend, Precision, StopRule, StopVariant, Structure, Upsample, Downsample, InputKind, Loss, Generator]
)
def test_readme_lists_every_value_of_each_option(choice):
    listed = "|".join(choice.values())
    assert listed in FLAT, f"README should list {listed}"


@pytest.mark.parametrize("row", presets.rows(), ids=lambda r: r["preset"].split(" ")[0])
def test_readme_preset_table_lists_each_preset_with_its_settings(row):
    name = row["preset"].split(" ")[0]
    line = next((x for x in README.splitlines() if x.startswith(f"| {name} | ")), None)
    assert line is not None, f"README's preset table has no row for {name}"
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[1].split(" ")[0] == row["task"]
    assert cells[4] == f"{row['parameters']:,}"
    assert int(cells[5]) == row["iterations"] and float(cells[6]) == row["lr"]
    assert abs(float(Fraction(cells[7])) - row["reg_noise"]) < 1e-12  # 1/30 written as the notebooks write it


def test_readme_lists_the_manifest_columns():
    from dip_compile.batch.jobs import COLUMNS

    assert f"columns are {', '.join(COLUMNS)}" in FLAT
