"""Load the plan catalogue and the price book: the shipped files or the user's own."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from pydantic import ValidationError

from schemas.plans import Catalogue
from schemas.prices import PriceBook


class CatalogueError(ValueError):
    """A plans or prices file that does not validate; the message names the file and field."""


def _read(path: Path | None, shipped: str) -> tuple[str, str]:
    if path is None:
        return shipped, (resources.files("tally") / "data" / shipped).read_text()
    try:
        return str(path), path.read_text()
    except OSError as exc:
        raise CatalogueError(f"cannot read {path}: {exc}") from exc


def load_plans(path: Path | None = None) -> Catalogue:
    name, text = _read(path, "plans.json")
    try:
        return Catalogue.model_validate_json(text)
    except ValidationError as exc:
        raise CatalogueError(f"{name} is not a valid plan catalogue:\n{exc}") from exc


def load_prices(path: Path | None = None) -> PriceBook:
    name, text = _read(path, "prices.json")
    try:
        return PriceBook.model_validate_json(text)
    except ValidationError as exc:
        raise CatalogueError(f"{name} is not a valid price book:\n{exc}") from exc
