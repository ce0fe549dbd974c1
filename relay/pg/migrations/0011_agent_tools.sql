-- 0011: what an agent can do beyond talking (relay/tools). The tenant's own tools (an HTTPS
-- endpoint each, called with a signed POST), the people a call can be transferred to, the secret
-- that signs the tenant's tool requests, the tool turns among a call's turns, and where a call
-- transferred went.

CREATE TABLE agent_tools (
    tenant_id    TEXT NOT NULL,
    agent_id     TEXT NOT NULL,
    name         TEXT NOT NULL CHECK (name ~ '^[A-Za-z0-9_-]{1,64}$'),
    description  TEXT NOT NULL CHECK (length(description) BETWEEN 1 AND 1024),
    parameters   JSONB NOT NULL,  -- the JSON Schema of the arguments
    url          TEXT NOT NULL CHECK (url ~ '^https?://'),
    timeout_ms   INTEGER NOT NULL CHECK (timeout_ms BETWEEN 100 AND 30000),
    filler       TEXT NOT NULL DEFAULT '',  -- said while a slow call runs
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, agent_id, name),
    FOREIGN KEY (tenant_id, agent_id) REFERENCES agents ON DELETE CASCADE
);

CREATE TABLE transfer_targets (
    tenant_id   TEXT NOT NULL,
    agent_id    TEXT NOT NULL,
    label       TEXT NOT NULL CHECK (length(label) BETWEEN 1 AND 60),
    target      TEXT NOT NULL CHECK (target ~ '^(\+[1-9][0-9]{1,14}|sips?:.+)$'),
    mode        TEXT NOT NULL CHECK (mode IN ('cold', 'warm')),
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, agent_id, label),
    FOREIGN KEY (tenant_id, agent_id) REFERENCES agents ON DELETE CASCADE
);

CREATE TABLE tool_secrets (
    tenant_id   TEXT PRIMARY KEY REFERENCES tenants,
    secret      TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

ALTER TABLE call_turns DROP CONSTRAINT call_turns_role_check;
ALTER TABLE call_turns ADD CONSTRAINT call_turns_role_check CHECK (role IN ('user', 'assistant', 'tool'));
ALTER TABLE calls ADD COLUMN transferred_to TEXT NOT NULL DEFAULT '';

GRANT SELECT, INSERT, UPDATE, DELETE ON agent_tools, transfer_targets, tool_secrets TO relay_writer;
GRANT SELECT ON agent_tools, transfer_targets TO relay_reader;

ALTER TABLE agent_tools ENABLE ROW LEVEL SECURITY;
ALTER TABLE agent_tools FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON agent_tools
    USING (tenant_id = current_setting('app.tenant_id', true))
    WITH CHECK (tenant_id = current_setting('app.tenant_id', true));
CREATE POLICY relay_writer_all ON agent_tools TO relay_writer
    USING (current_user = 'relay_writer') WITH CHECK (current_user = 'relay_writer');

ALTER TABLE transfer_targets ENABLE ROW LEVEL SECURITY;
ALTER TABLE transfer_targets FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON transfer_targets
    USING (tenant_id = current_setting('app.tenant_id', true))
    WITH CHECK (tenant_id = current_setting('app.tenant_id', true));
CREATE POLICY relay_writer_all ON transfer_targets TO relay_writer
    USING (current_user = 'relay_writer') WITH CHECK (current_user = 'relay_writer');

-- The signing secret is relay's to use: the writer alone reads it (the reader has no grant).
ALTER TABLE tool_secrets ENABLE ROW LEVEL SECURITY;
ALTER TABLE tool_secrets FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON tool_secrets
    USING (tenant_id = current_setting('app.tenant_id', true))
    WITH CHECK (tenant_id = current_setting('app.tenant_id', true));
CREATE POLICY relay_writer_all ON tool_secrets TO relay_writer
    USING (current_user = 'relay_writer') WITH CHECK (current_user = 'relay_writer');
