"""The package's shape: no import cycle anywhere inside clado_cli, every list of methods and
data sources derived from (or checked against) its registry, no file too long, and no
docstring pointing outside the repository."""
from __future__ import annotations

import ast
import json
import re
from pathlib import Path
from typing import Dict, List, Set

import pytest

PKG = Path(__file__).resolve().parents[1] / "clado_cli"


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> Dict[str, Path]:
    return {_module_name(p): p for p in PKG.rglob("*.py")}


def import_graph() -> Dict[str, Set[str]]:
    """Module -> the clado_cli modules it imports, at any depth of the file (function-level and
    type-checking imports count too). `from pkg import name` is an edge to pkg.name when that is
    a module, else to pkg; `from . import name` is an edge to the package too (its __init__
    runs first); otherwise a package's own __init__ is not implied by importing one of its
    modules."""
    mods = _modules()
    graph: Dict[str, Set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        is_pkg = path.name == "__init__.py"
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            targets: List[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    prefix = ".".join(base + ([node.module] if node.module else []))
                else:
                    prefix = node.module or ""
                for a in node.names:
                    full = f"{prefix}.{a.name}"
                    targets.append(full if full in mods else prefix)
                if node.level and not node.module and prefix in mods:
                    targets.append(prefix)   # `from . import x` runs the package's __init__ first
            for t in targets:
                while t and t not in mods:   # `import clado_cli.x.y` where y is a name
                    t = t.rpartition(".")[0]
                if t and t.startswith("clado_cli") and t != mod:
                    graph[mod].add(t)
    return graph


def cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on: Set[str] = set()
    out: List[List[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle_inside_the_package():
    found = cycles(import_graph())
    assert found == [], f"import cycles: {found}"


def test_the_cycle_finder_finds_cycles():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    g = import_graph()
    assert "clado_cli.store.cache" in g["clado_cli.store"] and "clado_cli.methods.base" in g["clado_cli.methods"]


def test_layers_point_one_way():
    """The flow prep -> store -> methods/optimize -> decision -> evaluate: the lower layers never
    import the upper ones, and the solver layer imports no torch."""
    g = import_graph()
    upper = ("clado_cli.cli", "clado_cli.__main__")
    for mod, deps in g.items():
        if mod.startswith(("clado_cli.store", "clado_cli.optimize")):
            assert not {d for d in deps if d.startswith(("clado_cli.methods", "clado_cli.prep", "clado_cli.session"))}, mod
        if not mod.startswith(upper) and mod not in ("clado_cli.distributed",):
            assert not {d for d in deps if d.startswith("clado_cli.cli")}, mod
    for path in (PKG / "optimize").rglob("*.py"):
        assert not re.search(r"^\s*(import|from)\s+torch", path.read_text(), re.M), path


def test_no_file_in_the_package_is_too_long():
    long = {str(p.relative_to(PKG)): n for p in PKG.rglob("*.py") if (n := len(p.read_text().splitlines())) > 520}
    assert long == {}


def test_docs_cited_are_in_the_repository():
    for p in PKG.rglob("*.py"):
        text = p.read_text()
        assert "NOTES.md" not in text and not re.search(r"\bSPEC\b", text), p
    assert (PKG.parent / "docs" / "methods.md").is_file()


# -- every list of methods and data sources comes from a registry ------------------------------


def test_method_lists_come_from_the_registry():
    from clado_cli.config import load_config
    from clado_cli.decisions import schema
    from clado_cli.errors import ConfigError
    from clado_cli.methods import METHODS, get_method, method_names, prep_method_names

    assert method_names() == ["clado", "mpqco", "hawq", "naive"]
    assert prep_method_names() == ["clado", "mpqco", "hawq"]
    assert schema()["properties"]["method"]["enum"] == method_names()
    assert load_config(None).optimize.methods == method_names()
    with pytest.raises(ConfigError, match="unknown method 'foo'"):
        load_config(None, {"optimize.methods": ["clado", "foo"]})
    # each method owns a distinct cache directory, or reads one that exists
    dirs = [get_method(m).stored.dirname for m in prep_method_names()]
    assert len(set(dirs)) == len(dirs)
    for m in method_names():
        assert get_method(m).source in prep_method_names()
        assert METHODS.get(m).program in ("IQP", "ILP")


def test_cli_help_lists_come_from_the_registries():
    from typer.testing import CliRunner

    from clado_cli.cli import app
    from clado_cli.cli.common import DATA_FORMS
    from clado_cli.data import DATASETS
    from clado_cli.methods import method_names, prep_method_names

    assert sorted(f.split(":")[0] for f in DATA_FORMS) == DATASETS.names()
    r = CliRunner().invoke(app, ["prep", "--help"])
    for m in prep_method_names():
        assert m in r.output
    r = CliRunner().invoke(app, ["optimize", "--help"], env={"COLUMNS": "200"})
    assert ", ".join(method_names()) in " ".join(r.output.split())


def test_decision_schema_file_has_no_hand_written_method_list():
    raw = json.loads((PKG / "schemas" / "decision.schema.json").read_text())
    assert "enum" not in raw["properties"]["method"]
