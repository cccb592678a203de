"""Counter keys: the absolute figures that quota reads need, keyed by org, name and bucket.

Names and buckets (day = days since 1970-01-01 UTC, minute = minutes since the epoch):
  tokens, tool_calls, requests, storage   billable quantity per day (live only)
  requests.minute                         live gateway requests per minute
  cost.<line_item>                        cost in micro-units per day (llm, tool_calls, storage)
  upstream_cost                           cost of live managed-mode LLM usage per day
  unpriced                                events with no price per day
  sessions (bucket 0)                     live sessions started and not yet ended
  runs, runs.<gap>                        live runs per active day, by the gap in days since
                                          the run's active day before (tally.domain.runs)
  reserved.<meter> (bucket 0)             held by admitted reservations (tally.domain.reservations)

Monthly meters are kept per UTC day and summed over the days of an org's billing window,
so the worker never needs to know an org's plan or anchor, and a plan change or a new
billing date needs no recount. Buckets are whole days or minutes since the Unix epoch.
"""

from __future__ import annotations

import sys
from datetime import UTC, date, datetime

from tally.domain.runs import RUNS as RUNS  # the runs meter's names: tally.domain.runs
from tally.domain.usage import Usage

TOKENS = "tokens"
TOOL_CALLS = "tool_calls"
REQUESTS = "requests"
REQUESTS_MINUTE = "requests.minute"
STORAGE = "storage"
SESSIONS = "sessions"
UNPRICED = "unpriced"
UPSTREAM_COST = "upstream_cost"  # cost of live managed-mode LLM usage, for the fair-use budget
COST_PREFIX = "cost."
RESERVED_PREFIX = "reserved."  # held by admitted reservations, per meter (bucket 0)
HEARTBEAT_KEY = "__partition__"  # not an org: per-partition freshness beats

METER_OF_LINE_ITEM = {
    "llm": TOKENS,
    "tool_calls": TOOL_CALLS,
    "requests": REQUESTS,
    "storage": STORAGE,
}

CounterKey = tuple[str, str, int]


def epoch_day(t: datetime) -> int:
    return int(t.timestamp()) // 86_400


def epoch_minute(t: datetime) -> int:
    return int(t.timestamp()) // 60


def day_of(bucket: int) -> date:
    return datetime.fromtimestamp(bucket * 86_400, UTC).date()


def day_bucket(d: date) -> int:
    return d.toordinal() - date(1970, 1, 1).toordinal()


def add(into: dict[CounterKey, int], org_id: str, ts: datetime, usage: Usage) -> None:
    """Add the counter increments one stored event causes to `into` (sessions are handled
    by state). The keys are plain tuples; `key()` shares their parts once they are kept."""
    meter = METER_OF_LINE_ITEM.get(usage.line_item)
    if meter is None:
        return
    seconds = int(ts.timestamp())
    day = seconds // 86_400
    billable, cost = usage.billable, usage.cost_micros
    if billable:
        k: CounterKey = (org_id, meter, day)
        into[k] = into.get(k, 0) + billable
        if meter == REQUESTS:
            k = (org_id, REQUESTS_MINUTE, seconds // 60)
            into[k] = into.get(k, 0) + billable
    if cost:
        k = (org_id, COST_PREFIX + usage.line_item, day)
        into[k] = into.get(k, 0) + cost
        if usage.managed:
            k = (org_id, UPSTREAM_COST, day)
            into[k] = into.get(k, 0) + cost
    if not usage.priced:
        k = (org_id, UNPRICED, day)
        into[k] = into.get(k, 0) + 1


KEEP_DAYS = 70  # longer than any billing window, and the one before it
KEEP_MINUTES = 120


def first_kept_day(now: datetime) -> int:
    """The oldest day whose counters are kept (and whose events count a run)."""
    return epoch_day(now) - KEEP_DAYS


def expired(k: CounterKey, now: datetime) -> bool:
    """Counters no quota read can need any more: old days and old minutes."""
    name, bucket = k[1], k[2]
    if name == SESSIONS or name.startswith(RESERVED_PREFIX):
        return False
    if name == REQUESTS_MINUTE:
        return bucket < epoch_minute(now) - KEEP_MINUTES
    return bucket < first_kept_day(now)


def encode_key(key: CounterKey) -> bytes:
    return f"{key[0]}\x1f{key[1]}\x1f{key[2]}".encode()


_buckets: dict[int, int] = {}


def key(org_id: str, name: str, bucket: int) -> CounterKey:
    """A counter key whose org, name and bucket objects are shared with every other key that
    uses them: a million keys then take about half the memory."""
    if bucket < 1_000_000:  # days and bucket 0; minutes are too many to keep forever
        bucket = _buckets.setdefault(bucket, bucket)
    return sys.intern(org_id), sys.intern(name), bucket


def decode_key(raw: bytes) -> CounterKey:
    org, name, bucket = raw.decode().split("\x1f")
    return key(org, name, int(bucket))
