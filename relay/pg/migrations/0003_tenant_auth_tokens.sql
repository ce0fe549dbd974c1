-- 0003: Twilio subaccounts. A tenant whose numbers live on its own Twilio (sub)account has that
-- account's auth token here; requests signed with it are accepted like the relay's own. The
-- column is a secret: relay never logs it and the CLI never prints it.

ALTER TABLE tenants ADD COLUMN twilio_auth_token TEXT CHECK (twilio_auth_token <> '');
