from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from schemas.prices import PriceBook
from tally.catalogue import CatalogueError, load_plans, load_prices
from tally.domain.pricing import Pricer

T = datetime(2026, 6, 1, tzinfo=UTC)
BOOK = PriceBook.model_validate(
    {
        "version": "test",
        "models": {
            "m": [
                {
                    "effective_from": "2024-01-01T00:00:00Z",
                    "input_per_mtok": 2_000_000,
                    "cached_input_per_mtok": 1_000_000,
                    "output_per_mtok": 8_000_000,
                },
                {
                    "effective_from": T.isoformat(),
                    "input_per_mtok": 1_000_000,
                    "cached_input_per_mtok": 500_000,
                    "output_per_mtok": 4_000_000,
                },
            ]
        },
        "connectors": {
            "*": [{"effective_from": "2024-01-01T00:00:00Z", "per_call": 1000}],
            "github": [{"effective_from": T.isoformat(), "per_call": 3000}],
        },
        "storage": {
            "traces": [{"effective_from": "2024-01-01T00:00:00Z", "per_gb_month": 300_000}]
        },
    }
)
P = Pricer(BOOK)


def test_a_price_change_at_t_prices_each_side_at_its_own_rate():
    before = datetime(2026, 5, 31, 23, 59, 59, 999000, tzinfo=UTC)
    assert P.llm("m", before, 1_000_000, 0, 1_000_000).cost_micros == 10_000_000
    assert P.llm("m", T, 1_000_000, 0, 1_000_000).cost_micros == 5_000_000


def test_cached_input_is_priced_at_the_cached_rate():
    # 1,000 input tokens of which 400 cached, 100 output, at the later rates:
    # 600 x 1.0 + 400 x 0.5 + 100 x 4.0 = 1,200 micro-units
    assert P.llm("m", T, 1000, 400, 100).cost_micros == 1200


def test_rounding_is_half_up_once_per_event():
    assert P.llm("m", T, 1, 0, 0).cost_micros == 1  # 1.0
    assert P.llm("m", T, 1, 1, 0).cost_micros == 1  # 0.5 rounds up
    assert P.llm("m", T, 0, 0, 0).cost_micros == 0


def test_unknown_model_is_unpriced_not_free():
    price = P.llm("nope", T, 10, 0, 10)
    assert (price.cost_micros, price.priced) == (0, False)
    early = datetime(2023, 1, 1, tzinfo=UTC)
    assert not P.llm("m", early, 10, 0, 10).priced  # before any rate


def test_connector_rates_fall_back_to_the_default():
    assert P.tool_call("slack", T).cost_micros == 1000
    assert P.tool_call("github", T).cost_micros == 3000
    # github has no rate of its own before T, so it is not priced there
    assert not P.tool_call("github", datetime(2025, 1, 1, tzinfo=UTC)).priced


def test_storage_is_priced_per_gb_month():
    gb_month = 10**9 * 30 * 86_400
    assert P.storage("traces", T, gb_month).cost_micros == 300_000
    assert P.storage("traces", T, gb_month // 2).cost_micros == 150_000


def test_rates_must_be_in_order():
    with pytest.raises(ValidationError, match="increasing effective_from"):
        PriceBook.model_validate(
            {
                "version": "x",
                "connectors": {},
                "storage": {},
                "models": {
                    "m": [
                        {
                            "effective_from": T.isoformat(),
                            "input_per_mtok": 1,
                            "cached_input_per_mtok": 1,
                            "output_per_mtok": 1,
                        },
                        {
                            "effective_from": "2024-01-01T00:00:00Z",
                            "input_per_mtok": 1,
                            "cached_input_per_mtok": 1,
                            "output_per_mtok": 1,
                        },
                    ]
                },
            }
        )


def test_shipped_files_load_and_bad_files_name_themselves(tmp_path):
    assert load_prices().models and load_plans().get("free") is not None
    bad = tmp_path / "prices.json"
    bad.write_text('{"version": "x", "models": {}, "connectors": {}}')
    with pytest.raises(CatalogueError, match=r"prices.json is not a valid price book"):
        load_prices(bad)
