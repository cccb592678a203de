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
