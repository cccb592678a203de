"""Orgs and API keys: kept in the store, served from memory.

Reads (authentication, an org's plan) never wait on the store; writes go to the store first
and then to memory. `refresh()` reloads from the store, for API replicas that share it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, date, datetime

from api.subscriptions import Accounts
from tally.domain.keys import hash_key, key_id_of, matches, new_key
from tally.store import Store


@dataclass(frozen=True, slots=True)
class Org:
    """`plan` is the plan the org was created on; the plan in force at a time comes from
    `Registry.accounts` (see `api.subscriptions.account`)."""

    org_id: str
    plan: str
    signup_date: date
    created_at: datetime


@dataclass(frozen=True, slots=True)
class ApiKey:
    key_id: str
    org_id: str
    mode: str
    key_hash: str
    created_at: datetime
    revoked: bool = False


class Conflict(ValueError):
    """The thing being created exists already."""


class Registry:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.orgs: dict[str, Org] = {}
        self.keys: dict[str, ApiKey] = {}
        self.accounts = Accounts(store)  # subscriptions, overrides, workspace settings

    async def refresh(self) -> None:
        orgs = await self.store.query(
            "SELECT org_id, argMax(plan, version), argMax(signup_date, version),"
            " min(created_at) FROM orgs GROUP BY org_id"
        )
        keys = await self.store.query(
            "SELECT key_id, argMax(org_id, version), argMax(mode, version),"
            " argMax(key_hash, version), min(created_at), argMax(revoked, version)"
            " FROM api_keys GROUP BY key_id"
        )
        self.orgs = {r[0]: Org(r[0], r[1], r[2], r[3].replace(tzinfo=UTC)) for r in orgs}
        self.keys = {
            r[0]: ApiKey(r[0], r[1], r[2], r[3], r[4].replace(tzinfo=UTC), bool(r[5])) for r in keys
        }
        await self.accounts.refresh()

    async def create_org(self, org_id: str, plan: str, signup_date: date) -> Org:
        if org_id in self.orgs:
            raise Conflict(f"org {org_id!r} exists already")
        now = datetime.now(UTC)
        org = Org(org_id, plan, signup_date, now)
        await self.store.insert(
            "orgs",
            [[org_id, plan, signup_date, now, _version(now)]],
            ("org_id", "plan", "signup_date", "created_at", "version"),
        )
        self.orgs[org_id] = org
        return org

    async def create_key(self, org_id: str, mode: str) -> tuple[str, ApiKey]:
        key, key_id = new_key(mode)
        now = datetime.now(UTC)
        record = ApiKey(key_id, org_id, mode, hash_key(key), now)
        await self._save_key(record, now)
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
        record = replace(self.keys[key_id], revoked=True)
        await self._save_key(record, datetime.now(UTC))
        self.keys[key_id] = record
        return record

    async def _save_key(self, k: ApiKey, now: datetime) -> None:
        await self.store.insert(
            "api_keys",
            [[k.key_id, k.org_id, k.mode, k.key_hash, k.created_at, int(k.revoked), _version(now)]],
            ("key_id", "org_id", "mode", "key_hash", "created_at", "revoked", "version"),
        )

    def authenticate(self, presented: str) -> ApiKey | None:
        """The live key record for a presented key, compared in constant time."""
        key_id = key_id_of(presented)
        record = self.keys.get(key_id) if key_id else None
        # Hash and compare even for an unknown key id, so timing does not tell them apart.
        ok = matches(presented, record.key_hash if record else _NO_KEY)
        if record is None or record.revoked or not ok:
            return None
        return record


_NO_KEY = hash_key("no such key")


def _version(now: datetime) -> int:
    return int(now.timestamp() * 1_000_000)
