-- 0009: GPT-Live (relay/backends/live.py). Agents may use it; and a turn rebuilt from its timed
-- transcript keeps the raw fragments it was rebuilt from, [[text, start_ms, end_ms], ...] on the
-- session's timeline, since GPT-Live signals no turns and relay's grouping is a heuristic.

ALTER TABLE agents DROP CONSTRAINT agents_backend_check;
ALTER TABLE agents ADD CONSTRAINT agents_backend_check CHECK (backend IN ('openai-realtime', 'openai-live'));
ALTER TABLE call_turns ADD COLUMN fragments JSONB;
