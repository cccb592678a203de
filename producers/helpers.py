"""The emitter's typed helpers: one per event kind, each builds and checks an event, then
hands it to the emitter (`_submit`). They return the event_id and raise `InvalidEvent` on a
bad argument (counted as rejected)."""

from __future__ import annotations

from datetime import datetime

from producers import build
from schemas.events import InvalidEvent


class TypedHelpers:
    """Mixed into `Emitter`, which provides `_submit` and `_reject`."""

    def _submit(self, event: build.Event) -> str:
        raise NotImplementedError

    def _reject(self) -> None:
        raise NotImplementedError

    def llm_usage(
        self,
        *,
        org_id: str,
        agent_id: str,
        model: str,
        input_tokens: int,
        output_tokens: int,
        cached_input_tokens: int = 0,
        mode: str = "managed",
        run_id: str | None = None,
        session_id: str | None = None,
        key_mode: str = "live",
        ts: datetime | str | None = None,
        event_id: str | None = None,
        reservation_id: str | None = None,
    ) -> str:
        """Tokens of one LLM call; `cached_input_tokens` is the cached part of `input_tokens`."""
        try:
            event = build.llm_usage(
                org_id,
                agent_id,
                model,
                input_tokens,
                output_tokens,
                cached_input_tokens,
                mode,
                run_id,
                session_id,
                key_mode,
                ts,
                event_id,
                reservation_id,
            )
        except InvalidEvent:
            self._reject()
            raise
        return self._submit(event)

    def tool_call(
        self,
        *,
        org_id: str,
        agent_id: str,
        connector: str,
        tool: str,
        success: bool,
        run_id: str | None = None,
        session_id: str | None = None,
        key_mode: str = "live",
        ts: datetime | str | None = None,
        event_id: str | None = None,
        reservation_id: str | None = None,
    ) -> str:
        """One tool call through a connector; failed calls are recorded, never billed."""
        try:
            event = build.tool_call(
                org_id,
                agent_id,
                connector,
                tool,
                success,
                run_id,
                session_id,
                key_mode,
                ts,
                event_id,
                reservation_id,
            )
        except InvalidEvent:
            self._reject()
            raise
        return self._submit(event)

    def gateway_request(
        self,
        *,
        org_id: str,
        agent_id: str,
        model: str,
        cache_hit: bool = False,
        mode: str = "managed",
        run_id: str | None = None,
        session_id: str | None = None,
        key_mode: str = "live",
        ts: datetime | str | None = None,
        event_id: str | None = None,
        reservation_id: str | None = None,
    ) -> str:
        """One request through the LLM gateway."""
        try:
            event = build.gateway_request(
                org_id,
                agent_id,
                model,
                cache_hit,
                mode,
                run_id,
                session_id,
                key_mode,
                ts,
                event_id,
                reservation_id,
            )
        except InvalidEvent:
            self._reject()
            raise
        return self._submit(event)

    def session_started(
        self,
        *,
        org_id: str,
        agent_id: str,
        session_id: str,
        run_id: str | None = None,
        key_mode: str = "live",
        ts: datetime | str | None = None,
        event_id: str | None = None,
        reservation_id: str | None = None,
    ) -> str:
        """A session took a concurrency slot (`reservation_id`: the one its admission check
        answered, which this start settles)."""
        return self._session(
            "session.started",
            org_id,
            agent_id,
            session_id,
            run_id,
            key_mode,
            ts,
            event_id,
            reservation_id,
        )

    def session_heartbeat(
        self,
        *,
        org_id: str,
        agent_id: str,
        session_id: str,
        run_id: str | None = None,
        key_mode: str = "live",
        ts: datetime | str | None = None,
        event_id: str | None = None,
    ) -> str:
        """A session is still alive: renews its lease (for a session idle longer than that;
        any event carrying its session_id renews it too)."""
        return self._session(
            "session.heartbeat", org_id, agent_id, session_id, run_id, key_mode, ts, event_id
        )

    def session_ended(
        self,
        *,
        org_id: str,
        agent_id: str,
        session_id: str,
        run_id: str | None = None,
        key_mode: str = "live",
        ts: datetime | str | None = None,
        event_id: str | None = None,
    ) -> str:
        """A session reached a terminal state and freed its slot."""
        return self._session(
            "session.ended", org_id, agent_id, session_id, run_id, key_mode, ts, event_id
        )

    def storage_usage(
        self,
        *,
        org_id: str,
        agent_id: str,
        kind: str,
        byte_seconds: int,
        run_id: str | None = None,
        session_id: str | None = None,
        key_mode: str = "live",
        ts: datetime | str | None = None,
        event_id: str | None = None,
    ) -> str:
        """Storage kept: `byte_seconds` = bytes x seconds (`kind`: knowledge_base or traces)."""
        try:
            event = build.storage_usage(
                org_id, agent_id, kind, byte_seconds, run_id, session_id, key_mode, ts, event_id
            )
        except InvalidEvent:
            self._reject()
            raise
        return self._submit(event)

    def _session(
        self,
        type_: str,
        org_id: str,
        agent_id: str,
        session_id: str,
        run_id: str | None,
        key_mode: str,
        ts: datetime | str | None,
        event_id: str | None,
        reservation_id: str | None = None,
    ) -> str:
        try:
            event = build.session(
                type_, org_id, agent_id, session_id, run_id, key_mode, ts, event_id, reservation_id
            )
        except InvalidEvent:
            self._reject()
            raise
        return self._submit(event)
