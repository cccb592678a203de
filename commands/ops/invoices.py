"""`tally invoices close [--org ORG]`: invoice every billing period that has ended and has no
invoice yet, now (through the API, with TALLY_ADMIN_KEY); the API does it by itself too."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlencode

import orjson
import typer

from commands.ops import common

invoices_app = typer.Typer(help="Invoices: close the billing periods that have ended.")


@invoices_app.command("close")
def close(
    org: Annotated[str | None, typer.Option(help="Only this org (default: every org).")] = None,
    api_url: common.ApiUrl = None,
    as_json: common.AsJson = False,
) -> None:
    """Make the invoices of every ended period not invoiced yet; closing twice makes none."""
    from commands.ops.api import Api

    s = common.settings()
    key = common.admin_key(s)
    if key is None:
        typer.echo("tally: invoices close needs TALLY_ADMIN_KEY", err=True)
        raise typer.Exit(2)
    path = "/invoices/close" + (f"?{urlencode({'org_id': org})}" if org else "")

    async def go() -> Any:
        async with Api(common.api_url(s, api_url), key) as api:
            return await api.admin_call("POST", path)

    out = common.run(go())
    if as_json:
        typer.echo(orjson.dumps(out).decode())
        return
    closed = out["closed"]
    for inv in closed:
        typer.echo(
            f"{inv['id']}  {inv['org_id']}  {inv['period_start'][:10]} to"
            f" {inv['period_end'][:10]}  total {inv['total_micros']} micros"
        )
    typer.echo(f"{len(closed)} invoice{'s' if len(closed) != 1 else ''} made")
