"""The operations commands of `tally`: status, dlq, backfill, reconcile, credit.

They talk to a running Tally over the network only: the broker directly, the store and the
counters through the API (under `tally up` the chDB directory belongs to that process).
Exit codes: 0 all is well, 1 something needs attention (unhealthy, differences, rejected
lines, events not stored in time), 2 bad usage or settings.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer

from commands.ops import common

dlq_app = typer.Typer(help="Dead letters on usage.events.dlq: list them, replay fixed ones.")


def status(
    bootstrap_servers: common.Bootstrap = None,
    api_url: common.ApiUrl = None,
    max_lag: Annotated[
        int, typer.Option(help="Unhealthy when a partition is more events behind.")
    ] = 10_000,
    max_staleness: Annotated[
        float, typer.Option(help="Unhealthy when the counters are older (seconds).")
    ] = 15.0,
    as_json: common.AsJson = False,
) -> None:
    """Broker, store, worker, lag per partition, DLQ size and counter staleness.

    Exits 1 when anything is down, behind by more than --max-lag or staler than
    --max-staleness."""
    from commands.ops import status as st
    from commands.ops.api import Api

    s = common.settings()

    async def go() -> st.Status:
        async with Api(common.api_url(s, api_url), timeout=5) as api:
            return await st.collect(
                common.bootstrap(s, bootstrap_servers), api, s.group_id, max_lag, max_staleness
            )

    result = common.run(go())
    typer.echo(orjson.dumps(st.as_dict(result)).decode() if as_json else st.render(result))
    raise typer.Exit(0 if result.healthy else 1)


@dlq_app.command("list")
def dlq_list(
    bootstrap_servers: common.Bootstrap = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="JSON lines: the input format of `dlq replay --fix`.")
    ] = False,
    limit: Annotated[int, typer.Option(help="Show the newest N only (0: all).")] = 0,
) -> None:
    """Dead letters with the reason each was refused."""
    from commands.ops import dlq
    from commands.ops.text import table

    s = common.settings()
    letters = common.run(dlq.read(common.bootstrap(s, bootstrap_servers)))
    if limit:
        letters = letters[-limit:]
    if as_json:
        for d in letters:
            typer.echo(orjson.dumps(d.as_json()).decode())
        return
    rows = [
        [
            d.dlq_offset,
            datetime.fromtimestamp(d.at_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S"),
            "-" if d.partition is None else f"{d.partition}/{d.offset}",
            _cut(d.error, 70),
            _cut(d.value, 60),
        ]
        for d in letters
    ]
    typer.echo(table(["dlq offset", "at (UTC)", "from p/offset", "error", "value"], rows))
    typer.echo(f"{len(letters)} dead letters")


@dlq_app.command("replay")
def dlq_replay(
    fix: Annotated[
        Path | None,
        typer.Option(
            exists=True,
            dir_okay=False,
            help="JSON lines: `dlq list --json` lines with a fixed `value`, or plain events."
            " Without it, the DLQ messages are replayed as they are.",
        ),
    ] = None,
    offset: Annotated[
        list[int] | None,
        typer.Option(help="Without --fix: replay only the message at this DLQ offset (repeat)."),
    ] = None,
    bootstrap_servers: common.Bootstrap = None,
    api_url: common.ApiUrl = None,
    skip_stored: common.SkipStored = True,
    dry_run: Annotated[bool, typer.Option(help="Validate and report; send nothing.")] = False,
    wait: common.Wait = True,
    timeout: common.Timeout = 120.0,
) -> None:
    """Re-submit dead letters to usage.events once they are valid; each counts once.

    Messages still invalid are reported and not sent (exit 1)."""
    from commands.ops import dlq
    from commands.ops.api import Api
    from commands.ops.backfill import wait_stored
    from commands.ops.kafka import writer
    from commands.ops.submit import Submitter

    s = common.settings()
    key = common.need_admin(s, "--skip-stored") if skip_stored else None
    bootstrap = common.bootstrap(s, bootstrap_servers)

    async def go() -> tuple[Any, dict[int, int]]:
        if fix is not None:
            items, unreadable = dlq.fix_items(fix)
        else:
            letters = await dlq.read(bootstrap)
            items, unreadable = dlq.replay_items(letters, set(offset) if offset else None), []
        async with Api(common.api_url(s, api_url), key) as api, writer(bootstrap) as producer:
            submitter = Submitter(
                None if dry_run else producer, api if key else None, event_time=s.event_time
            )
            submitter.report.invalid += unreadable
            await submitter.submit(items)
        short = {}
        if wait and not dry_run:
            short = await wait_stored(bootstrap, submitter.report, timeout)
        return submitter.report, short

    report, short = common.run(go())
    for where, why in report.invalid:
        typer.echo(f"still invalid: {where}: {why}", err=True)
    verb = "would replay" if dry_run else "replayed"
    typer.echo(
        f"{verb} {report.sent}; skipped {report.already_stored} already stored and"
        f" {report.repeated} repeated; {len(report.invalid)} still invalid"
    )
    if short:
        typer.echo(
            f"not confirmed as stored within {timeout:g}s (or lost by a broker that"
            f" restarted): partitions {sorted(short)}; run the same command again: events"
            " already stored are skipped",
            err=True,
        )
    raise typer.Exit(1 if report.invalid or short else 0)


def _history(start: str | None, end: str | None) -> Any:
    """The range `--from`/`--to` name (a tally.domain.eventtime.Backfill), or None."""
    from tally.domain.eventtime import Backfill

    if start is None and end is None:
        return None
    if start is None or end is None:
        typer.echo(
            "tally: --from and --to go together: the first UTC day of the history and the"
            " day after its last, YYYY-MM-DD",
            err=True,
        )
        raise typer.Exit(2)
    try:
        return Backfill(date.fromisoformat(start), date.fromisoformat(end))
    except ValueError as exc:
        typer.echo(f"tally: --from/--to: {exc}", err=True)
        raise typer.Exit(2) from None


def backfill(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="JSON lines.")],
    start: Annotated[
        str | None,
        typer.Option(
            "--from",
            help="History: the first UTC day (YYYY-MM-DD) of the events; needed, with --to,"
            " for events older than TALLY_MAX_EVENT_AGE_DAYS. Every event must be in the range.",
        ),
    ] = None,
    end: Annotated[
        str | None,
        typer.Option("--to", help="History: the UTC day after the last, YYYY-MM-DD."),
    ] = None,
    bootstrap_servers: common.Bootstrap = None,
    api_url: common.ApiUrl = None,
    skip_stored: common.SkipStored = True,
    dry_run: Annotated[bool, typer.Option(help="Validate and report; send nothing.")] = False,
    rejects: Annotated[
        Path | None, typer.Option(help="Write each rejected line's number and reason here.")
    ] = None,
    wait: common.Wait = True,
    timeout: common.Timeout = 600.0,
) -> None:
    """Ingest historical events (one JSON event per line) with a progress bar.

    Events older than TALLY_MAX_EVENT_AGE_DAYS need an explicit range, --from DAY --to DAY
    (the day after the last): without one, such a file is refused before anything is sent.
    Bad lines are reported and skipped; events already stored or repeated in the file are
    sent once. Exits 1 if any line was rejected or the worker did not store all in time."""
    from commands.ops import backfill as bf
    from commands.ops.api import Api
    from commands.ops.text import Progress
    from tally.domain.eventtime import iso

    s = common.settings()
    history = _history(start, end)
    key = common.need_admin(s, "--skip-stored") if skip_stored else None
    bootstrap = common.bootstrap(s, bootstrap_servers)
    if history is None:
        old = bf.too_old(file, s.event_time, datetime.now(UTC))
        if old is not None:
            ts = iso(old.first_ts)
            typer.echo(
                f"tally: {old.count} events of {file.name} are more than"
                f" {s.max_event_age_days} days old (TALLY_MAX_EVENT_AGE_DAYS), the first at"
                f" {old.first} (ts {ts}); the worker takes such history only within an"
                " explicit range: --from, the first UTC day, and --to, the day after the last."
                f" Nothing was sent. For this file: tally backfill {file} {old.suggested}",
                err=True,
            )
            raise typer.Exit(2)
    progress = Progress(bf.count_lines(file), f"backfill {file.name}")

    async def go() -> tuple[Any, dict[int, int]]:
        async with Api(common.api_url(s, api_url), key) as api:
            report = await bf.backfill(
                file, bootstrap, api if key else None, progress, dry_run, history, s.event_time
            )
        short = {}
        if wait and not dry_run:
            typer.echo("waiting for the worker to store them ...", err=True)
            short = await bf.wait_stored(bootstrap, report, timeout)
        return report, short

    report, short = common.run(go())
    for where, why in report.invalid[:20]:
        typer.echo(f"rejected {where}: {why}", err=True)
    if len(report.invalid) > 20:
        typer.echo(f"... and {len(report.invalid) - 20} more rejected lines", err=True)
    if rejects is not None:
        with rejects.open("w") as f:
            for where, why in report.invalid:
                f.write(f"{where}\t{why}\n")
    verb = "would send" if dry_run else "sent"
    typer.echo(
        f"{verb} {report.sent} events; skipped {report.already_stored} already stored and"
        f" {report.repeated} repeated in the file; rejected {len(report.invalid)} lines"
        + ("" if dry_run or not wait or short else "; all stored")
    )
    if short:
        typer.echo(
            f"not confirmed as stored within {timeout:g}s (or lost by a broker that"
            f" restarted): partitions {sorted(short)}; run the same command again: events"
            " already stored are skipped",
            err=True,
        )
    raise typer.Exit(1 if report.invalid or short else 0)


def reconcile(
    start: Annotated[
        str | None, typer.Option("--from", help="First UTC day, YYYY-MM-DD (default: 30 days ago).")
    ] = None,
    end: Annotated[
        str | None,
        typer.Option("--to", help="UTC day after the last, YYYY-MM-DD (default: tomorrow)."),
    ] = None,
    org: Annotated[str | None, typer.Option(help="One org only.")] = None,
    settle: Annotated[
        float, typer.Option(help="Seconds a difference must last to be reported (in-flight).")
    ] = 10.0,
    bootstrap_servers: common.Bootstrap = None,
    api_url: common.ApiUrl = None,
    as_json: common.AsJson = False,
) -> None:
    """Broker events, stored rows, rollups and counters compared per org and day.

    Exits 1 and lists the differences when any remain after --settle seconds."""
    from commands.ops import reconcile as rc
    from commands.ops.api import Api
    from tally.catalogue import load_prices
    from tally.domain.pricing import Pricer

    s = common.settings()
    key = common.admin_key(s)
    if key is None:
        typer.echo("tally: reconcile needs TALLY_ADMIN_KEY", err=True)
        raise typer.Exit(2)
    today = datetime.now(UTC).date()
    try:
        first = date.fromisoformat(start) if start else today - timedelta(days=30)
        last = date.fromisoformat(end) if end else today + timedelta(days=1)
    except ValueError as exc:
        typer.echo(f"tally: --from/--to: {exc}", err=True)
        raise typer.Exit(2) from None
    pricer = Pricer(load_prices(s.prices_file))

    async def go() -> Any:
        async with Api(common.api_url(s, api_url), key, timeout=120) as api:
            return await rc.reconcile(
                common.bootstrap(s, bootstrap_servers), api, pricer, first, last, org, settle
            )

    result = common.run(go())
    text = orjson.dumps(rc.as_dict(result)).decode() if as_json else rc.render(result, first, last)
    typer.echo(text)
    raise typer.Exit(1 if result.differences else 0)


def credit(
    org_id: Annotated[str, typer.Argument(help="The org to credit.")],
    amount_micros: Annotated[int, typer.Argument(help="Credit in micro-units (1e-6).")],
    idempotency_key: Annotated[
        str, typer.Option(help="Reuse it when retrying: the credit is applied once.")
    ],
    note: Annotated[str, typer.Option(help="Why: shown in the org's credit history.")] = "",
    api_url: common.ApiUrl = None,
) -> None:
    """Issue a credit (a top-up of the org's balance; history is kept, nothing is deleted)."""
    from commands.ops.api import Api

    s = common.settings()
    key = common.admin_key(s)
    if key is None:
        typer.echo("tally: credit needs TALLY_ADMIN_KEY", err=True)
        raise typer.Exit(2)
    body = {"amount_micros": amount_micros, "idempotency_key": idempotency_key, "note": note}

    async def go() -> Any:
        async with Api(common.api_url(s, api_url), key) as api:
            return await api.admin(f"/orgs/{org_id}/credits", body)

    out = common.run(go())
    what = "already applied" if out.get("replayed") else "applied"
    typer.echo(
        f"credit {what}: {out['amount_micros']} micros to {org_id};"
        f" balance {out['balance_micros']} micros"
    )


def _cut(text: str, width: int) -> str:
    text = text.replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


def register(app: typer.Typer) -> None:
    app.command()(status)
    app.command()(backfill)
    app.command()(reconcile)
    app.command()(credit)
    app.add_typer(dlq_app, name="dlq")
    from commands.ops.sessions import sessions_app

    app.add_typer(sessions_app, name="sessions")
    from commands.ops.orgs import orgs_app

    app.add_typer(orgs_app, name="orgs")
    from commands.ops.invoices import invoices_app

    app.add_typer(invoices_app, name="invoices")
