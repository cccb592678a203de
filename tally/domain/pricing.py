"""Pricing arithmetic: integer micro-units, rounded half up once per event."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from schemas.prices import ConnectorRate, ModelRate, PriceBook, StorageRate, rate_at

MTOK = 1_000_000
GB_MONTH_BYTE_SECONDS = 10**9 * 30 * 86_400


def _div_round(numerator: int, denominator: int) -> int:
    return (2 * numerator + denominator) // (2 * denominator)


@dataclass(frozen=True, slots=True)
class Price:
    cost_micros: int
    priced: bool


UNPRICED = Price(0, False)
FREE = Price(0, True)


def llm_cost(
    book: PriceBook,
    model: str,
    at: datetime,
    input_tokens: int,
    cached_input_tokens: int,
    output_tokens: int,
) -> Price:
    rate = rate_at(book.models.get(model), at)  # type: ignore[arg-type]
    if not isinstance(rate, ModelRate):
        return UNPRICED
    numerator = (
        (input_tokens - cached_input_tokens) * rate.input_per_mtok
        + cached_input_tokens * rate.cached_input_per_mtok
        + output_tokens * rate.output_per_mtok
    )
    return Price(_div_round(numerator, MTOK), True)


def tool_call_cost(book: PriceBook, connector: str, at: datetime) -> Price:
    rates = book.connectors.get(connector) or book.connectors.get("*")
    rate = rate_at(rates, at)  # type: ignore[arg-type]
    if not isinstance(rate, ConnectorRate):
        return UNPRICED
    return Price(rate.per_call, True)


def storage_cost(book: PriceBook, kind: str, at: datetime, byte_seconds: int) -> Price:
    rate = rate_at(book.storage.get(kind), at)  # type: ignore[arg-type]
    if not isinstance(rate, StorageRate):
        return UNPRICED
    return Price(_div_round(byte_seconds * rate.per_gb_month, GB_MONTH_BYTE_SECONDS), True)
