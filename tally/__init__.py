"""Tally: usage metering for AI-agent platforms (the shared core)."""

__version__ = "0.1.0"
