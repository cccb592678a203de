-- The CRC-32 of the message just before each stored mark. On resume the worker reads that
-- message again and compares: a different message means the broker's log is a new one.
ALTER TABLE offsets ADD COLUMN IF NOT EXISTS last_crc UInt32 DEFAULT 0;
