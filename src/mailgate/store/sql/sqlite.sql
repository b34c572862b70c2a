-- Statements only SQLite runs this way. A list parameter (a Python list) arrives as
-- JSON text, read with json_each.

-- name: insert_message
-- a body in a body file (sqlite/bodies.py) leaves `raw` empty and names its place
INSERT INTO messages (id, created_at, sender, source, api_key_id, tags, metadata,
    message_id_header, subject, scheduled_at, size, raw, body_file, body_offset)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)

-- name: get_raw
SELECT raw, body_file, body_offset, size, body_purged_at FROM messages WHERE id = ?

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
UPDATE recipients SET next_attempt_at = ?, lease_owner = ?, updated_at = ?
WHERE id IN (SELECT value FROM json_each(?))

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

-- name: body_purgeable
-- the finished messages whose body is still kept (see purgeable_messages), found through
-- the partial index of kept bodies: the purged ones before them are never read
SELECT m.id FROM messages m INDEXED BY messages_body_kept
WHERE m.body_purged_at IS NULL AND m.id > ? AND m.id < ?
    AND NOT EXISTS (SELECT 1 FROM recipients r WHERE r.message_id = m.id
        AND (r.status NOT IN ('delivered', 'bounced', 'expired', 'cancelled', 'suppressed')
             OR r.updated_at >= ?))
ORDER BY m.id LIMIT ?

-- name: purge_body
-- the bytes go (inline, or the place in a segment: compaction reclaims it later)
UPDATE messages SET raw = x'', body_file = NULL, body_offset = NULL, body_purged_at = ?
WHERE id = ? AND body_purged_at IS NULL

-- name: purge_bodies_of
-- a batch's bodies in one statement, its ids a JSON list: one statement per batch, not one
-- per message (each statement lets go of the GIL and takes it back, inside the write turn)
UPDATE messages SET raw = x'', body_file = NULL, body_offset = NULL, body_purged_at = ?
WHERE id IN (SELECT value FROM json_each(?)) AND body_purged_at IS NULL

-- name: body_purgeable_staying
-- `purge --dry-run`: body_purgeable less the messages the rows' step takes whole first (a
-- recipient changed at or after the rows' cutoff, the last parameter but one)
SELECT m.id FROM messages m INDEXED BY messages_body_kept
WHERE m.body_purged_at IS NULL AND m.id > ? AND m.id < ?
    AND NOT EXISTS (SELECT 1 FROM recipients r WHERE r.message_id = m.id
        AND (r.status NOT IN ('delivered', 'bounced', 'expired', 'cancelled', 'suppressed')
             OR r.updated_at >= ?))
    AND EXISTS (SELECT 1 FROM recipients r WHERE r.message_id = m.id AND r.updated_at >= ?)
ORDER BY m.id LIMIT ?

-- name: purge_events_of
-- a batch of purged messages' events, recipients, rows: one statement per table (by the
-- indexes events_message, recipients_message and the primary key, EXPLAIN QUERY PLAN)
DELETE FROM events WHERE message_id IN (SELECT value FROM json_each(?))

-- name: purge_recipients_of
DELETE FROM recipients WHERE message_id IN (SELECT value FROM json_each(?))

-- name: purge_messages_of
DELETE FROM messages WHERE id IN (SELECT value FROM json_each(?))

-- name: purge_webhook_attempts
DELETE FROM webhook_attempts WHERE rowid IN (
    SELECT rowid FROM webhook_attempts WHERE at < ? ORDER BY at LIMIT ?)
RETURNING 1

-- name: segment_bodies
-- the live bodies of one segment, in file order (from messages_segment alone)
SELECT id, body_offset, size FROM messages WHERE body_file = ? ORDER BY body_offset

-- name: segment_in_use
SELECT 1 FROM messages WHERE body_file = ? LIMIT 1

-- name: repoint_body
-- fenced by the old place: a body purged meanwhile (body_file NULL) stays purged
UPDATE messages SET body_file = ?, body_offset = ?
WHERE id = ? AND body_file = ? AND body_offset = ?

-- name: deliver_webhook_messages
-- a batch's delivered attempts with one answer code, fenced by the lease
UPDATE webhook_messages SET status = 'delivered', attempts = attempts + 1,
    next_attempt_at = ?, lease_owner = NULL, last_status = ?, last_error = NULL, updated_at = ?
WHERE id IN (SELECT value FROM json_each(?)) AND lease_owner = ?
RETURNING id

-- name: settle
-- outcomes as JSON rows [status, next_attempt_at, code, enhanced, text, remote_host, id];
-- fenced: only the lease's owner may record them
UPDATE recipients SET status = v.value ->> 0, attempts = attempts + 1,
    next_attempt_at = v.value ->> 1, lease_owner = NULL, last_code = v.value ->> 2,
    last_enhanced = v.value ->> 3, last_text = v.value ->> 4, remote_host = v.value ->> 5,
    updated_at = ?
FROM json_each(?) AS v
WHERE recipients.id = v.value ->> 6 AND lease_owner = ? AND status IN ('queued', 'deferred')
RETURNING id, message_id, attempts, address, domain

-- name: insert_recipient_events
-- events as JSON rows [recipient_id, kind, at, details, message_id], in their order; the
-- owner (API key) is copied from the message in the same statement
INSERT INTO events (message_id, recipient_id, kind, at, details, api_key_id)
SELECT m.id, v.value ->> 0, v.value ->> 1, v.value ->> 2, v.value ->> 3, m.api_key_id
FROM json_each(?) AS v JOIN messages AS m ON m.id = v.value ->> 4
ORDER BY v.key
