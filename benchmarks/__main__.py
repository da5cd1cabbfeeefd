"""The study runner: ``python -m benchmarks`` lists the studies and what each measures, ``python -m benchmarks NAME
[OPTIONS]`` runs one (as ``python benchmarks/NAME.py`` and ``python -m benchmarks.NAME`` do).

A study is any module of this folder but the shared scaffolding (``common``): adding a file registers it. The list
reads each module's docstring without importing it, so it needs no torch."""

from __future__ import annotations

import ast
import importlib
import sys
from pathlib import Path
from typing import Optional

HERE = Path(__file__).resolve().parent
NOT_STUDIES = ("__init__", "__main__", "common")


def studies() -> dict[str, str]:
    """Every study's name and the first line of its docstring."""
    found = {}
    for path in sorted(HERE.glob("*.py")):
        if path.stem not in NOT_STUDIES:
            doc = ast.get_docstring(ast.parse(path.read_text())) or ""
            found[path.stem] = doc.split("\n\n")[0].replace("\n", " ")
    return found


def main(argv: Optional[list[str]] = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    known = studies()
    if not args or args[0] in ("-h", "--help"):
        print("usage: python -m benchmarks NAME [OPTIONS]   (NAME --help: its options)\n\nstudies:")
        width = max(map(len, known))
        print("\n".join(f"  {name:{width}}  {doc}" for name, doc in known.items()))
        return 0
    name, *rest = args
    if name not in known:
        print(f"benchmarks: no study {name!r}; one of {', '.join(known)}", file=sys.stderr)
        return 2
    saved, sys.argv = sys.argv, [f"python -m benchmarks {name}", *rest]  # its parser's usage line names the study
    try:
        return int(importlib.import_module(f"benchmarks.{name}").main(rest) or 0)
    finally:
        sys.argv = saved


if __name__ == "__main__":
    sys.exit(main())
