-- 0007: many relays on one database as one service. Each relay is an instance with a heartbeat;
-- each call in progress records the instance holding its media stream, so a request about the
-- call (Twilio's status callback, the after-stream hook, a hang-up from the API) that lands
-- on another relay is passed to that instance (LISTEN/NOTIFY on the instance's own channel).
--
-- An instance whose heartbeat stops is deleted by any other, and its calls' rows with it. A
-- call's row outlives the end of its stream briefly (ended_at set), because the after-stream
-- hook asks its owner how the stream ended; it is deleted once that hook has been answered,
-- or soon after in any case.
--
-- call_owners names the tenant, so it has row-level security like every table that does: a
-- tenant's reader sees which relay holds its own calls, nothing else. relay_instances is
-- relay's alone.

CREATE TABLE relay_instances (
    instance_id  TEXT PRIMARY KEY CHECK (instance_id ~ '^[0-9a-f]{16}$'),
    started_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    seen_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE call_owners (
    call_sid     TEXT PRIMARY KEY,
    tenant_id    TEXT NOT NULL,
    instance_id  TEXT NOT NULL REFERENCES relay_instances ON DELETE CASCADE,
    since        TIMESTAMPTZ NOT NULL DEFAULT now(),
    ended_at     TIMESTAMPTZ             -- the stream ended; the row waits for the after-stream hook
);
CREATE INDEX call_owners_instance ON call_owners (instance_id);
CREATE INDEX call_owners_ended ON call_owners (ended_at) WHERE ended_at IS NOT NULL;

GRANT SELECT, INSERT, UPDATE, DELETE ON relay_instances, call_owners TO relay_writer;
GRANT SELECT ON call_owners TO relay_reader;

ALTER TABLE call_owners ENABLE ROW LEVEL SECURITY;
ALTER TABLE call_owners FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON call_owners
    USING (tenant_id = current_setting('app.tenant_id', true))
    WITH CHECK (tenant_id = current_setting('app.tenant_id', true));
CREATE POLICY relay_writer_all ON call_owners TO relay_writer
    USING (current_user = 'relay_writer') WITH CHECK (current_user = 'relay_writer');
