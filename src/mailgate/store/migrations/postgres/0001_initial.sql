-- mailgate schema v1 (PostgreSQL). Times are Unix epoch seconds (double precision),
-- the same representation as the SQLite store, so both pass one contract suite.
CREATE TABLE messages (
    id TEXT PRIMARY KEY,
    created_at DOUBLE PRECISION NOT NULL,
    sender TEXT NOT NULL,
    source TEXT NOT NULL,
    api_key_id TEXT,
    tags TEXT NOT NULL DEFAULT '[]',
    metadata TEXT NOT NULL DEFAULT '{}',
    idempotency_key TEXT,
    message_id_header TEXT,
    subject TEXT,
    scheduled_at DOUBLE PRECISION,
    size INTEGER NOT NULL,
    raw BYTEA NOT NULL
);

CREATE TABLE message_tags (
    tag TEXT NOT NULL,
    message_id TEXT NOT NULL REFERENCES messages (id),
    PRIMARY KEY (tag, message_id)
);

CREATE TABLE recipients (
    id BIGSERIAL PRIMARY KEY,
    message_id TEXT NOT NULL REFERENCES messages (id),
    address TEXT NOT NULL,
    domain TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at DOUBLE PRECISION,
    lease_owner TEXT,
    last_code INTEGER,
    last_enhanced TEXT,
    last_text TEXT,
    remote_host TEXT,
    updated_at DOUBLE PRECISION NOT NULL
);

CREATE TABLE events (
    id BIGSERIAL PRIMARY KEY,
    message_id TEXT NOT NULL,
    recipient_id BIGINT,
    kind TEXT NOT NULL,
    at DOUBLE PRECISION NOT NULL,
    details TEXT NOT NULL DEFAULT '{}'
);

CREATE TABLE idempotency (
    api_key_id TEXT NOT NULL,
    key TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    response TEXT NOT NULL,
    message_id TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (api_key_id, key)
);

CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    secret_hash TEXT NOT NULL,
    scopes TEXT NOT NULL,
    sender_domains TEXT NOT NULL DEFAULT '',
    created_at DOUBLE PRECISION NOT NULL,
    revoked_at DOUBLE PRECISION
);

-- One row per running node: `ping` rewrites it to prove a commit reaches disk.
CREATE TABLE nodes (
    name TEXT PRIMARY KEY,
    seen_at DOUBLE PRECISION NOT NULL
);
-- Its indexes: common/0001_indexes.sql.
