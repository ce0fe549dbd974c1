-- 0001: the multi-tenant schema, its two roles and row-level security (DESIGN §3).
--
-- Applied by relay.pg.migrate() in one transaction under an advisory lock. The DSN's
-- user needs CREATEROLE (or superuser) the first time, because roles are cluster-wide.
--
-- Roles (both NOLOGIN: the relay connects as the DSN's user and switches with SET LOCAL ROLE):
--   relay_writer  reads and writes every tenant's rows. It gets a permissive policy on each
--                 table rather than BYPASSRLS, because granting BYPASSRLS needs a superuser
--                 and this migration must run without one.
--   relay_reader  SELECT only, no BYPASSRLS: sees the rows whose tenant_id equals
--                 current_setting('app.tenant_id'), and nothing when it is unset.
-- Tables are FORCE ROW LEVEL SECURITY so the owner (the DSN's user, when it is not a
-- superuser) is held to the same policies as everyone else.

DO $$
BEGIN
    CREATE ROLE relay_writer NOLOGIN;
EXCEPTION
    -- duplicate_object: it exists already; unique_violation: another database's migration
    -- created it at the same moment (roles are cluster-wide, the advisory lock is not).
    WHEN duplicate_object OR unique_violation THEN NULL;
END $$;

DO $$
BEGIN
    CREATE ROLE relay_reader NOLOGIN;
EXCEPTION
    WHEN duplicate_object OR unique_violation THEN NULL;
END $$;

DO $$
BEGIN
    -- A pre-existing role with these names must not quietly defeat the tenant boundary.
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'relay_reader' AND (rolsuper OR rolbypassrls)) THEN
        RAISE EXCEPTION 'role relay_reader must not be SUPERUSER or BYPASSRLS';
    END IF;
    -- SET ROLE needs membership; a superuser may take any role already.
    IF NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
        EXECUTE format('GRANT relay_writer, relay_reader TO %I', current_user);
    END IF;
EXCEPTION
    WHEN unique_violation THEN NULL;  -- the same grant, made concurrently from another database
END $$;

-- Directory: who a call belongs to and how its agent behaves.

CREATE TABLE tenants (
    tenant_id   TEXT PRIMARY KEY CHECK (tenant_id <> ''),
    name        TEXT NOT NULL DEFAULT '',
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE agents (
    tenant_id             TEXT NOT NULL REFERENCES tenants,
    agent_id              TEXT NOT NULL CHECK (agent_id <> ''),
    instructions          TEXT NOT NULL,
    voice                 TEXT NOT NULL,
    backend               TEXT NOT NULL DEFAULT 'openai',
    vad_threshold         DOUBLE PRECISION NOT NULL DEFAULT 0.5 CHECK (vad_threshold BETWEEN 0 AND 1),
    vad_silence_ms        INTEGER NOT NULL DEFAULT 500 CHECK (vad_silence_ms > 0),
    vad_prefix_ms         INTEGER NOT NULL DEFAULT 300 CHECK (vad_prefix_ms >= 0),
    max_concurrent_calls  INTEGER NOT NULL DEFAULT 10 CHECK (max_concurrent_calls > 0),
    calls_per_minute      INTEGER NOT NULL DEFAULT 60 CHECK (calls_per_minute > 0),
    created_at            TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, agent_id)
);

CREATE TABLE phone_numbers (
    e164        TEXT PRIMARY KEY CHECK (e164 ~ '^\+[1-9][0-9]{1,14}$'),
    tenant_id   TEXT NOT NULL,
    agent_id    TEXT NOT NULL DEFAULT 'default',
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    FOREIGN KEY (tenant_id, agent_id) REFERENCES agents
);

-- Calls and turns: the same columns as the SQLite store (relay/store.py), so records round-trip
-- exactly. Times stay epoch seconds in double precision, as the records carry them. There is no
-- foreign key to tenants: the writer must never reject a finished call over directory state.

CREATE TABLE calls (
    call_sid     TEXT PRIMARY KEY,
    tenant_id    TEXT NOT NULL CHECK (tenant_id <> ''),
    stream_sid   TEXT NOT NULL,
    account_sid  TEXT NOT NULL DEFAULT '',
    from_number  TEXT NOT NULL DEFAULT '',
    to_number    TEXT NOT NULL DEFAULT '',
    started_at   DOUBLE PRECISION NOT NULL,
    ended_at     DOUBLE PRECISION,
    end_reason   TEXT,
    frames_in    BIGINT,
    frames_out   BIGINT,
    turns        INTEGER,
    v2v_p50_ms   DOUBLE PRECISION,
    v2v_max_ms   DOUBLE PRECISION
);
CREATE INDEX calls_started ON calls (started_at DESC);
CREATE INDEX calls_tenant_started ON calls (tenant_id, started_at DESC);

CREATE TABLE call_turns (
    call_sid           TEXT NOT NULL,
    seq                INTEGER NOT NULL,
    tenant_id          TEXT NOT NULL CHECK (tenant_id <> ''),
    role               TEXT NOT NULL CHECK (role IN ('user', 'assistant')),
    item_id            TEXT NOT NULL DEFAULT '',
    text_generated     TEXT,
    text_heard         TEXT,
    interrupted        BOOLEAN NOT NULL DEFAULT false,
    started_at         DOUBLE PRECISION NOT NULL,
    ended_at           DOUBLE PRECISION,
    audio_ms           INTEGER NOT NULL DEFAULT 0,
    voice_to_voice_ms  DOUBLE PRECISION,
    PRIMARY KEY (call_sid, seq)  -- the idempotency key: a replayed turn is a no-op
);
CREATE INDEX call_turns_tenant ON call_turns (tenant_id, call_sid, seq);

-- Per-call usage, filled when the call ends: inbound audio from Twilio's 20 ms frames, outbound
-- from the assistant turns' audio. Tokens stay 0 until the backend's counts are recorded.
CREATE TABLE usage (
    call_sid           TEXT PRIMARY KEY,
    tenant_id          TEXT NOT NULL CHECK (tenant_id <> ''),
    audio_in_seconds   DOUBLE PRECISION NOT NULL DEFAULT 0,
    audio_out_seconds  DOUBLE PRECISION NOT NULL DEFAULT 0,
    tokens_in          BIGINT NOT NULL DEFAULT 0,
    tokens_out         BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX usage_tenant ON usage (tenant_id);

-- Privileges: no DELETE for anyone; the reader only reads.
GRANT SELECT, INSERT, UPDATE ON tenants, agents, phone_numbers, calls, call_turns, usage TO relay_writer;
GRANT SELECT ON tenants, agents, phone_numbers, calls, call_turns, usage TO relay_reader;

-- Row-level security, table by table. tenant_isolation applies to every role (PUBLIC), so a role
-- added later is scoped by default; relay_writer_all is the writer's way past it. Policies of
-- one command combine with OR, so the writer sees everything and everyone else one tenant.
-- "TO relay_writer" alone would also admit every member of relay_writer (policies follow
-- inherited membership), the DSN's user included; current_user = 'relay_writer' admits only
-- a transaction that actually did SET ROLE relay_writer.
-- The CHECK (tenant_id <> '') above matters here: a custom setting that was SET LOCAL once
-- reads back as '' (not NULL) for the rest of the session, and '' must match no row.

ALTER TABLE tenants ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenants FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON tenants
    USING (tenant_id = current_setting('app.tenant_id', true))
    WITH CHECK (tenant_id = current_setting('app.tenant_id', true));
CREATE POLICY relay_writer_all ON tenants TO relay_writer
    USING (current_user = 'relay_writer') WITH CHECK (current_user = 'relay_writer');

ALTER TABLE agents ENABLE ROW LEVEL SECURITY;
ALTER TABLE agents FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON agents
    USING (tenant_id = current_setting('app.tenant_id', true))
    WITH CHECK (tenant_id = current_setting('app.tenant_id', true));
CREATE POLICY relay_writer_all ON agents TO relay_writer
    USING (current_user = 'relay_writer') WITH CHECK (current_user = 'relay_writer');

ALTER TABLE phone_numbers ENABLE ROW LEVEL SECURITY;
ALTER TABLE phone_numbers FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON phone_numbers
    USING (tenant_id = current_setting('app.tenant_id', true))
    WITH CHECK (tenant_id = current_setting('app.tenant_id', true));
CREATE POLICY relay_writer_all ON phone_numbers TO relay_writer
    USING (current_user = 'relay_writer') WITH CHECK (current_user = 'relay_writer');

ALTER TABLE calls ENABLE ROW LEVEL SECURITY;
ALTER TABLE calls FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON calls
    USING (tenant_id = current_setting('app.tenant_id', true))
    WITH CHECK (tenant_id = current_setting('app.tenant_id', true));
CREATE POLICY relay_writer_all ON calls TO relay_writer
    USING (current_user = 'relay_writer') WITH CHECK (current_user = 'relay_writer');

ALTER TABLE call_turns ENABLE ROW LEVEL SECURITY;
ALTER TABLE call_turns FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON call_turns
    USING (tenant_id = current_setting('app.tenant_id', true))
    WITH CHECK (tenant_id = current_setting('app.tenant_id', true));
CREATE POLICY relay_writer_all ON call_turns TO relay_writer
    USING (current_user = 'relay_writer') WITH CHECK (current_user = 'relay_writer');

ALTER TABLE usage ENABLE ROW LEVEL SECURITY;
ALTER TABLE usage FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON usage
    USING (tenant_id = current_setting('app.tenant_id', true))
    WITH CHECK (tenant_id = current_setting('app.tenant_id', true));
CREATE POLICY relay_writer_all ON usage TO relay_writer
    USING (current_user = 'relay_writer') WITH CHECK (current_user = 'relay_writer');
