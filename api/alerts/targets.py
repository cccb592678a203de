"""Whether Tally may send to a webhook URL: its form, then every address its host has."""

from __future__ import annotations

import asyncio
import socket

from tally.domain.webhooks import Target, TargetRefused, parse_target, refused_addresses


async def check_target(url: str, allow_private: bool) -> Target:
    """The target of `url`, or TargetRefused saying why not. Unless private targets are
    allowed, the host is resolved and every address it has must be public."""
    target = parse_target(url, allow_private)
    if allow_private:
        return target
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise TargetRefused(f"the host {target.host!r} does not resolve: {exc}") from None
    addresses = sorted({str(info[4][0]) for info in infos})
    refused = refused_addresses(addresses)
    if refused or not addresses:
        raise TargetRefused(
            f"the host {target.host!r} resolves to a loopback, private or link-local address"
            f" ({', '.join(refused)}): webhooks go to public addresses only"
            " (TALLY_WEBHOOK_ALLOW_PRIVATE=true allows them, for development)"
        )
    return target
