-- 0005: agents become real objects, and a tenant's Twilio token is bound to its account.
--
-- Agents carry the model and transcription model they run (rows made before this ran on the
-- old defaults, which is what they get here: `relay serve` warns about models being shut
-- down, so an operator sees them). Their call limits are enforced from now on; they never
-- were before, so existing rows lose the old unenforced 10/60 defaults (NULL: no limit of the
-- agent's own). Every value an agent may take is checked here as well as by relay
-- (relay/agents.py): voice, backend, names, limits.

ALTER TABLE agents ADD COLUMN model TEXT NOT NULL DEFAULT 'gpt-realtime'
    CHECK (model ~ '^[^[:space:]]{1,100}$');
ALTER TABLE agents ALTER COLUMN model DROP DEFAULT;
ALTER TABLE agents ADD COLUMN transcription_model TEXT NOT NULL DEFAULT 'gpt-4o-mini-transcribe'
    CHECK (transcription_model ~ '^[^[:space:]]{1,100}$');
ALTER TABLE agents ALTER COLUMN transcription_model DROP DEFAULT;

ALTER TABLE agents DROP CONSTRAINT agents_max_concurrent_calls_check;
ALTER TABLE agents DROP CONSTRAINT agents_calls_per_minute_check;
ALTER TABLE agents ALTER COLUMN max_concurrent_calls DROP NOT NULL, ALTER COLUMN max_concurrent_calls DROP DEFAULT;
ALTER TABLE agents ALTER COLUMN calls_per_minute DROP NOT NULL, ALTER COLUMN calls_per_minute DROP DEFAULT;
UPDATE agents SET max_concurrent_calls = NULL, calls_per_minute = NULL;
ALTER TABLE agents ADD CONSTRAINT agents_max_concurrent_calls_check
    CHECK (max_concurrent_calls BETWEEN 0 AND 100000);
ALTER TABLE agents ADD CONSTRAINT agents_calls_per_minute_check CHECK (calls_per_minute BETWEEN 0 AND 100000);

UPDATE agents SET backend = 'openai-realtime' WHERE backend = 'openai';
ALTER TABLE agents ALTER COLUMN backend SET DEFAULT 'openai-realtime';
ALTER TABLE agents ADD CONSTRAINT agents_backend_check CHECK (backend IN ('openai-realtime'));
ALTER TABLE agents ADD CONSTRAINT agents_voice_check
    CHECK (voice IN ('alloy', 'ash', 'ballad', 'coral', 'echo', 'sage', 'shimmer', 'verse', 'marin', 'cedar'));
ALTER TABLE agents ADD CONSTRAINT agents_vad_silence_ms_range CHECK (vad_silence_ms BETWEEN 100 AND 10000) NOT VALID;
ALTER TABLE agents ADD CONSTRAINT agents_vad_prefix_ms_range CHECK (vad_prefix_ms BETWEEN 0 AND 5000) NOT VALID;
ALTER TABLE agents ADD CONSTRAINT agents_agent_id_length CHECK (length(agent_id) <= 100);

-- The tenants' own limits get the same bound as the agents'.
ALTER TABLE tenants ADD CONSTRAINT tenants_limits_range
    CHECK (max_concurrent_calls <= 100000 AND calls_per_minute <= 100000) NOT VALID;

-- The Twilio (sub)account a tenant's auth token belongs to: a request signed with that token
-- must carry this AccountSid (webhook and stream start). NULL only for tokens set before this.
ALTER TABLE tenants ADD COLUMN twilio_account_sid TEXT CHECK (twilio_account_sid ~ '^AC[0-9a-fA-F]{32}$');

-- Admissions remember the agent, for the agents' own limits.
ALTER TABLE admissions ADD COLUMN agent_id TEXT;
CREATE INDEX admissions_agent_live ON admissions (tenant_id, agent_id, admitted_at) WHERE ended_at IS NULL;
