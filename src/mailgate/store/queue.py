"""Every state change of the queue and the event it writes, once for both backends.

Each function runs inside one transaction of a backend (a Tx, see protocols.py) and
names its statements as in store/sql/; the backends only decide how a transaction is
opened, committed and grouped. A recipient's state and its event always change in the
same transaction, and so does a bounce and the DSN that reports it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from mailgate.errors import DuplicateIdempotencyKey
from mailgate.models import (
    SANDBOX_ROUTE,
    ApiKey,
    Claim,
    DkimKey,
    EventKind,
    NewMessage,
    RecordCheck,
    Settlement,
    Suppression,
    SuppressionReason,
    Webhook,
    WebhookAttempt,
    new_id,
)
from mailgate.simulator import SIMULATOR_DOMAIN
from mailgate.store.protocols import Dsn, Row, Tx
from mailgate.store.rows import (
    EVENT_FOR_STATUS,
    NewRows,
    RecipientEventRow,
    checks_json,
    domain_key_row,
    key_row,
    lease_expired_details,
    message_rows,
    recipient_from_row,
    settle_values,
    settlement_details,
    webhook_row,
)
from mailgate.suppressions import normalize


async def insert_rows(tx: Tx, all_rows: Sequence[NewRows]) -> None:
    """Insert enqueues' rows (message, recipients, accepted event, tags) in bulk."""
    if not all_rows:
        return
    msgs, rcpts, events, tags, suppressed = [], [], [], [], []
    for msg, rs, ev, ts, ss in all_rows:
        msgs.append(msg)
        rcpts.extend(rs)
        events.append(ev)
        tags.extend(ts)
        suppressed.extend(ss)
    await tx.insert_messages(msgs)
    await tx.executemany("insert_recipient", rcpts)
    await tx.executemany("insert_event", events)
    if tags:
        await tx.executemany("insert_tag", tags)
    if suppressed:  # after `accepted`, so a message's history reads in order
        await tx.executemany("insert_suppressed_event", suppressed)
    tx.wake_workers()


async def enqueue(tx: Tx, m: NewMessage, rows: NewRows) -> str:
    """One message; with m.idempotency, only if its key is unused (or expired)."""
    if m.idempotency is not None:
        i, owner = m.idempotency, m.api_key_id or ""
        won = await tx.fetchrow(
            "claim_idempotency",
            owner,
            i.key,
            i.request_hash,
            i.response,
            m.id,
            m.created_at,
            i.expires_at,
        )
        if won is None:
            first = await tx.fetchrow("idempotency_owner", owner, i.key)
            assert first is not None  # the conflicting row is locked by this transaction
            raise DuplicateIdempotencyKey(first[0])
    await insert_rows(tx, [rows])
    return m.id


async def enqueue_many(
    tx: Tx, messages: Sequence[NewMessage], plain_rows: Sequence[NewRows]
) -> list[str]:
    """Several messages in one transaction: those with an idempotency key one by one,
    `plain_rows` (the rows of the others) in bulk."""
    for m in messages:
        if m.idempotency is not None:
            await enqueue(tx, m, message_rows(m))
    await insert_rows(tx, plain_rows)
    return [m.id for m in messages]


async def claim(tx: Tx, owner: str, now: float, limit: int, lease_seconds: float) -> Claim | None:
    """Lease due recipients of one domain; a lease taken from a dead worker is recorded
    as `lease_expired` (the message may already have reached the remote)."""
    lease_until = now + lease_seconds
    recipients = [recipient_from_row(r) for r in await tx.claim_due(now, limit, lease_until, owner)]
    if not recipients:
        return None
    taken = [
        RecipientEventRow(
            r.id,
            EventKind.LEASE_EXPIRED.value,
            now,
            lease_expired_details(r.lease_owner),
            r.message_id,
        )
        for r in recipients
        if r.lease_owner is not None
    ]
    await insert_recipient_events(tx, taken)
    recipients.sort(key=lambda r: (r.message_id, r.id))
    return Claim(recipients[0].domain, owner, lease_until, tuple(recipients))


def dsns_to_queue(dsns: Sequence[Dsn], settled: set[int]) -> list[NewMessage]:
    """The DSNs whose every recipient was settled by this transaction (see Dsn)."""
    return [d.message for d in dsns if settled.issuperset(d.recipient_ids)]


async def settle(
    tx: Tx, owner: str, settlements: Sequence[Settlement], dsns: Sequence[Dsn], now: float
) -> int:
    """Record outcomes (fenced by the lease owner) with their events, and the DSNs that
    report them: in this transaction, so a crash keeps both or neither."""
    settled: set[int] = set()
    events, suppress = [], []
    # one statement for every outcome, not one each; a row the lease no longer covers
    # comes back missing
    params = json.dumps([settle_values(s) for s in settlements])
    found = {r[0]: r[1:] for r in await tx.fetch("settle", now, params, owner)}
    for s in settlements:
        row = found.get(s.recipient_id)
        if row is None:  # the lease passed to another worker
            continue
        settled.add(s.recipient_id)
        kind = EVENT_FOR_STATUS[s.status].value
        details = settlement_details(s, row[1])
        events.append(RecipientEventRow(s.recipient_id, kind, now, details, row[0]))
        if s.suppress is SuppressionReason.COMPLAINT:
            events.append(RecipientEventRow(s.recipient_id, _COMPLAINED, now, "{}", row[0]))
        # The sandbox's simulated outcomes never touch the list (the simulator answers
        # alike every time; test mail cannot suppress a real address), nor does mail to
        # the simulator's domain (real mail to it would list its addresses for everyone).
        if s.suppress is not None and row[3] not in (SANDBOX_ROUTE, SIMULATOR_DOMAIN):
            suppress.append((normalize(row[2]), s.suppress.value, now, row[0]))
    await insert_recipient_events(tx, events)
    if suppress:  # the address is bad (hard bounce) or unwanted (complaint): from now on
        await tx.executemany("suppress_recipient", suppress)
    await insert_rows(tx, [message_rows(m) for m in dsns_to_queue(dsns, settled)])
    return len(settled)


_COMPLAINED = EventKind.COMPLAINED.value


async def release(tx: Tx, owner: str, recipient_ids: Sequence[int], now: float) -> int:
    """Give leased recipients back, due now, without counting an attempt."""
    rows = await tx.fetch("release", now, now, list(recipient_ids), owner)
    if rows:
        tx.wake_workers()
    return len(rows)


async def recover_leases(tx: Tx, owner_prefix: str, now: float) -> int:
    """Make recipients leased by a dead worker due now. The owner stays, so the next
    claim records `lease_expired`."""
    rows = await tx.fetch("recover_leases", now, len(owner_prefix), owner_prefix)
    if rows:
        tx.wake_workers()
    return len(rows)


async def _record(tx: Tx, rows: Sequence[Row], kind: EventKind, message_id: str, now: float) -> int:
    events = [RecipientEventRow(r[0], kind.value, now, "{}", message_id) for r in rows]
    await insert_recipient_events(tx, events)
    return len(events)


async def insert_recipient_events(tx: Tx, events: Sequence[RecipientEventRow]) -> None:
    """Recipients' events in one statement, each with its message's owner."""
    if events:
        await tx.execute("insert_recipient_events", json.dumps(events))


async def cancel(tx: Tx, message_id: str, now: float) -> int:
    rows = await tx.fetch("cancel_active", now, message_id)
    return await _record(tx, rows, EventKind.CANCELLED, message_id, now)


async def retry_now(tx: Tx, message_id: str, now: float) -> int:
    rows = await tx.fetch("retry_active", now, now, message_id)
    if rows:
        tx.wake_workers()
    return await _record(tx, rows, EventKind.RETRY_NOW, message_id, now)


async def ping(tx: Tx, node: str) -> None:
    await tx.execute("ping", node, time.time())


async def add_key(tx: Tx, key: ApiKey, secret_hash: str) -> None:
    await tx.execute("insert_key", *key_row(key, secret_hash))


async def revoke_key(tx: Tx, key_id: str, now: float) -> bool:
    """Revoke the key and disable its webhook endpoints, in one transaction."""
    if await tx.fetchrow("revoke_key", now, key_id) is None:
        return False
    await tx.execute("disable_key_webhooks", now, key_id)
    return True


# -- sending domains ---------------------------------------------------------------------


async def add_domain(tx: Tx, name: str, keys: Sequence[tuple[DkimKey, str]], now: float) -> bool:
    """A new domain with its first keys (sealed), due for a DNS check now; False when
    the domain is there already."""
    if await tx.fetchrow("insert_domain", name, now, now) is None:
        return False
    await tx.executemany("insert_domain_key", [domain_key_row(k, sealed) for k, sealed in keys])
    return True


async def add_domain_keys(tx: Tx, name: str, keys: Sequence[tuple[DkimKey, str]]) -> bool:
    """A rotation's new keys; the old ones stay until retired. False: no such domain."""
    if await tx.fetchrow("domain_exists", name) is None:
        return False
    await tx.executemany("insert_domain_key", [domain_key_row(k, sealed) for k, sealed in keys])
    return True


async def retire_domain_key(tx: Tx, name: str, selector: str, now: float) -> bool:
    return await tx.fetchrow("retire_domain_key", now, name, selector) is not None


async def remove_domain(tx: Tx, name: str) -> bool:
    await tx.execute("delete_domain_keys", name)
    return await tx.fetchrow("delete_domain", name) is not None


async def record_domain_check(
    tx: Tx, name: str, checks: dict[str, RecordCheck], sending: bool, now: float, next_at: float
) -> bool:
    """Store a check of the domain's records; when it became (or stopped being) a
    sending domain, write that event in the same transaction. False: no such domain."""
    if await tx.fetchrow("record_domain_check", checks_json(checks), now, next_at, name) is None:
        return False
    state = int(sending)
    if await tx.fetchrow("flip_domain_sending", state, name, state) is not None:
        kind = EventKind.DOMAIN_VERIFIED if sending else EventKind.DOMAIN_UNVERIFIED
        details = json.dumps({"domain": name})
        await tx.execute("insert_event", "", kind.value, now, details, None)
    return True


async def claim_domain_checks(tx: Tx, now: float, next_at: float) -> list[str]:
    """The domains due for a check, moved to next_at so that one process (or node)
    checks each."""
    return [r[0] for r in await tx.fetch("claim_domain_checks", next_at, now)]


# -- webhook endpoints --------------------------------------------------------------------


async def add_webhook(tx: Tx, hook: Webhook, sealed_secrets: str) -> None:
    await tx.execute(
        "insert_webhook",
        hook.id,
        hook.api_key_id,
        hook.url,
        json.dumps(list(hook.events)),
        hook.description,
        sealed_secrets,
        int(hook.enabled),
        hook.disabled_reason,
        hook.created_at,
        hook.updated_at,
        hook.created_by,
    )


async def update_webhook(tx: Tx, hook: Webhook) -> bool:
    return await tx.fetchrow("update_webhook", *webhook_row(hook)) is not None


async def set_webhook_secrets(tx: Tx, hook_id: str, sealed_secrets: str, now: float) -> bool:
    return await tx.fetchrow("set_webhook_secrets", sealed_secrets, now, hook_id) is not None


async def delete_webhook(tx: Tx, hook_id: str) -> bool:
    await tx.execute("delete_webhook_messages", hook_id)
    return await tx.fetchrow("delete_webhook", hook_id) is not None


async def fan_out(
    tx: Tx, name: str, old: str | None, new: str, rows: Sequence[Sequence[Any]]
) -> bool:
    """Move the fan-out cursor from old to new and write the deliveries of the events
    between; False (and nothing written) when another process moved it first."""
    if old is None:
        won = await tx.fetchrow("start_webhook_cursor", name, new)
    else:
        won = await tx.fetchrow("move_webhook_cursor", new, name, old)
    if won is None:
        return False
    if rows:
        await tx.executemany("insert_webhook_message", _pending(rows))
    return True


async def queue_webhook_messages(tx: Tx, rows: Sequence[Sequence[Any]]) -> None:
    """Deliveries made outside the fan-out: a test event, a replay."""
    await tx.executemany("insert_webhook_message", _pending(rows))


def _pending(rows: Sequence[Sequence[Any]]) -> list[tuple[Any, ...]]:
    """(id, endpoint, event, body, due, created, updated) -> insert_webhook_message's row."""
    return [(*r[:4], "pending", *r[4:]) for r in rows]


async def claim_webhook_messages(
    tx: Tx, owner: str, now: float, lease_until: float, limit: int
) -> list[Row]:
    return list(await tx.fetch("claim_webhook_messages", owner, lease_until, now, limit, now))


async def settle_webhook_messages(
    tx: Tx, owner: str, attempts: Sequence[WebhookAttempt], disable_after: float
) -> int:
    """A batch of attempts in one transaction; how many were still this owner's. The
    failed ones one by one (each may move its endpoint's failing streak or disable it),
    then the delivered ones a few statements for all: a success clears its endpoint's
    streak, so within a batch (sent side by side, in no order) one success outweighs."""
    settled = 0
    by_code: dict[int | None, list[WebhookAttempt]] = {}
    for a in attempts:
        if a.status == "delivered":
            by_code.setdefault(a.status_code, []).append(a)
        else:
            settled += await _settle_webhook_message(tx, owner, a, disable_after)
    done: list[WebhookAttempt] = []
    for code, group in by_code.items():
        at = max(a.at for a in group)
        ids = [a.message_id for a in group]
        kept = {r[0] for r in await tx.fetch("deliver_webhook_messages", at, code, at, ids, owner)}
        done += [a for a in group if a.message_id in kept]  # the rest: the lease passed on
    if done:
        await tx.executemany("insert_webhook_attempt", [_attempt_row(a) for a in done])
        for endpoint_id in sorted({a.endpoint_id for a in done}):
            await tx.execute("webhook_succeeded", endpoint_id)
    return settled + len(done)


def _attempt_row(a: WebhookAttempt) -> tuple[Any, ...]:
    """insert_webhook_attempt's row."""
    return (
        a.message_id,
        a.endpoint_id,
        a.event_id,
        a.at,
        a.status_code,
        a.latency,
        a.error,
        a.next_attempt_at,
    )


async def _settle_webhook_message(
    tx: Tx, owner: str, a: WebhookAttempt, disable_after: float
) -> bool:
    """Record one failed attempt (fenced by the lease) in the attempt log, and the
    endpoint's health: a 410 Gone, or failing for longer than disable_after, disables
    it with the reason."""
    done = await tx.fetchrow(
        "settle_webhook_message",
        a.status,
        a.next_attempt_at if a.next_attempt_at is not None else a.at,
        a.status_code,
        a.error,
        a.at,
        a.message_id,
        owner,
    )
    if done is None:  # the lease passed to another sender
        return False
    await tx.execute("insert_webhook_attempt", *_attempt_row(a))
    reason = a.disable_reason
    since = await tx.fetchrow("webhook_failing", a.at, a.endpoint_id)
    if reason is None and since is not None and since[0] <= a.at - disable_after:
        reason = f"every delivery failed for {disable_after / 86400:g} days"
    if reason is not None:
        await tx.execute("disable_webhook", reason, a.at, a.endpoint_id)
    return True


async def release_webhook_owner(tx: Tx, owner: str, now: float) -> int:
    """A dead sender's leased rows, due now (its process is gone: nothing is in flight)."""
    return len(await tx.fetch("release_webhook_owner", now, owner))


async def release_webhook_message(tx: Tx, owner: str, message_id: str, at: float) -> None:
    await tx.execute("release_webhook_message", at, message_id, owner)


# -- the suppression list ----------------------------------------------------------------


async def put_suppressions(tx: Tx, entries: Sequence[Suppression]) -> None:
    """Add or replace entries (the newest reason wins)."""
    await tx.executemany(
        "put_suppression",
        [
            (normalize(e.address), e.scope, e.reason.value, e.created_at, e.message_id)
            for e in entries
        ],
    )


async def delete_suppression(tx: Tx, address: str, scope: str | None) -> int:
    """Remove the entry of one scope, or every scope's (None); how many went."""
    if scope is None:
        return len(await tx.fetch("delete_suppressions", normalize(address)))
    return len(await tx.fetch("delete_suppression", normalize(address), scope))


# -- retention (src/mailgate/retention.py runs these, a batch per transaction) -----------


async def purge_bodies(
    tx: Tx, cutoff: float, after: str, limit: int, now: float
) -> tuple[int, str]:
    """Empty the bodies of up to `limit` finished messages (after `after`, oldest first)
    whose last change is older than `cutoff`; the rows stay, marked purged at `now`.
    Returns how many and the last id, where the next batch starts."""
    rows = await tx.fetch("body_purgeable", after, new_id(cutoff, floor=True), cutoff, limit)
    if not rows:
        return 0, after
    await tx.executemany("purge_body", [(now, r[0]) for r in rows])
    return len(rows), rows[-1][0]


async def purge_messages(tx: Tx, cutoff: float, after: str, limit: int) -> tuple[int, str]:
    """Delete up to `limit` finished messages (after `after`, oldest first) whose last
    change is older than `cutoff`, with their recipients, events and tags; and events of
    no message older than `cutoff`. Returns how many messages and the last id."""
    await tx.fetch("purge_system_events", cutoff, limit)
    rows = await tx.fetch("purgeable_messages", after, new_id(cutoff, floor=True), cutoff, limit)
    if not rows:
        return 0, after
    ids = [(r[0],) for r in rows]
    tags = [(tag, r[0]) for r in rows for tag in json.loads(r[1])]
    if tags:
        await tx.executemany("purge_message_tags", tags)
    await tx.executemany("purge_message_events", ids)
    await tx.executemany("purge_message_recipients", ids)
    await tx.executemany("purge_message", ids)
    return len(rows), rows[-1][0]


async def purge_webhook_deliveries(tx: Tx, cutoff: float, limit: int) -> int:
    """Up to `limit` settled webhook delivery rows, and as many attempt log lines, older
    than `cutoff`; how many rows of both went."""
    gone = await tx.fetch("purge_webhook_messages", cutoff, limit)
    logged = await tx.fetch("purge_webhook_attempts", cutoff, limit)
    return len(gone) + len(logged)


async def purge_idempotency(tx: Tx, now: float, limit: int) -> int:
    """Up to `limit` idempotency records expired before `now`."""
    return len(await tx.fetch("purge_idempotency", now, limit))


async def purge_finished(tx: Tx, cutoff: float, after: str, limit: int) -> tuple[int, str, float]:
    """purge_messages in one statement per table for the whole batch (its ids as one list
    parameter) instead of one per message: 10-30% less time in the write turn, measured
    on 100,000 messages (docs/retention.md). Returns how many messages, the last id, and
    the seconds its statements took: how long it held the write turn, less the commit
    (retention.py sizes the next batch by it)."""
    began = time.perf_counter()
    await tx.fetch("purge_system_events", cutoff, limit)
    rows = await tx.fetch("purgeable_messages", after, new_id(cutoff, floor=True), cutoff, limit)
    if not rows:
        return 0, after, time.perf_counter() - began
    ids = [r[0] for r in rows]
    tags = [(tag, r[0]) for r in rows for tag in json.loads(r[1])]
    if tags:
        await tx.executemany("purge_message_tags", tags)
    await tx.execute("purge_events_of", ids)
    await tx.execute("purge_recipients_of", ids)
    await tx.execute("purge_messages_of", ids)
    return len(ids), ids[-1], time.perf_counter() - began


async def purge_finished_bodies(
    tx: Tx, cutoff: float, after: str, limit: int, now: float
) -> tuple[int, str, float]:
    """purge_bodies in one statement for the whole batch; how many, the last id and the
    seconds its statements took (see purge_finished)."""
    began = time.perf_counter()
    rows = await tx.fetch("body_purgeable", after, new_id(cutoff, floor=True), cutoff, limit)
    if not rows:
        return 0, after, time.perf_counter() - began
    ids = [r[0] for r in rows]
    await tx.execute("purge_bodies_of", now, ids)
    return len(ids), ids[-1], time.perf_counter() - began
