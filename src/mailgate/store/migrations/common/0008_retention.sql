-- mailgate schema v8: retention (src/mailgate/retention.py, docs/retention.md). A body
-- purged by retention leaves its row (status, recipients, events) until the row's own
-- cutoff; body_purged_at says when, and GET /v1/messages/{id}/raw answers 410 Gone.
ALTER TABLE messages ADD COLUMN body_purged_at DOUBLE PRECISION;
-- The purge walks messages whose body is still kept, oldest first: only these (and, at
-- the head, messages not yet finished) are read, never the long tail of purged ones.
CREATE INDEX messages_body_kept ON messages (id) WHERE body_purged_at IS NULL;
-- Expired idempotency records and old webhook attempts are found by time.
CREATE INDEX idempotency_expiry ON idempotency (expires_at);
CREATE INDEX webhook_attempts_at ON webhook_attempts (at);
