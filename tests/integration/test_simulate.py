"""`tally simulate`'s engine against the real stack: what it says it sent is what Tally counts."""

from __future__ import annotations

import uuid

import pytest

from producers.simulate import org_ids, run
from tests.conftest import ADMIN_KEY, bearer
from tests.integration.test_emitter import tokens_reach


@pytest.mark.slow
async def test_simulated_traffic_is_counted_exactly(client, stack, tmp_path):
    prefix = f"sim-{uuid.uuid4().hex[:6]}"
    keys = {}
    for org in org_ids(3, prefix):
        body = {"org_id": org, "plan": "free", "signup_date": "2026-01-01"}
        r = await client.post("/api/v2/admin/orgs", json=body, headers=bearer(ADMIN_KEY))
        assert r.status_code == 201, r.text
        r = await client.post(f"/api/v2/admin/orgs/{org}/keys", json={}, headers=bearer(ADMIN_KEY))
        keys[org] = r.json()["key"]
    seen = []
    summary = await run(
        stack.settings.bootstrap_servers,
        orgs=3,
        agents=2,
        rate=3_000,
        duration=1.0,
        seed=11,
        prefix=prefix,
        spool_dir=tmp_path,
        progress=lambda done, total: seen.append((done, total)),
    )
    assert summary.events == 3_000 and seen[-1] == (3_000, 3_000)
    assert sum(summary.by_type.values()) == 3_000
    for org, key in keys.items():
        await tokens_reach(client, key, summary.live_tokens_by_org[org])
