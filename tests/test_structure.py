"""The import graph reads as one flow: cli -> analyzer -> sim -> adapters and kernels; the report
is fed by result files only; no circles; frameworks only in their adapters (read from the source)."""

import ast
from pathlib import Path
from typing import Dict, Set

import pytest

ROOT = Path(__file__).resolve().parents[1]
FRAMEWORKS = {"torch", "keras", "onnx", "onnxruntime", "onnx_ir", "onnxscript", "tensorflow", "jax"}


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[0] == "adapters":
        parts = ["qa"] + parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _sources() -> Dict[str, Path]:
    if not (ROOT / "qa" / "analyzer.py").is_file():
        pytest.skip("needs the source tree")
    files = [p for d in ("qa", "adapters") for p in (ROOT / d).rglob("*.py")]
    return {_module_name(p): p for p in files}


def _imports(name: str, path: Path, known: Set[str]) -> Set[str]:
    """qa modules (and top-level third-party packages, prefixed 'ext:') imported anywhere in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: Set[str] = set()

    def add(target: str) -> None:
        if target.split(".")[0] != "qa":
            found.add("ext:" + target.split(".")[0])
            return
        while target and target not in known:  # `from qa.x import y`: y may be a name, not a module
            target = target.rpartition(".")[0]
        if target:
            found.add(target)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            module = (base + ("." + node.module if node.module else "")) if node.level else node.module
            for alias in node.names:
                candidate = f"{module}.{alias.name}"
                add(candidate if candidate in known else module)
    found.discard(name)
    return found


@pytest.fixture(scope="module")
def graph():
    sources = _sources()
    known = set(sources)
    return {name: _imports(name, path, known) for name, path in sources.items()}


def _reaches(graph, start: str, banned: Set[str]) -> Set[str]:
    return {m for m in graph[start] if any(m == b or m.startswith(b + ".") for b in banned)}


def test_no_import_cycles(graph):
    state: Dict[str, int] = {}

    def visit(node, stack):
        state[node] = 1
        for nxt in sorted(m for m in graph.get(node, ()) if m in graph):
            if nxt.startswith(node + "."):  # a package importing its own submodule is not an arrow back
                continue
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if state.get(nxt) is None:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for name in sorted(graph):
        if state.get(name) is None:
            visit(name, [name])


def test_the_report_reads_result_files_only(graph):
    engine = {"qa.analyzer", "qa.sim", "qa.adapters", "qa.graph", "qa.config", "qa.cli", "qa.observers"}
    for name in graph:
        if name.startswith("qa.report"):
            assert not _reaches(graph, name, engine), f"{name} imports the engine: {_reaches(graph, name, engine)}"


def test_arrows_point_one_way(graph):
    rules = {
        "qa.adapters": {"qa.analyzer", "qa.sim", "qa.cli", "qa.report", "qa.ranking"},
        "qa.sim": {"qa.analyzer", "qa.cli", "qa.report"},
        "qa.analyzer": {"qa.cli"},
        "qa.kernels": {"qa.analyzer", "qa.sim", "qa.adapters", "qa.report", "qa.graph", "qa.config"},
        "qa.encodings": {"qa.kernels", "qa.analyzer", "qa.sim", "qa.adapters", "qa.report"},
        "qa.graph": {"qa.analyzer", "qa.sim", "qa.adapters", "qa.report", "qa.config"},
        "qa.config": {"qa.analyzer", "qa.sim", "qa.adapters", "qa.report"},
        "qa.ranking": {"qa.analyzer", "qa.sim", "qa.adapters", "qa.report"},
    }
    for name in graph:
        for prefix, banned in rules.items():
            if name == prefix or name.startswith(prefix + "."):
                bad = _reaches(graph, name, banned)
                assert not bad, f"{name} imports {sorted(bad)} (arrow running back)"


def test_frameworks_only_in_their_adapters_and_altair_only_in_the_report(graph):
    for name, imports in graph.items():
        ext = {m[4:] for m in imports if m.startswith("ext:")}
        if not (name.startswith("qa.adapters.") or name.startswith("qa.demo")):
            assert not ext & FRAMEWORKS, f"{name} imports {sorted(ext & FRAMEWORKS)}"
        if not name.startswith("qa.report"):
            assert "altair" not in ext and "jinja2" not in ext, name


def test_adapter_functions_stay_short():
    """Adapters are thin: no function over ~80 lines."""
    for path in (ROOT / "adapters").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                assert length <= 85, f"{path.relative_to(ROOT)}:{node.lineno} {node.name} is {length} lines"
