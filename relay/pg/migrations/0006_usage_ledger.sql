-- 0006: the cost ledger. Each call's usage row carries what the backend accounted for (tokens
-- by modality, transcription), Twilio's minutes, and what all of it cost under a versioned
-- price table, in whole nano-dollars (relay/pricing.py). It stays under the same row-level
-- security as before (0001): a tenant reads only its own.
--
-- A call handed from one relay to another (a drain) has a row per media stream, so the key
-- becomes (call_sid, stream_sid).
--
-- Rows written before this carry only audio seconds: they say so (`unpriced = 'unrecorded'`),
-- rather than read as free calls. tokens_in/tokens_out were never filled and are dropped.

ALTER TABLE usage
    DROP COLUMN tokens_in,
    DROP COLUMN tokens_out,
    ADD COLUMN stream_sid                 TEXT NOT NULL DEFAULT '',
    ADD COLUMN agent_id                   TEXT NOT NULL DEFAULT 'default',
    ADD COLUMN direction                  TEXT NOT NULL DEFAULT 'inbound'
        CHECK (direction IN ('inbound', 'outbound')),
    ADD COLUMN started_at                 DOUBLE PRECISION NOT NULL DEFAULT 0,
    ADD COLUMN ended_at                   DOUBLE PRECISION NOT NULL DEFAULT 0,
    ADD COLUMN backend                    TEXT NOT NULL DEFAULT '',
    ADD COLUMN model                      TEXT NOT NULL DEFAULT '',
    ADD COLUMN text_in_tokens             BIGINT NOT NULL DEFAULT 0 CHECK (text_in_tokens >= 0),
    ADD COLUMN cached_text_in_tokens      BIGINT NOT NULL DEFAULT 0 CHECK (cached_text_in_tokens >= 0),
    ADD COLUMN audio_in_tokens            BIGINT NOT NULL DEFAULT 0 CHECK (audio_in_tokens >= 0),
    ADD COLUMN cached_audio_in_tokens     BIGINT NOT NULL DEFAULT 0 CHECK (cached_audio_in_tokens >= 0),
    ADD COLUMN text_out_tokens            BIGINT NOT NULL DEFAULT 0 CHECK (text_out_tokens >= 0),
    ADD COLUMN audio_out_tokens           BIGINT NOT NULL DEFAULT 0 CHECK (audio_out_tokens >= 0),
    ADD COLUMN backend_seconds            DOUBLE PRECISION NOT NULL DEFAULT 0,
    ADD COLUMN transcription_model        TEXT NOT NULL DEFAULT '',
    ADD COLUMN transcription_seconds      DOUBLE PRECISION NOT NULL DEFAULT 0,
    ADD COLUMN transcription_tokens_in    BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN transcription_tokens_out   BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN twilio_minutes             INTEGER NOT NULL DEFAULT 0,
    ADD COLUMN estimated                  BOOLEAN NOT NULL DEFAULT false,
    ADD COLUMN prices_version             TEXT NOT NULL DEFAULT '',
    ADD COLUMN backend_cost_nanousd       BIGINT NOT NULL DEFAULT 0 CHECK (backend_cost_nanousd >= 0),
    ADD COLUMN transcription_cost_nanousd BIGINT NOT NULL DEFAULT 0 CHECK (transcription_cost_nanousd >= 0),
    ADD COLUMN twilio_cost_nanousd        BIGINT NOT NULL DEFAULT 0 CHECK (twilio_cost_nanousd >= 0),
    ADD COLUMN cost_nanousd               BIGINT NOT NULL DEFAULT 0 CHECK (cost_nanousd >= 0),
    ADD COLUMN unpriced                   TEXT NOT NULL DEFAULT '';

UPDATE usage u SET stream_sid = c.stream_sid, started_at = c.started_at,
    ended_at = coalesce(c.ended_at, c.started_at), unpriced = 'unrecorded'
FROM calls c WHERE c.call_sid = u.call_sid;
UPDATE usage SET unpriced = 'unrecorded' WHERE unpriced = '';

ALTER TABLE usage DROP CONSTRAINT usage_pkey, ADD PRIMARY KEY (call_sid, stream_sid);
DROP INDEX usage_tenant;  -- the one below serves it
CREATE INDEX usage_tenant_started ON usage (tenant_id, started_at);
