"""The contracts and the domain rules import no I/O: no Kafka, faust or ClickHouse client."""

import subprocess
import sys

MODULES = [
    "schemas.plans",
    "schemas.api",
    "tally.domain.subscriptions",
    "tally.domain.admission",
    "tally.domain.quota",
    "tally.domain.reservations",
    "tally.domain.windows",
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
