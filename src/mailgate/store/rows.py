"""Rows as the store writes and reads them, and their conversion to and from models.

Written rows are NamedTuples in their SQL's parameter order, so a list of them goes to
executemany as is. Read rows come back in the order of the column lists below (the
SELECTs in store/sql/ name them as `{message_columns}` and so on).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, NamedTuple

from mailgate.models import (
    SANDBOX_ROUTE,
    ApiKey,
    DkimAlgorithm,
    DkimKey,
    Domain,
    Event,
    EventKind,
    LeaseExpiredDetails,
    Message,
    NewMessage,
    OutcomeDetails,
    Recipient,
    RecipientStatus,
    RecordCheck,
    RecordStatus,
    Reply,
    Scope,
    Settlement,
    Source,
    Webhook,
)

MESSAGE_COLUMNS = (
    "id, sender, source, api_key_id, tags, metadata, message_id_header, subject,"
    " scheduled_at, created_at, size"
)
RECIPIENT_COLUMNS = (
    "id, message_id, address, domain, status, attempts, next_attempt_at, lease_owner,"
    " last_code, last_enhanced, last_text, remote_host, updated_at"
)
EVENT_COLUMNS = "id, message_id, recipient_id, kind, at, details, api_key_id"
KEY_COLUMNS = "id, name, scopes, sender_domains, created_at, revoked_at, secret_hash, sandbox"
DOMAIN_COLUMNS = "name, created_at, sending, checks, checked_at"
DOMAIN_KEY_COLUMNS = "domain, selector, algorithm, public_key, created_at, retired_at"
WEBHOOK_COLUMNS = (
    "id, api_key_id, url, events, description, enabled, disabled_reason, created_at, updated_at,"
    " created_by"
)
COLUMNS = {
    "message_columns": MESSAGE_COLUMNS,
    "recipient_columns": RECIPIENT_COLUMNS,
    "event_columns": EVENT_COLUMNS,
    "key_columns": KEY_COLUMNS,
    "domain_columns": DOMAIN_COLUMNS,
    "domain_key_columns": DOMAIN_KEY_COLUMNS,
    "webhook_columns": WEBHOOK_COLUMNS,
}


class MessageRow(NamedTuple):
    """A messages row to insert. body_file/body_offset: where the body lives when the
    SQLite store put it in a body file (raw is then b""); None while it is inline.
    PostgreSQL has no such columns and inserts the first INLINE_COLUMNS fields."""

    id: str
    created_at: float
    sender: str
    source: str
    api_key_id: str | None
    tags: str
    metadata: str
    message_id_header: str | None
    subject: str | None
    scheduled_at: float | None
    size: int
    raw: bytes
    body_file: str | None = None
    body_offset: int | None = None


INLINE_COLUMNS = 12  # MessageRow up to raw


class RecipientRow(NamedTuple):
    message_id: str
    address: str
    domain: str  # the route: the address's domain, or SANDBOX_ROUTE
    status: str
    next_attempt_at: float | None
    updated_at: float


class EventRow(NamedTuple):
    message_id: str
    kind: str
    at: float
    details: str
    api_key_id: str | None


class RecipientEventRow(NamedTuple):
    """An event of one recipient; its owner is copied from the message by the SQL."""

    recipient_id: int
    kind: str
    at: float
    details: str
    message_id: str


class TagRow(NamedTuple):
    tag: str
    message_id: str


class SuppressedEventRow(NamedTuple):
    """The event of a recipient the door found suppressed (its id is looked up by SQL)."""

    at: float
    details: str
    message_id: str
    address: str


class NewRows(NamedTuple):
    """Everything one enqueue inserts."""

    message: MessageRow
    recipients: list[RecipientRow]
    event: EventRow
    tags: list[TagRow]
    suppressed: list[SuppressedEventRow]


_new = tuple.__new__
_QUEUED = RecipientStatus.QUEUED.value
_SUPPRESSED = RecipientStatus.SUPPRESSED.value
_ACCEPTED = EventKind.ACCEPTED.value


def message_rows(m: NewMessage) -> NewRows:
    """The rows of an enqueue: built by the caller, outside any transaction.

    This is the enqueue hot path, so the rows are made with tuple.__new__ (a NamedTuple's
    own constructor is a Python function: it cost 2 µs more per message than plain
    tuples), and the accepted event's details (AcceptedDetails) are formatted as text
    directly (json.dumps of three fixed keys cost more than the format)."""
    due = m.scheduled_at if m.scheduled_at is not None else m.created_at
    mid, created, raw = m.id, m.created_at, m.raw
    msg = _new(
        MessageRow,
        (
            mid,
            created,
            m.sender,
            str(m.source),
            m.api_key_id,
            json.dumps(list(m.tags)) if m.tags else "[]",
            json.dumps(m.metadata) if m.metadata else "{}",
            m.message_id_header,
            m.subject,
            m.scheduled_at,
            len(raw),
            raw,
            None,
            None,
        ),
    )
    if m.sandbox:  # the simulator's, whatever the domain
        rcpts = [
            _new(RecipientRow, (mid, a, SANDBOX_ROUTE, _QUEUED, due, created)) for a in m.recipients
        ]
    elif m.route is not None:  # a grant's: its submission server, whatever the domain
        rcpts = [_new(RecipientRow, (mid, a, m.route, _QUEUED, due, created)) for a in m.recipients]
    else:
        rcpts = [
            _new(RecipientRow, (mid, a, a.rpartition("@")[2].lower(), _QUEUED, due, created))
            for a in m.recipients
        ]
    details = f'{{"recipients": {len(m.recipients)}, "size": {len(raw)}, "source": "{m.source}"}}'
    event = _new(EventRow, (mid, _ACCEPTED, created, details, m.api_key_id))
    tags = [_new(TagRow, (t, mid)) for t in m.tags] if m.tags else []
    suppressed: list[SuppressedEventRow] = []
    if m.suppressed:  # never queued: no due time, an event naming the reason instead
        stopped = m.suppressed
        rcpts = [
            r._replace(status=_SUPPRESSED, next_attempt_at=None) if r.address in stopped else r
            for r in rcpts
        ]
        suppressed = [
            SuppressedEventRow(created, json.dumps({"reason": reason}), mid, address)
            for address, reason in stopped.items()
        ]
    return _new(NewRows, (msg, rcpts, event, tags, suppressed))


def rows_wire(r: NewRows) -> tuple[Any, ...]:
    """An enqueue's rows as plain tuples, for the writer process's socket: a NamedTuple
    pickles through copyreg, and did so at 18 µs a message and unpickled at 13, against
    5 and 3 for the same values as tuples (a 2 KB message, here)."""
    msg, rcpts, event, tags, suppressed = r
    return (
        tuple(msg),
        [tuple(x) for x in rcpts],
        tuple(event),
        [tuple(x) for x in tags],
        [tuple(x) for x in suppressed],
    )


def rows_unwire(w: tuple[Any, ...]) -> NewRows:
    """rows_wire's tuples as NewRows again."""
    msg, rcpts, event, tags, suppressed = w
    return _new(
        NewRows,
        (
            _new(MessageRow, msg),
            [_new(RecipientRow, x) for x in rcpts],
            _new(EventRow, event),
            [_new(TagRow, x) for x in tags],
            [_new(SuppressedEventRow, x) for x in suppressed],
        ),
    )


EVENT_FOR_STATUS: dict[RecipientStatus, EventKind] = {
    RecipientStatus.DELIVERED: EventKind.DELIVERED,
    RecipientStatus.DEFERRED: EventKind.DEFERRED,
    RecipientStatus.BOUNCED: EventKind.BOUNCED,
    RecipientStatus.EXPIRED: EventKind.EXPIRED,
    RecipientStatus.CANCELLED: EventKind.CANCELLED,
    RecipientStatus.SUPPRESSED: EventKind.SUPPRESSED,
}


def settle_values(s: Settlement) -> tuple[Any, ...]:
    """One outcome as the settle statement reads it from its JSON rows, in its order."""
    r = s.reply
    return (
        s.status.value,
        s.next_attempt_at if s.status is RecipientStatus.DEFERRED else None,
        r.code if r else None,
        r.enhanced if r else None,
        r.text if r else None,
        s.remote_host,
        s.recipient_id,
    )


def settlement_details(s: Settlement, attempt: int) -> str:
    details: OutcomeDetails = {"attempt": attempt}
    if s.reply is not None:
        details["code"], details["text"] = s.reply.code, s.reply.text
        details["enhanced"] = s.reply.enhanced
    if s.remote_host:
        details["remote_host"] = s.remote_host
    if s.next_attempt_at is not None:
        details["next_attempt_at"] = s.next_attempt_at
    if s.reason is not None:
        details["reason"] = s.reason
    return json.dumps(details)


def lease_expired_details(previous_owner: str) -> str:
    details: LeaseExpiredDetails = {"previous_owner": previous_owner}
    return json.dumps(details)


def message_from_row(r: Sequence[Any]) -> Message:
    return Message(
        id=r[0],
        sender=r[1],
        source=Source(r[2]),
        api_key_id=r[3],
        tags=tuple(json.loads(r[4])),
        metadata=json.loads(r[5]),
        message_id_header=r[6],
        subject=r[7],
        scheduled_at=r[8],
        created_at=r[9],
        size=r[10],
    )


def recipient_from_row(r: Sequence[Any]) -> Recipient:
    reply = Reply(r[8], r[9], r[10] or "") if r[8] is not None else None
    return Recipient(
        id=r[0],
        message_id=r[1],
        address=r[2],
        domain=r[3],
        status=RecipientStatus(r[4]),
        attempts=r[5],
        next_attempt_at=r[6],
        lease_owner=r[7],
        last_reply=reply,
        remote_host=r[11],
        updated_at=r[12],
    )


def event_from_row(r: Sequence[Any]) -> Event:
    return Event(
        id=r[0],
        message_id=r[1],
        recipient_id=r[2],
        kind=EventKind(r[3]),
        at=r[4],
        details=json.loads(r[5]),
        api_key_id=r[6],
    )


def key_from_row(r: Sequence[Any]) -> tuple[ApiKey, str]:
    key = ApiKey(
        id=r[0],
        name=r[1],
        scopes=frozenset(Scope(s) for s in r[2].split(",") if s),
        sender_domains=tuple(d for d in r[3].split(",") if d),
        created_at=r[4],
        revoked_at=r[5],
        sandbox=bool(r[7]),
    )
    return key, r[6]


def key_row(key: ApiKey, secret_hash: str) -> tuple[Any, ...]:
    return (
        key.id,
        key.name,
        secret_hash,
        ",".join(sorted(s.value for s in key.scopes)),
        ",".join(key.sender_domains),
        key.created_at,
        key.revoked_at,
        int(key.sandbox),
    )


def domain_key_from_row(r: Sequence[Any]) -> DkimKey:
    return DkimKey(r[0], r[1], DkimAlgorithm(r[2]), r[3], r[4], r[5])


def domain_key_row(key: DkimKey, sealed: str) -> tuple[Any, ...]:
    return (key.domain, key.selector, key.algorithm.value, key.public_key, sealed, key.created_at)


def domain_from_row(r: Sequence[Any], keys: Sequence[DkimKey]) -> Domain:
    checks = {
        rid: RecordCheck(RecordStatus(c["status"]), tuple(c["found"]), c["ok"])
        for rid, c in json.loads(r[3]).items()
    }
    return Domain(r[0], r[1], bool(r[2]), checks, r[4], tuple(keys))


def checks_json(checks: dict[str, RecordCheck]) -> str:
    return json.dumps(
        {
            rid: {"status": c.status.value, "found": list(c.found), "ok": c.ok}
            for rid, c in checks.items()
        }
    )


def webhook_from_row(r: Sequence[Any]) -> Webhook:
    events = tuple(json.loads(r[3]))
    return Webhook(r[0], r[1], r[2], events, r[4], bool(r[5]), r[6], r[7], r[8], r[9])


def webhook_row(hook: Webhook) -> tuple[Any, ...]:
    """The columns update_webhook sets, then the id."""
    return (
        hook.url,
        json.dumps(list(hook.events)),
        hook.description,
        int(hook.enabled),
        hook.disabled_reason,
        hook.updated_at,
        hook.id,
    )
