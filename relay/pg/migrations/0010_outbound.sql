-- 0010: calls relay places itself (relay/outbound). The queue of jobs every relay on this database
-- shares, the per-account row whose lock serialises placements (live-call cap and calls per
-- second), the tenants' API keys (stored hashed), the after-hours races (a call and a text to the
-- person on call), and what these need of tenants and agents: a caller ID, quiet hours, business
-- hours and an on-call list, and what the agent does on an answering machine.

CREATE TABLE outbound_jobs (
    job_id           TEXT PRIMARY KEY CHECK (job_id ~ '^job_[0-9a-f]{24}$'),
    tenant_id        TEXT NOT NULL CHECK (tenant_id <> ''),
    agent_id         TEXT NOT NULL,
    account_sid      TEXT NOT NULL CHECK (account_sid ~ '^AC[0-9a-fA-F]{32}$'),
    to_number        TEXT NOT NULL CHECK (to_number ~ '^\+[1-9][0-9]{1,14}$'),
    from_number      TEXT NOT NULL,
    variables        JSONB NOT NULL DEFAULT '{}',
    idempotency_key  TEXT NOT NULL CHECK (length(idempotency_key) BETWEEN 1 AND 200),
    state            TEXT NOT NULL CHECK (state IN ('queued', 'placing', 'live', 'done', 'failed', 'uncertain')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    due_at           DOUBLE PRECISION NOT NULL,
    created_at       DOUBLE PRECISION NOT NULL,
    updated_at       DOUBLE PRECISION NOT NULL,
    campaign_id      TEXT NOT NULL DEFAULT '',
    claimed_by       TEXT NOT NULL DEFAULT '',
    claimed_at       DOUBLE PRECISION,
    call_sid         TEXT NOT NULL DEFAULT '',
    answered_by      TEXT NOT NULL DEFAULT '',
    statuses         JSONB NOT NULL DEFAULT '[]',
    outcome          TEXT NOT NULL DEFAULT '',
    duration_s       INTEGER,
    error_code       INTEGER,
    error            TEXT NOT NULL DEFAULT '',
    voicemail        TEXT NOT NULL DEFAULT '',
    attempt_log      JSONB NOT NULL DEFAULT '[]',  -- each placement tried: when, its result, Twilio's error
    priority         INTEGER NOT NULL DEFAULT 0,  -- higher first: a race's call jumps a campaign
    race_id          TEXT NOT NULL DEFAULT '',  -- the after-hours race this call is a leg of
    position         BIGINT GENERATED ALWAYS AS IDENTITY,  -- queue order among jobs due together
    UNIQUE (tenant_id, idempotency_key)
);
CREATE INDEX outbound_jobs_due ON outbound_jobs (account_sid, priority DESC, due_at) WHERE state = 'queued';
CREATE INDEX outbound_jobs_active ON outbound_jobs (account_sid) WHERE state IN ('placing', 'live');
CREATE INDEX outbound_jobs_campaign ON outbound_jobs (tenant_id, campaign_id, position);
CREATE INDEX outbound_jobs_call ON outbound_jobs (call_sid) WHERE call_sid <> '';

CREATE TABLE outbound_accounts (
    account_sid     TEXT PRIMARY KEY,
    last_placed_at  DOUBLE PRECISION NOT NULL DEFAULT 0
);

CREATE TABLE api_keys (
    key_id       TEXT PRIMARY KEY CHECK (key_id ~ '^[0-9a-f]{16}$'),
    tenant_id    TEXT NOT NULL REFERENCES tenants,
    secret_hash  TEXT NOT NULL,
    name         TEXT NOT NULL DEFAULT '',
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    revoked_at   TIMESTAMPTZ
);
CREATE INDEX api_keys_tenant ON api_keys (tenant_id);

ALTER TABLE tenants ADD COLUMN outbound_from TEXT CHECK (outbound_from ~ '^\+[1-9][0-9]{1,14}$');
ALTER TABLE tenants ADD COLUMN timezone TEXT;
ALTER TABLE tenants ADD COLUMN quiet_hours TEXT CHECK (quiet_hours ~ '^[0-2][0-9]:[0-5][0-9]-[0-2][0-9]:[0-5][0-9]$');
ALTER TABLE tenants ADD COLUMN business_hours TEXT;
ALTER TABLE tenants ADD COLUMN on_call TEXT;  -- Name=+1555…,Name=+1555…, reached in that order
ALTER TABLE tenants ADD COLUMN race_timeout_s INTEGER CHECK (race_timeout_s BETWEEN 10 AND 3600);
ALTER TABLE agents ADD COLUMN voicemail_message TEXT NOT NULL DEFAULT '';

CREATE TABLE races (
    race_id      TEXT PRIMARY KEY,
    tenant_id    TEXT NOT NULL CHECK (tenant_id <> ''),
    call_sid     TEXT NOT NULL,
    outcome      TEXT NOT NULL DEFAULT '',
    deadline_at  DOUBLE PRECISION NOT NULL,
    started_at   DOUBLE PRECISION NOT NULL,
    data         JSONB NOT NULL  -- the race as relay.outbound.race keeps it: contacts, legs, winner
);
CREATE INDEX races_open ON races (deadline_at) WHERE outcome = '';
CREATE INDEX races_tenant ON races (tenant_id, started_at DESC);

GRANT SELECT, INSERT, UPDATE ON outbound_jobs, outbound_accounts, api_keys, races TO relay_writer;
GRANT SELECT ON outbound_jobs, races TO relay_reader;

ALTER TABLE races ENABLE ROW LEVEL SECURITY;
ALTER TABLE races FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON races
    USING (tenant_id = current_setting('app.tenant_id', true))
    WITH CHECK (tenant_id = current_setting('app.tenant_id', true));
CREATE POLICY relay_writer_all ON races TO relay_writer
    USING (current_user = 'relay_writer') WITH CHECK (current_user = 'relay_writer');

ALTER TABLE outbound_jobs ENABLE ROW LEVEL SECURITY;
ALTER TABLE outbound_jobs FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON outbound_jobs
    USING (tenant_id = current_setting('app.tenant_id', true))
    WITH CHECK (tenant_id = current_setting('app.tenant_id', true));
CREATE POLICY relay_writer_all ON outbound_jobs TO relay_writer
    USING (current_user = 'relay_writer') WITH CHECK (current_user = 'relay_writer');

-- Accounts and keys are relay's own bookkeeping: the writer alone reads them (the reader has no
-- grant on either: a key's hash is never shown); keys are scoped by tenant all the same, as every
-- table with a tenant_id is.
ALTER TABLE outbound_accounts ENABLE ROW LEVEL SECURITY;
ALTER TABLE outbound_accounts FORCE ROW LEVEL SECURITY;
CREATE POLICY relay_writer_all ON outbound_accounts TO relay_writer
    USING (current_user = 'relay_writer') WITH CHECK (current_user = 'relay_writer');
ALTER TABLE api_keys ENABLE ROW LEVEL SECURITY;
ALTER TABLE api_keys FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON api_keys
    USING (tenant_id = current_setting('app.tenant_id', true))
    WITH CHECK (tenant_id = current_setting('app.tenant_id', true));
CREATE POLICY relay_writer_all ON api_keys TO relay_writer
    USING (current_user = 'relay_writer') WITH CHECK (current_user = 'relay_writer');
