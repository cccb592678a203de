"""Alerts in an API process: rules evaluated over the counters, alerts stored once,
published on `usage.alerts` and delivered as Standard Webhooks from a durable outbox."""
