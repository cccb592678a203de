"""`tally sessions list ORG` and `tally sessions end ORG SESSION`: an org's live sessions
and their leases, and ending one at once (through the API, with TALLY_ADMIN_KEY)."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import quote

import orjson
import typer

from commands.ops import common

sessions_app = typer.Typer(help="Live sessions: list an org's, end one at once.")

Org = Annotated[str, typer.Argument(help="The org.")]


def _call(method: str, path: str, api_url: str | None) -> Any:
    from commands.ops.api import Api

    s = common.settings()
    key = common.admin_key(s)
    if key is None:
        typer.echo("tally: sessions needs TALLY_ADMIN_KEY", err=True)
        raise typer.Exit(2)

    async def go() -> Any:
        async with Api(common.api_url(s, api_url), key) as api:
            return await api.admin_call(method, path)

    return common.run(go())


@sessions_app.command("list")
def list_sessions(
    org_id: Org, api_url: common.ApiUrl = None, as_json: common.AsJson = False
) -> None:
    """The org's live sessions, oldest first, with when each lease lapses."""
    out = _call("GET", f"/orgs/{quote(org_id, safe='')}/sessions", api_url)
    if as_json:
        typer.echo(orjson.dumps(out).decode())
        return
    sessions = out["sessions"]
    typer.echo(f"{len(sessions)} live sessions of {org_id} (lease {out['lease_s']:g}s)")
    if sessions:
        typer.echo(f"{'session':<24} {'agent':<16} {'run':<16} {'last seen':<25} expires")
    for s in sessions:
        typer.echo(
            f"{s['session_id']:<24} {s['agent_id']:<16} {s['run_id'] or '-':<16}"
            f" {s['last_seen_at']:<25} {s['expires_at']}"
        )


@sessions_app.command("end")
def end_session(
    org_id: Org,
    session_id: Annotated[str, typer.Argument(help="The live session to end.")],
    api_url: common.ApiUrl = None,
) -> None:
    """End a live session at once (recorded as an end with reason ended_by_api)."""
    path = f"/orgs/{quote(org_id, safe='')}/sessions/{quote(session_id, safe='')}"
    out = _call("DELETE", path, api_url)
    typer.echo(f"session {session_id} of {org_id} ended at {out['ended_at']} (ended_by_api)")
