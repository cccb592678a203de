"""The meters of a fetch's events a column at a time, by type (part of `streams.columns`):
LLM usage, tool calls and gateway requests priced and measured as `tally.domain.usage`
measures one event."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import pyarrow as pa
import pyarrow.compute as pc

from tally.domain import counters
from tally.domain.pricing import MTOK, Pricer


class Common(NamedTuple):
    """The envelope's columns of a fetch, or of one type's events in it."""

    event_id: pa.Array
    org: pa.Array
    agent: pa.Array
    run: pa.Array
    session: pa.Array
    key_mode: pa.Array
    ts: pa.Array
    ts_us: pa.Array
    offset: pa.Array

    def take(self, rows: pa.Array) -> Common:
        return Common(*(column.take(rows) for column in self))


class Slow(Exception):
    """Not a fetch of the common shape: the definition, event by event, takes it."""


def _rates(
    items: pa.Array, part: Common, rate_from: Callable[[str, int], Any], fields: tuple[str, ...]
) -> tuple[pa.Array, list[pa.Array]]:
    """Per event: whether its item (model or connector) has a rate, and the rate's `fields`
    (0 without one), from the one rate in force for each item over the fetch; `rate_from`
    raises RateChanges if an item's rate changes after the fetch's earliest event."""
    since = pc.min(part.ts_us).as_py()
    names = pc.unique(items)
    rates = [rate_from(name, since) for name in names.to_pylist()]
    at = pc.index_in(items, value_set=names)
    has_rate = pa.array([r is not None for r in rates], pa.bool_()).take(at)
    values = [
        pa.array([getattr(r, f) if r else 0 for r in rates], pa.int64()).take(at) for f in fields
    ]
    return has_rate, values


def llm(
    part: Common, events: list[Any], pricer: Pricer
) -> tuple[dict[str, pa.Array], dict[str, pa.Array]]:
    """LLM usage: tokens billed when live, priced by the model's rate (`Pricer.llm`)."""
    model = pa.array([e.model for e in events], pa.string())
    inp = pa.array([e.input_tokens for e in events], pa.int64())
    out = pa.array([e.output_tokens for e in events], pa.int64())
    cached = pa.array([e.cached_input_tokens for e in events], pa.int64())
    mode = pa.array([e.mode for e in events], pa.string())
    if not all_true(pc.less_equal(cached, inp)):
        raise Slow
    live = pc.equal(part.key_mode, "live")
    quantity = pc.add_checked(inp, out)
    billable = pc.if_else(live, quantity, 0)
    priced, (in_rate, cached_rate, out_rate) = _rates(
        model,
        part,
        pricer.llm_rate_from,
        ("input_per_mtok", "cached_input_per_mtok", "output_per_mtok"),
    )
    numerator = pc.add_checked(
        pc.add_checked(
            pc.multiply_checked(pc.subtract_checked(inp, cached), in_rate),
            pc.multiply_checked(cached, cached_rate),
        ),
        pc.multiply_checked(out, out_rate),
    )
    # Rounded half up, as pricing's _div_round: (2n + d) // (2d).
    cost = pc.divide(pc.add_checked(pc.multiply_checked(numerator, 2), MTOK), 2 * MTOK)
    cost = pc.if_else(live, cost, 0)
    upstream = pc.if_else(pc.equal(mode, "managed"), cost, 0)
    meters = {
        counters.TOKENS: billable,
        counters.COST_PREFIX + "llm": cost,
        counters.UPSTREAM_COST: upstream,
        counters.UNPRICED: pc.cast(pc.invert(priced), pa.int64()),
    }
    return meters, {
        "item": model,
        "quantity": quantity.cast(pa.uint64()),
        "billable": billable.cast(pa.uint64()),
        "cost_micros": cost,
        "priced": priced.cast(pa.uint8()),
        "input_tokens": inp.cast(pa.uint64()),
        "output_tokens": out.cast(pa.uint64()),
        "cached_input_tokens": cached.cast(pa.uint64()),
        "mode": mode,
        "provider": pa.array([e.provider or "" for e in events], pa.string()),
    }


def tool(
    part: Common, events: list[Any], pricer: Pricer
) -> tuple[dict[str, pa.Array], dict[str, pa.Array]]:
    """Tool calls: billed when live and successful, at the connector's rate per call."""
    connector = pa.array([e.connector for e in events], pa.string())
    tool = pa.array([e.tool for e in events], pa.string())
    success = pa.array([e.success for e in events], pa.bool_())
    n = len(connector)
    billed = pc.and_(pc.equal(part.key_mode, "live"), success)
    has_rate, (per_call,) = _rates(connector, part, pricer.tool_call_rate_from, ("per_call",))
    cost = pc.if_else(billed, per_call, 0)
    priced = pc.if_else(billed, has_rate, True)
    billable = pc.cast(billed, pa.int64())
    meters = {
        counters.TOOL_CALLS: billable,
        counters.COST_PREFIX + "tool_calls": cost,
        counters.UNPRICED: pc.cast(pc.invert(priced), pa.int64()),
    }
    return meters, {
        "item": connector,
        "quantity": constant(1, pa.uint64(), n),
        "billable": billable.cast(pa.uint64()),
        "cost_micros": cost,
        "priced": priced.cast(pa.uint8()),
        "tool": tool,
        "success": success.cast(pa.uint8()),
    }


def request(
    part: Common, events: list[Any], pricer: Pricer
) -> tuple[dict[str, pa.Array], dict[str, pa.Array]]:
    """Gateway requests: one billed per live request, per day and per minute; no cost."""
    model = pa.array([e.model for e in events], pa.string())
    cache_hit = pa.array([e.cache_hit for e in events], pa.bool_())
    mode = pa.array([e.mode for e in events], pa.string())
    n = len(model)
    billable = pc.cast(pc.equal(part.key_mode, "live"), pa.int64())
    return {counters.REQUESTS: billable}, {
        "item": model,
        "quantity": constant(1, pa.uint64(), n),
        "billable": billable.cast(pa.uint64()),
        "cost_micros": constant(0, pa.int64(), n),
        "priced": constant(1, pa.uint8(), n),
        "mode": mode,
        "cache_hit": cache_hit.cast(pa.uint8()),
    }


def constant(value: object, type_: pa.DataType, n: int) -> pa.Array:
    """`value` n times: a slice of one array kept per value (most recur in every fetch)."""
    key = (value, type_)
    have = _constants.get(key)
    if have is None or len(have) < n:
        if len(_constants) >= 64:
            _constants.clear()
        size = max(n, 1 << 14)
        have = _constants[key] = pc.fill_null(pa.nulls(size, type_), pa.scalar(value, type_))
    return have.slice(0, n)


_constants: dict[tuple[object, pa.DataType], pa.Array] = {}


def all_true(mask: pa.Array) -> bool:
    return pc.all(mask).as_py() is not False  # None: every value was null (none to check)
