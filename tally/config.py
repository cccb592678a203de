"""One Settings object, read from `TALLY_*` environment variables and overridden by CLI flags."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from tally.domain.eventtime import MAX_AGE_DAYS, MAX_SKEW_S, EventTime

EVENTS_TOPIC = "usage.events"
DLQ_TOPIC = "usage.events.dlq"
COUNTERS_TOPIC = "usage.counters"
ALERTS_TOPIC = "usage.alerts"


class Settings(BaseSettings):
    """Everything a Tally process needs to know; validated once at start-up."""

    model_config = SettingsConfigDict(env_prefix="TALLY_", extra="ignore")

    data_dir: Path = Field(Path(".tally-data"), description="Embedded data: chDB store and spools.")
    api_host: str = "127.0.0.1"
    api_port: int = Field(8080, ge=0, le=65535)
    broker_port: int = Field(9092, ge=0, le=65535, description="Embedded broker port.")
    broker_bin: Path | None = Field(None, description="Override the Tansu binary location.")
    bootstrap_servers: str | None = Field(
        None, description="External Kafka brokers; when unset the embedded broker is started."
    )
    clickhouse_url: str | None = Field(
        None, description="ClickHouse server URL (http://user:pass@host:8123/db) or chdb:///dir."
    )
    admin_key: SecretStr | None = Field(None, description="Bearer key for /api/v2/admin.")
    partitions: int = Field(8, ge=1, le=1024, description="Partitions of usage.events.")
    group_id: str = "tally-worker"
    session_timeout_ms: int = Field(
        10_000, ge=1_000, description="A worker that stops heartbeating loses its partitions."
    )
    dedup_window_s: int = Field(86_400, ge=0, description="How long an event_id is remembered.")
    max_event_age_days: int = Field(
        MAX_AGE_DAYS,
        ge=1,
        le=36_500,
        description="Events whose ts is further in the past are refused (the API answers why,"
        " the worker sends them to the DLQ); history goes through `tally backfill --from --to`.",
    )
    max_event_skew_s: int = Field(
        MAX_SKEW_S,
        ge=0,
        le=86_400,
        description="Events whose ts is further in the future are refused: a runtime's clock"
        " is wrong.",
    )
    batch_max_records: int = Field(20_000, ge=1)
    batch_timeout_ms: int = Field(50, ge=0)
    log_epoch: str = Field(
        "default",
        description="Identity of the broker's log; offsets stored under another epoch are ignored.",
    )
    ingest_wait_s: float = Field(
        10.0,
        gt=0,
        le=300,
        description="POST /api/v2/events: how long to wait for the worker to store a batch"
        " before answering 503 (resend as is) instead of 2xx.",
    )
    retention_interval_s: float = Field(
        3_600, gt=0, description="How often raw events past their plan's retention are deleted."
    )
    closure_grace_days: int = Field(
        30,
        ge=0,
        le=3650,
        description="Days a closed org's data is kept (and the closure can be undone with"
        " POST /api/v2/admin/orgs/{org_id}/restore) before the retention sweep purges it.",
    )
    invoice_interval_s: float = Field(
        300, gt=0, description="How often billing periods that have ended are invoiced."
    )
    registry_refresh_s: float = Field(
        2.0,
        gt=0,
        le=3600,
        description="API: how often orgs, keys and subscriptions written by other API replicas"
        " are merged from the store; a key created or revoked elsewhere takes effect within it.",
    )
    plans_file: Path | None = None
    session_reservation_ttl_s: float = Field(
        10.0,
        gt=0,
        le=3600,
        description="How long an admitted session check holds a slot before its"
        " session.started settles it.",
    )
    admission_wait_s: float = Field(
        2.0,
        gt=0,
        le=60,
        description="How long a strict admission check waits for the decision of the worker"
        " that owns the org before it answers 503 with Retry-After.",
    )
    session_lease_s: float = Field(
        900.0,
        ge=1,
        le=30 * 86_400,
        description="A live session's lease: it ends as expired this long after its last"
        " event (a session.heartbeat renews an idle one).",
    )
    prices_file: Path | None = None
    alerts_interval_s: float = Field(
        1.0, gt=0, le=3600, description="API: how often alert rules are evaluated."
    )
    webhook_allow_private: bool = Field(
        False,
        description="Allow webhook targets on loopback, private and link-local addresses, and"
        " plain http to them (development and tests only).",
    )
    webhook_backoff_s: float = Field(
        5.0, gt=0, le=3600, description="The first retry's wait; each next one doubles it."
    )
    webhook_retry_for_s: float = Field(
        86_400, gt=0, description="How long a failing delivery is retried before it fails."
    )
    webhook_disable_after_s: float = Field(
        3 * 86_400, gt=0, description="An endpoint failing this long is disabled."
    )
    log_level: str = "INFO"
    log_format: Literal["auto", "json", "text"] = Field(
        "auto",
        description="json: one JSON object per line; text: a line for people; auto: text when"
        " stderr is a terminal, json otherwise.",
    )
    metrics_port: int | None = Field(
        None, ge=0, le=65535, description="`tally worker`: serve Prometheus /metrics here."
    )

    @field_validator("log_level")
    @classmethod
    def _level(cls, v: str) -> str:
        v = v.upper()
        if v not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ValueError("log_level must be DEBUG, INFO, WARNING or ERROR")
        return v

    @field_validator("clickhouse_url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://", "chdb://")):
            raise ValueError("clickhouse_url must start with http://, https:// or chdb://")
        return v

    @model_validator(mode="after")
    def _admin_key_strength(self) -> Settings:
        if self.admin_key is not None and len(self.admin_key.get_secret_value()) < 16:
            raise ValueError("TALLY_ADMIN_KEY must be at least 16 characters")
        return self

    @property
    def event_time(self) -> EventTime:
        """The event-time policy these settings make (tally.domain.eventtime)."""
        return EventTime(self.max_event_age_days, self.max_event_skew_s)

    @property
    def embedded_broker(self) -> bool:
        return self.bootstrap_servers is None

    @property
    def store_url(self) -> str:
        """The store DSN: the ClickHouse server if configured, else chDB in the data directory."""
        if self.clickhouse_url:
            return self.clickhouse_url
        return f"chdb://{(self.data_dir / 'chdb').resolve()}"
