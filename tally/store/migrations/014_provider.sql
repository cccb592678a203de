-- Who served an LLM call (`llm.usage`'s optional `provider`, e.g. `openai`; the GenAI
-- `gen_ai.provider.name` of spans sent to POST /v1/traces); empty when the producer did not
-- say. Rows stored before this column read as empty.
ALTER TABLE events ADD COLUMN IF NOT EXISTS provider LowCardinality(String) DEFAULT '' AFTER mode;
