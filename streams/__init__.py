"""The stream worker: usage.events in, ClickHouse rows and absolute counters out."""
