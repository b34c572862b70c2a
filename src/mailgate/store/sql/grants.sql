-- Grants, the connected mailboxes (store/grants.py): both backends run these as written.
-- The sealed credentials are read only by grant_credentials, never with a grant.

-- name: insert_grant
INSERT INTO grants (id, api_key_id, email, username, auth, imap_host, imap_port, imap_tls,
    smtp_host, smtp_port, smtp_tls, status, error, server_files_sent, created_at, updated_at,
    synced_at, credentials)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)

-- name: get_grant
SELECT id, api_key_id, email, username, auth, imap_host, imap_port, imap_tls, smtp_host,
    smtp_port, smtp_tls, status, error, server_files_sent, created_at, updated_at, synced_at
FROM grants WHERE id = ?

-- name: list_grants
SELECT id, api_key_id, email, username, auth, imap_host, imap_port, imap_tls, smtp_host,
    smtp_port, smtp_tls, status, error, server_files_sent, created_at, updated_at, synced_at
FROM grants ORDER BY created_at, id

-- name: list_grants_for_key
SELECT id, api_key_id, email, username, auth, imap_host, imap_port, imap_tls, smtp_host,
    smtp_port, smtp_tls, status, error, server_files_sent, created_at, updated_at, synced_at
FROM grants WHERE api_key_id = ? ORDER BY created_at, id

-- name: grant_credentials
SELECT credentials FROM grants WHERE id = ?

-- name: update_grant
-- the owner and creation time stay; the credentials stay too when none are given
UPDATE grants SET email = ?, username = ?, auth = ?, imap_host = ?, imap_port = ?,
    imap_tls = ?, smtp_host = ?, smtp_port = ?, smtp_tls = ?, status = ?, error = ?,
    server_files_sent = ?, updated_at = ?, synced_at = ?,
    credentials = COALESCE(?, credentials)
WHERE id = ? RETURNING 1

-- name: set_grant_status
UPDATE grants SET status = ?, error = ?, updated_at = ? WHERE id = ? RETURNING 1

-- name: delete_grant
DELETE FROM grants WHERE id = ? RETURNING 1

-- name: grant_scheduled
-- a grant's scheduled messages, newest first: its route is on each of their recipients
-- (recipients_domain_due: domain first)
SELECT {message_columns} FROM messages
WHERE scheduled_at IS NOT NULL
    AND id IN (SELECT message_id FROM recipients WHERE domain = ?)
ORDER BY id DESC LIMIT ?
