-- Statements only SQLite runs this way. A list parameter (a Python list) arrives as
-- JSON text, read with json_each.

-- name: insert_message
-- a body in a body file (sqlite/bodies.py) leaves `raw` empty and names its place
INSERT INTO messages (id, created_at, sender, source, api_key_id, tags, metadata,
    message_id_header, subject, scheduled_at, size, raw, body_file, body_offset)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)

-- name: get_raw
SELECT raw, body_file, body_offset, size FROM messages WHERE id = ?

-- name: load
SELECT {message_columns}, raw, body_file, body_offset FROM messages
WHERE id IN (SELECT value FROM json_each(?))

-- name: next_due_domain
-- the most overdue domain; a claim leases its due recipients
SELECT domain FROM recipients
WHERE status IN ('queued', 'deferred') AND next_attempt_at <= ?
ORDER BY next_attempt_at LIMIT 1

-- name: due_in_domain
SELECT {recipient_columns} FROM recipients
WHERE status IN ('queued', 'deferred') AND domain = ? AND next_attempt_at <= ?
ORDER BY next_attempt_at LIMIT ?

-- name: lease
UPDATE recipients SET next_attempt_at = ?, lease_owner = ?, updated_at = ? WHERE id = ?

-- name: release
UPDATE recipients SET next_attempt_at = ?, lease_owner = NULL, updated_at = ?
WHERE id IN (SELECT value FROM json_each(?)) AND lease_owner = ?
    AND status IN ('queued', 'deferred')
RETURNING id

-- name: events_since
-- ids are commit-ordered here: every writer, in any process, inserts inside BEGIN
-- IMMEDIATE while it holds the write turn, so `id > cursor` skips nothing
SELECT {event_columns} FROM events WHERE id > ? ORDER BY id LIMIT ?

-- name: events_since_for_key
SELECT {event_columns} FROM events WHERE id > ? AND api_key_id = ? ORDER BY id LIMIT ?

-- name: data_version
PRAGMA data_version

-- name: event_messages
SELECT id, tags, metadata FROM messages WHERE id IN (SELECT value FROM json_each(?))

-- name: event_recipients
SELECT id, address FROM recipients WHERE id IN (SELECT value FROM json_each(?))

-- name: suppressed_among
SELECT address, scope, reason FROM suppressions
WHERE address IN (SELECT value FROM json_each(?))
