-- Statements only PostgreSQL runs this way (bodies stay in `raw`; claims skip locked
-- rows; the events cursor walks transaction ids).

-- name: insert_message
INSERT INTO messages (id, created_at, sender, source, api_key_id, tags, metadata,
    message_id_header, subject, scheduled_at, size, raw)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)

-- name: get_raw
SELECT raw, NULL, NULL, size, body_purged_at FROM messages WHERE id = ?

-- name: load
SELECT {message_columns}, raw, NULL, NULL FROM messages WHERE id = ANY(?::text[])

-- name: claim
-- the most overdue domain, then its due rows, skipping rows other workers hold; returns
-- recipient rows whose lease_owner is the owner before this claim
WITH d AS (
    SELECT domain FROM recipients
    WHERE status IN ('queued', 'deferred') AND next_attempt_at <= ?
    ORDER BY next_attempt_at LIMIT 1 FOR UPDATE SKIP LOCKED
), c AS (
    SELECT id, lease_owner AS previous FROM recipients
    WHERE status IN ('queued', 'deferred') AND next_attempt_at <= ?
        AND domain = (SELECT domain FROM d)
    ORDER BY next_attempt_at LIMIT ? FOR UPDATE SKIP LOCKED
)
UPDATE recipients r SET next_attempt_at = ?, lease_owner = ?, updated_at = ?
FROM c WHERE r.id = c.id
RETURNING r.id, r.message_id, r.address, r.domain, r.status, r.attempts,
    r.next_attempt_at, c.previous, r.last_code, r.last_enhanced, r.last_text,
    r.remote_host, r.updated_at

-- name: release
UPDATE recipients SET next_attempt_at = ?, lease_owner = NULL, updated_at = ?
WHERE id = ANY(?::bigint[]) AND lease_owner = ? AND status IN ('queued', 'deferred')
RETURNING id

-- name: events_since
-- bigserial ids are not commit-ordered: a transaction holding id 10 may commit after one
-- holding 11. So the feed walks (xid, id), the writing transaction's id first, and reads
-- only transactions older than every one still running (pg_snapshot_xmin): below that
-- horizon no event can ever appear again, so a cursor there is exact. A long-open
-- transaction delays the feed, never skips.
SELECT {event_columns}, xid::text FROM events
WHERE (xid, id) > (?::text::xid8, ?) AND xid < pg_snapshot_xmin(pg_current_snapshot())
ORDER BY xid, id LIMIT ?

-- name: events_since_for_key
SELECT {event_columns}, xid::text FROM events
WHERE (xid, id) > (?::text::xid8, ?) AND xid < pg_snapshot_xmin(pg_current_snapshot())
    AND api_key_id = ?
ORDER BY xid, id LIMIT ?

-- name: migration_lock
SELECT pg_advisory_xact_lock(?)

-- name: notify
NOTIFY mailgate_work

-- name: event_messages
SELECT id, tags, metadata FROM messages WHERE id = ANY(?::text[])

-- name: event_recipients
SELECT id, address FROM recipients WHERE id = ANY(?::bigint[])

-- name: suppressed_among
SELECT address, scope, reason FROM suppressions WHERE address = ANY(?::text[])

-- name: body_purgeable
-- the finished messages whose body is still kept (see purgeable_messages in common.sql)
SELECT m.id FROM messages m
WHERE m.body_purged_at IS NULL AND m.id > ? AND m.id < ?
    AND NOT EXISTS (SELECT 1 FROM recipients r WHERE r.message_id = m.id
        AND (r.status NOT IN ('delivered', 'bounced', 'expired', 'cancelled', 'suppressed')
             OR r.updated_at >= ?))
ORDER BY m.id LIMIT ?

-- name: purge_body
-- the row's bytes go (autovacuum reclaims the TOAST space)
UPDATE messages SET raw = ''::bytea, body_purged_at = ? WHERE id = ? AND body_purged_at IS NULL

-- name: purge_bodies_of
-- a batch's bodies in one statement (see sqlite.sql)
UPDATE messages SET raw = ''::bytea, body_purged_at = ?
WHERE id = ANY(?::text[]) AND body_purged_at IS NULL

-- name: body_purgeable_staying
-- `purge --dry-run`: body_purgeable less the messages the rows' step takes whole first
SELECT m.id FROM messages m
WHERE m.body_purged_at IS NULL AND m.id > ? AND m.id < ?
    AND NOT EXISTS (SELECT 1 FROM recipients r WHERE r.message_id = m.id
        AND (r.status NOT IN ('delivered', 'bounced', 'expired', 'cancelled', 'suppressed')
             OR r.updated_at >= ?))
    AND EXISTS (SELECT 1 FROM recipients r WHERE r.message_id = m.id AND r.updated_at >= ?)
ORDER BY m.id LIMIT ?

-- name: purge_events_of
-- a batch of purged messages' events, recipients, rows: one statement per table
DELETE FROM events WHERE message_id = ANY(?::text[])

-- name: purge_recipients_of
DELETE FROM recipients WHERE message_id = ANY(?::text[])

-- name: purge_messages_of
DELETE FROM messages WHERE id = ANY(?::text[])

-- name: purge_webhook_attempts
DELETE FROM webhook_attempts WHERE ctid = ANY(ARRAY(
    SELECT ctid FROM webhook_attempts WHERE at < ? ORDER BY at LIMIT ?))
RETURNING 1

-- name: publish_limits
-- One process's changed limits (cluster_limits.py), as parallel arrays.
INSERT INTO shared_limits (node, proc, tab, name, total, step, last_at, held, changed)
SELECT ?, ?, t, n, c, s, a, h, extract(epoch FROM clock_timestamp())
FROM unnest(?::text[], ?::text[], ?::bigint[], ?::bigint[], ?::float8[], ?::int[])
    AS u(t, n, c, s, a, h)
ON CONFLICT (node, proc, tab, name) DO UPDATE
SET total = excluded.total, step = excluded.step, last_at = excluded.last_at,
    held = excluded.held, changed = excluded.changed

-- name: other_nodes_limits
SELECT node, proc, tab, name, total, step, last_at, held, changed FROM shared_limits
WHERE node <> ? AND changed > ?

-- name: database_clock
SELECT extract(epoch FROM clock_timestamp())::float8

-- name: forget_limits
DELETE FROM shared_limits WHERE changed < extract(epoch FROM clock_timestamp()) - ?

-- name: deliver_webhook_messages
-- a batch's delivered attempts with one answer code, fenced by the lease
UPDATE webhook_messages SET status = 'delivered', attempts = attempts + 1,
    next_attempt_at = ?, lease_owner = NULL, last_status = ?, last_error = NULL, updated_at = ?
WHERE id = ANY(?::text[]) AND lease_owner = ?
RETURNING id

-- name: settle
-- outcomes as JSON rows [status, next_attempt_at, code, enhanced, text, remote_host, id];
-- fenced: only the lease's owner may record them
UPDATE recipients AS r SET status = v ->> 0, attempts = r.attempts + 1,
    next_attempt_at = (v ->> 1)::double precision, lease_owner = NULL,
    last_code = (v ->> 2)::integer, last_enhanced = v ->> 3, last_text = v ->> 4,
    remote_host = v ->> 5, updated_at = ?
FROM json_array_elements(?::json) AS v
WHERE r.id = (v ->> 6)::bigint AND r.lease_owner = ? AND r.status IN ('queued', 'deferred')
RETURNING r.id, r.message_id, r.attempts, r.address, r.domain

-- name: insert_recipient_events
-- events as JSON rows [recipient_id, kind, at, details, message_id], in their order; the
-- owner (API key) is copied from the message in the same statement
INSERT INTO events (message_id, recipient_id, kind, at, details, api_key_id)
SELECT m.id, (e.v ->> 0)::bigint, e.v ->> 1, (e.v ->> 2)::double precision, e.v ->> 3,
    m.api_key_id
FROM json_array_elements(?::json) WITH ORDINALITY AS e(v, n) JOIN messages AS m ON m.id = e.v ->> 4
ORDER BY e.n
