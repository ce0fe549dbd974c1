-- 0014: erasing one caller on request (relay/erasure.py). relay deletes the caller's calls,
-- turns, usage and the calls it placed to them, and records that an erasure happened: when, and
-- how many of each it removed, never whose (no number, no call sid).

CREATE TABLE erasures (
    erasure_id    BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id     TEXT NOT NULL CHECK (tenant_id <> ''),
    erased_at     DOUBLE PRECISION NOT NULL,
    requested_by  TEXT NOT NULL DEFAULT '',  -- 'cli', or the API key's id
    calls         INTEGER NOT NULL DEFAULT 0,
    turns         INTEGER NOT NULL DEFAULT 0,
    usage         INTEGER NOT NULL DEFAULT 0,
    jobs          INTEGER NOT NULL DEFAULT 0,
    spooled       INTEGER NOT NULL DEFAULT 0,
    dead_letters  INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX erasures_tenant ON erasures (tenant_id, erased_at);
CREATE INDEX calls_tenant_from ON calls (tenant_id, from_number);
CREATE INDEX calls_tenant_to ON calls (tenant_id, to_number);

GRANT SELECT, INSERT ON erasures TO relay_writer;
GRANT SELECT ON erasures TO relay_reader;
GRANT DELETE ON outbound_jobs TO relay_writer;

ALTER TABLE erasures ENABLE ROW LEVEL SECURITY;
ALTER TABLE erasures FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON erasures
    USING (tenant_id = current_setting('app.tenant_id', true))
    WITH CHECK (tenant_id = current_setting('app.tenant_id', true));
CREATE POLICY relay_writer_all ON erasures TO relay_writer
    USING (current_user = 'relay_writer') WITH CHECK (current_user = 'relay_writer');
