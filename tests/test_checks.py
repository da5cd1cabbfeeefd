"""The one module of input checks: its rules, its messages, and that no other module restates the rule."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import pytest

from dip_compile.checks import finite_number, integral, is_finite, is_number, is_whole, whole_number
from dip_compile.config import ConfigError
from dip_compile.errors import DipError

PACKAGE = Path(__file__).resolve().parent.parent / "dip_compile"


def test_a_bool_is_never_a_number_and_a_float_is_not_whole() -> None:
    assert is_number(2) and is_number(2.5) and not is_number(True) and not is_number("2")
    assert is_whole(3) and is_whole(0, 0) and is_whole(5, 1, 5)
    assert (
        not is_whole(True) and not is_whole(3.0) and not is_whole("3") and not is_whole(0, 1) and not is_whole(6, 1, 5)
    )
    assert is_finite(0.5, 0, 1) and is_finite(1, 0, 1) and not is_finite(1, 0, 1, high_open=True)
    assert not is_finite(0, 0, 1, low_open=True) and not is_finite(math.nan) and not is_finite(math.inf)
    assert not is_finite(False, -1, 1)


def test_the_raising_checks_write_the_configs_messages() -> None:
    with pytest.raises(ConfigError, match=r"^--iterations must be a whole number between 1 and 9, got 0$"):
        whole_number("--iterations", 0, 1, 9, error=ConfigError)
    with pytest.raises(DipError, match=r"^--seed must be a whole number >= 0, got True$"):
        whole_number("--seed", True, 0)
    with pytest.raises(ConfigError, match=r"^--lr must be a finite number in \(0, 10\], got nan$"):
        finite_number("--lr", math.nan, 0, 10, low_open=True, error=ConfigError)
    with pytest.raises(DipError, match=r"^--tv-weight must be a finite number in \[0, inf\], got -1$"):
        finite_number("--tv-weight", -1, 0)
    whole_number("--iterations", 9, 1, 9)
    finite_number("--lr", 10, 0, 10, low_open=True)


@pytest.mark.parametrize(
    "value, number", [(2, 2), (2.0, 2), ("3", 3), (" 4.0", 4), (True, None), (2.5, None), (math.nan, None),
                      (10**400, None), ("x", None), (None, None), ([1], None)]
)  # fmt: skip
def test_a_client_number_is_whole_however_it_was_sent(value: object, number: int | None) -> None:
    assert integral(value) == number


def bool_guards(folder: Path) -> list[str]:
    """``isinstance(x, bool)`` as part of a condition (``isinstance(x, bool) or ...``, ``not isinstance(x, bool)``)
    outside checks.py: the number rule written again."""
    found = []
    for path in sorted(folder.rglob("*.py")):
        if path.name == "checks.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, (ast.BoolOp, ast.UnaryOp)):
                continue
            operands = node.values if isinstance(node, ast.BoolOp) else [node.operand]
            if any(
                isinstance(o, ast.Call)
                and isinstance(o.func, ast.Name)
                and o.func.id == "isinstance"
                and any(isinstance(a, ast.Name) and a.id == "bool" for a in ast.walk(o.args[1]))
                for o in operands
                if isinstance(o, ast.Call) and len(o.args) == 2
            ):
                found.append(f"{path.relative_to(folder)}:{node.lineno}")
    return found


def test_no_module_but_checks_writes_the_number_rule(tmp_path: Path) -> None:
    """A new number option asks ``checks`` (``is_whole(value, 1)``) instead of restating that a bool is no number."""
    (tmp_path / "module.py").write_text(
        "a = isinstance(x, bool) or x < 1\nb = x > 0 and not isinstance(x, (bool, str))\nc = isinstance(x, bool)\n"
    )
    assert bool_guards(tmp_path) == ["module.py:1", "module.py:2"]
    found = bool_guards(PACKAGE)
    assert not found, f"the number rule restated in {', '.join(found)}: use dip_compile.checks"
