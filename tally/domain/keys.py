"""API keys: `tk_<mode>_<key_id>_<secret>`. Only a SHA-256 of the whole key is stored."""

from __future__ import annotations

import hashlib
import hmac
import secrets

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
