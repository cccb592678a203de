"""Log retention: which orgs' raw events are old enough to delete, by their plan.

Only raw events (`events`) expire; the rollups that bills and quotas are built from stay.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta


def cutoffs(retention_days: Mapping[str, int | None], now: datetime) -> dict[datetime, list[str]]:
    """Orgs grouped by the instant before which their raw events go; `None` keeps all."""
    today = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    out: dict[datetime, list[str]] = defaultdict(list)
    for org_id, days in sorted(retention_days.items()):
        if days is not None:
            out[today - timedelta(days=days)].append(org_id)
    return dict(out)
