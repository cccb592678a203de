"""The bench's HTTP figures: reading wrk's report, and turns of each app read as one."""

from commands.bench.http import combine, parse_wrk

WRK = """Running 2s test @ http://127.0.0.1:8000/api/v2/quota/tokens
  2 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     6.21ms    1.90ms  40.12ms   90.00%
    Req/Sec     5.20k   300.00     5.90k    70.00%
  Latency Distribution
     50%    5.94ms
     75%    6.80ms
     90%    7.90ms
     99%  812.00us
  20800 requests in 2.00s, 5.10MB read
Requests/sec:  10399.87
Transfer/sec:      2.55MB
"""


def test_the_rate_and_the_percentiles_are_read_in_milliseconds():
    assert parse_wrk(WRK) == {"rps": 10399.87, "p50_ms": 5.94, "p99_ms": 0.812}


def test_turns_are_read_as_one_run_with_the_worst_percentiles():
    turns = [
        {"rps": 10_000.0, "p50_ms": 6.0, "p99_ms": 9.0},
        {"rps": 8_000.0, "p50_ms": 7.5, "p99_ms": 8.0},
    ]
    assert combine(turns) == {"rps": 9_000.0, "p50_ms": 7.5, "p99_ms": 9.0}
    assert combine(turns[:1]) == turns[0]
