-- mailgate schema v12: what the sync of connected mailboxes keeps (src/mailgate/mailboxes/,
-- docs/mailboxes.md). Both backends as written. A grant's rows go with it.
CREATE TABLE mailbox_folders (
    id TEXT PRIMARY KEY,                    -- folder ULID: the API's folder id
    grant_id TEXT NOT NULL REFERENCES grants (id) ON DELETE CASCADE,
    name TEXT NOT NULL,                     -- the IMAP name, decoded (modified UTF-7 undone)
    role TEXT,                              -- FolderRole from SPECIAL-USE, or NULL
    uidvalidity BIGINT NOT NULL DEFAULT 0,  -- 0: never synced
    uidnext BIGINT NOT NULL DEFAULT 0,      -- every UID below it is synced
    highestmodseq BIGINT NOT NULL DEFAULT 0,  -- CONDSTORE: flags synced up to it; 0: none
    synced_at DOUBLE PRECISION               -- the end of its last complete sync
);
CREATE UNIQUE INDEX mailbox_folders_name ON mailbox_folders (grant_id, name);
CREATE TABLE mailbox_messages (
    id TEXT PRIMARY KEY,                    -- message ULID: kept while the message exists
    grant_id TEXT NOT NULL REFERENCES grants (id) ON DELETE CASCADE,
    folder_id TEXT NOT NULL,
    uid BIGINT NOT NULL,                    -- in its folder; 0: moved by us, UID unknown yet
    thread_id TEXT NOT NULL,
    message_id_header TEXT NOT NULL,        -- with angle brackets; '' when absent
    in_reply_to TEXT NOT NULL,
    refs TEXT NOT NULL,                     -- References, space-separated
    subject TEXT NOT NULL,
    participants TEXT NOT NULL,             -- JSON {"from": [[email, name]], "to": ...}
    from_addresses TEXT NOT NULL,           -- ' a@x b@y ': lower-case, for the filters
    to_addresses TEXT NOT NULL,             -- To, Cc and Bcc, likewise
    date DOUBLE PRECISION NOT NULL,
    snippet TEXT NOT NULL,
    unread INTEGER NOT NULL,
    starred INTEGER NOT NULL,
    has_attachments INTEGER NOT NULL,
    size BIGINT NOT NULL,
    vanished_at DOUBLE PRECISION            -- gone from its folder: deleted after the next
                                            -- full pass unless it turned up elsewhere (moved)
);
-- the listing: a grant's messages newest first (filters narrow it from here)
CREATE INDEX mailbox_messages_date ON mailbox_messages (grant_id, date, id);
-- one row per message in a folder: a second sync of the same UIDs (another process, an
-- API call's sync beside a pass) stores nothing twice
CREATE UNIQUE INDEX mailbox_messages_folder ON mailbox_messages (folder_id, uid)
    WHERE uid > 0 AND vanished_at IS NULL;
CREATE INDEX mailbox_messages_thread ON mailbox_messages (thread_id);
CREATE INDEX mailbox_messages_header ON mailbox_messages (grant_id, message_id_header);
-- threading: each Message-ID a message names (its own, In-Reply-To, References) -> thread
CREATE TABLE mailbox_thread_keys (
    grant_id TEXT NOT NULL REFERENCES grants (id) ON DELETE CASCADE,
    key TEXT NOT NULL,
    thread_id TEXT NOT NULL,
    PRIMARY KEY (grant_id, key)
);
CREATE INDEX mailbox_thread_keys_thread ON mailbox_thread_keys (thread_id);
-- which process syncs a grant (one at a time across processes and nodes): a lease
CREATE TABLE mailbox_sync_leases (
    grant_id TEXT PRIMARY KEY REFERENCES grants (id) ON DELETE CASCADE,
    owner TEXT NOT NULL,                    -- host:pid of the syncing process
    until DOUBLE PRECISION NOT NULL
);
