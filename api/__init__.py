"""The HTTP API: quota reads, admission checks, breakdowns, admin."""
