-- 0015: a tenant's own key for a speech backend (its Gemini or Deepgram account, or its own
-- OpenAI key), used for its calls on that backend instead of the deployment's. A secret: only
-- relay_writer reads it; the tenant's readers (and Supabase users) have no grant at all.

CREATE TABLE backend_keys (
    tenant_id   TEXT NOT NULL REFERENCES tenants ON DELETE CASCADE,
    backend     TEXT NOT NULL CHECK (backend IN ('openai-realtime', 'openai-live', 'gemini-live', 'deepgram')),
    api_key     TEXT NOT NULL CHECK (length(api_key) BETWEEN 1 AND 4096),
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, backend)
);

GRANT SELECT, INSERT, UPDATE, DELETE ON backend_keys TO relay_writer;

ALTER TABLE backend_keys ENABLE ROW LEVEL SECURITY;
ALTER TABLE backend_keys FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON backend_keys
    USING (tenant_id = current_setting('app.tenant_id', true))
    WITH CHECK (tenant_id = current_setting('app.tenant_id', true));
CREATE POLICY relay_writer_all ON backend_keys TO relay_writer
    USING (current_user = 'relay_writer') WITH CHECK (current_user = 'relay_writer');
