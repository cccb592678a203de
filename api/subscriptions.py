"""Subscriptions, Enterprise overrides and workspace settings: kept in the store, served from
memory, like orgs and keys in `api.registry`.

Writes go to the store first and then to memory; reads never wait on the store. The rules
(which plan is in force, when a change applies) are in `tally.domain.subscriptions`; this
module only records changes and answers from them. Like the registry, it merges what other
API replicas wrote (`load()` then `apply()`): changes are a log ordered by `seq`, and an org's
overrides and settings are those of its newest `seq`.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any, Protocol

import orjson
from pydantic import ValidationError

from schemas.plans import Plan, PlanOverrides, apply_overrides
from tally.domain.subscriptions import Change, Subscription, initial, state_until
from tally.store import Store


class OrgRecord(Protocol):
    """What a subscription starts from: the org's plan at signup (`api.registry.Org`)."""

    @property
    def org_id(self) -> str: ...
    @property
    def plan(self) -> str: ...
    @property
    def signup_date(self) -> date: ...


log = logging.getLogger("tally.subscriptions")

_CHANGE_COLUMNS = (
    "org_id",
    "seq",
    "kind",
    "recorded_at",
    "effective_at",
    "plan",
    "anchor",
    "status",
    "trial_ends_at",
)


def now_ms() -> datetime:
    """Now in UTC, to the millisecond the store keeps, so memory and store agree."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def _utc(t: datetime | None) -> datetime | None:
    return None if t is None else t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


# See api.registry: a refresh reads what was written since the newest seq it saw, less this.
MARGIN_US = 120_000_000


@dataclass(frozen=True, slots=True)
class AccountsSnapshot:
    """What one refresh read: each org's whole change log (orgs with a recent change only,
    unless full), and the newest overrides and default model of orgs that set them."""

    changes: dict[str, list[tuple[int, Change]]] = field(default_factory=dict)
    overrides: dict[str, tuple[int, PlanOverrides]] = field(default_factory=dict)
    default_models: dict[str, tuple[int, str | None]] = field(default_factory=dict)
    newest: int = -1  # the newest seq read


@dataclass(frozen=True, slots=True)
class _Held:
    """What an Accounts holds, for `_unknown` to compare a load with."""

    changes: dict[str, list[Change]]
    override_seqs: dict[str, int]
    model_seqs: dict[str, int]


def _unknown(
    change_rows: list[tuple[Any, ...]],
    override_rows: list[tuple[Any, ...]],
    model_rows: list[tuple[Any, ...]],
    held: _Held,
) -> AccountsSnapshot:
    """The loaded rows as records, leaving out what `held` has already."""
    changes: dict[str, list[tuple[int, Change]]] = {}
    overrides: dict[str, tuple[int, PlanOverrides]] = {}
    models: dict[str, tuple[int, str | None]] = {}
    loaded: dict[str, list[tuple[int, Change]]] = {}
    newest = -1
    for org_id, seq, kind, rec, eff, plan, anchor, status, trial in change_rows:
        change = Change(
            kind=kind,
            recorded_at=_utc(rec),  # type: ignore[arg-type]
            effective_at=_utc(eff),  # type: ignore[arg-type]
            plan=plan or None,
            anchor=anchor,
            status=status or None,
            trial_ends_at=_utc(trial),
        )
        loaded.setdefault(org_id, []).append((seq, change))
        newest = max(newest, seq)
    for org_id, log in loaded.items():
        if not {c for _, c in log} <= set(held.changes.get(org_id, ())):
            changes[org_id] = log
    for org_id, body, seq in override_rows:
        if seq > held.override_seqs.get(org_id, -1):
            overrides[org_id] = (seq, PlanOverrides.model_validate_json(body))
        newest = max(newest, seq)
    for org_id, model, seq in model_rows:
        if seq > held.model_seqs.get(org_id, -1):
            models[org_id] = (seq, model)
        newest = max(newest, seq)
    return AccountsSnapshot(changes, overrides, models, newest)


class Accounts:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.changes: dict[str, list[Change]] = {}
        self.overrides: dict[str, PlanOverrides] = {}
        self.default_models: dict[str, str | None] = {}
        self._seq = 0
        self._lock: asyncio.Lock | None = None
        self._effective: dict[str, tuple[Plan, PlanOverrides, Plan]] = {}
        # The seq of every change, override and setting held, to order and merge them.
        self._seq_of: dict[Change, int] = {}
        self._override_seq: dict[str, int] = {}
        self._model_seq: dict[str, int] = {}
        self._since = -1  # newest seq read, less the margin
        # Moves whenever anything `account()` reads changes (quota reads cache by it).
        self.generation = 0

    @property
    def lock(self) -> asyncio.Lock:
        """Serialises admin writes, so each decides from the state the previous one left."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        return self._lock

    def _next_seq(self, now: datetime) -> int:
        self._seq = max(self._seq + 1, int(now.timestamp() * 1_000_000))
        return self._seq

    async def refresh(self, full: bool = True) -> None:
        self.apply(await self.load(full))

    async def load(self, full: bool = True) -> AccountsSnapshot:
        """Read the changes, overrides and settings written since the last load (or all);
        keep those this process does not hold yet."""
        since = {"since": -1 if full else self._since}
        changes = await self.store.query(
            f"SELECT {', '.join(_CHANGE_COLUMNS)} FROM subscription_changes WHERE org_id IN"
            " (SELECT org_id FROM subscription_changes WHERE seq > {since:Int64})"
            " ORDER BY org_id, seq",
            since,
        )
        overrides = await self.store.query(
            "SELECT org_id, argMax(overrides, seq), max(seq) FROM plan_overrides"
            " WHERE seq > {since:Int64} GROUP BY org_id",
            since,
        )
        models = await self.store.query(
            "SELECT org_id, argMax(default_model, seq), max(seq) FROM workspace_settings"
            " WHERE seq > {since:Int64} GROUP BY org_id",
            since,
        )
        # What this process holds, copied (the lists are replaced, never changed in place):
        # the comparison runs in a thread, off the event loop.
        held = _Held(
            dict(self.changes),
            {o: self._override_seq.get(o, -1) for o in self.overrides},
            {o: self._model_seq.get(o, -1) for o in self.default_models},
        )
        return await asyncio.to_thread(_unknown, changes, overrides, models, held)

    def apply(self, snapshot: AccountsSnapshot) -> None:
        """Merge a snapshot: an org's change log becomes the union of the stored one and the
        changes recorded here meanwhile, in seq order; newer overrides and settings win."""
        for org_id, loaded in snapshot.changes.items():
            merged = {change: seq for seq, change in loaded}
            for change in self.changes.get(org_id, ()):
                merged.setdefault(change, self._seq_of.get(change, 0))
            self._seq_of.update(merged)
            self.changes[org_id] = sorted(merged, key=merged.__getitem__)
        for org_id, (seq, overrides) in snapshot.overrides.items():
            if org_id not in self.overrides or seq > self._override_seq.get(org_id, -1):
                self.overrides[org_id] = overrides
                self._override_seq[org_id] = seq
        for org_id, (seq, model) in snapshot.default_models.items():
            if org_id not in self.default_models or seq > self._model_seq.get(org_id, -1):
                self.default_models[org_id] = model
                self._model_seq[org_id] = seq
        self._seq = max(self._seq, snapshot.newest)
        self._since = max(self._since, snapshot.newest - MARGIN_US)
        if snapshot.changes or snapshot.overrides or snapshot.default_models:
            self.generation += 1

    def effective(self, org_id: str, plan: Plan, overrides: PlanOverrides | None) -> Plan:
        """`plan` with the org's overrides applied, computed once per plan and overrides."""
        if overrides is None:
            return plan
        cached = self._effective.get(org_id)
        if cached is not None and cached[0] is plan and cached[1] is overrides:
            return cached[2]
        try:
            result = apply_overrides(plan, overrides)
        except ValidationError as exc:  # the catalogue changed under stored overrides
            log.warning("overrides of %r do not fit plan %r, ignored: %s", org_id, plan.name, exc)
            result = plan
        self._effective[org_id] = (plan, overrides, result)
        return result

    def subscription_until(
        self, org: OrgRecord, now: datetime
    ) -> tuple[Subscription, datetime | None]:
        """The subscription at `now`, and the time it may change by itself (`state_until`)."""
        start = initial(org.plan, org.signup_date)
        return state_until(start, self.changes.get(org.org_id, ()), now)

    def history(self, org_id: str) -> list[Change]:
        return list(self.changes.get(org_id, ()))

    async def record(self, org_id: str, c: Change) -> None:
        seq = self._next_seq(c.recorded_at)
        row: list[Any] = [
            org_id,
            seq,
            c.kind,
            c.recorded_at,
            c.effective_at,
            c.plan or "",
            c.anchor,
            c.status or "",
            c.trial_ends_at,
        ]
        await self.store.insert("subscription_changes", [row], _CHANGE_COLUMNS)
        self._seq_of[c] = seq
        # A new list rather than an append: a refresh may be comparing the old one.
        self.changes[org_id] = [*self.changes.get(org_id, ()), c]
        self.generation += 1

    async def set_overrides(self, org_id: str, overrides: PlanOverrides, now: datetime) -> None:
        body = orjson.dumps(overrides.updates()).decode()
        seq = self._next_seq(now)
        await self.store.insert(
            "plan_overrides",
            [[org_id, seq, now, body]],
            ("org_id", "seq", "recorded_at", "overrides"),
        )
        self.overrides[org_id] = overrides
        self._override_seq[org_id] = seq
        self.generation += 1

    async def set_default_model(self, org_id: str, model: str | None, now: datetime) -> None:
        seq = self._next_seq(now)
        await self.store.insert(
            "workspace_settings",
            [[org_id, seq, now, model]],
            ("org_id", "seq", "recorded_at", "default_model"),
        )
        self.default_models[org_id] = model
        self._model_seq[org_id] = seq
        self.generation += 1
