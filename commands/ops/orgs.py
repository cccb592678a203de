"""`tally orgs close|restore|purge|audit`: closing an account, undoing it within the grace
period, running the purge of closed orgs now, and reading the audit trail (through the API,
with TALLY_ADMIN_KEY)."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import quote, urlencode

import orjson
import typer

from commands.ops import common

orgs_app = typer.Typer(help="Close, restore and purge orgs; read the audit trail.")

Org = Annotated[str, typer.Argument(help="The org.")]


def _call(method: str, path: str, api_url: str | None) -> Any:
    from commands.ops.api import Api

    s = common.settings()
    key = common.admin_key(s)
    if key is None:
        typer.echo("tally: orgs needs TALLY_ADMIN_KEY", err=True)
        raise typer.Exit(2)

    async def go() -> Any:
        async with Api(common.api_url(s, api_url), key) as api:
            if method == "POST":
                return await api.admin(path, {})
            return await api.admin_call(method, path)

    return common.run(go())


@orgs_app.command("close")
def close(org_id: Org, api_url: common.ApiUrl = None) -> None:
    """Close an org: its keys stop at once, its events are refused, its data is purged after
    the grace period (TALLY_CLOSURE_GRACE_DAYS) unless it is restored first."""
    out = _call("DELETE", f"/orgs/{quote(org_id, safe='')}", api_url)
    typer.echo(f"{org_id} closed at {out['closed_at']}; purged after {out['purge_after']}")


@orgs_app.command("restore")
def restore(org_id: Org, api_url: common.ApiUrl = None) -> None:
    """Undo a closure within the grace period."""
    _call("POST", f"/orgs/{quote(org_id, safe='')}/restore", api_url)
    typer.echo(f"{org_id} restored: its keys work again")


@orgs_app.command("purge")
def purge(api_url: common.ApiUrl = None) -> None:
    """Purge now every closed org whose grace period has ended (the retention sweep does it
    every TALLY_RETENTION_INTERVAL_S too)."""
    out = _call("POST", "/closures/purge", api_url)
    purged = out["purged"]
    typer.echo(f"{len(purged)} orgs purged" + (f": {', '.join(purged)}" if purged else ""))


@orgs_app.command("audit")
def audit(
    org_id: Annotated[str | None, typer.Option("--org", help="Only this org.")] = None,
    action: Annotated[str | None, typer.Option(help="Only this action, e.g. org.closed.")] = None,
    start: Annotated[str | None, typer.Option("--from", help="From this time (ISO, UTC).")] = None,
    end: Annotated[str | None, typer.Option("--to", help="Before this time (ISO, UTC).")] = None,
    api_url: common.ApiUrl = None,
    as_json: common.AsJson = False,
) -> None:
    """The audit trail of admin actions, oldest first."""
    params = {"org_id": org_id, "action": action, "from": start, "to": end}
    query = urlencode({k: v for k, v in params.items() if v is not None})
    out = _call("GET", "/audit" + (f"?{query}" if query else ""), api_url)
    if as_json:
        typer.echo(orjson.dumps(out).decode())
        return
    for e in out["entries"]:
        typer.echo(f"{e['at']}  {e['actor']:<20} {e['action']:<24} {e['org_id']}")
