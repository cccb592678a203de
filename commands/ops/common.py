"""What the operations commands share: options, settings, the API's address, errors."""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated, Any

import typer

from tally.config import Settings

Bootstrap = Annotated[
    str | None,
    typer.Option(
        help="Kafka brokers host:port[,...]; default TALLY_BOOTSTRAP_SERVERS, else"
        " the embedded broker's port on 127.0.0.1."
    ),
]
ApiUrl = Annotated[
    str | None,
    typer.Option(help="Tally API base URL; default http://TALLY_API_HOST:TALLY_API_PORT."),
]
AsJson = Annotated[bool, typer.Option("--json", help="One JSON document instead of a table.")]
SkipStored = Annotated[
    bool,
    typer.Option(
        help="Ask the API which events are already stored and skip them (needs"
        " TALLY_ADMIN_KEY); without it only the worker's dedup window protects.",
    ),
]
Wait = Annotated[bool, typer.Option(help="Return once the worker has stored what was sent.")]
Timeout = Annotated[float, typer.Option(help="Seconds to wait for the worker.")]


def settings() -> Settings:
    from commands.settings import settings_from
    from tally import logs

    settings = settings_from()
    # The commands report what failed themselves; the Kafka client's own errors are noise.
    logs.setup("WARNING", "text")
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    return settings


def bootstrap(settings: Settings, flag: str | None) -> str:
    return flag or settings.bootstrap_servers or f"127.0.0.1:{settings.broker_port}"


def api_url(settings: Settings, flag: str | None) -> str:
    if flag:
        return flag
    host = "127.0.0.1" if settings.api_host in ("0.0.0.0", "::", "") else settings.api_host
    return f"http://{host}:{settings.api_port}"


def admin_key(settings: Settings) -> str | None:
    return settings.admin_key.get_secret_value() if settings.admin_key else None


def run(coro: Any) -> Any:
    from commands.ops.api import ApiUnavailable
    from commands.ops.kafka import BrokerUnavailable

    try:
        return asyncio.run(coro)
    except (ApiUnavailable, BrokerUnavailable) as exc:
        typer.echo(f"tally: {exc}", err=True)
        raise typer.Exit(1) from None


def need_admin(settings: Settings, why: str) -> str:
    key = admin_key(settings)
    if key is None:
        typer.echo(f"tally: {why} needs TALLY_ADMIN_KEY (or pass --no-skip-stored)", err=True)
        raise typer.Exit(2)
    return key
