-- mailgate schema v6: webhook deliveries (both backends as written). The fan-out reads
-- the outbox after its cursor and writes one row per (endpoint, event) with the payload
-- it will send on every attempt; senders claim due rows with a lease, as delivery does.
CREATE TABLE webhook_cursor (
    name TEXT PRIMARY KEY,
    cursor TEXT NOT NULL
);

CREATE TABLE webhook_messages (
    id TEXT PRIMARY KEY,                    -- ULID
    endpoint_id TEXT NOT NULL,
    event_id TEXT NOT NULL,                 -- evt_<n>: webhook-id, the same on every attempt
    body TEXT NOT NULL,                     -- the JSON sent, fixed at fan-out
    status TEXT NOT NULL,                   -- pending | delivered | failed
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at DOUBLE PRECISION NOT NULL,
    lease_owner TEXT,
    last_status INTEGER,
    last_error TEXT,
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX webhook_messages_due ON webhook_messages (status, next_attempt_at);
CREATE INDEX webhook_messages_endpoint ON webhook_messages (endpoint_id, created_at);

CREATE TABLE webhook_attempts (
    message_id TEXT NOT NULL,
    endpoint_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    at DOUBLE PRECISION NOT NULL,
    status_code INTEGER,
    latency DOUBLE PRECISION NOT NULL,
    error TEXT,
    next_attempt_at DOUBLE PRECISION
);
CREATE INDEX webhook_attempts_endpoint ON webhook_attempts (endpoint_id, at);

ALTER TABLE webhook_endpoints ADD COLUMN failing_since DOUBLE PRECISION;
