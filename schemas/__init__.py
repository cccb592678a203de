"""Tally's contracts: events, API models, plans and prices. No I/O, no framework imports."""
