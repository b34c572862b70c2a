-- mailgate schema v11: grants, the connected mailboxes (src/mailgate/mailboxes/,
-- docs/mailboxes-api.md). Both backends as written.
CREATE TABLE grants (
    id TEXT PRIMARY KEY,                    -- grant ULID
    api_key_id TEXT,                        -- the owner; NULL: made by an admin key
    email TEXT NOT NULL,                    -- the From of what is sent from it
    username TEXT NOT NULL,                 -- the login name on both servers
    auth TEXT NOT NULL,                     -- AuthMethod: password | xoauth2
    imap_host TEXT NOT NULL,
    imap_port INTEGER NOT NULL,
    imap_tls TEXT NOT NULL,                 -- TlsMode: implicit | starttls | none
    smtp_host TEXT NOT NULL,
    smtp_port INTEGER NOT NULL,
    smtp_tls TEXT NOT NULL,
    credentials TEXT NOT NULL,              -- sealed JSON {"auth", "secret"} (secretbox.py)
    status TEXT NOT NULL,                   -- GrantStatus: valid | invalid
    error TEXT,                             -- why the last connection failed (no secret)
    server_files_sent INTEGER NOT NULL DEFAULT 0,  -- 1: the server files sent mail itself
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    synced_at DOUBLE PRECISION              -- the end of the last complete sync pass
);
CREATE INDEX grants_owner ON grants (api_key_id);
