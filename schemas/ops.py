"""Request and response models of the operations endpoints (admin key only)."""

from __future__ import annotations

from datetime import date

from pydantic import BaseModel, ConfigDict, Field, model_validator

MAX_RECONCILE_DAYS = 366
MAX_LOOKUP = 10_000


class OffsetRange(BaseModel):
    """Offsets `low <= offset < high` of one partition of usage.events."""

    partition: int = Field(ge=0, le=65535)
    low: int = Field(ge=0)
    high: int = Field(ge=0)


class ReconcileRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    start: date = Field(alias="from", description="First UTC day (inclusive).")
    end: date = Field(alias="to", description="Last UTC day (exclusive).")
    org_id: str | None = None
    ranges: list[OffsetRange] | None = Field(
        None,
        description="What a broker scan read; the rows stored from these offsets, of the"
        " `epochs` given per partition, are reported apart.",
    )
    epochs: dict[int, list[str]] = Field(
        default_factory=dict,
        description="Per partition (the key, a partition number), the log epochs whose rows"
        " belong to the broker's log (see /reconcile/epochs).",
        json_schema_extra={"propertyNames": {"pattern": "^[0-9]+$"}},
    )

    @model_validator(mode="after")
    def _window(self) -> ReconcileRequest:
        if self.end <= self.start:
            raise ValueError("`to` must be after `from`")
        if (self.end - self.start).days > MAX_RECONCILE_DAYS:
            raise ValueError(f"at most {MAX_RECONCILE_DAYS} days at a time")
        return self


class FigureRow(BaseModel):
    org_id: str
    day: date
    figures: dict[str, int]


class RangesRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ranges: list[OffsetRange]


class ReconcileFigures(BaseModel):
    """The store's and the counters' side of a reconciliation."""

    seen: list[FigureRow] | None = Field(
        description="Stored rows of the requested offset ranges (absent without ranges)."
    )
    stored: list[FigureRow] = Field(description="Every stored row of the window.")
    rollups: list[FigureRow] = Field(description="The daily rollup of the window.")
    counters: list[FigureRow] = Field(description="The quota counters of the window.")
    counters_since: date = Field(description="Counters older than this day are not kept.")
    raw_kept_from: dict[str, date] = Field(
        default_factory=dict,
        description="Orgs whose plan deletes raw events: the first day still kept (the"
        " rollups are the record before it).",
    )
    counter_staleness_s: float | None


class StoredLookup(BaseModel):
    model_config = ConfigDict(extra="forbid")

    event_ids: list[str] = Field(max_length=MAX_LOOKUP)
    org_ids: list[str] | None = Field(None, description="Narrows the scan when known.")


class StoredEvents(BaseModel):
    stored: list[str] = Field(
        description="The event ids ever stored, also those whose raw row log retention has"
        " since deleted."
    )


class EpochProbe(BaseModel):
    """A log epoch's newest stored row within a partition's scanned range."""

    partition: int
    epoch: str
    offset: int
    event_id: str


class EpochProbes(BaseModel):
    probes: list[EpochProbe]
