-- mailgate schema v5: webhook endpoints (both backends as written).
CREATE TABLE webhook_endpoints (
    id TEXT PRIMARY KEY,                    -- wh_<ULID>
    api_key_id TEXT,                        -- the owner: its messages' events; NULL: all (admin)
    url TEXT NOT NULL,
    events TEXT NOT NULL,                   -- JSON list of public event types
    description TEXT NOT NULL DEFAULT '',
    secrets TEXT NOT NULL,                  -- sealed JSON [{"secret", "until"}], newest first
    enabled INTEGER NOT NULL DEFAULT 1,
    disabled_reason TEXT,
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX webhook_endpoints_owner ON webhook_endpoints (api_key_id);
