"""Merging what the store holds into a replica's memory: orgs and keys (pure)."""

from datetime import UTC, date, datetime

from api.registry import ApiKey, Org, merge_keys, merge_orgs

T = datetime(2026, 3, 1, tzinfo=UTC)


def org(org_id: str, version: int, plan: str = "free") -> Org:
    return Org(org_id, plan, date(2026, 1, 1), T, version)


def key(key_id: str, version: int, org_id: str = "o", revoked: bool = False) -> ApiKey:
    return ApiKey(key_id, org_id, "live", f"hash-{key_id}", T, revoked, version)


def test_orgs_merge_by_version_and_nothing_held_is_dropped():
    current = {"mine": org("mine", 5), "both": org("both", 5, "pro")}
    merged = merge_orgs(current, [org("both", 3, "free"), org("new", 1)])
    assert merged == {"mine": org("mine", 5), "both": org("both", 5, "pro"), "new": org("new", 1)}
    assert merge_orgs(current, [org("both", 9, "team")])["both"].plan == "team"
    assert current["both"].plan == "pro"  # the dict requests read is never changed in place


def test_the_newer_key_version_wins_and_a_revocation_always_stands():
    orgs = {"o": org("o", 1)}
    current = {"a": key("a", 10), "b": key("b", 10, revoked=True), "c": key("c", 10)}
    loaded = [
        key("a", 20, revoked=True),  # revoked on another replica: taken
        key("b", 30),  # a newer version that is not revoked: b stays revoked
        key("c", 5, revoked=True),  # revoked, with an older clock: c is revoked all the same
        key("d", 1),  # created elsewhere
    ]
    merged = merge_keys(current, loaded, orgs)
    assert {k: (v.version, v.revoked) for k, v in merged.items()} == {
        "a": (20, True),
        "b": (30, True),
        "c": (10, True),
        "d": (1, False),
    }


def test_a_key_waits_until_its_org_is_known_and_held_keys_stay():
    current = {"mine": key("mine", 7)}
    merged = merge_keys(current, [key("orphan", 1, org_id="later")], {"o": org("o", 1)})
    assert merged == current
    merged = merge_keys(merged, [key("orphan", 1, org_id="later")], {"later": org("later", 1)})
    assert set(merged) == {"mine", "orphan"}
