"""The layout rules of ARCHITECTURE.md, checked on the source tree.

* No import circle among the modules of ``qcc/``, ``passes/`` and ``backends/``:
  every ``import`` statement counts, at module level or inside a function
  (``TYPE_CHECKING`` blocks too); only a package ``__init__`` importing its own
  children is not an edge, since re-exporting them is what it is for.
* The core (``qcc/``) never imports a pass or a backend.
* At most six modules sit directly in ``qcc/``; the rest live in the
  sub-packages that name the parts.
"""
from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"qcc": "qcc", "passes": "qcc.passes", "backends": "qcc.backends"}


def _modules():
    """{module name: path} for every Python file of the three folders, as installed."""
    found = {}
    for folder, package in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([package] + parts)] = path
    return found


def _imports(name: str, path: Path, known) -> set:
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            targets.add(module)
            targets.update(f"{module}.{alias.name}" for alias in node.names)  # `from pkg import submodule`
    edges = set()
    for target in targets:
        while target and target not in known:  # `import a.b.c` names module a.b.c, or a.b's attribute c
            target = target.rpartition(".")[0]
        if not target or target == name:
            continue
        if is_package and target.startswith(name + "."):
            continue  # a package __init__ re-exporting its children
        edges.add(target)
    return edges


def import_graph() -> nx.DiGraph:
    modules = _modules()
    g = nx.DiGraph()
    g.add_nodes_from(modules)
    for name, path in modules.items():
        g.add_edges_from((name, target) for target in _imports(name, path, modules))
    return g


def test_no_import_circle():
    cycles = list(nx.simple_cycles(import_graph()))
    assert not cycles, "import circles:\n" + "\n".join(" -> ".join(c + [c[0]]) for c in cycles)


def test_core_never_imports_a_pass_or_a_backend():
    g = import_graph()
    bad = [(a, b) for a, b in g.edges if a.startswith("qcc.") and not a.startswith(("qcc.passes", "qcc.backends"))
           and b.startswith(("qcc.passes", "qcc.backends"))]
    assert not bad, f"core modules import passes or backends: {bad}"


def test_the_graph_sees_lazy_imports():
    # A check that cannot fail proves nothing: the parser must find an import made inside a function.
    g = import_graph()
    assert g.has_edge("qcc.tools.compile", "qcc.tools.report")


def test_core_top_level_holds_at_most_six_modules():
    top = sorted(p.name for p in (ROOT / "qcc").glob("*.py"))
    assert len(top) <= 6, top
    sub = sorted(p.name for p in (ROOT / "qcc").iterdir() if (p / "__init__.py").exists())
    assert {"ir", "frontend", "transforms", "quant", "sim", "export", "tools"} <= set(sub), sub
