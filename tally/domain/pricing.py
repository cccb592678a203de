"""Pricing arithmetic: integer micro-units, rounded half up once per event.

A `Pricer` indexes a price book once, so that finding the rate in force at an event's time
is a binary search over that item's effective dates.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Generic, NamedTuple, TypeVar

from schemas.prices import ConnectorRate, ModelRate, PriceBook, StorageRate

MTOK = 1_000_000
GB_MONTH_BYTE_SECONDS = 10**9 * 30 * 86_400

R = TypeVar("R", ModelRate, ConnectorRate, StorageRate)


def _div_round(numerator: int, denominator: int) -> int:
    return (2 * numerator + denominator) // (2 * denominator)


class Price(NamedTuple):
    cost_micros: int
    priced: bool


UNPRICED = Price(0, False)
FREE = Price(0, True)


class _Schedule(Generic[R]):
    """One item's rates by effective date."""

    def __init__(self, rates: Sequence[R]) -> None:
        # In the same tzinfo as event times, so that comparing them is cheap.
        self.starts = [r.effective_from.astimezone(UTC) for r in rates]
        self.rates: list[R] = list(rates)
        # Most events fall after the last change of rate: one comparison finds it.
        self.latest: tuple[datetime, R] | None = (
            (self.starts[-1], self.rates[-1]) if rates else None
        )
        self.latest_us = micros(self.starts[-1]) if rates else None

    def at(self, t: datetime) -> R | None:
        if self.latest is not None and t >= self.latest[0]:
            return self.latest[1]
        i = bisect_right(self.starts, t) - 1
        return self.rates[i] if i >= 0 else None


class RateChanges(Exception):
    """An item's rate changes after the time asked for: no one rate holds from it on."""


def micros(t: datetime) -> int:
    """An aware time as microseconds since the Unix epoch."""
    return (t - _EPOCH) // _MICROSECOND


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


class Pricer:
    def __init__(self, book: PriceBook) -> None:
        self.version = book.version
        self._models = {k: _Schedule(v) for k, v in book.models.items()}
        self._connectors = {k: _Schedule(v) for k, v in book.connectors.items()}
        self._default_connector = self._connectors.get("*")
        self._storage = {k: _Schedule(v) for k, v in book.storage.items()}

    def llm(
        self,
        model: str,
        at: datetime,
        input_tokens: int,
        cached_input_tokens: int,
        output_tokens: int,
    ) -> Price:
        """Cached input tokens are part of `input_tokens` and priced at the cached rate."""
        schedule = self._models.get(model)
        rate = schedule.at(at) if schedule else None
        if rate is None:
            return UNPRICED
        numerator = (
            (input_tokens - cached_input_tokens) * rate.input_per_mtok
            + cached_input_tokens * rate.cached_input_per_mtok
            + output_tokens * rate.output_per_mtok
        )
        return Price(_div_round(numerator, MTOK), True)

    def tool_call(self, connector: str, at: datetime) -> Price:
        schedule = self._connectors.get(connector, self._default_connector)
        rate = schedule.at(at) if schedule else None
        return UNPRICED if rate is None else Price(rate.per_call, True)

    def storage(self, kind: str, at: datetime, byte_seconds: int) -> Price:
        schedule = self._storage.get(kind)
        rate = schedule.at(at) if schedule else None
        if rate is None:
            return UNPRICED
        return Price(_div_round(byte_seconds * rate.per_gb_month, GB_MONTH_BYTE_SECONDS), True)

    def llm_rate_from(self, model: str, since_us: int) -> ModelRate | None:
        """The model's rate for every time from `since_us` (microseconds since the epoch)
        on, None if it has none; raises RateChanges if it changes after `since_us`."""
        return _steady(self._models.get(model), since_us)

    def tool_call_rate_from(self, connector: str, since_us: int) -> ConnectorRate | None:
        """As `llm_rate_from`, for a connector's rate per call."""
        return _steady(self._connectors.get(connector, self._default_connector), since_us)


def _steady(schedule: _Schedule[R] | None, since_us: int) -> R | None:
    if schedule is None or schedule.latest is None:
        return None
    assert schedule.latest_us is not None
    if since_us < schedule.latest_us:
        raise RateChanges
    return schedule.latest[1]
