-- The indexes of 0001 that both backends create alike; run after <backend>/0001.
-- IF NOT EXISTS: databases made before this file was split out already have them.
CREATE INDEX IF NOT EXISTS messages_key ON messages (api_key_id, id);
CREATE INDEX IF NOT EXISTS recipients_message ON recipients (message_id);
CREATE INDEX IF NOT EXISTS recipients_address ON recipients (address);
-- Only active rows are indexed for claiming, so a long history costs nothing here.
CREATE INDEX IF NOT EXISTS recipients_due ON recipients (next_attempt_at)
    WHERE status IN ('queued', 'deferred');
CREATE INDEX IF NOT EXISTS recipients_domain_due ON recipients (domain, next_attempt_at)
    WHERE status IN ('queued', 'deferred');
CREATE INDEX IF NOT EXISTS events_message ON events (message_id, id);
