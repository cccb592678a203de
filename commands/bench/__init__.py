"""`tally bench`: Tally measured against its own machine's ceiling, side by side in one run."""
