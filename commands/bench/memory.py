"""Memory per counter key, measured in a fresh process so that nothing else is counted.

Run as `python -m commands.bench.memory KEYS`; prints one JSON object.
"""

from __future__ import annotations

import gc
import sys

import orjson


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def measure(keys: int) -> dict[str, float]:
    from api.counter_table import CounterTable
    from streams.batch import PartitionState
    from tally.domain.counters import encode_key
    from tally.domain.counters import key as counter_key

    orgs = max(1, keys // 100)
    names = ("tokens", "tool_calls", "requests", "cost.llm")
    messages = []
    for i in range(keys):
        org, rest = divmod(i, 100)
        name, day = names[rest % 4], 20_000 + rest // 4
        messages.append((encode_key((f"org-{org:07d}", name, day)), orjson.dumps({"v": i, "t": 1})))
    gc.collect()
    before = rss_bytes()
    table = CounterTable("unused:0")
    for key, value in messages:
        table._apply(key, value)
    gc.collect()
    api_bytes = (rss_bytes() - before) / keys
    assert len(table.values) == keys
    before = rss_bytes()
    state = PartitionState(0)
    for i in range(keys):
        org, rest = divmod(i, 100)
        state.counters[counter_key(f"org-{org:07d}", names[rest % 4], 20_000 + rest // 4)] = i
    gc.collect()
    worker_bytes = (rss_bytes() - before) / keys
    return {
        "keys": keys,
        "orgs": orgs,
        "api_bytes_per_key": round(api_bytes, 1),
        "worker_bytes_per_key": round(worker_bytes, 1),
        "rss_mb": rss_bytes() / 2**20,
    }


if __name__ == "__main__":
    print(orjson.dumps(measure(int(sys.argv[1]))).decode())
