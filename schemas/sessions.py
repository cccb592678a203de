"""API models of live sessions: `GET /api/v2/sessions`, `DELETE /api/v2/sessions/{id}`."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field


class LiveSession(BaseModel):
    """A session holding a concurrency slot, and when its lease lapses."""

    session_id: str
    agent_id: str
    run_id: str | None = Field(description="The run its session.started named, if any.")
    started_at: datetime
    last_seen_at: datetime = Field(description="The latest event time of its events.")
    expires_at: datetime = Field(description="When its lease lapses unless renewed.")


class LiveSessions(BaseModel):
    lease_s: float = Field(description="The lease: a session ends this long after its last event.")
    sessions: list[LiveSession]


class EndedSession(BaseModel):
    session_id: str
    reason: Literal["ended_by_api"] = "ended_by_api"
    ended_at: datetime
