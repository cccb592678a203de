"""The row of the `events` table as the worker stores it: its columns, their Arrow types,
and a block of rows as Arrow columns (one insert, `streams.sink`)."""

from __future__ import annotations

import pyarrow as pa

EVENT_COLUMNS = (
    "org_id",
    "event_id",
    "type",
    "ts",
    "agent_id",
    "run_id",
    "session_id",
    "key_mode",
    "line_item",
    "item",
    "quantity",
    "billable",
    "cost_micros",
    "priced",
    "input_tokens",
    "output_tokens",
    "cached_input_tokens",
    "mode",
    "provider",
    "tool",
    "success",
    "cache_hit",
    "partition",
    "offset",
    "ingested_at",
    "log_epoch",
)

_TIME = pa.timestamp("us", tz="UTC")
_TYPES = {
    "ts": _TIME,
    "ingested_at": _TIME,
    "quantity": pa.uint64(),
    "billable": pa.uint64(),
    "cost_micros": pa.int64(),
    "priced": pa.uint8(),
    "input_tokens": pa.uint64(),
    "output_tokens": pa.uint64(),
    "cached_input_tokens": pa.uint64(),
    "success": pa.uint8(),
    "cache_hit": pa.uint8(),
    "partition": pa.uint16(),
    "offset": pa.uint64(),
}
EVENT_SCHEMA = pa.schema([(name, _TYPES.get(name, pa.string())) for name in EVENT_COLUMNS])


def event_block(rows: list[list[object]]) -> pa.Table:
    """The rows of `events` as one block of Arrow columns."""
    columns = list(zip(*rows, strict=True)) if rows else [()] * len(EVENT_SCHEMA)
    arrays = [pa.array(c, type=t) for c, t in zip(columns, EVENT_SCHEMA.types, strict=True)]
    return pa.Table.from_arrays(arrays, schema=EVENT_SCHEMA)
