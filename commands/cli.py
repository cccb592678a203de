"""The `tally` command."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
import uvicorn
from pydantic import SecretStr

from commands.settings import settings_from
from tally.config import Settings

cli = typer.Typer(
    help="Tally: usage metering for AI-agent platforms.", no_args_is_help=True, add_completion=False
)

DataDir = Annotated[Path | None, typer.Option(help="Data directory (chDB store).")]
ApiHost = Annotated[str | None, typer.Option(help="API listen address.")]
ApiPort = Annotated[int | None, typer.Option(help="API port.")]
BrokerPort = Annotated[int | None, typer.Option(help="Embedded broker port.")]
Bootstrap = Annotated[str | None, typer.Option(help="External Kafka brokers host:port[,...].")]
ClickHouseUrl = Annotated[str | None, typer.Option(help="ClickHouse server URL or chdb:///dir.")]


def _logging(settings: Settings) -> None:
    from tally import logs

    logs.setup(settings.log_level, settings.log_format)


async def _serve(settings: Settings, *, worker: bool, api: bool) -> None:
    from api.app import create_app
    from commands.runtime import Tally, settle_gc, tune_gc
    from tally.store import redact

    tune_gc()
    tally = Tally(settings, worker=worker, api=api)
    metrics_server = None
    if not api and settings.metrics_port is not None:
        from prometheus_client import start_http_server

        metrics_server, _ = start_http_server(settings.metrics_port, settings.api_host)
        url = f"http://{settings.api_host}:{settings.metrics_port}/metrics"
        logging.getLogger("tally").info("worker metrics on %s", url, extra={"url": url})
    await tally.start()
    try:
        if worker:
            await tally.start_worker()
        settle_gc()
        if api:
            assert tally.services is not None
            app = create_app(tally.services)
            s = tally.settings
            config = uvicorn.Config(
                app,
                host=s.api_host,
                port=s.api_port,
                log_level="warning",
                lifespan="off",
                log_config=None,  # uvicorn logs through Tally's handler, in its format
            )
            server = _Server(config)
            url = f"http://{s.api_host}:{s.api_port}"
            logging.getLogger("tally").info(
                "Tally API on %s (broker %s, store %s)",
                url,
                s.bootstrap_servers,
                redact(s.store_url),
                extra={"url": url},
            )
            await server.serve()
        else:
            await _until_signalled()
    finally:
        await tally.stop()
        if metrics_server is not None:
            metrics_server.shutdown()


class _Server(uvicorn.Server):
    """Uvicorn re-raises SIGTERM after its own shutdown, which would kill the process before
    the worker drains and the store closes; Tally exits by itself once that is done."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        handled = (signal.SIGINT, signal.SIGTERM)
        originals = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
        try:
            yield
        finally:
            for sig, handler in originals.items():
                signal.signal(sig, handler)


async def _until_signalled() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


@cli.command()
def up(
    data_dir: DataDir = None,
    api_host: ApiHost = None,
    api_port: ApiPort = None,
    broker_port: BrokerPort = None,
    bootstrap_servers: Bootstrap = None,
    clickhouse_url: ClickHouseUrl = None,
) -> None:
    """Worker and API in one process; starts the embedded broker unless --bootstrap-servers."""
    settings = settings_from(
        data_dir=data_dir,
        api_host=api_host,
        api_port=api_port,
        broker_port=broker_port,
        bootstrap_servers=bootstrap_servers,
        clickhouse_url=clickhouse_url,
    )
    made_key = None
    if settings.admin_key is None:
        # A newcomer's first run: make an admin key for this run rather than no admin at all.
        made_key = secrets.token_urlsafe(24)
        settings = settings.model_copy(update={"admin_key": SecretStr(made_key)})
    _logging(settings)
    _banner(settings, made_key)
    from tally.broker import BrokerError

    try:
        asyncio.run(_serve(settings, worker=True, api=True))
    except BrokerError as exc:
        typer.echo(f"tally: {exc}", err=True)
        raise typer.Exit(1) from None


def _banner(settings: Settings, made_key: str | None) -> None:
    """The first lines of `tally up`: where the API, the dashboard and the docs are, and the
    admin key. Plain lines when the logs are text (a terminal), one log record when JSON."""
    from tally import logs

    host = settings.api_host
    shown = "localhost" if host in ("0.0.0.0", "::", "") else host
    api = f"http://{f'[{shown}]' if ':' in shown else shown}:{settings.api_port}"
    where = {"api": api, "dashboard": f"{api}/dashboard", "docs": f"{api}/docs"}
    if logs.choose_format(settings.log_format) == "json":
        log = logging.getLogger("tally")
        log.info("Tally starting: API %s, dashboard %s, docs %s", *where.values(), extra=where)
        if made_key is not None:
            log.warning(
                "TALLY_ADMIN_KEY is not set; the admin key for this run is: %s",
                made_key,
                extra={"admin_key": made_key},
            )
        return
    key = (
        f"{made_key}  (made for this run: set TALLY_ADMIN_KEY to choose one)"
        if made_key is not None
        else "the one in TALLY_ADMIN_KEY"
    )
    lines = [
        "Tally is starting; it answers in a few seconds on:",
        f"  API        {where['api']}",
        f"  dashboard  {where['dashboard']}",
        f"  API docs   {where['docs']}",
        f"  admin key  {key}",
        "",
    ]
    typer.echo("\n".join(lines), err=True)


@cli.command()
def worker(
    bootstrap_servers: Bootstrap = None,
    clickhouse_url: ClickHouseUrl = None,
    data_dir: DataDir = None,
    metrics_port: Annotated[
        int | None, typer.Option(help="Serve Prometheus /metrics on this port.")
    ] = None,
) -> None:
    """The stream worker alone (server-backed deployments)."""
    settings = settings_from(
        bootstrap_servers=bootstrap_servers,
        clickhouse_url=clickhouse_url,
        data_dir=data_dir,
        metrics_port=metrics_port,
    )
    _require_external(settings)
    _logging(settings)
    asyncio.run(_serve(settings, worker=True, api=False))


@cli.command()
def api(
    bootstrap_servers: Bootstrap = None,
    clickhouse_url: ClickHouseUrl = None,
    api_host: ApiHost = None,
    api_port: ApiPort = None,
) -> None:
    """The API alone (server-backed deployments)."""
    settings = settings_from(
        bootstrap_servers=bootstrap_servers,
        clickhouse_url=clickhouse_url,
        api_host=api_host,
        api_port=api_port,
    )
    _require_external(settings)
    _logging(settings)
    asyncio.run(_serve(settings, worker=False, api=True))


@cli.command()
def migrate(clickhouse_url: ClickHouseUrl = None, data_dir: DataDir = None) -> None:
    """Apply the store's migrations and exit: run it once before the workers and API replicas."""
    from tally.store import Store, StoreError

    settings = settings_from(clickhouse_url=clickhouse_url, data_dir=data_dir)
    _logging(settings)

    async def run() -> list[str]:
        async with Store(settings.store_url) as store:  # starting a store migrates it
            rows = await store.query("SELECT DISTINCT name FROM schema_migrations ORDER BY name")
            return [str(r[0]) for r in rows]

    try:
        names = asyncio.run(run())
    except StoreError as exc:
        typer.echo(f"tally: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"store migrated: {', '.join(names)}")


def _require_external(settings: Settings) -> None:
    if settings.bootstrap_servers is None or settings.clickhouse_url is None:
        typer.echo(
            "tally: separate worker and api processes need --bootstrap-servers and "
            "--clickhouse-url (a chDB directory belongs to one process: use `tally up`)",
            err=True,
        )
        raise typer.Exit(2)


@cli.command()
def broker(
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 9092,
    partitions: Annotated[
        int | None,
        typer.Option(min=1, help="Partitions of usage.events (default: TALLY_PARTITIONS, 8)."),
    ] = None,
) -> None:
    """The embedded Kafka-protocol broker alone, until Ctrl-C."""
    from tally.broker import BrokerError, EmbeddedBroker, free_port, wait_port_free
    from tally.gate import Gate, create_topics_direct
    from tally.topics import tally_topics

    count = partitions or Settings().partitions

    async def serve(internal: int) -> None:
        # Tally's topics first, then the port: clients coming back to a broker restarted
        # empty must never make a topic by writing to it (tally/gate.py).
        await create_topics_direct(internal, tally_topics(count))
        gate = Gate(port, internal)
        await gate.open()
        typer.echo(f"broker on 127.0.0.1:{port} (memory storage); Ctrl-C stops it")
        try:
            await _until_signalled()
        finally:
            await gate.close()

    try:
        if not wait_port_free(port, 5.0):
            raise BrokerError(f"port {port} is already in use; pick another --port")
        internal = free_port()
        with EmbeddedBroker(internal, advertised_port=port):
            asyncio.run(serve(internal))
    except BrokerError as exc:
        typer.echo(f"tally: {exc}", err=True)
        raise typer.Exit(1) from None


@cli.command()
def bench(
    events: Annotated[
        int, typer.Option(min=1_000, help="Backlog size for the drain figures.")
    ] = 200_000,
    orgs: Annotated[int, typer.Option(min=1, help="Orgs in the workload.")] = 50,
    partitions: Annotated[int, typer.Option(min=1, help="Partitions of usage.events.")] = 8,
    samples: Annotated[int, typer.Option(min=1, help="Freshness samples per run.")] = 200,
    load_rate: Annotated[
        int, typer.Option(min=1, help="Background events/s for freshness.")
    ] = 10_000,
    http_seconds: Annotated[
        int, typer.Option(min=1, help="Seconds of HTTP load on each app, in turns of 2.")
    ] = 10,
    connections: Annotated[int, typer.Option(min=1, help="Concurrent HTTP clients.")] = 64,
    memory_keys: Annotated[
        int, typer.Option(min=1_000, help="Counter keys for the memory figure.")
    ] = 1_000_000,
    breakdown_rows: Annotated[
        int, typer.Option(min=1_000, help="Events pre-loaded for the breakdown figures.")
    ] = 10_000_000,
    only_breakdowns: Annotated[
        bool, typer.Option(help="Only the preload and the report queries (a minute or two).")
    ] = False,
    ingest_requests: Annotated[
        int,
        typer.Option(
            min=1, help="Requests to POST /api/v2/events (500 events) and /v1/traces (512 spans)."
        ),
    ] = 40,
    runs: Annotated[
        int, typer.Option(min=1_000, help="Live runs counted for the runs meter's figures.")
    ] = 1_000_000,
    only_checks: Annotated[bool, typer.Option(help="Only the admission-check figures.")] = False,
    check_callers: Annotated[int, typer.Option(min=1, help="Concurrent checkers.")] = 32,
    check_seconds: Annotated[float, typer.Option(min=0.5, help="Seconds of each kind.")] = 5.0,
) -> None:
    """Measure Tally against the machine's ceiling; prints a table, then one JSON line."""
    from commands.bench.run import main as run_bench
    from commands.runtime import tune_gc

    logging.basicConfig(level=logging.WARNING)
    tune_gc()  # as `tally up` runs, for the ceiling and Tally alike
    run_bench(
        events=events,
        orgs=orgs,
        partitions=partitions,
        samples=samples,
        load_rate=load_rate,
        http_seconds=http_seconds,
        connections=connections,
        memory_keys=memory_keys,
        breakdown_rows=breakdown_rows,
        only_breakdowns=only_breakdowns,
        ingest_requests=ingest_requests,
        runs=runs,
        only_checks=only_checks,
        check_callers=check_callers,
        check_seconds=check_seconds,
    )


schema_cli = typer.Typer(help="Print Tally's contracts.", no_args_is_help=True)
cli.add_typer(schema_cli, name="schema")


@schema_cli.command("events")
def schema_events() -> None:
    """The JSON Schema of a usage event (the wire format of usage.events)."""
    import json

    from schemas.events import event_json_schema

    typer.echo(json.dumps(event_json_schema(), indent=2))


@cli.command()
def simulate(
    orgs: Annotated[int, typer.Option(min=1, help="Orgs: sim-org-0001, sim-org-0002, ...")] = 5,
    agents: Annotated[int, typer.Option(min=1, help="Agents per org.")] = 3,
    rate: Annotated[float, typer.Option(min=0.1, help="Events per second.")] = 200.0,
    duration: Annotated[float, typer.Option(min=0.1, help="Seconds to run.")] = 10.0,
    bootstrap_servers: Bootstrap = None,
    seed: Annotated[int | None, typer.Option(help="Seed, for a reproducible stream.")] = None,
    spool_dir: Annotated[Path | None, typer.Option(help="Emitter spool directory.")] = None,
) -> None:
    """Realistic agent traffic into usage.events, with a progress bar and a summary."""
    import random

    from producers.simulate import run

    settings = settings_from(bootstrap_servers=bootstrap_servers)
    servers = settings.bootstrap_servers or f"127.0.0.1:{settings.broker_port}"
    seed = random.randrange(1 << 30) if seed is None else seed
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    typer.echo(
        f"simulating {orgs} orgs x {agents} agents, {rate:g} events/s for {duration:g}s "
        f"into {servers} (seed {seed})",
        err=True,
    )
    with _progress_bar() as progress:
        summary = asyncio.run(
            run(
                servers,
                orgs=orgs,
                agents=agents,
                rate=rate,
                duration=duration,
                seed=seed,
                spool_dir=spool_dir or settings.data_dir / "spool" / "simulate",
                progress=progress,
            )
        )
    typer.echo("\n".join(summary.lines()))


def _progress_bar() -> Any:
    from contextlib import contextmanager

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    @contextmanager
    def bar() -> Any:
        with Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            transient=False,
        ) as p:
            task = p.add_task("events", total=None)
            yield lambda done, total: p.update(task, completed=done, total=total)

    return bar()


def _register_operations() -> None:
    from commands.ops.cli import register

    register(cli)


_register_operations()


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
