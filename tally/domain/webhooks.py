"""Webhook rules of the Standard Webhooks specification: secrets, signatures, retries,
which targets are allowed. Pure functions, no I/O (resolving a host is the caller's)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import random
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import urlsplit

SECRET_PREFIX = "whsec_"
MAX_DELAY = timedelta(hours=6)  # no single wait is longer: a fixed receiver hears soon


def new_secret() -> str:
    """A signing secret as the specification writes it: `whsec_` + base64 of 32 bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header: `v1,` + base64 HMAC-SHA256 of `id.timestamp.body`."""
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    content = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, content, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def headers(secret: str, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {
        "content-type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, msg_id, timestamp, body),
    }


def next_attempt(
    first: datetime, attempts: int, now: datetime, base_s: float, retry_for: timedelta
) -> datetime | None:
    """When to try again after `attempts` failed ones, or None when the time is up.

    Exponential (`base_s` doubled per attempt, at most `MAX_DELAY`), with jitter (a wait
    between half and all of it, so that endpoints that failed together do not retry
    together), for up to `retry_for` after the first attempt."""
    delay = min(base_s * 2 ** max(attempts - 1, 0), MAX_DELAY.total_seconds())
    at = now + timedelta(seconds=delay * random.uniform(0.5, 1.0))  # noqa: S311 - jitter, not a secret
    deadline = first + retry_for
    if now >= deadline:
        return None
    return min(at, deadline)


class TargetRefused(ValueError):
    """A webhook URL Tally will not send to; the message says why."""


@dataclass(frozen=True, slots=True)
class Target:
    scheme: str
    host: str
    port: int


def parse_target(url: str, allow_private: bool) -> Target:
    """The URL's parts, if its form is acceptable: https (http only where private targets
    are allowed, for development), a host, no credentials."""
    parts = urlsplit(url)
    allowed = ("https", "http") if allow_private else ("https",)
    if parts.scheme not in allowed:
        raise TargetRefused(f"webhook URLs must be https (got {parts.scheme or 'none'!r})")
    if not parts.hostname:
        raise TargetRefused("the webhook URL has no host")
    if parts.username or parts.password:
        raise TargetRefused("the webhook URL must not carry credentials")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise TargetRefused(f"the webhook URL's port is not valid: {exc}") from None
    return Target(parts.scheme, parts.hostname, port)


def refused_addresses(addresses: Iterable[str]) -> list[str]:
    """The addresses among `addresses` that are not public: loopback, private, link-local,
    multicast, reserved, unspecified (an IPv4-mapped IPv6 address is judged as IPv4)."""
    out = []
    for text in addresses:
        ip = ipaddress.ip_address(text.split("%", 1)[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if not ip.is_global or ip.is_multicast:
            out.append(text)
    return out
