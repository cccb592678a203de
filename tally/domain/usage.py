"""What one event means for billing: its line item, billable quantity and cost.

One definition serves the counters, the ClickHouse rows and the rollups, so that they can
never disagree. Test-key traffic and failed tool calls are recorded with billable 0 and
cost 0: they count against nothing and cost nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from schemas.events import Event, GatewayRequest, LlmUsage, StorageUsage, ToolCall
from schemas.prices import PriceBook
from tally.domain.pricing import FREE, Price, llm_cost, storage_cost, tool_call_cost

LINE_ITEMS = ("llm", "tool_calls", "requests", "storage", "sessions")


@dataclass(frozen=True, slots=True)
class Usage:
    line_item: str
    item: str
    quantity: int
    billable: int
    cost_micros: int
    priced: bool
    managed: bool = False  # managed mode: the platform pays the upstream provider


def measure(event: Event, book: PriceBook) -> Usage:
    live = event.key_mode == "live"
    if isinstance(event, LlmUsage):
        tokens = event.input_tokens + event.output_tokens
        price = llm_cost(
            book,
            event.model,
            event.ts,
            event.input_tokens,
            event.cached_input_tokens,
            event.output_tokens,
        )
        usage = _usage("llm", event.model, tokens, tokens if live else 0, price, live)
        return replace(usage, managed=event.mode == "managed")
    if isinstance(event, ToolCall):
        billed = live and event.success
        price = tool_call_cost(book, event.connector, event.ts) if billed else FREE
        return _usage("tool_calls", event.connector, 1, 1 if billed else 0, price, billed)
    if isinstance(event, GatewayRequest):
        return _usage("requests", event.model, 1, 1 if live else 0, FREE, live)
    if isinstance(event, StorageUsage):
        price = storage_cost(book, event.kind, event.ts, event.byte_seconds)
        billable = event.byte_seconds if live else 0
        return _usage("storage", event.kind, event.byte_seconds, billable, price, live)
    return _usage("sessions", "", 1, 0, FREE, live)


def _usage(
    line_item: str, item: str, quantity: int, billable: int, price: Price, charged: bool
) -> Usage:
    cost = price.cost_micros if charged else 0
    return Usage(line_item, item, quantity, billable, cost, price.priced)
