"""The simulator's traffic: reproducible, realistic in shape, and summed up exactly."""

from __future__ import annotations

import itertools

from producers.simulate import Summary, org_ids, traffic


def take(n: int, **kw) -> list:
    return list(itertools.islice(traffic(**kw), n))


def test_the_same_seed_gives_the_same_traffic_and_another_seed_does_not():
    assert take(500, orgs=2, agents=2, seed=5) == take(500, orgs=2, agents=2, seed=5)
    assert take(500, orgs=2, agents=2, seed=5) != take(500, orgs=2, agents=2, seed=6)


def test_the_traffic_has_the_shape_of_agents_at_work():
    calls = take(20_000, orgs=3, agents=4, seed=1)
    kinds = {name for name, _ in calls}
    assert kinds == {
        "session_started",
        "session_ended",
        "llm_usage",
        "tool_call",
        "gateway_request",
        "storage_usage",
    }
    assert (
        {kw["org_id"] for _, kw in calls}
        == set(org_ids(3))
        == {
            "sim-org-0001",
            "sim-org-0002",
            "sim-org-0003",
        }
    )
    # Sessions open before their runs' calls, and every run belongs to a session.
    opened: set[str] = set()
    for name, kw in calls:
        if name == "session_started":
            opened.add(kw["session_id"])
        elif name != "session_ended":
            assert kw["session_id"] in opened
            assert kw["run_id"].startswith(kw["session_id"] + ".r")
    tool_calls = [kw for name, kw in calls if name == "tool_call"]
    failed = sum(not kw["success"] for kw in tool_calls)
    assert 0.03 < failed / len(tool_calls) < 0.15
    tests = sum(kw["key_mode"] == "test" for _, kw in calls)
    assert 0.03 < tests / len(calls) < 0.2
    llm = [kw for name, kw in calls if name == "llm_usage"]
    assert all(kw["cached_input_tokens"] <= kw["input_tokens"] for kw in llm)


def test_the_summary_adds_up_what_tally_would_count():
    calls = [
        ("llm_usage", {"org_id": "o", "key_mode": "live", "input_tokens": 10, "output_tokens": 5}),
        ("llm_usage", {"org_id": "o", "key_mode": "test", "input_tokens": 99, "output_tokens": 1}),
        ("tool_call", {"org_id": "o", "key_mode": "live", "success": True}),
        ("tool_call", {"org_id": "o", "key_mode": "live", "success": False}),
        ("tool_call", {"org_id": "o", "key_mode": "test", "success": True}),
        ("gateway_request", {"org_id": "o", "key_mode": "live"}),
        ("storage_usage", {"org_id": "o", "key_mode": "live", "byte_seconds": 7}),
    ]
    summary = Summary()
    for call in calls:
        summary.add(call)
    assert summary.events == 7 and summary.test_events == 2
    assert summary.live_tokens == 15 and summary.live_tokens_by_org == {"o": 15}
    assert (summary.billed_tool_calls, summary.failed_tool_calls) == (1, 1)
    assert summary.live_gateway_requests == 1 and summary.live_byte_seconds == 7
    assert summary.by_type["tool.call"] == 3
    assert summary.lines()[0] == "events sent       7"
    assert "  o               15" in summary.lines()  # per org, for a quota read to compare
