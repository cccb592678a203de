"""Months of events for the breakdown figures, generated inside ClickHouse.

`INSERT INTO events SELECT ... FROM numbers()` writes the rows in large blocks, and the
materialized views fill the rollups from them exactly as they do for the worker's inserts:
the reports read what production would have stored. The rows follow the simulator's mix
(`producers/simulate.py`): agents open sessions (one in ten on a test key) holding one to
three runs of one to six steps each, a step is an LLM call (56 %, models weighted 5:3:2:1,
one in ten BYOK), a tool call (40 %, 8 % failing) or a gateway request (4 %), and one run in
twenty keeps some storage. Each event is priced with the price book's rates in force at the
end of the window, rounded half up once per event like `tally.domain.pricing`.

Everything is a pure function of the session number, so the same arguments give the same
events (apart from the `event_id`s).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, TypeVar

from producers.simulate import (
    BYOK_SHARE,
    CONNECTORS,
    GATEWAY_SHARE,
    MODELS,
    STORAGE_SHARE,
    TEST_SESSION_SHARE,
    TOOL_FAILURE_SHARE,
)
from schemas.prices import ConnectorRate, ModelRate, PriceBook, StorageRate
from streams.rows import EVENT_COLUMNS
from tally.domain.pricing import GB_MONTH_BYTE_SECONDS, MTOK
from tally.store import Store
from tally.store.queries import Query

LOG_EPOCH = "bench-preload"
STORAGE_KINDS = ("knowledge_base", "traces")
LLM_SHARE = 0.6  # steps below this roll (and above the gateway share) are LLM calls

# A session's plan lists its events in order: 0 the session start, r > 0 a step of run r,
# -r storage kept by run r, -100 the end. It depends on the session number `s` alone.
_PLAN = """arrayConcat([toInt16(0)], arrayFlatten(arrayMap(
    r -> arrayConcat(
        arrayWithConstant(1 + cityHash64(s, 3, r) % 6, toInt16(r)),
        if(cityHash64(s, 4, r) % 1000 < {storage_permille:UInt16}, [toInt16(-r)], [])),
    range(1, 2 + cityHash64(s, 5) % 3))), [toInt16(-100)])"""

# Per session: its agent, org, key mode and start. Sessions are numbered agent by agent,
# so that an insert block holds whole agent-days and the rollups come out nearly merged,
# as in a store that has run for a while.
_SESSIONS = f"""
SELECT
    number AS s,
    intDiv(s * {{agents:UInt32}}, {{sessions:UInt64}}) AS agent,
    concat('bq-org-', toString(agent % {{orgs:UInt32}})) AS org_id,
    concat('agent-', toString(agent)) AS agent_id,
    if(cityHash64(s, 1) % 1000 < {{test_permille:UInt16}}, 'test', 'live') AS key_mode,
    concat(org_id, '.', agent_id, '.s', toString(s)) AS session_id,
    toUInt16(kafkaMurmurHash(org_id) % {{partitions:UInt16}}) AS partition,
    {{start:DateTime64(3, 'UTC')}} + toIntervalMillisecond(cityHash64(s, 2) % {{span_ms:UInt64}})
        AS started,
    {_PLAN} AS plan
FROM numbers({{sessions:UInt64}})
"""

# Per event: its kind and the draws it needs, from hashes of (session, position).
_EVENTS = f"""
SELECT *, slot, j,
    cityHash64(s, j, 6) AS h1, cityHash64(s, j, 7) AS h2, cityHash64(s, j, 8) AS h3,
    cityHash64(s, j, 9) AS h4, cityHash64(s, j, 10) AS h5,
    h1 % 10000 AS roll,
    multiIf(slot = 0, 'session.started', slot = -100, 'session.ended',
            slot < 0, 'storage.usage', roll < {{gateway_bp:UInt16}}, 'gateway.request',
            roll < {{llm_bp:UInt16}}, 'llm.usage', 'tool.call') AS type,
    key_mode = 'live' AS live,
    h2 % {{weight_total:UInt16}} AS w,
    arrayFirstIndex(b -> w < b, {{weight_bounds:Array(UInt16)}}) AS m,
    1 + h2 % length({{connectors:Array(String)}}) AS c,
    1 + h2 % 2 AS k,
    toUInt64(200 + h3 % 7801) AS inp,
    toUInt64(20 + h4 % 1181) AS outp,
    h5 % (intDiv(inp, 2) + 1) AS cached,
    toUInt64((1 + h3 % 500) * 1000000 * (60 + h4 % 3541)) AS byte_seconds,
    h4 % 1000 >= {{failure_permille:UInt16}} AS succeeded
FROM ({_SESSIONS}) ARRAY JOIN plan AS slot, arrayEnumerate(plan) AS j
"""

_COLUMNS = {
    "org_id": "org_id",
    "event_id": "toString(generateUUIDv4(h1))",
    "type": "type",
    "ts": "started + toIntervalMillisecond(j * 3000 + h5 % 3000)",
    "agent_id": "agent_id",
    "run_id": "if(slot = 0 OR slot = -100, '', concat(session_id, '.r', toString(abs(slot))))",
    "session_id": "session_id",
    "key_mode": "key_mode",
    "line_item": "multiIf(type = 'llm.usage', 'llm', type = 'tool.call', 'tool_calls',"
    " type = 'gateway.request', 'requests', type = 'storage.usage', 'storage', 'sessions')",
    "item": "multiIf(type IN ('llm.usage', 'gateway.request'), {models:Array(String)}[m],"
    " type = 'tool.call', {connectors:Array(String)}[c],"
    " type = 'storage.usage', {kinds:Array(String)}[k], '')",
    "quantity": "multiIf(type = 'llm.usage', inp + outp, type = 'storage.usage', byte_seconds, 1)",
    "billable": "if(live, multiIf(type = 'llm.usage', inp + outp,"
    " type = 'storage.usage', byte_seconds, type = 'tool.call', toUInt64(succeeded),"
    " type = 'gateway.request', 1, 0), 0)",
    "cost_micros": "toInt64(if(live, multiIf("
    " type = 'llm.usage', intDiv(2 * ((inp - cached) * {input_rates:Array(UInt64)}[m]"
    " + cached * {cached_rates:Array(UInt64)}[m] + outp * {output_rates:Array(UInt64)}[m])"
    " + {mtok:UInt64}, 2 * {mtok:UInt64}),"
    " type = 'tool.call' AND succeeded, {call_rates:Array(UInt64)}[c],"
    " type = 'storage.usage', intDiv(2 * byte_seconds * {storage_rates:Array(UInt64)}[k]"
    " + {gb_month:UInt64}, 2 * {gb_month:UInt64}), 0), 0))",
    "priced": "1",
    "input_tokens": "if(type = 'llm.usage', inp, 0)",
    "output_tokens": "if(type = 'llm.usage', outp, 0)",
    "cached_input_tokens": "if(type = 'llm.usage', cached, 0)",
    "mode": "if(type = 'llm.usage',"
    " if(intDiv(h1, 10000) % 1000 < {byok_permille:UInt16}, 'byok', 'managed'), '')",
    "provider": "''",
    "tool": "if(type = 'tool.call', {tools:Array(Array(String))}[c]"
    "[1 + h5 % length({tools:Array(Array(String))}[c])], '')",
    "success": "if(type = 'tool.call', succeeded, 1)",
    "cache_hit": "type = 'gateway.request' AND h5 % 10 < 3",
    "partition": "partition",
    "offset": "s * 64 + j",
    "ingested_at": "ts + toIntervalMillisecond(20 + h1 % 200)",
    "log_epoch": f"'{LOG_EPOCH}'",
}
assert tuple(_COLUMNS) == EVENT_COLUMNS


def session_count(rows: int) -> Query:
    """The number of sessions whose plans hold at least `rows` events: `(sessions,)`."""
    sql = (
        "SELECT s + 1 FROM (SELECT number AS s,"
        f" sum(length({_PLAN})) OVER (ORDER BY s ROWS UNBOUNDED PRECEDING) AS total"
        " FROM numbers({bound:UInt64})) WHERE total >= {rows:UInt64} ORDER BY s LIMIT 1"
    )
    # Every session holds at least three events.
    params = {"rows": max(rows, 1), "bound": rows // 3 + 1, "storage_permille": _STORAGE_PERMILLE}
    return sql, params


def preload(
    book: PriceBook,
    rows: int,
    sessions: int,
    end: datetime,
    *,
    orgs: int = 100,
    agents: int = 1000,
    days: int = 30,
    partitions: int = 8,
) -> Query:
    """`rows` events of `sessions` sessions (`session_count`) of `agents` agents (agent i
    belongs to org i % orgs) in the `days` days before `end`: one INSERT ... SELECT."""
    if rows < 0 or sessions < 1 or orgs < 1 or agents < orgs or days < 1 or partitions < 1:
        raise ValueError("need rows >= 0, sessions >= 1, 1 <= orgs <= agents, days >= 1")
    models = [name for name, _ in MODELS]
    weights = [weight for _, weight in MODELS]
    connectors = list(CONNECTORS)
    model_rates = [_rate(book.models, name, end) for name in models]
    select = ", ".join(f"{expr} AS {name}" for name, expr in _COLUMNS.items())
    sql = (
        f"INSERT INTO events ({', '.join(EVENT_COLUMNS)})"
        f" SELECT {', '.join(EVENT_COLUMNS)} FROM (SELECT {select} FROM ({_EVENTS}))"
        " LIMIT {rows:UInt64}"
        # The materialized views run side by side (the insert is otherwise one thread),
        # and the rollups' rows are left for the merges to sum (as they are for the
        # worker's small inserts) rather than summed once more at insert time.
        " SETTINGS parallel_view_processing = 1, optimize_on_insert = 0"
    )
    window = timedelta(days=days)
    params: dict[str, Any] = {
        **_SHARES,
        "rows": rows,
        "sessions": sessions,
        "agents": agents,
        "orgs": orgs,
        "partitions": partitions,
        "start": end - window,
        # Sessions last a few minutes at most (23 events 3-6 s apart): all end by `end`.
        "span_ms": window // timedelta(milliseconds=1) - 600_000,
        "weight_total": sum(weights),
        "weight_bounds": [sum(weights[: i + 1]) for i in range(len(weights))],
        "models": models,
        "connectors": connectors,
        "tools": [list(CONNECTORS[name]) for name in connectors],
        "kinds": list(STORAGE_KINDS),
        "input_rates": [r.input_per_mtok for r in model_rates],
        "cached_rates": [r.cached_input_per_mtok for r in model_rates],
        "output_rates": [r.output_per_mtok for r in model_rates],
        "call_rates": [_connector_rate(book, name, end).per_call for name in connectors],
        "storage_rates": [_rate(book.storage, kind, end).per_gb_month for kind in STORAGE_KINDS],
        "mtok": MTOK,
        "gb_month": GB_MONTH_BYTE_SECONDS,
    }
    return sql, params


async def load(store: Store, book: PriceBook, rows: int, end: datetime, **shape: int) -> int:
    """Store `rows` preloaded events (see `preload`); returns the number of sessions."""
    ((sessions,),) = await store.query(*session_count(rows))
    await store.command(*preload(book, rows, int(sessions), end, **shape))
    return int(sessions)


def run_id(sessions: int, s: int, *, orgs: int = 100, agents: int = 1000) -> tuple[str, str, str]:
    """`(org_id, agent_id, run_id)` of the first run of session `s` of a preload."""
    agent = s * agents // sessions
    org = f"bq-org-{agent % orgs}"
    return org, f"agent-{agent}", f"{org}.agent-{agent}.s{s}.r1"


_STORAGE_PERMILLE = round(STORAGE_SHARE * 1000)
_SHARES = {
    "test_permille": round(TEST_SESSION_SHARE * 1000),
    "storage_permille": _STORAGE_PERMILLE,
    "failure_permille": round(TOOL_FAILURE_SHARE * 1000),
    "byok_permille": round(BYOK_SHARE * 1000),
    "gateway_bp": round(GATEWAY_SHARE * 10_000),
    "llm_bp": round(LLM_SHARE * 10_000),
}


R = TypeVar("R", ModelRate, ConnectorRate, StorageRate)


def _rate(section: dict[str, list[R]], name: str, at: datetime) -> R:
    rates = [r for r in section.get(name, []) if r.effective_from <= at]
    if not rates:
        raise ValueError(f"the price book has no rate for {name!r} at {at.isoformat()}")
    return rates[-1]


def _connector_rate(book: PriceBook, name: str, at: datetime) -> ConnectorRate:
    return _rate(book.connectors, name if name in book.connectors else "*", at)
