"""Alert rules and webhook signatures: pure logic, no I/O."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from tally.catalogue import load_plans
from tally.domain import alerts as a
from tally.domain import webhooks as w
from tally.domain.quota import Used, billing_window, overview

NOW = datetime(2026, 6, 10, 12, 0, tzinfo=UTC)
PLANS = load_plans(None)


def org_overview(plan: str, **used: int) -> a.Overview:
    p = PLANS.get(plan)
    assert p is not None
    return overview(p, billing_window(date(2026, 1, 1), NOW), NOW, Used(**used))


def test_every_limited_meter_gets_80_and_100_percent() -> None:
    rules = a.default_rules(org_overview("free"))
    percent = {(r.meter, r.percent) for r in rules if r.percent}
    limited = ["tokens", "tool_calls", "requests", "requests_minute", "requests_day", "runs"]
    assert percent == {(m, p) for m in [*limited, "upstream_cost_micros"] for p in (80, 100)}
    # Scale: tool calls and tokens are unlimited, so no default rule watches them.
    scale = {r.meter for r in a.default_rules(org_overview("scale")) if r.percent}
    assert "tool_calls" not in scale and "tokens" not in scale and "requests" in scale


def test_a_crossing_has_one_id_however_often_it_is_evaluated() -> None:
    rules = a.in_force(a.default_rules(org_overview("free")), [a.Rule("tool_calls", at=50)])
    o = org_overview("free", tool_calls=800)
    first = a.crossings("acme", rules, a.org_figures(o), NOW)
    again = a.crossings("acme", rules, a.org_figures(o), NOW + timedelta(hours=1))
    assert [x.id for x in first] == [x.id for x in again]
    assert sorted((x.rule, x.threshold) for x in first) == [
        ("tool_calls:at:50", 50),
        ("tool_calls:percent:80", 800),
    ]


def test_at_works_on_unlimited_meters_and_percent_does_not() -> None:
    rules = [a.Rule("tool_calls", at=50), a.Rule("tool_calls", percent=10)]
    found = a.crossings("acme", rules, a.org_figures(org_overview("scale", tool_calls=60)), NOW)
    assert [(x.rule, x.limit, x.used) for x in found] == [("tool_calls:at:50", None, 60)]


def test_a_new_window_and_an_upgrade_resolve() -> None:
    rules = a.default_rules(org_overview("free"))
    o = org_overview("free", tool_calls=800)
    [reached] = a.crossings("acme", rules, a.org_figures(o), NOW)
    # Same window, same limit: still holds.
    assert a.resolutions([reached], rules, a.org_figures(o), NOW) == []
    # A higher limit (Business: 100,000 tool calls) moves 80% above what is used.
    up = org_overview("business", tool_calls=800)
    [done] = a.resolutions([reached], a.default_rules(up), a.org_figures(up), NOW)
    assert done.type == a.THRESHOLD_RESOLVED and done.id == a.resolved_id(reached.id)
    # An upgrade to a plan where the meter is unlimited: the default rule is gone.
    free = org_overview("scale", tool_calls=800)
    [lifted] = a.resolutions([reached], a.default_rules(free), a.org_figures(free), NOW)
    assert lifted.id == done.id and lifted.limit is None
    # The window ended.
    later = reached.window_end + timedelta(seconds=1)
    [ended] = a.resolutions([reached], rules, [], later)
    assert ended.id == done.id


def test_credits_and_subscription_alerts() -> None:
    window = billing_window(date(2026, 1, 1), NOW)
    rules = [a.Rule("credits", below=5_000_000), a.Rule("trial", days=3)]
    low = a.credit_alerts("acme", rules, 1_000_000, True, window, NOW)
    assert [x.type for x in low] == [a.CREDITS_LOW]
    gone = a.credit_alerts("acme", rules, -5, True, window, NOW)
    assert [x.type for x in gone] == [a.CREDITS_DEPLETED, a.CREDITS_LOW]
    assert a.credit_alerts("acme", rules, -5, False, window, NOW) == []
    ends = NOW + timedelta(days=2)
    [trial] = a.subscription_alerts("acme", rules, "trial", ends, None, NOW)
    assert trial.type == a.TRIAL_ENDING
    assert a.subscription_alerts("acme", rules, "trial", NOW + timedelta(days=5), None, NOW) == []
    [due] = a.subscription_alerts("acme", rules, "past_due", None, NOW, NOW)
    assert due.type == a.PAST_DUE


def test_signatures_verify_with_the_reference_library() -> None:
    secret = w.new_secret()
    assert secret.startswith("whsec_")
    body = b'{"type":"usage.threshold_reached"}'
    ts = int(datetime.now(UTC).timestamp())
    headers = w.headers(secret, "msg_1", ts, body)
    assert Webhook(secret).verify(body, headers) == {"type": "usage.threshold_reached"}
    with pytest.raises(WebhookVerificationError):
        Webhook(w.new_secret()).verify(body, headers)


def test_backoff_grows_with_jitter_and_stops_after_the_retry_time() -> None:
    first, day = NOW, timedelta(hours=24)
    waits = [(w.next_attempt(first, n, NOW, 5, day) - NOW).total_seconds() for n in (1, 2, 3)]  # type: ignore[operator]
    assert 2.5 <= waits[0] <= 5 and 5 <= waits[1] <= 10 and 10 <= waits[2] <= 20
    assert w.next_attempt(first, 30, NOW, 5, day) <= first + day  # type: ignore[operator]
    assert w.next_attempt(first, 31, first + day, 5, day) is None


@pytest.mark.parametrize(
    ("address", "refused"),
    [
        ("127.0.0.1", True),
        ("10.0.0.1", True),
        ("172.16.5.4", True),
        ("192.168.1.1", True),
        ("169.254.169.254", True),
        ("::1", True),
        ("fe80::1", True),
        ("::ffff:10.0.0.1", True),
        ("0.0.0.0", True),
        ("93.184.216.34", False),
        ("2606:2800:220:1:248:1893:25c8:1946", False),
    ],
)
def test_non_public_addresses_are_refused(address: str, refused: bool) -> None:
    assert bool(w.refused_addresses([address])) is refused


def test_only_https_unless_private_targets_are_allowed() -> None:
    with pytest.raises(w.TargetRefused):
        w.parse_target("http://example.com/x", allow_private=False)
    with pytest.raises(w.TargetRefused):
        w.parse_target("https://user:pw@example.com/x", allow_private=False)
    assert w.parse_target("https://example.com/x", allow_private=False).port == 443
    assert w.parse_target("http://127.0.0.1:8000/x", allow_private=True).port == 8000
