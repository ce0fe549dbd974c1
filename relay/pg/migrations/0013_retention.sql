-- 0013: how long a tenant's records are kept (relay/retention.py): its turns and calls, and its
-- usage (kept longer for billing, when set apart). NULL: kept for ever. relay deletes what is
-- past it in bounded batches (relay retention run, or the periodic task in relay serve).

ALTER TABLE tenants ADD COLUMN retention_days INTEGER CHECK (retention_days BETWEEN 1 AND 36500);
ALTER TABLE tenants ADD COLUMN usage_retention_days INTEGER CHECK (usage_retention_days BETWEEN 1 AND 36500);
CREATE INDEX call_turns_tenant_started ON call_turns (tenant_id, started_at);
GRANT DELETE ON calls, call_turns, usage TO relay_writer;
