"""The bench's in-process figure: what preparing a fetch costs per event, both ways."""

from tally.bench import prepare
from tally.bench.workload import generate


def test_both_ways_of_preparing_a_fetch_are_timed_on_the_same_events():
    figures = prepare.costs(generate(1_200, orgs=10), events=1_200, fetch=600)
    assert figures["prepare_fetch"] == 600
    assert figures["prepare_each_us"] > 0 and figures["prepare_columns_us"] > 0
    assert figures["prepare_ratio"] == round(
        figures["prepare_each_us"] / figures["prepare_columns_us"], 2
    )
