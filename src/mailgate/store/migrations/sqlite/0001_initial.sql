-- mailgate schema v1 (SQLite). Times are Unix epoch seconds (REAL).
CREATE TABLE messages (
    id TEXT PRIMARY KEY,                 -- ULID: sortable by creation time
    created_at REAL NOT NULL,
    sender TEXT NOT NULL,                -- envelope MAIL FROM, '' for <>
    source TEXT NOT NULL,
    api_key_id TEXT,
    tags TEXT NOT NULL DEFAULT '[]',     -- JSON array (message_tags indexes it)
    metadata TEXT NOT NULL DEFAULT '{}', -- JSON object
    idempotency_key TEXT,
    message_id_header TEXT,
    subject TEXT,
    scheduled_at REAL,
    size INTEGER NOT NULL,
    raw BLOB NOT NULL                    -- immutable once stored
);  -- a rowid table: WITHOUT ROWID is slow for rows this large (sqlite.org/withoutrowid)

CREATE TABLE message_tags (
    tag TEXT NOT NULL,
    message_id TEXT NOT NULL REFERENCES messages (id),
    PRIMARY KEY (tag, message_id)
) WITHOUT ROWID;

CREATE TABLE recipients (
    id INTEGER PRIMARY KEY,
    message_id TEXT NOT NULL REFERENCES messages (id),
    address TEXT NOT NULL,
    domain TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL,                -- while leased: the lease's end
    lease_owner TEXT,
    last_code INTEGER,
    last_enhanced TEXT,
    last_text TEXT,
    remote_host TEXT,
    updated_at REAL NOT NULL
);

CREATE TABLE events (
    id INTEGER PRIMARY KEY,
    message_id TEXT NOT NULL,
    recipient_id INTEGER,
    kind TEXT NOT NULL,
    at REAL NOT NULL,
    details TEXT NOT NULL DEFAULT '{}'
);

CREATE TABLE idempotency (
    api_key_id TEXT NOT NULL,
    key TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    response TEXT NOT NULL,
    message_id TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (api_key_id, key)
) WITHOUT ROWID;

CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    secret_hash TEXT NOT NULL,
    scopes TEXT NOT NULL,                -- comma-separated Scope values
    sender_domains TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    revoked_at REAL
);

-- One row per running node: `ping` rewrites it to prove a commit reaches disk.
CREATE TABLE nodes (
    name TEXT PRIMARY KEY,
    seen_at DOUBLE PRECISION NOT NULL
);
-- Its indexes: common/0001_indexes.sql.
