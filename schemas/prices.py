"""The price book: effective-dated rates in integer micro-units (1 USD = 1,000,000)."""

from __future__ import annotations

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

Micros = int


class _Rate(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    effective_from: AwareDatetime


class ModelRate(_Rate):
    input_per_mtok: Micros = Field(ge=0, description="Micro-units per million input tokens.")
    cached_input_per_mtok: Micros = Field(ge=0)
    output_per_mtok: Micros = Field(ge=0)


class ConnectorRate(_Rate):
    per_call: Micros = Field(ge=0, description="Micro-units per successful call.")


class StorageRate(_Rate):
    per_gb_month: Micros = Field(ge=0, description="Micro-units per GB (1e9 bytes) x 30 days.")


def _sorted_unique(rates: list[_Rate], what: str) -> None:
    starts = [r.effective_from for r in rates]
    if not rates:
        raise ValueError(f"{what}: needs at least one rate")
    if starts != sorted(starts) or len(set(starts)) != len(starts):
        raise ValueError(f"{what}: rates must be in increasing effective_from order")


class PriceBook(BaseModel):
    """Rates per model, per connector (`*` is the default) and per storage kind."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: str
    models: dict[str, list[ModelRate]]
    connectors: dict[str, list[ConnectorRate]]
    storage: dict[str, list[StorageRate]]

    @model_validator(mode="after")
    def _ordered(self) -> PriceBook:
        for section in ("models", "connectors", "storage"):
            for name, rates in getattr(self, section).items():
                _sorted_unique(rates, f"{section}.{name}")
        return self
