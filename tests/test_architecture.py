"""The layering of the package, read from the source: ``pipelines`` has no import cycle and never
imports ``engine`` or ``serve_app``; stage modules do not import each other; docs link only inside
the repository."""

import ast
import re
from pathlib import Path

import portrait3d

ROOT = Path(portrait3d.__file__).parent
REPO = ROOT.parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in ROOT.rglob("*.py")}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Every portrait3d module that ``name`` imports, at module level or inside functions."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module
            # `from pkg import sub` imports the submodule when there is one
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in known else mod for a in node.names]
        else:
            continue
        out.update(t for t in targets if t in known)
    return out


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    return {name: _imports(name, path, known) - {name} for name, path in mods.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_graph_reader_sees_lazy_and_relative_imports():
    g = _graph()
    assert "portrait3d.pipelines.registry" in g["portrait3d.pipelines.sculpt"]  # from .registry import register
    assert "portrait3d.pipelines.models" in g["portrait3d.pipelines.analysis"]  # inside __init__
    assert "portrait3d.pipelines.analysis" in g["portrait3d.pipelines.profiles"]  # from . import analysis
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_pipelines_has_no_import_cycle_and_never_imports_engine_or_serve():
    g = _graph()
    pipelines = {m: deps for m, deps in g.items() if m.startswith("portrait3d.pipelines")}
    assert len(pipelines) > 30
    for m, deps in pipelines.items():
        bad = {d for d in deps if d.startswith(("portrait3d.engine", "portrait3d.serve_app", "portrait3d.cli"))}
        assert not bad, f"{m} imports {bad}"
    assert _cycles(g) == []


def test_stage_modules_do_not_import_each_other():
    g = _graph()
    stage_modules = {m for m, p in _modules().items() if re.search(r"^@register\(", p.read_text(), re.M)}
    assert {"portrait3d.pipelines.sculpt", "portrait3d.pipelines.texture_diffusion"} <= stage_modules
    for m in stage_modules:
        assert not (g[m] & stage_modules), f"{m} imports the stage modules {g[m] & stage_modules}"


def test_the_registry_imports_no_stage():
    g = _graph()
    assert g["portrait3d.pipelines.registry"] <= {"portrait3d.errors"}


def test_every_module_says_what_it_holds():
    for name, path in _modules().items():
        doc = ast.get_docstring(ast.parse(path.read_text()))
        assert doc and len(doc.split()) >= 3, f"{name} has no docstring"


def test_docs_link_only_inside_the_repository():
    docs = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md")), *sorted((REPO / "deploy").rglob("*.md"))]
    assert len(docs) >= 2
    for doc in docs:
        text = doc.read_text()
        for target in re.findall(r"\]\(([^)#\s]+)", text):
            assert not target.startswith(("http:", "https:")) or "github.com" not in target, (doc, target)
            if not target.startswith(("http:", "https:", "mailto:")):
                resolved = (doc.parent / target).resolve()
                assert resolved.is_relative_to(REPO.resolve()) and resolved.exists(), (doc.name, target)
        assert "../shared" not in text, f"{doc.name} points outside the repository"
