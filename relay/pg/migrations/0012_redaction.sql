-- 0012: what a tenant's stored turns may not hold (relay/redaction.py): NULL, stored as said;
-- else its own patterns and whether keys pressed are masked, card numbers, digit runs and e-mail
-- addresses always.

ALTER TABLE tenants ADD COLUMN redaction JSONB;
