"""Orgs and API keys: kept in the store, served from memory.

Reads (authentication, an org's plan) never wait on the store; writes go to the store first
and then to memory. API replicas share the store, so each one merges what the others wrote
into its memory with `refresh()` (every `TALLY_REGISTRY_REFRESH_S`, see `api.refresh`).

Every table here is an append-only log of versioned records, so a refresh merges rather
than replaces: the newer version of a record wins, nothing this replica wrote meanwhile is
lost, and a revocation is for good. Keys are read before orgs and a key whose org is not
known yet waits for the next refresh: a key never points at a missing org.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from typing import Any

from api.subscriptions import Accounts, AccountsSnapshot
from schemas.access import SCOPES
from tally.domain.keys import hash_key, key_id_of, matches, new_key, normalise_scopes
from tally.store import Store

# A refresh reads the records written since the newest version it has seen, less this margin
# (micro-seconds): a write that committed late, or on a replica whose clock is behind, is
# still read. Anything older than that is read by the full reload every FULL_RELOAD_S.
MARGIN_US = 120_000_000
FULL_RELOAD_S = 300.0


@dataclass(frozen=True, slots=True)
class Org:
    """`plan` is the plan the org was created on; the plan in force at a time comes from
    `Registry.accounts` (see `api.accounts.account`)."""

    org_id: str
    plan: str
    signup_date: date
    created_at: datetime
    version: int = 0
    closed_at: datetime | None = None  # closed (`DELETE /admin/orgs/{id}`) and not restored


@dataclass(frozen=True, slots=True)
class ApiKey:
    key_id: str
    org_id: str
    mode: str
    key_hash: str
    created_at: datetime
    revoked: bool = False
    version: int = 0
    scopes: tuple[str, ...] = SCOPES


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What one refresh read from the store (keys first) that this replica did not hold
    when it read, and the newest versions read."""

    keys: list[ApiKey]
    orgs: list[Org]
    accounts: AccountsSnapshot
    newest_key: int = -1
    newest_org: int = -1


def merge_orgs(current: Mapping[str, Org], loaded: Iterable[Org]) -> dict[str, Org]:
    """`current` with the loaded orgs it lacks or has in an older version."""
    out = dict(current)
    for org in loaded:
        mine = out.get(org.org_id)
        if mine is None or org.version > mine.version:
            out[org.org_id] = org
    return out


def merge_keys(
    current: Mapping[str, ApiKey], loaded: Iterable[ApiKey], orgs: Mapping[str, Org]
) -> dict[str, ApiKey]:
    """`current` with the loaded keys: the newer version wins and a revocation by either
    side stands (keys are never restored, whatever the clocks of the replicas that wrote
    them); a key whose org is not in `orgs` is left for a later refresh."""
    out = dict(current)
    for key in loaded:
        if key.org_id not in orgs:
            continue
        mine = out.get(key.key_id)
        if mine is None:
            out[key.key_id] = key
            continue
        newest = key if key.version > mine.version else mine
        revoked = key.revoked or mine.revoked
        if newest is not mine or revoked != mine.revoked:
            out[key.key_id] = replace(newest, revoked=revoked)
    return out


def unknown(
    key_rows: list[tuple[Any, ...]],
    org_rows: list[tuple[Any, ...]],
    keys: Mapping[str, ApiKey],
    orgs: Mapping[str, Org],
    accounts: AccountsSnapshot,
) -> Snapshot:
    """The records of `keys_query` and `orgs_query` rows that `keys` and `orgs` lack or hold
    in an older version. Runs in a thread: a full reload reads every key and org, and only
    the few that changed come back to the event loop to be merged."""
    new_keys: list[ApiKey] = []
    for key_id, org_id, mode, key_hash, created_at, revoked, version, scopes in key_rows:
        mine = keys.get(key_id)
        if mine is None or version > mine.version or (revoked and not mine.revoked):
            key = ApiKey(
                key_id,
                org_id,
                mode,
                key_hash,
                _utc(created_at),
                bool(revoked),
                version,
                normalise_scopes(scopes),
            )
            new_keys.append(key)
    new_orgs = [
        Org(org_id, plan, signup, _utc(created_at), version, _utc(closed) if closed else None)
        for org_id, plan, signup, created_at, version, closed in org_rows
        if org_id not in orgs or version > orgs[org_id].version
    ]
    return Snapshot(
        new_keys,
        new_orgs,
        accounts,
        max((r[6] for r in key_rows), default=-1),
        max((r[4] for r in org_rows), default=-1),
    )


def keys_query(since: int) -> tuple[str, dict[str, Any]]:
    """The current record of every key with a version newer than `since` (-1: all)."""
    sql = (
        "SELECT key_id, argMax(org_id, version), argMax(mode, version),"
        " argMax(key_hash, version), min(created_at), max(revoked), max(version),"
        " argMax(scopes, version)"
        " FROM api_keys WHERE key_id IN"
        " (SELECT key_id FROM api_keys WHERE version > {since:Int64}) GROUP BY key_id"
    )
    return sql, {"since": since}


def orgs_query(since: int) -> tuple[str, dict[str, Any]]:
    """The current record of every org with a version newer than `since` (-1: all)."""
    sql = (
        "SELECT org_id, argMax(plan, version), argMax(signup_date, version),"
        " min(created_at), max(version), argMax(closed_at, version) FROM orgs WHERE org_id IN"
        " (SELECT org_id FROM orgs WHERE version > {since:Int64}) GROUP BY org_id"
    )
    return sql, {"since": since}


class Conflict(ValueError):
    """The thing being created exists already."""


class Registry:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.orgs: dict[str, Org] = {}
        self.keys: dict[str, ApiKey] = {}
        self.accounts = Accounts(store)  # subscriptions, overrides, workspace settings
        # Moves whenever the orgs change (with `accounts.generation`: quota reads cache by it).
        self.generation = 0
        self._since = {"keys": -1, "orgs": -1}  # newest version read, less the margin

    async def refresh(self, full: bool = True) -> Snapshot:
        """Merge what the store holds into memory: everything, or (`full=False`) what was
        written since the last refresh, give or take `MARGIN_US`."""
        snapshot = await self.load(full)
        self.apply(snapshot)
        return snapshot

    async def load(self, full: bool = True) -> Snapshot:
        """Read keys, then orgs, then subscriptions: an org is older than its keys, so every
        key read has its org in the same snapshot (or in memory already)."""
        keys_since, orgs_since = (-1, -1) if full else (self._since["keys"], self._since["orgs"])
        key_rows = await self.store.query(*keys_query(keys_since))
        org_rows = await self.store.query(*orgs_query(orgs_since))
        accounts = await self.accounts.load(full)
        # Copies (cheap, in C): the loop goes on changing the registry meanwhile.
        known_keys, known_orgs = dict(self.keys), dict(self.orgs)
        return await asyncio.to_thread(
            unknown, key_rows, org_rows, known_keys, known_orgs, accounts
        )

    def apply(self, snapshot: Snapshot) -> None:
        """Merge a snapshot into memory (no I/O, so no request sees half of it)."""
        if snapshot.orgs:
            self.orgs = merge_orgs(self.orgs, snapshot.orgs)
            self.generation += 1
        if snapshot.keys:
            self.keys = merge_keys(self.keys, snapshot.keys, self.orgs)
        for table, newest in (("keys", snapshot.newest_key), ("orgs", snapshot.newest_org)):
            self._since[table] = max(self._since[table], newest - MARGIN_US)
        self.accounts.apply(snapshot.accounts)

    async def create_org(self, org_id: str, plan: str, signup_date: date) -> Org:
        if org_id in self.orgs:
            raise Conflict(f"org {org_id!r} exists already")
        now = datetime.now(UTC)
        org = Org(org_id, plan, signup_date, now, _version(now))
        await self.store.insert(
            "orgs",
            [[org_id, plan, signup_date, now, org.version]],
            ("org_id", "plan", "signup_date", "created_at", "version"),
        )
        self.orgs[org_id] = org
        self.generation += 1
        return org

    def closed_orgs(self) -> frozenset[str]:
        """The orgs closed and not restored."""
        return frozenset(org_id for org_id, org in self.orgs.items() if org.closed_at)

    async def set_closed(self, org_id: str, closed_at: datetime | None) -> Org:
        """Close an org (its keys stop at once) or, with `None`, restore it."""
        now = datetime.now(UTC)
        org = replace(self.orgs[org_id], closed_at=closed_at, version=_version(now))
        await self.store.insert(
            "orgs",
            [[org_id, org.plan, org.signup_date, org.created_at, org.version, closed_at]],
            ("org_id", "plan", "signup_date", "created_at", "version", "closed_at"),
        )
        self.orgs[org_id] = org
        self.generation += 1
        return org

    def forget(self, org_id: str) -> None:
        """Drop a purged org and its keys from memory (the store no longer holds them)."""
        self.orgs.pop(org_id, None)
        self.keys = {k: v for k, v in self.keys.items() if v.org_id != org_id}
        self.generation += 1

    async def create_key(
        self, org_id: str, mode: str, scopes: tuple[str, ...] = SCOPES
    ) -> tuple[str, ApiKey]:
        key, key_id = new_key(mode)
        now = datetime.now(UTC)
        record = ApiKey(
            key_id, org_id, mode, hash_key(key), now, version=_version(now), scopes=scopes
        )
        await self._save_key(record)
        self.keys[key_id] = record
        return key, record

    def keys_of(self, org_id: str) -> list[ApiKey]:
        """The org's keys, revoked ones included, oldest first."""
        return sorted(
            (k for k in self.keys.values() if k.org_id == org_id), key=lambda k: k.created_at
        )

    def active_keys(self, org_id: str, mode: str) -> int:
        return sum(1 for k in self.keys_of(org_id) if k.mode == mode and not k.revoked)

    async def revoke_key(self, key_id: str) -> ApiKey:
        """Revoke a key for good: it stops authenticating at once."""
        now = datetime.now(UTC)
        record = replace(self.keys[key_id], revoked=True, version=_version(now))
        await self._save_key(record)
        self.keys[key_id] = record
        return record

    async def _save_key(self, k: ApiKey) -> None:
        await self.store.insert(
            "api_keys",
            [
                [
                    k.key_id,
                    k.org_id,
                    k.mode,
                    k.key_hash,
                    k.created_at,
                    int(k.revoked),
                    k.version,
                    list(k.scopes),
                ]
            ],
            ("key_id", "org_id", "mode", "key_hash", "created_at", "revoked", "version", "scopes"),
        )

    def authenticate(self, presented: str) -> ApiKey | None:
        """The live key record for a presented key, compared in constant time; a key of a
        closed org is not live."""
        key_id = key_id_of(presented)
        record = self.keys.get(key_id) if key_id else None
        # Hash and compare even for an unknown key id, so timing does not tell them apart.
        ok = matches(presented, record.key_hash if record else _NO_KEY)
        if record is None or record.revoked or not ok or self.is_closed(record.org_id):
            return None
        return record

    def is_closed(self, org_id: str) -> bool:
        org = self.orgs.get(org_id)
        return org is not None and org.closed_at is not None


_NO_KEY = hash_key("no such key")


def _version(now: datetime) -> int:
    return int(now.timestamp() * 1_000_000)


def _utc(t: datetime) -> datetime:
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)
