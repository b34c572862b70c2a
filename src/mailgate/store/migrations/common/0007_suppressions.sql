-- mailgate schema v7: the suppression list, sandbox keys, and who made each webhook
-- endpoint (revoking that key disables it) (both backends as written).
-- One row per (address, scope): scope '' stops mail from every sender, a domain only
-- mail From it. The primary key is the door's lookup (address first): one index probe
-- per recipient, whatever the list's size.
CREATE TABLE suppressions (
    address TEXT NOT NULL,                  -- lower case
    scope TEXT NOT NULL DEFAULT '',
    reason TEXT NOT NULL,                   -- a SuppressionReason value
    created_at DOUBLE PRECISION NOT NULL,
    message_id TEXT,                        -- the message whose outcome added it
    PRIMARY KEY (address, scope)
);
CREATE INDEX suppressions_reason ON suppressions (reason, address, scope);
ALTER TABLE api_keys ADD COLUMN sandbox INTEGER NOT NULL DEFAULT 0;
ALTER TABLE webhook_endpoints ADD COLUMN created_by TEXT;
UPDATE webhook_endpoints SET created_by = api_key_id;
