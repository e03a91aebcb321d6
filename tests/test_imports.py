"""Data flows one way through ``benchmark/`` (CLI -> launch -> runs -> train/evaluation -> results -> report): no
module may import, directly or through others, a module that imports it. The graph is read from the source
with ``ast`` (every ``import`` statement, function-level ones included), so nothing is imported to check it."""
import ast
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "benchmark"


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """module -> the modules of the same package it imports (``from pkg import sub`` counts as ``pkg.sub`` when
    ``sub`` is a module, else as ``pkg``)."""
    files = {module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    graph: dict[str, set[str]] = {name: set() for name in files}
    top = root.name
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            for t in targets:
                while t and t not in files and t.startswith(top):   # `import benchmark.x.y` -> the deepest module
                    t = t.rpartition(".")[0]
                if t in files and t != name:
                    graph[name].add(t)
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each as one circle through them."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def path_through(graph: dict[str, set[str]], comp: list[str]) -> str:
    """One concrete circle inside a component, for the failure message: a -> b -> ... -> a."""
    start, members = comp[0], set(comp)
    prev, frontier = {start: None}, [start]
    while frontier:                                   # breadth first from start, back to start
        v = frontier.pop(0)
        for w in sorted(graph[v] & members):
            if w == start:
                chain = [v]
                while prev[chain[-1]] is not None:
                    chain.append(prev[chain[-1]])
                return " -> ".join(chain[::-1] + [start])
            if w not in prev:
                prev[w] = v
                frontier.append(w)
    raise AssertionError(f"{comp} is not a circle")


def test_no_import_circles_in_benchmark():
    graph = import_graph()
    assert "benchmark.runs" in graph and graph["benchmark.runs"], "the scan found no imports: it is broken"
    found = circles(graph)
    assert not found, "import circles in benchmark/:\n" + "\n".join(path_through(graph, c) for c in found)


def test_the_scan_finds_a_circle(tmp_path):
    """The checker itself: a two-module circle through a function-level import, and a relative one, are found."""
    pkg = tmp_path / "benchmark"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from benchmark.b import f\n")
    (pkg / "b.py").write_text("def f():\n    from benchmark import a\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "x.py").write_text("from .y import g\n")
    (pkg / "sub" / "y.py").write_text("import benchmark.sub.x\n")
    (pkg / "c.py").write_text("from benchmark import a\n")          # imports into a circle, is not in one
    graph = import_graph(pkg)
    assert circles(graph) == [["benchmark.a", "benchmark.b"], ["benchmark.sub.x", "benchmark.sub.y"]]
    assert path_through(graph, ["benchmark.a", "benchmark.b"]) == "benchmark.a -> benchmark.b -> benchmark.a"
