"""Settings as the commands read them: the environment, with flags on top."""

from __future__ import annotations

from typing import Any

import typer
from pydantic import ValidationError

from tally.config import Settings


def settings_from(**flags: Any) -> Settings:
    """Environment first, flags on top; exit with a readable message if invalid."""
    try:
        return Settings(**{k: v for k, v in flags.items() if v is not None})
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        typer.echo(f"tally: invalid settings: {problems}", err=True)
        raise typer.Exit(2) from None
