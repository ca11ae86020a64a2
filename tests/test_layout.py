"""The shape of the project (issue #9): the package's modules import each other without a
cycle, each module reads in one sitting (at most 450 lines), every notebook cell fits on a
screen (at most 20 lines), and the benchmarks stay small (under 1000 lines together).

Each checker is a plain function, run on the project and on a tiny synthetic example that
must fail, so that a checker that can no longer fail is noticed."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "lungseg_utils"
MAX_MODULE_LINES = 450
MAX_CELL_LINES = 20
#: 900 until the benchmark measured each column on its own machine, the oneDNN-off "before"
#: column and the inference command as a fresh process (2026-12-03); no file over 450 either.
MAX_BENCHMARK_LINES = 1000


# ----------------------------------------------------------------------------- checkers
def package_imports(package_dir: Path, name: str = "lungseg_utils") -> dict[str, set[str]]:
    """``{module: {modules of the package it imports}}`` for every ``*.py`` of ``package_dir``.

    Every import anywhere in a module counts (module top, functions, classes, ``if`` blocks):
    ``from . import x``, ``from .x import y``, ``from lungseg_utils import x``,
    ``from lungseg_utils.x import y``, ``import lungseg_utils.x``. A name that is not a module
    of the package (``from . import __version__``) counts as the package's ``__init__``.
    """
    modules = {p.stem for p in package_dir.glob("*.py")}
    graph = {}
    for path in sorted(package_dir.glob("*.py")):
        found = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.ImportFrom):
                if node.level > 1:
                    continue                                  # above the package: not ours
                if node.level == 1:
                    base = node.module
                elif node.module == name or (node.module or "").startswith(name + "."):
                    base = node.module[len(name) + 1:] or None
                else:
                    continue
                if base:
                    found.add(base.split(".")[0])
                else:                                         # from . import a, b
                    found |= {a.name if a.name in modules else "__init__" for a in node.names}
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name == name:
                        found.add("__init__")
                    elif alias.name.startswith(name + "."):
                        found.add(alias.name.split(".")[1])
        found.discard(path.stem)
        graph[path.stem] = found & (modules | {"__init__"})
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as ``[a, b, ..., a]``, or None if the graph has none."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def long_files(paths, limit: int) -> dict[str, int]:
    """``{name: lines}`` of the files longer than ``limit`` lines."""
    counts = {p.name: len(p.read_text().splitlines()) for p in paths}
    return {k: v for k, v in counts.items() if v > limit}


def code_cells(text: str) -> list[tuple[int, list[str]]]:
    """``[(line number of its marker, lines)]`` of each code cell of a jupytext percent file.

    A cell starts at a line beginning with ``# %%``; markdown and raw cells (``# %% [markdown]``,
    ``[md]``, ``[raw]``) are left out, as is the header before the first cell. Blank lines
    at a cell's end (jupytext's separator) do not count.
    """
    cells, current = [], None
    for number, line in enumerate(text.splitlines(), start=1):
        if line.startswith("# %%"):
            kind = line[4:].strip()
            current = None if kind.startswith(("[markdown]", "[md]", "[raw]")) else (number, [])
            if current:
                cells.append(current)
        elif current is not None:
            current[1].append(line)
    for _, lines in cells:
        while lines and not lines[-1].strip():
            lines.pop()
    return cells


def long_cells(paths, limit: int) -> list[str]:
    """``"file:line (n lines)"`` for every code cell longer than ``limit`` lines."""
    return [f"{p.name}:{number} ({len(lines)} lines)" for p in paths
            for number, lines in code_cells(p.read_text()) if len(lines) > limit]


# ----------------------------------------------------------------------------- the project
def test_package_has_no_import_cycle():
    graph = package_imports(PACKAGE)
    assert {"train", "inference", "experiments", "anatomy", "metrics"} <= set(graph)
    assert "anatomy" in graph["metrics"] and "io" in graph["experiments"]   # edges are seen
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def documented_order(init: Path) -> list[str]:
    """The modules the package docstring lists (lines starting with ``name``), in order."""
    doc = ast.get_docstring(ast.parse(init.read_text())) or ""
    return [line.split("``")[1] for line in doc.splitlines() if line.startswith("``")]


def upward_imports(graph: dict[str, set[str]], order: list[str]) -> list[str]:
    """``"a -> b"`` for each import of a listed module by one listed above it."""
    rank = {m: i for i, m in enumerate(order)}
    return [f"{m} -> {i}" for m in order for i in sorted(graph.get(m, ()))
            if i in rank and rank[i] > rank[m]]


def test_imports_only_go_down_the_documented_list():
    """lungseg_utils/__init__.py lists the modules in the order data flows, "imports only go
    down this list"."""
    order = documented_order(PACKAGE / "__init__.py")
    assert {"errors", "config", "io", "anatomy", "metrics", "train", "inference"} <= set(order)
    modules = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}
    assert sorted(modules - set(order)) == [], "modules missing from the package docstring"
    assert not upward_imports(package_imports(PACKAGE), order)
    assert upward_imports({"a": {"b"}, "b": set()}, ["a", "b"]) == ["a -> b"]   # can fail


def test_no_module_over_450_lines():
    too_long = long_files(sorted(PACKAGE.glob("*.py")), MAX_MODULE_LINES)
    assert not too_long, f"modules over {MAX_MODULE_LINES} lines: {too_long}"


def test_no_notebook_code_cell_over_20_lines():
    notebooks = sorted((ROOT / "notebooks").glob("*.py"))
    assert notebooks
    too_long = long_cells(notebooks, MAX_CELL_LINES)
    assert not too_long, f"code cells over {MAX_CELL_LINES} lines: " + ", ".join(too_long)


def test_benchmarks_under_1000_lines_in_total():
    counts = {p.name: len(p.read_text().splitlines())
              for p in sorted((ROOT / "benchmarks").glob("*.py"))}
    assert counts
    assert sum(counts.values()) < MAX_BENCHMARK_LINES, f"benchmarks/*.py: {counts}"


def test_pure_modules_import_no_keras():
    """The package, its NumPy modules and augment (pure NumPy) import neither Keras nor
    TensorFlow: notebooks and tests that only need arrays start in a second, not in five."""
    pure = ["lungseg_utils", "lungseg_utils.augment", "lungseg_utils.anatomy",
            "lungseg_utils.metrics", "lungseg_utils.geometry", "lungseg_utils.io",
            "lungseg_utils.preprocess", "lungseg_utils.synthetic", "lungseg_utils.config"]
    code = (f"import importlib, sys\nfor m in {pure!r}: importlib.import_module(m)\n"
            "print(sorted(k for k in ('keras', 'tensorflow', 'jax') if k in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


# ----------------------------------------------------------------------------- the checkers can fail
def _package(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir()
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


def test_import_collector_sees_every_form_at_every_level(tmp_path):
    pkg = _package(tmp_path / "lungseg_utils", {
        "__init__.py": "from .errors import E\n",
        "errors.py": "class E(Exception):\n    pass\n",
        "a.py": "from . import b, c\nimport os\n",
        "b.py": "def f():\n    from .d import g\n    return g\n",
        "c.py": "class K:\n    def m(self):\n        import lungseg_utils.e\n",
        "d.py": "if True:\n    from lungseg_utils import e\n",
        "e.py": "from lungseg_utils.errors import E\nfrom . import __version__\n"
                "from numpy import array\nfrom .. import elsewhere\n",
    })
    assert package_imports(pkg) == {
        "__init__": {"errors"}, "errors": set(), "a": {"b", "c"}, "b": {"d"}, "c": {"e"},
        "d": {"e"}, "e": {"errors", "__init__"}}
    assert find_cycle(package_imports(pkg)) is None


def test_cycle_finder_reports_the_cycle(tmp_path):
    pkg = _package(tmp_path / "lungseg_utils", {
        "__init__.py": "",
        "a.py": "from . import b\n",
        "b.py": "def late():\n    from .c import x\n",          # hidden in a function
        "c.py": "import lungseg_utils.a\n",
        "d.py": "from .a import y\n",
    })
    assert find_cycle(package_imports(pkg)) == ["a", "b", "c", "a"]
    assert find_cycle({"x": {"x"}}) == ["x", "x"]
    assert find_cycle({"x": {"y"}, "y": set()}) is None


def test_length_checkers_fail_on_long_files_and_cells(tmp_path):
    short, long_ = tmp_path / "short.py", tmp_path / "long.py"
    short.write_text("x = 1\n" * 450)
    long_.write_text("x = 1\n" * 451)
    assert long_files([short, long_], 450) == {"long.py": 451}

    nb = tmp_path / "nb.py"
    nb.write_text("\n".join([
        "# ---", "# jupyter: header, not a cell", "# ---", "",
        "# %% [markdown]", *["# prose"] * 30, "",
        "# %%", *["a = 1"] * 20, "", "",
        "# %% tags=[\"parameters\"]", *["b = 2"] * 21, "",
        "# %% [md]", "# more prose", ""]))
    cells = code_cells(nb.read_text())
    assert [(n, len(lines)) for n, lines in cells] == [(37, 20), (60, 21)]
    assert long_cells([nb], 20) == ["nb.py:60 (21 lines)"]
