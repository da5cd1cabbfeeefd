"""The package's import graph, read from the code: no import cycles (lazy imports inside functions count, since they
are how cycles hide), no module reaching into another's private names, and ``dip_compile.cli`` importable without
torch (so ``dipc --help`` starts fast)."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "dip_compile"
# pyproject's package-dir: export/ is installed as dip_compile.replay
SOURCES = {PACKAGE: ROOT / "dip_compile", f"{PACKAGE}.replay": ROOT / "export"}


def modules() -> dict[str, Path]:
    """Every module of the package, by dotted name (a package by its own name, for its __init__)."""
    found: dict[str, Path] = {}
    for prefix, folder in SOURCES.items():
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([prefix, *parts])] = path
    return found


MODULES = modules()


def is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def resolve(module: str, node: ast.ImportFrom) -> str:
    """The absolute module a ``from ... import`` names."""
    if not node.level:
        return node.module or ""
    base = module.split(".")
    if not is_package(module):
        base.pop()
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports(module: str, tree: ast.AST) -> Iterator[tuple[str, int, str | None, str | None]]:
    """(imported package module, line, name imported from it or None, local name bound) for every import."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in MODULES:
                    yield alias.name, node.lineno, None, alias.asname or alias.name
        elif isinstance(node, ast.ImportFrom):
            source = resolve(module, node)
            for alias in node.names:
                local = alias.asname or alias.name
                if f"{source}.{alias.name}" in MODULES:  # from . import x: the submodule x
                    yield f"{source}.{alias.name}", node.lineno, None, local
                elif source in MODULES:
                    yield source, node.lineno, alias.name, local


def graph() -> dict[str, dict[str, int]]:
    """module -> {imported module: line of the first such import}."""
    edges: dict[str, dict[str, int]] = {}
    for name, path in MODULES.items():
        out = edges.setdefault(name, {})
        for target, line, _, _ in imports(name, ast.parse(path.read_text(), str(path))):
            if target != name:
                out.setdefault(target, line)
    return edges


def cycles(edges: dict[str, dict[str, int]]) -> list[list[str]]:
    """One cycle path per strongly connected component of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return [path_through(component, edges) for component in components]


def path_through(component: list[str], edges: dict[str, dict[str, int]]) -> list[str]:
    """A shortest cycle from the component's first module back to itself (breadth first)."""
    start, members = component[0], set(component)
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for v in frontier:
            for w in sorted(edges[v]):
                if w not in members:
                    continue
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [*reversed(path), start]
                if w not in previous:
                    previous[w] = v
                    following.append(w)
        frontier = following
    return component


def describe(path: list[str], edges: dict[str, dict[str, int]]) -> str:
    """The cycle, then every import among its strongly connected modules (each one to break or keep)."""
    members = {v for v in edges if reaches(path[0], v, edges) and reaches(v, path[0], edges)}
    short = [p.removeprefix(f"{PACKAGE}.") for p in path]
    hops = [f"{a} (line {edges[path[i]][path[i + 1]]})" for i, a in enumerate(short[:-1])]
    inner = [
        f"    {v.removeprefix(PACKAGE + '.')}:{line} imports {w.removeprefix(PACKAGE + '.')}"
        for v in sorted(members)
        for w, line in sorted(edges[v].items())
        if w in members
    ]
    return "\n".join([" -> ".join([*hops, short[-1]]), *inner])


def reaches(start: str, goal: str, edges: dict[str, dict[str, int]]) -> bool:
    seen, todo = {start}, [start]
    while todo:
        v = todo.pop()
        if v == goal:
            return True
        for w in edges[v]:
            if w not in seen:
                seen.add(w)
                todo.append(w)
    return False


def private_uses() -> list[str]:
    """Private names of one package module used in another: imported by name, or read off an imported module or
    class (``restore._dry_run``, ``AcceleratedStep._guard``), or a private method called on anything but self/cls
    when only another package module defines it (``step._guard``)."""
    defined: dict[str, set[str]] = {}
    trees = {name: ast.parse(path.read_text(), str(path)) for name, path in MODULES.items()}
    for name, tree in trees.items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and private(node.name):
                defined.setdefault(node.name, set()).add(name)
    found = []
    for name, tree in trees.items():
        short = name.removeprefix(f"{PACKAGE}.")
        bound: dict[str, str] = {}  # local name -> the package module it came from (or is)
        for target, line, imported, local in imports(name, tree):
            if imported is not None and private(imported) and target != name:
                found.append(f"{short}:{line} imports {imported} from {target.removeprefix(PACKAGE + '.')}")
            if local is not None and target != name:
                bound[local] = target
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Attribute) and private(node.attr)):
                continue
            owner = node.value
            if isinstance(owner, ast.Name) and owner.id in bound:
                found.append(f"{short}:{node.lineno} uses {owner.id}.{node.attr} of {bound[owner.id]}")
            elif not (isinstance(owner, ast.Name) and owner.id in ("self", "cls")):
                owners = defined.get(node.attr, set())
                if owners and name not in owners:
                    found.append(f"{short}:{node.lineno} calls .{node.attr} defined in {', '.join(sorted(owners))}")
    return found


def test_the_import_graph_has_no_cycles() -> None:
    edges = graph()
    assert {"dip_compile.cli", "dip_compile.restore", "dip_compile.batch.runner"} <= set(edges)  # the walk saw them
    found = cycles(edges)
    assert not found, "import cycles (lazy imports count):\n" + "\n".join(describe(c, edges) for c in found)


def test_no_module_uses_another_modules_private_names() -> None:
    found = private_uses()
    assert not found, "private names used across modules:\n" + "\n".join(found)


def test_the_cli_imports_without_torch_or_numpy() -> None:
    """dipc --help reads only the config, presets and spec lists: torch (~2 s) and numpy (~0.2 s) wait for a fit."""
    code = "import sys, dip_compile.cli; heavy = {'torch', 'numpy'} & set(sys.modules); assert not heavy, heavy"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]


def test_dipc_fit_help_and_the_option_declarations_import_no_torch() -> None:
    """dipc fit --help, the declarations it is built from (job.py, cli/options.py) and dipc export --help read no
    torch; nor does the parser itself until it builds a job."""
    code = (
        "import contextlib, io, sys\n"
        "from dip_compile.cli import main\n"
        "for command in ('fit', 'export'):\n"
        "    with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.suppress(SystemExit):\n"
        "        main([command, '--help'])\n"
        "    assert '--force' in out.getvalue(), out.getvalue()\n"
        "import dip_compile.job, dip_compile.cli.options\n"
        "heavy = {'torch', 'numpy'} & set(sys.modules); assert not heavy, heavy\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]


def test_python_m_dip_compile_cli_is_the_cli_too() -> None:
    """The package of commands runs as a module, as scripts and the Ray test call it."""
    done = subprocess.run(
        [sys.executable, "-m", "dip_compile.cli", "batch", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "--pack" in done.stdout


ALL_NAMES = ast.literal_eval(
    next(
        ast.unparse(node.value)
        for node in ast.parse((ROOT / "dip_compile" / "__init__.py").read_text()).body
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "_LAZY"
    )
)


def test_the_package_imports_without_torch_and_names_its_api() -> None:
    code = (
        "import sys, dip_compile\n"
        "assert 'torch' not in sys.modules, 'import dip_compile imported torch'\n"
        "missing = [n for n in dip_compile.__all__ if not hasattr(dip_compile, n)]\n"
        "assert not missing, missing\n"
        "assert set(dip_compile.__all__) <= set(dir(dip_compile))\n"
        "assert dip_compile.restore_image.__module__ == 'dip_compile.api'\n"
    )
    submodules = {name.rsplit(".", 1)[-1] for name in MODULES}
    assert not submodules & set(ALL_NAMES), "a lazy name hides a submodule: `from . import X` would get the attribute"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]


def test_python_m_dip_compile_is_the_cli() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "dip_compile", "--help"], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "fit" in done.stdout and "export" in done.stdout


def test_the_package_ships_its_type_marker() -> None:
    assert (ROOT / "dip_compile" / "py.typed").is_file()
    assert '"py.typed"' in (ROOT / "pyproject.toml").read_text()
