"""The example queries in docs/analytics.md run, and agree with the API."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

from tests.conftest import ADMIN_KEY, OrgFactory, Send, bearer, eventually, rows_reach
from tests.factories import make_event

DOC = Path(__file__).resolve().parents[2] / "docs" / "analytics.md"


def examples() -> list[str]:
    return re.findall(r"```sql\n(.*?)```", DOC.read_text(), flags=re.S)


async def test_the_documented_queries_run_and_agree_with_the_api(
    client, stack, new_org: OrgFactory, send: Send
):
    org, key = await new_org()
    top = {"amount_micros": 7_000_000, "idempotency_key": "docs"}
    r = await client.post(f"/api/v2/admin/orgs/{org}/credits", json=top, headers=bearer(ADMIN_KEY))
    assert r.status_code == 201
    now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    await send(make_event(org_id=org, ts=now, run_id=f"{org}-run", input_tokens=40_000))

    async def debited() -> dict | None:
        body = (await client.get("/api/v2/credits", headers=bearer(key))).json()
        return body if body["spent_micros"] > 0 else None

    await rows_reach(stack, org, 1)
    credits = await eventually(debited)
    queries = examples()
    assert len(queries) >= 3
    results = [await stack.store.query(q) for q in queries]
    balances = {row[0]: row[3] for row in results[2]}
    assert balances[org] == credits["balance_micros"] == 7_000_000 - credits["spent_micros"]
