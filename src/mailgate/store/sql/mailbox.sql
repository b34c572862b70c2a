-- Connected mailboxes' sync (store/mailbox.py): folders, messages, thread keys. Both
-- backends run these as written.

-- name: mailbox_folders
SELECT id, grant_id, name, role, uidvalidity, uidnext, highestmodseq
FROM mailbox_folders WHERE grant_id = ? ORDER BY name

-- name: insert_mailbox_folder
INSERT INTO mailbox_folders (id, grant_id, name, role) VALUES (?, ?, ?, ?)
ON CONFLICT (grant_id, name) DO UPDATE SET role = excluded.role

-- name: delete_mailbox_folder
DELETE FROM mailbox_folders WHERE id = ?

-- name: set_mailbox_folder_state
UPDATE mailbox_folders SET uidvalidity = ?, uidnext = ?, highestmodseq = ?, synced_at = ?
WHERE id = ?

-- name: mailbox_folder_counts
SELECT folder_id, COUNT(*), SUM(unread) FROM mailbox_messages
WHERE grant_id = ? AND vanished_at IS NULL GROUP BY folder_id

-- name: mailbox_folder_index
-- what the sync compares with the server: the folder's messages by UID
SELECT uid, id, unread, starred FROM mailbox_messages
WHERE folder_id = ? AND vanished_at IS NULL AND uid > 0

-- name: mailbox_folder_count
SELECT COUNT(*) FROM mailbox_messages
WHERE folder_id = ? AND vanished_at IS NULL AND uid > 0 AND uid < ?

-- name: insert_mailbox_message
INSERT INTO mailbox_messages (id, grant_id, folder_id, uid, thread_id, message_id_header,
    in_reply_to, refs, subject, participants, from_addresses, to_addresses, date, snippet,
    unread, starred, has_attachments, size)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (folder_id, uid) WHERE uid > 0 AND vanished_at IS NULL DO NOTHING
RETURNING id

-- name: mailbox_messages_by_header
-- a message that turned up in another folder: gone ones (moved) first, then ours moved
SELECT id, folder_id, uid, vanished_at FROM mailbox_messages
WHERE grant_id = ? AND message_id_header = ? AND (vanished_at IS NOT NULL OR uid = 0)
ORDER BY vanished_at, id

-- name: move_mailbox_message
UPDATE mailbox_messages SET folder_id = ?, uid = ?, unread = ?, starred = ?,
    vanished_at = NULL
WHERE id = ?

-- name: set_mailbox_flags
UPDATE mailbox_messages SET unread = ?, starred = ? WHERE id = ?

-- name: vanish_mailbox_uid
UPDATE mailbox_messages SET vanished_at = ? WHERE folder_id = ? AND uid = ?
    AND vanished_at IS NULL

-- name: vanish_mailbox_folder
UPDATE mailbox_messages SET vanished_at = ? WHERE folder_id = ? AND vanished_at IS NULL

-- name: gone_mailbox_messages
SELECT id, folder_id, thread_id FROM mailbox_messages
WHERE grant_id = ? AND vanished_at IS NOT NULL AND vanished_at < ?

-- name: delete_mailbox_message
DELETE FROM mailbox_messages WHERE id = ?

-- name: set_grant_synced
UPDATE grants SET synced_at = ? WHERE id = ?

-- name: get_mailbox_message
SELECT id, grant_id, folder_id, uid, thread_id, message_id_header, in_reply_to, refs, subject,
    participants, date, snippet, unread, starred, has_attachments, size FROM mailbox_messages
WHERE id = ? AND grant_id = ? AND vanished_at IS NULL

-- name: mailbox_thread_messages
SELECT id, grant_id, folder_id, uid, thread_id, message_id_header, in_reply_to, refs, subject,
    participants, date, snippet, unread, starred, has_attachments, size FROM mailbox_messages
WHERE grant_id = ? AND thread_id = ? AND vanished_at IS NULL ORDER BY date, id

-- name: insert_mailbox_thread_key
INSERT INTO mailbox_thread_keys (grant_id, key, thread_id) VALUES (?, ?, ?)
ON CONFLICT (grant_id, key) DO NOTHING

-- name: join_mailbox_thread_keys
UPDATE mailbox_thread_keys SET thread_id = ? WHERE thread_id = ?

-- name: join_mailbox_thread_messages
UPDATE mailbox_messages SET thread_id = ? WHERE thread_id = ?

-- name: claim_mailbox_lease
-- taken when free, expired or already ours; no row back: another process holds it
INSERT INTO mailbox_sync_leases (grant_id, owner, until) VALUES (?, ?, ?)
ON CONFLICT (grant_id) DO UPDATE SET owner = excluded.owner, until = excluded.until
WHERE mailbox_sync_leases.until < ? OR mailbox_sync_leases.owner = excluded.owner
RETURNING owner

-- name: release_mailbox_lease
DELETE FROM mailbox_sync_leases WHERE grant_id = ? AND owner = ?
