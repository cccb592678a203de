"""The contracts and the domain rules import no I/O: no Kafka, faust or ClickHouse client."""

import subprocess
import sys

MODULES = [
    "schemas.plans",
    "schemas.api",
    "schemas.admission",
    "tally.domain.subscriptions",
    "tally.domain.admission",
    "tally.domain.quota",
    "tally.domain.reservations",
    "tally.domain.windows",
    "tally.domain.otel",
    "streams.holes",
]


def test_schemas_and_domain_import_no_io():
    code = (
        "import sys\n"
        + "".join(f"import {m}\n" for m in MODULES)
        + "bad = [m for m in ('faust', 'aiokafka', 'clickhouse_connect', 'chdb', 'fastapi')"
        " if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_the_core_imports_nothing_above_it():
    """`tally/` is the core: the layers that use it (api, streams, producers) and the
    composition roots (commands) import it, never the other way round."""
    import ast
    from pathlib import Path

    above = {"api", "streams", "producers", "commands"}
    core = Path(__file__).resolve().parents[2] / "tally"
    wrong = []
    for path in sorted(core.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names = [node.module]
            wrong += [f"{path.name}: {n}" for n in names if n.split(".")[0] in above]
    assert wrong == []


def test_no_module_imports_itself_back_through_others():
    """No import circles among Tally's modules, counting every import (a function's own,
    and those only for type checking): a circle ties two modules into one that is read,
    tested and changed as a whole."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    packages = ("api", "streams", "producers", "commands", "tally", "schemas")
    modules: dict[str, Path] = {}
    for package in packages:
        for path in (root / package).rglob("*.py"):
            parts = path.relative_to(root).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            modules[name] = path

    def imported(name: str, path: Path) -> set[str]:
        out: set[str] = set()
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*up, base] if base else up)
                # `from pkg import module` depends on that module; `from m import name`, on m.
                targets = [
                    f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                    for a in node.names
                ]
            else:
                continue
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    out.add(target)
        return out

    graph = {name: imported(name, path) for name, path in modules.items()}
    circles = []
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
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
                circles.append(sorted(component))

    import sys

    sys.setrecursionlimit(10_000)
    for name in sorted(graph):
        if name not in index:
            visit(name)
    assert circles == [], circles
