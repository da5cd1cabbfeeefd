"""The README and docs/*.md list every choice of every option, and every preset with its parameter count, from the
same Enums and registry the CLI and FitConfig use; every ``dipc`` command they show parses as the CLI parses it
(``dipc fit`` commands are also validated as ``dipc fit`` validates them before reading files), every benchmark
command names a script that takes its options, every link to a file resolves, and the README's Python example
runs (at a tiny iteration count)."""

import argparse
import contextlib
import importlib
import io
import re
import shlex
import subprocess
import sys
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

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
TEXTS = {page.relative_to(ROOT).as_posix(): page.read_text() for page in PAGES}
README = TEXTS["README.md"]
ALL = "\n".join(TEXTS.values())
FLAT = " ".join(ALL.split())


def shell_lines(text: str) -> list[str]:
    """The command lines of the page's ```bash blocks: continuations joined, comments dropped."""
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            if line and not line.startswith("#"):
                lines.append(line)
    return lines


def joined_code_spans(text: str) -> str:
    """The page with each inline `code span` on one line: a long command wraps in the page's source."""
    parts = re.split(r"(```.*?```)", text, flags=re.S)
    return "".join(
        part if part.startswith("```") else re.sub(r"`[^`]+`", lambda m: " ".join(m.group().split()), part)
        for part in parts
    )


COMMANDS = [(page, line) for page, text in TEXTS.items() for line in shell_lines(text) if line.startswith("dipc ")]
BENCHMARKS = sorted(
    {
        (page, " ".join(m.split()))
        for page, text in TEXTS.items()
        for m in re.findall(
            r"(?:python|bash) (?:-m )?benchmarks[/.][a-z_]+(?:\.py|\.sh)?[^`;)#\n]*", joined_code_spans(text)
        )
    }
)


def test_the_readme_is_short() -> None:
    assert len(README.splitlines()) <= 200, "README.md: at most ~200 lines; the rest belongs under docs/"


def test_the_pages_were_found() -> None:
    assert {"README.md", "docs/fit.md", "docs/batch.md", "docs/export.md", "docs/presets.md"} <= set(TEXTS)
    assert len(COMMANDS) > 30 and len(BENCHMARKS) > 10


@pytest.mark.parametrize(("page", "line"), COMMANDS, ids=[f"{p}: {c}" for p, c in COMMANDS])
def test_every_dipc_command_in_the_docs_parses(page: str, line: str) -> None:
    import typer

    from dip_compile.cli import app, parse_fit_args
    from dip_compile.restore import validate_job

    args = shlex.split(line)[1:]
    if args[0] == "fit":
        validate_job(parse_fit_args(args[1:]), device=False)  # DipError names what is wrong
    else:
        command = typer.main.get_command(app).commands[args[0]]  # type: ignore[attr-defined]
        command.make_context(f"dipc {args[0]}", args[1:])


class Parsed(Exception):
    """Raised by a benchmark's parse_args in place of running it: carries the parser its main() built."""

    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.parser = parser


def benchmark_parser(name: str) -> argparse.ArgumentParser:
    """The parser ``benchmarks/NAME.py``'s main() builds (common.py's shared options included), caught before it runs."""

    def caught(self: argparse.ArgumentParser, *args: object, **kwargs: object) -> None:
        raise Parsed(self)

    module = importlib.import_module(f"benchmarks.{name}")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(argparse.ArgumentParser, "parse_args", caught)
        patch.setattr(sys, "argv", [f"benchmarks/{name}.py"])  # the mains that read sys.argv themselves
        try:
            module.main()
        except Parsed as parsed:
            return parsed.parser
    raise AssertionError(f"benchmarks/{name}.py: main() returned without parsing its arguments")


def benchmark_refusal(line: str) -> str | None:
    """Why the benchmark a page names would refuse the command line shown (its own parser reads it), or None."""
    words = line.split()
    module = words[2] if words[1] == "-m" else words[1]
    script = ROOT / (module.replace(".", "/") + ".py" if words[1] == "-m" else module)
    if not script.is_file():
        return f"no {script.relative_to(ROOT)}"
    args = words[3:] if words[1] == "-m" else words[2:]
    if script.suffix == ".sh":  # the shell scripts take no options
        return f"{script.name} takes no options, got {' '.join(args)}" if args else None
    errors = io.StringIO()
    with contextlib.redirect_stderr(errors):
        try:
            benchmark_parser(script.stem).parse_args(args)
        except SystemExit:
            return errors.getvalue().strip().splitlines()[-1]
    return None


@pytest.mark.parametrize(("page", "line"), BENCHMARKS, ids=[f"{p}: {c}" for p, c in BENCHMARKS])
def test_every_benchmark_command_names_a_script_that_takes_its_options(page: str, line: str) -> None:
    assert benchmark_refusal(line) is None, f"{page}: {line}: {benchmark_refusal(line)}"


def test_a_benchmark_option_counts_only_where_the_scripts_own_parser_takes_it() -> None:
    assert benchmark_refusal("python benchmarks/batch_throughput.py --images 8 --sizes 64") is None
    # quality.py, which shares common.py's options with batch_throughput.py, has this option; batch_throughput.py not
    refusal = benchmark_refusal("python benchmarks/batch_throughput.py --images 8 --denoise-iterations 5")
    assert refusal is not None and "unrecognized arguments: --denoise-iterations 5" in refusal
    refusal = benchmark_refusal("python -m benchmarks.paper_tables --table table2")
    assert refusal is not None and "invalid choice: 'table2'" in refusal
    assert benchmark_refusal("python benchmarks/nonesuch.py") == "no benchmarks/nonesuch.py"


def test_every_link_to_a_file_resolves() -> None:
    for page, text in TEXTS.items():
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
            if "://" not in target:
                assert ((ROOT / page).parent / target).exists(), f"{page} links to {target}, which does not exist"


def test_the_readme_python_example_runs(tmp_path: Path) -> None:
    """As written, but 2 iterations on a 64x64 crop of the bundled example (the export and its check run fully)."""
    from PIL import Image

    blocks = [b for b in re.findall(r"```python\n(.*?)```", README, re.S) if "dip_compile.restore_image(" in b]
    assert len(blocks) == 1, "the README should have one Python example calling dip_compile.restore"
    code = blocks[0]
    Image.open(ROOT / "dip_compile/data/example.png").crop((32, 32, 96, 96)).save(tmp_path / "example.png")
    code = code.replace('"dip_compile/data/example.png"', repr(str(tmp_path / "example.png")))
    code, count = re.subn(r"iterations=\d+", "iterations=2", code)
    assert count == 1
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "restored.png").is_file() and (tmp_path / "restored.onnx").is_file()
    assert "identical_8bit" in done.stdout


@pytest.mark.parametrize(
    "choice", [Backend, Precision, StopRule, StopVariant, Structure, Upsample, Downsample, InputKind, Loss, Generator]
)
def test_readme_lists_every_value_of_each_option(choice):
    listed = "|".join(choice.values())
    assert listed in FLAT, f"README.md or docs/*.md should list {listed}"


@pytest.mark.parametrize("row", presets.rows(), ids=lambda r: r["preset"].split(" ")[0])
def test_readme_preset_table_lists_each_preset_with_its_settings(row):
    name = row["preset"].split(" ")[0]
    line = next((x for x in TEXTS["docs/presets.md"].splitlines() if x.startswith(f"| {name} | ")), None)
    assert line is not None, f"the preset table (docs/presets.md) has no row for {name}"
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[1].split(" ")[0] == row["task"]
    assert cells[4] == f"{row['parameters']:,}"
    assert int(cells[5]) == row["iterations"] and float(cells[6]) == row["lr"]
    assert abs(float(Fraction(cells[7])) - row["reg_noise"]) < 1e-12  # 1/30 written as the notebooks write it


def test_readme_lists_the_manifest_columns():
    from dip_compile.batch.jobs import COLUMNS

    assert f"columns are {', '.join(COLUMNS)}" in FLAT
