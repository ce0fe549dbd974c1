-- 0002: admission control shared by every relay on this database (issue: per-tenant limits).
--
-- A webhook admits a call only while the tenant is under both limits; the check and the
-- insert happen in one transaction under a per-tenant advisory lock, so relays racing on
-- the same tenant see each other's admissions. NULL limits mean "no limit".

ALTER TABLE tenants ADD COLUMN max_concurrent_calls INTEGER CHECK (max_concurrent_calls >= 0);
ALTER TABLE tenants ADD COLUMN calls_per_minute INTEGER CHECK (calls_per_minute >= 0);

CREATE TABLE admissions (
    call_sid     TEXT PRIMARY KEY,
    tenant_id    TEXT NOT NULL CHECK (tenant_id <> ''),
    admitted_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    started_at   TIMESTAMPTZ,           -- the stream's start arrived (the call is live)
    ended_at     TIMESTAMPTZ            -- the call ended; NULL while it holds a slot
);
CREATE INDEX admissions_live ON admissions (tenant_id, admitted_at) WHERE ended_at IS NULL;
CREATE INDEX admissions_recent ON admissions (tenant_id, admitted_at);

GRANT SELECT, INSERT, UPDATE ON admissions TO relay_writer;
GRANT SELECT ON admissions TO relay_reader;

ALTER TABLE admissions ENABLE ROW LEVEL SECURITY;
ALTER TABLE admissions FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON admissions
    USING (tenant_id = current_setting('app.tenant_id', true))
    WITH CHECK (tenant_id = current_setting('app.tenant_id', true));
CREATE POLICY relay_writer_all ON admissions TO relay_writer
    USING (current_user = 'relay_writer') WITH CHECK (current_user = 'relay_writer');
