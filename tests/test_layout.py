"""The package's shape: no import cycles, no hidden (function-local) imports of its own modules,
and the README's layout table names every stage folder."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "asign_jax"


def _modules() -> dict:
    """{dotted module name: path} of every module of the package."""
    out = {}
    for p in PKG.rglob("*.py"):
        parts = list(p.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def _imports(path: Path, modules: dict) -> list[tuple[str, bool]]:
    """[(imported project module, at module level?)] of one file."""
    tree = ast.parse(path.read_text())
    top = {id(n) for n in tree.body}
    found = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules
                     else node.module for a in node.names]
        for n in names:
            if n.split(".")[0] == "asign_jax":
                found.append((n, id(node) in top))
    return found


def _graph() -> dict:
    modules = _modules()
    return {m: sorted({n for n, _ in _imports(p, modules) if n in modules and n != m})
            for m, p in modules.items()}


def _cycles(graph: dict) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, []):
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


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]}) == [["a", "b", "c"]]
    assert _cycles({"a": ["b"], "b": []}) == []


def test_no_import_cycles():
    assert _cycles(_graph()) == []


def _package(module: str) -> str:
    """The stage folder of a module (``asign_jax.training.loop`` -> ``training``); a top-level
    module is its own package (``asign_jax.pipeline`` -> ``pipeline``)."""
    return module.split(".")[1] if module.count(".") else module


def _package_graph(graph: dict) -> dict:
    """The module graph collapsed onto stage folders (an edge per pair of folders)."""
    out = {}
    for m, deps in graph.items():
        out.setdefault(_package(m), set()).update(
            p for p in map(_package, deps) if p != _package(m))
    return {k: sorted(v) for k, v in out.items()}


def test_no_package_level_import_cycles():
    # data flows one way between the stage folders: e.g. evaluation may read training's
    # batches, but then nothing in training may import evaluation's modules that import it
    assert _package_graph({"asign_jax.a.x": ["asign_jax.b.y"], "asign_jax.b.y": [],
                           "asign_jax.b.z": ["asign_jax.a.w"]}) == {"a": ["b"], "b": ["a"]}
    assert _cycles(_package_graph({"asign_jax.a.x": ["asign_jax.b.y"],
                                   "asign_jax.b.z": ["asign_jax.a.w"]})) == [["a", "b"]]
    assert _cycles(_package_graph(_graph())) == []


def test_no_function_local_imports_of_the_project():
    modules = _modules()
    hidden = [(m, n) for m, p in modules.items() for n, top in _imports(p, modules) if not top]
    assert hidden == []


def test_readme_layout_table_matches_the_folders():
    text = (ROOT / "README.md").read_text()
    section = text.split("## Layout", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"`asign_jax/([a-z_]+)/`", section))
    folders = {p.name for p in PKG.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert named == folders
    mains = {p.stem for p in PKG.glob("*.py") if "__main__" in p.read_text()}
    assert mains and all(f"asign_jax.{m}" in section for m in mains), mains
