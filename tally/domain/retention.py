"""Log retention: which orgs' raw events are old enough to delete, by their plan.

Only raw events (`events`) expire; the rollups that bills and quotas are built from stay.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta


def cutoff(days: int, now: datetime) -> datetime:
    """The instant before which raw events kept `days` days are gone: midnight UTC `days`
    days before today's. The call log reaches back to it and no further."""
    today = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return today - timedelta(days=days)


def cutoffs(retention_days: Mapping[str, int | None], now: datetime) -> dict[datetime, list[str]]:
    """Orgs grouped by the instant before which their raw events go; `None` keeps all."""
    out: dict[datetime, list[str]] = defaultdict(list)
    for org_id, days in sorted(retention_days.items()):
        if days is not None:
            out[cutoff(days, now)].append(org_id)
    return dict(out)
