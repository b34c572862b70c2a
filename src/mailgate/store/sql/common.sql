-- Statements both backends run as written. `?` marks parameters (PostgreSQL's $1, $2…
-- are made from them at load); {message_columns} and the like are the column lists of
-- store/rows.py, which decode what these SELECTs return.

-- name: insert_recipient
INSERT INTO recipients (message_id, address, domain, status, next_attempt_at, updated_at)
VALUES (?, ?, ?, ?, ?, ?)

-- name: insert_event
INSERT INTO events (message_id, kind, at, details, api_key_id) VALUES (?, ?, ?, ?, ?)

-- name: insert_tag
INSERT INTO message_tags (tag, message_id) VALUES (?, ?) ON CONFLICT DO NOTHING

-- name: claim_idempotency
-- insert, or take over an expired row; no row returned = the key is in use
INSERT INTO idempotency (api_key_id, key, request_hash, response, message_id, created_at,
    expires_at) VALUES (?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (api_key_id, key) DO UPDATE SET request_hash = excluded.request_hash,
    response = excluded.response, message_id = excluded.message_id,
    created_at = excluded.created_at, expires_at = excluded.expires_at
WHERE idempotency.expires_at <= excluded.created_at
RETURNING 1

-- name: idempotency_owner
SELECT message_id FROM idempotency WHERE api_key_id = ? AND key = ?

-- name: idempotent_response
SELECT request_hash, response FROM idempotency
WHERE api_key_id = ? AND key = ? AND expires_at > ?

-- name: recover_leases
UPDATE recipients SET next_attempt_at = ?
WHERE lease_owner IS NOT NULL AND status IN ('queued', 'deferred')
    AND substr(lease_owner, 1, ?) = ?
RETURNING id

-- name: cancel_active
UPDATE recipients SET status = 'cancelled', next_attempt_at = NULL, lease_owner = NULL,
    updated_at = ?
WHERE message_id = ? AND status IN ('queued', 'deferred')
RETURNING id

-- name: retry_active
UPDATE recipients SET next_attempt_at = ?, updated_at = ?
WHERE message_id = ? AND status IN ('queued', 'deferred') AND lease_owner IS NULL
RETURNING id

-- name: get_message
SELECT {message_columns} FROM messages WHERE id = ?

-- name: recipients
SELECT {recipient_columns} FROM recipients WHERE message_id = ? ORDER BY id

-- name: events
SELECT {event_columns} FROM events WHERE message_id = ? ORDER BY id

-- name: status_counts
SELECT status, count(*) FROM recipients GROUP BY status

-- name: message_status_counts
-- one message's recipients counted by status (the dashboard's lists: no rows made)
SELECT status, count(*) FROM recipients WHERE message_id = ? GROUP BY status

-- name: first_recipients
SELECT {recipient_columns} FROM recipients WHERE message_id = ? ORDER BY id LIMIT ?

-- name: ping
INSERT INTO nodes (name, seen_at) VALUES (?, ?)
ON CONFLICT (name) DO UPDATE SET seen_at = excluded.seen_at

-- name: insert_key
INSERT INTO api_keys (id, name, secret_hash, scopes, sender_domains, created_at, revoked_at,
    sandbox)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)

-- name: get_key
SELECT {key_columns} FROM api_keys WHERE id = ?

-- name: list_keys
SELECT {key_columns} FROM api_keys ORDER BY created_at

-- name: revoke_key
UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL RETURNING 1

-- name: disable_key_webhooks
-- the endpoints a revoked key made (an admin key's receive every event) stop; an admin
-- may enable one again
UPDATE webhook_endpoints SET enabled = 0, disabled_reason = 'its API key was revoked',
    updated_at = ?
WHERE created_by = ? AND enabled = 1

-- name: create_migrations
CREATE TABLE IF NOT EXISTS schema_migrations
    (version INTEGER PRIMARY KEY, applied_at DOUBLE PRECISION NOT NULL)

-- name: applied_migrations
SELECT version FROM schema_migrations

-- name: record_migration
INSERT INTO schema_migrations VALUES (?, ?)

-- name: insert_domain
INSERT INTO domains (name, created_at, next_check_at) VALUES (?, ?, ?)
ON CONFLICT (name) DO NOTHING RETURNING 1

-- name: insert_domain_key
INSERT INTO domain_keys (domain, selector, algorithm, public_key, private_key, created_at)
VALUES (?, ?, ?, ?, ?, ?)

-- name: delete_domain_keys
DELETE FROM domain_keys WHERE domain = ?

-- name: delete_domain
DELETE FROM domains WHERE name = ? RETURNING 1

-- name: retire_domain_key
UPDATE domain_keys SET retired_at = ? WHERE domain = ? AND selector = ? AND retired_at IS NULL
RETURNING 1

-- name: domain_exists
SELECT 1 FROM domains WHERE name = ?

-- name: record_domain_check
UPDATE domains SET checks = ?, checked_at = ?, next_check_at = ? WHERE name = ? RETURNING 1

-- name: flip_domain_sending
-- one writer wins a change of state (PostgreSQL re-reads the row after a lock wait)
UPDATE domains SET sending = ? WHERE name = ? AND sending <> ? RETURNING 1

-- name: claim_domain_checks
UPDATE domains SET next_check_at = ? WHERE next_check_at <= ? RETURNING name

-- name: get_domain
SELECT {domain_columns} FROM domains WHERE name = ?

-- name: list_domains
SELECT {domain_columns} FROM domains ORDER BY name

-- name: domain_keys
SELECT {domain_key_columns} FROM domain_keys WHERE domain = ? ORDER BY created_at, selector

-- name: all_domain_keys
SELECT {domain_key_columns} FROM domain_keys ORDER BY domain, created_at, selector

-- name: sending_keys
SELECT {domain_key_columns}, private_key FROM domain_keys
WHERE retired_at IS NULL AND domain IN (SELECT name FROM domains WHERE sending = 1)
ORDER BY domain, created_at, selector

-- name: sending_domains
SELECT {domain_columns} FROM domains WHERE sending = 1

-- name: insert_webhook
INSERT INTO webhook_endpoints (id, api_key_id, url, events, description, secrets, enabled,
    disabled_reason, created_at, updated_at, created_by)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)

-- name: get_webhook
SELECT {webhook_columns}, secrets FROM webhook_endpoints WHERE id = ?

-- name: list_webhooks
SELECT {webhook_columns} FROM webhook_endpoints ORDER BY created_at, id

-- name: list_webhooks_for_key
SELECT {webhook_columns} FROM webhook_endpoints WHERE api_key_id = ? ORDER BY created_at, id

-- name: update_webhook
-- turned back on: its failing streak starts again (the old one would disable it at once)
UPDATE webhook_endpoints SET url = ?, events = ?, description = ?, enabled = ?,
    disabled_reason = ?, updated_at = ?,
    failing_since = CASE WHEN enabled = 0 THEN NULL ELSE failing_since END
WHERE id = ? RETURNING 1

-- name: set_webhook_secrets
UPDATE webhook_endpoints SET secrets = ?, updated_at = ? WHERE id = ? RETURNING 1

-- name: delete_webhook
DELETE FROM webhook_endpoints WHERE id = ? RETURNING 1

-- name: webhook_cursor
SELECT cursor FROM webhook_cursor WHERE name = ?

-- name: start_webhook_cursor
INSERT INTO webhook_cursor (name, cursor) VALUES (?, ?) ON CONFLICT (name) DO NOTHING
RETURNING 1

-- name: move_webhook_cursor
-- compare and set: one fan-out wins a stretch of the outbox, across processes and nodes
UPDATE webhook_cursor SET cursor = ? WHERE name = ? AND cursor = ? RETURNING 1

-- name: insert_webhook_message
-- placeholders only (the status too): rows go in as a few multi-row statements
INSERT INTO webhook_messages (id, endpoint_id, event_id, body, status, next_attempt_at,
    created_at, updated_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)

-- name: claim_webhook_messages
-- the outer WHERE repeats the due test: a row another claimer took meanwhile (PostgreSQL
-- re-reads it after the lock wait) is skipped, not taken twice
-- a disabled endpoint's rows wait where they are (claimed again once it is enabled)
UPDATE webhook_messages SET lease_owner = ?, next_attempt_at = ?
WHERE id IN (SELECT id FROM webhook_messages WHERE status = 'pending' AND next_attempt_at <= ?
                 AND endpoint_id IN (SELECT id FROM webhook_endpoints WHERE enabled = 1)
             ORDER BY next_attempt_at LIMIT ?)
    AND status = 'pending' AND next_attempt_at <= ?
RETURNING id, endpoint_id, event_id, body, attempts

-- name: settle_webhook_message
UPDATE webhook_messages SET status = ?, attempts = attempts + 1, next_attempt_at = ?,
    lease_owner = NULL, last_status = ?, last_error = ?, updated_at = ?
WHERE id = ? AND lease_owner = ? RETURNING attempts

-- name: release_webhook_message
UPDATE webhook_messages SET lease_owner = NULL, next_attempt_at = ? WHERE id = ? AND lease_owner = ?

-- name: insert_webhook_attempt
INSERT INTO webhook_attempts (message_id, endpoint_id, event_id, at, status_code, latency,
    error, next_attempt_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)

-- name: webhook_failing
UPDATE webhook_endpoints SET failing_since = COALESCE(failing_since, ?) WHERE id = ?
RETURNING failing_since

-- name: webhook_succeeded
UPDATE webhook_endpoints SET failing_since = NULL WHERE id = ? AND failing_since IS NOT NULL

-- name: disable_webhook
UPDATE webhook_endpoints SET enabled = 0, disabled_reason = ?, updated_at = ?
WHERE id = ? AND enabled = 1

-- name: delete_webhook_messages
DELETE FROM webhook_messages WHERE endpoint_id = ?

-- name: webhook_attempts
SELECT message_id, event_id, at, status_code, latency, error, next_attempt_at
FROM webhook_attempts WHERE endpoint_id = ? ORDER BY at DESC LIMIT ?

-- name: count_webhook_messages
SELECT status, count(*) FROM webhook_messages GROUP BY status

-- name: event_by_id
SELECT {event_columns} FROM events WHERE id = ?

-- name: webhook_lease_owners
SELECT DISTINCT lease_owner FROM webhook_messages
WHERE status = 'pending' AND lease_owner IS NOT NULL

-- name: release_webhook_owner
UPDATE webhook_messages SET lease_owner = NULL, next_attempt_at = ?
WHERE lease_owner = ? AND status = 'pending' RETURNING 1

-- name: insert_suppressed_event
-- a recipient the door found on the suppression list: its event names the reason. Found
-- by its message (`|| ''` keeps the planner off the address index: one address may have
-- many rows, a message has few)
INSERT INTO events (message_id, recipient_id, kind, at, details, api_key_id)
SELECT r.message_id, r.id, 'suppressed', ?, ?, m.api_key_id
FROM recipients r JOIN messages m ON m.id = r.message_id
WHERE r.message_id = ? AND r.address || '' = ?

-- name: suppress_recipient
-- an outcome that condemns the address (hard bounce, complaint), normalised by the
-- caller (SQL's lower() folds ASCII only); an entry already there is kept as it was
-- (its first reason and message)
INSERT INTO suppressions (address, scope, reason, created_at, message_id)
VALUES (?, '', ?, ?, ?)
ON CONFLICT (address, scope) DO NOTHING

-- name: put_suppression
-- added by a user: the newest reason wins
INSERT INTO suppressions (address, scope, reason, created_at, message_id)
VALUES (?, ?, ?, ?, ?)
ON CONFLICT (address, scope) DO UPDATE SET reason = excluded.reason,
    created_at = excluded.created_at, message_id = excluded.message_id

-- name: suppressed_one
-- one address's entries (suppressed_among for the common single recipient: a plain
-- equality, no array or json_each to unpack)
SELECT address, scope, reason FROM suppressions WHERE address = ?

-- name: delete_suppression
DELETE FROM suppressions WHERE address = ? AND scope = ? RETURNING address

-- name: delete_suppressions
-- every scope of the address
DELETE FROM suppressions WHERE address = ? RETURNING address

-- name: list_suppressions
-- a page in (address, scope) order after the cursor; the prefix as bounds for the index
-- (from the prefix to the next one: a short answer never scans the rest of the table)
-- and as a test, which keeps the answer exact whatever the database's collation
SELECT address, scope, reason, created_at, message_id FROM suppressions
WHERE (address > ? OR (address = ? AND scope > ?)) AND address >= ?
    AND (? = '' OR address < ?)
    AND substr(address, 1, ?) = ? AND (? = '' OR reason = ?)
ORDER BY address, scope LIMIT ?

-- name: count_suppressions
SELECT count(*) FROM suppressions

-- Retention (store/queue.py purge_*; docs/retention.md). A message is finished when every
-- recipient is in a final status; its last change is its recipients' latest updated_at.
-- Final statuses never change again, so what one of these finds stays purgeable.

-- name: purgeable_messages
-- oldest first after the caller's cursor, created before the cutoff (ids are ULIDs of
-- created_at: `id < ?` bounds the walk on the primary key). Messages not finished are
-- skipped, not stopped at. The message owning the newest event (or recipient) is kept:
-- SQLite would hand its id out again (INTEGER PRIMARY KEY without AUTOINCREMENT is
-- max + 1), and an events cursor past it would then skip new events.
SELECT m.id, m.tags FROM messages m
WHERE m.id > ? AND m.id < ?
    AND NOT EXISTS (SELECT 1 FROM recipients r WHERE r.message_id = m.id
        AND (r.status NOT IN ('delivered', 'bounced', 'expired', 'cancelled', 'suppressed')
             OR r.updated_at >= ?))
    AND m.id <> COALESCE((SELECT message_id FROM events ORDER BY id DESC LIMIT 1), '')
    AND m.id <> COALESCE((SELECT message_id FROM recipients ORDER BY id DESC LIMIT 1), '')
ORDER BY m.id LIMIT ?

-- name: purge_message_tags
-- by the tags the message row lists: the table's key is (tag, message_id)
DELETE FROM message_tags WHERE tag = ? AND message_id = ?

-- name: purge_message_events
DELETE FROM events WHERE message_id = ?

-- name: purge_message_recipients
DELETE FROM recipients WHERE message_id = ?

-- name: purge_message
DELETE FROM messages WHERE id = ?

-- name: purge_system_events
-- events of no message (a domain verified, ...); never the newest event (see above)
DELETE FROM events WHERE id IN (
    SELECT id FROM events WHERE message_id = '' AND at < ?
        AND id < (SELECT max(id) FROM events)
    ORDER BY id LIMIT ?)
RETURNING 1

-- name: purge_idempotency
-- records past their expiry answer nothing any more (claim_idempotency takes them over)
DELETE FROM idempotency WHERE (api_key_id, key) IN (
    SELECT api_key_id, key FROM idempotency WHERE expires_at < ? ORDER BY expires_at LIMIT ?)
RETURNING 1

-- name: purge_webhook_messages
-- a settled row's next_attempt_at is its last attempt's time (settle_webhook_message)
DELETE FROM webhook_messages WHERE id IN (
    SELECT id FROM webhook_messages
    WHERE status IN ('delivered', 'failed') AND next_attempt_at < ? LIMIT ?)
RETURNING 1

-- name: count_purgeable_webhooks
-- `purge --dry-run`: settled webhook delivery rows and attempt log lines before the cutoff
SELECT (SELECT count(*) FROM webhook_messages
        WHERE status IN ('delivered', 'failed') AND next_attempt_at < ?),
    (SELECT count(*) FROM webhook_attempts WHERE at < ?)

-- name: count_expired_idempotency
SELECT count(*) FROM idempotency WHERE expires_at < ?

-- name: waiting_by_domain
-- `mailgate status`: the routes with the most recipients waiting (the due index serves it)
SELECT domain, sum(CASE WHEN status = 'deferred' THEN 1 ELSE 0 END), count(*),
    min(message_id)
FROM recipients WHERE status IN ('queued', 'deferred')
GROUP BY domain ORDER BY count(*) DESC, domain LIMIT ?

-- name: nodes_seen
SELECT name, seen_at FROM nodes ORDER BY seen_at DESC LIMIT 20

-- name: waiting_routes
-- the dashboard's queue: routes by recipients waiting, answered from the partial index
-- recipients_domain_due (14 ms for 50,000 waiting, where waiting_by_domain, which also
-- reads each row's status and message, took 300 ms)
SELECT domain, count(*) FROM recipients WHERE status IN ('queued', 'deferred')
GROUP BY domain ORDER BY count(*) DESC, domain LIMIT ?

-- name: waiting_at
-- the dashboard's queue: one route's waiting recipients, soonest due first
-- (recipients_domain_due)
SELECT {recipient_columns} FROM recipients
WHERE domain = ? AND status IN ('queued', 'deferred') ORDER BY next_attempt_at, id LIMIT ?

-- name: any_suppression
SELECT 1 FROM suppressions LIMIT 1

-- name: first_event_from
-- the dashboard's overview: the first event at or after an id (a primary-key probe of
-- the search for the event ids that bound a time bucket)
SELECT id, at FROM events WHERE id >= ? ORDER BY id LIMIT 1

-- name: last_event_id
SELECT id FROM events ORDER BY id DESC LIMIT 1

-- name: event_kinds_between
-- the dashboard's overview: the events of one id range (one time bucket) by kind, a range
-- of the primary key
SELECT kind, count(*) FROM events WHERE id >= ? AND id < ? GROUP BY kind

-- name: waiting_count
-- the dashboard's overview: the queue's depth, from the partial index recipients_due
SELECT count(*) FROM recipients WHERE status IN ('queued', 'deferred')

-- name: latest_deferral
-- the dashboard's overview: a route's latest deferral reply among its 500 waiting
-- recipients due last (recipients_domain_due, read backwards: bounded however long the
-- backlog)
SELECT last_code, last_enhanced, last_text, updated_at FROM (
    SELECT status, last_code, last_enhanced, last_text, updated_at FROM recipients
    WHERE domain = ? AND status IN ('queued', 'deferred')
    ORDER BY next_attempt_at DESC LIMIT 500) AS late
WHERE status = 'deferred' AND last_code IS NOT NULL ORDER BY updated_at DESC LIMIT 1
