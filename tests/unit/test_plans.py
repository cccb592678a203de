"""The shipped catalogue carries every seed figure; bad catalogues are refused at start-up."""

import json
from pathlib import Path

import pytest

from schemas.plans import PlanOverrides, apply_overrides
from tally.catalogue import CatalogueError, load_plans

CAT = load_plans()
SHIPPED = Path(__file__).parents[2] / "tally" / "data" / "plans.json"


def plan(name: str):
    p = CAT.get(name)
    assert p is not None, name
    return p


def test_every_plan_of_the_seeds_ships():
    names = [p.name for p in CAT.plans]
    assert names == ["free", "developer", "starter", "pro", "business", "scale", "enterprise"]
    assert CAT.default_plan == "free"


def test_token_and_session_plans():  # agp-plans-and-quota-api, agp-token-and-session-quotas
    free, dev = plan("free"), plan("developer")
    assert (free.tokens_per_period, free.concurrent_sessions, free.anchor) == (
        15_000_000,
        3,
        "signup",
    )
    assert (dev.tokens_per_period, dev.concurrent_sessions, dev.anchor) == (
        65_000_000,
        10,
        "billing_date",
    )
    assert (free.price_micros_per_month, dev.price_micros_per_month) == (0, 29_000_000)


def test_tool_call_plans():  # tool-call-billing
    assert [plan(n).tool_calls_per_month for n in ("free", "starter", "business")] == [
        1000,
        10_000,
        100_000,
    ]
    assert plan("enterprise").custom and plan("enterprise").tool_calls_per_month is None
    assert plan("free").api_keys == 1  # "single production key"


@pytest.mark.parametrize(
    ("name", "month", "minute", "day", "keys", "retention", "ttl", "pool", "byok"),
    [
        ("free", 10_000, 10, 500, 1, 7, 24, 1000, False),
        ("pro", 50_000, 100, 5000, 5, 30, 72, 10_000, True),
        ("scale", 500_000, 1000, 50_000, None, 90, 168, None, True),
    ],
)
def test_gateway_plans(name, month, minute, day, keys, retention, ttl, pool, byok):  # gateway
    p = plan(name)
    assert (p.requests_per_month, p.requests_per_minute, p.requests_per_day) == (month, minute, day)
    assert (p.api_keys, p.log_retention_days, p.cache_ttl_hours) == (keys, retention, ttl)
    assert (p.semantic_vector_pool, p.byok, p.managed_models) == (pool, byok, ["gpt-4o-mini"])


def test_workspace_plans():  # workspace-credits-and-usage-breakdown
    assert plan("free").workspaces == 1
    assert plan("pro").workspaces is None
    assert "scim" in plan("enterprise").features


def test_meters_a_plan_does_not_set_are_unlimited():
    dev = plan("developer")
    assert dev.tool_calls_per_month is None and dev.requests_per_month is None
    assert dev.managed_models is None


def test_ranks_order_upgrades():
    ranks = [p.rank for p in CAT.plans]
    assert ranks == sorted(ranks)


def _write(tmp_path, mutate):
    data = json.loads(SHIPPED.read_text())
    mutate(data)
    path = tmp_path / "plans.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(
    ("mutate", "error"),
    [
        (lambda d: d["plans"][0].update(tokens_per_period=-1), "tokens_per_period"),
        (lambda d: d["plans"][0].update(requests_per_minute=600), "requests_per_minute"),
        (lambda d: d["plans"][1].update(rank=0), "ranks must be unique"),
        (lambda d: d.update(default_plan="pro"), "lowest rank"),
        (lambda d: d.update(default_plan="gold"), "not in the catalogue"),
        (lambda d: d["plans"][0].update(anchor="weekly"), "anchor"),
        (lambda d: d["plans"][0].update(colour="red"), "colour"),
        (lambda d: d["plans"][0].update(managed_models=["a", "a"]), "unique"),
        (lambda d: d["plans"].append(dict(d["plans"][0], rank=99)), "names must be unique"),
    ],
)
def test_bad_catalogues_are_refused_with_the_field_named(tmp_path, mutate, error):
    with pytest.raises(CatalogueError, match=error):
        load_plans(_write(tmp_path, mutate))


def test_a_users_own_catalogue_loads(tmp_path):
    path = _write(tmp_path, lambda d: d["plans"][0].update(tokens_per_period=1))
    assert load_plans(path).get("free").tokens_per_period == 1


def test_overrides_apply_to_custom_plans_only():
    o = PlanOverrides(tokens_per_period=5, api_keys=None)
    ent = apply_overrides(plan("enterprise"), o)
    assert (ent.tokens_per_period, ent.api_keys, ent.concurrent_sessions) == (5, None, None)
    assert apply_overrides(plan("free"), o) == plan("free")
    assert o.updates() == {"tokens_per_period": 5, "api_keys": None}
