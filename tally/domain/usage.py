"""What one event means for billing: its line item, billable quantity and cost.

One definition serves the counters, the ClickHouse rows and the rollups, so that they can
never disagree. Test-key traffic and failed tool calls are recorded with billable 0 and
cost 0: they count against nothing and cost nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from tally.domain.pricing import FREE, Price, Pricer

LINE_ITEMS = ("llm", "tool_calls", "requests", "storage", "sessions")


class Usage(NamedTuple):  # a tuple: one is made per event, and cheaply
    line_item: str
    item: str
    quantity: int
    billable: int
    cost_micros: int
    priced: bool
    managed: bool = False  # managed mode: the platform pays the upstream provider


def measure(event: Mapping[str, Any], pricer: Pricer) -> Usage:
    """Price and classify one event, given as the flat dict of `streams.decode`."""
    kind = event["type"]
    live = event["key_mode"] == "live"
    if kind == "llm.usage":
        inp, out = event["input_tokens"], event["output_tokens"]
        price = pricer.llm(event["model"], event["ts"], inp, event["cached_input_tokens"], out)
        billable = inp + out if live else 0
        cost = price.cost_micros if live else 0
        managed = event["mode"] == "managed"
        return Usage("llm", event["model"], inp + out, billable, cost, price.priced, managed)
    if kind == "tool.call":
        billed = live and event["success"]
        price = pricer.tool_call(event["connector"], event["ts"]) if billed else FREE
        return _usage("tool_calls", event["connector"], 1, 1 if billed else 0, price, billed)
    if kind == "gateway.request":
        return _usage("requests", event["model"], 1, 1 if live else 0, FREE, live)
    if kind == "storage.usage":
        amount = event["byte_seconds"]
        price = pricer.storage(event["kind"], event["ts"], amount)
        return _usage("storage", event["kind"], amount, amount if live else 0, price, live)
    # Starts and plain ends are item ""; a heartbeat, a lapse and an end over the API say so.
    item = _SESSION_ITEMS.get(kind) or _SESSION_ITEMS.get(event.get("reason", ""), "")
    return _usage("sessions", item, 1, 0, FREE, live)


_SESSION_ITEMS = {
    "session.heartbeat": "heartbeat",
    "expired": "expired",
    "ended_by_api": "ended_by_api",
}


def _usage(
    line_item: str, item: str, quantity: int, billable: int, price: Price, charged: bool
) -> Usage:
    cost = price.cost_micros if charged else 0
    return Usage(line_item, item, quantity, billable, cost, price.priced)
