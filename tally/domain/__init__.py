"""Pure domain logic: billing windows, pricing, counters, quota decisions. No I/O here."""
