"""Operations commands: status, dead letters, backfill, reconciliation, credits."""
