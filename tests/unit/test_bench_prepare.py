"""The bench's in-process figure (what preparing a fetch costs per event, both ways), and
the sizes the bench accepts."""

import pytest
from typer.testing import CliRunner

from commands.bench import prepare
from commands.bench.workload import generate
from commands.cli import cli


def test_both_ways_of_preparing_a_fetch_are_timed_on_the_same_events():
    figures = prepare.costs(generate(1_200, orgs=10), events=1_200, fetch=600)
    assert figures["prepare_fetch"] == 600
    assert figures["prepare_each_us"] > 0 and figures["prepare_columns_us"] > 0
    assert figures["prepare_ratio"] == round(
        figures["prepare_each_us"] / figures["prepare_columns_us"], 2
    )


def test_fewer_events_than_a_fetch_are_timed_as_one_fetch_of_their_own_size():
    figures = prepare.costs(generate(900, orgs=10), events=20_000, fetch=10_000)
    assert figures["prepare_fetch"] == 900


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--events", "10"), ("--connections", "0"), ("--memory-keys", "5"), ("--samples", "0")],
)
def test_the_bench_refuses_sizes_it_cannot_measure_with_before_starting(flag, value):
    result = CliRunner().invoke(cli, ["bench", flag, value])
    assert result.exit_code == 2
    said = " ".join(result.output.replace("│", " ").split())  # as wrapped in a box, or not
    assert flag in said and "greater than or equal" in said
