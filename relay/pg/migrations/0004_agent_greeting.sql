-- 0004: an agent may greet the caller first. Empty means the caller speaks first (or the
-- relay-wide RELAY_GREETING, if set, is used).

ALTER TABLE agents ADD COLUMN greeting TEXT NOT NULL DEFAULT '';
