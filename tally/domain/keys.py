"""API keys: `tk_<mode>_<key_id>_<secret>`. Only a SHA-256 of the whole key is stored."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable

from schemas.access import SCOPES

PREFIX = "tk"


def new_key(mode: str) -> tuple[str, str]:
    """A fresh `(key, key_id)`; the key is shown once and never stored."""
    key_id = secrets.token_hex(6)
    return f"{PREFIX}_{mode}_{key_id}_{secrets.token_urlsafe(24)}", key_id


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_id_of(key: str) -> str | None:
    parts = key.split("_", 3)
    if len(parts) != 4 or parts[0] != PREFIX or len(parts[2]) != 12:
        return None
    return parts[2]


def matches(key: str, stored_hash: str) -> bool:
    """Constant-time comparison of a presented key with a stored hash."""
    return hmac.compare_digest(hash_key(key), stored_hash)


def normalise_scopes(scopes: Iterable[str]) -> tuple[str, ...]:
    """The scopes in catalogue order, each once; an unknown scope is a `ValueError`."""
    scopes = set(scopes)
    unknown = sorted(scopes - set(SCOPES))
    if unknown:
        raise ValueError(f"unknown scope(s) {', '.join(unknown)}; use {', '.join(SCOPES)}")
    return tuple(s for s in SCOPES if s in scopes)


def admin_actor(admin_key: str) -> str:
    """The id the audit trail records for the admin key: a prefix of its SHA-256 (the key
    itself is never written down; a rotated key gets a new id)."""
    return f"admin:{hash_key(admin_key)[:12]}"
