"""The durable store: one interface, two implementations (SQLite, PostgreSQL).

Every method that changes state returns only after its transaction is committed to
disk. State changes of recipients write their event in the same transaction.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from mailgate.models import (
    ApiKey,
    Claim,
    Event,
    EventKind,
    LeaseExpiredDetails,
    Message,
    MessageQuery,
    NewMessage,
    OutcomeDetails,
    Recipient,
    RecipientStatus,
    Reply,
    Scope,
    Settlement,
    Source,
)


@dataclass(frozen=True, slots=True)
class Dsn:
    """A delivery status notification to queue with the settlements it reports.

    It is queued in the settle's transaction only if every recipient it names was
    settled there: a recipient fenced out (its lease passed to another worker) is the
    new owner's to report, so a DSN naming it would report a fate this worker did not
    record."""

    message: NewMessage
    recipient_ids: tuple[int, ...]


class Store(Protocol):
    """What the rest of mailgate may ask of storage."""

    async def open(self) -> None:
        """Connect, check durability settings, apply migrations."""

    async def close(self) -> None: ...

    async def ping(self) -> None:
        """Raise StoreUnavailable unless a write can be committed now."""

    # messages -------------------------------------------------------------
    async def enqueue(self, message: NewMessage) -> str:
        """Store the message, one row per recipient and an `accepted` event, atomically.

        Returns the message id. With message.idempotency set and that key already used
        by the same API key (not expired), raises DuplicateIdempotencyKey instead.
        """

    async def enqueue_many(self, messages: Sequence[NewMessage]) -> list[str]:
        """Like enqueue for several messages, all in one transaction."""

    async def get_message(self, message_id: str) -> Message | None: ...

    async def get_raw(self, message_id: str) -> bytes | None: ...

    async def load(self, message_ids: Sequence[str]) -> dict[str, tuple[Message, bytes]]:
        """Messages with their bytes, in one round trip (what a delivery claim needs)."""

    async def recipients(self, message_id: str) -> list[Recipient]: ...

    async def events(self, message_id: str) -> list[Event]: ...

    async def events_since(
        self, cursor: str | None, limit: int, api_key_id: str | None = None
    ) -> tuple[list[Event], str]:
        """The outbox feed: up to `limit` events after `cursor` (None: from the start),
        in commit order, and the cursor to pass next (the same one when none is new).

        Exact on both backends: an event that commits after one already returned is
        still returned after it, never skipped. The cursor is opaque (its form differs
        per backend). api_key_id: only that key's events."""

    async def list_messages(self, query: MessageQuery) -> list[Message]:
        """Newest first; query.cursor is the last id of the previous page."""

    async def idempotent_response(self, api_key_id: str | None, key: str) -> tuple[str, str] | None:
        """(request_hash, response) stored for an unexpired idempotency key."""

    # queue ----------------------------------------------------------------
    async def claim(self, owner: str, now: float, limit: int, lease_seconds: float) -> Claim | None:
        """Lease up to `limit` due recipients of one domain (the most overdue one)."""

    async def settle(
        self, owner: str, settlements: Sequence[Settlement], dsns: Sequence[Dsn] = ()
    ) -> int:
        """Record outcomes of leased recipients with their events, and queue the DSNs
        that report them, in one transaction; returns rows changed.

        A settlement whose lease has passed to another owner is skipped (fencing), and
        so is every DSN naming it (see Dsn). If a DSN cannot be written, nothing is.
        """

    async def release(self, owner: str, recipient_ids: Sequence[int], now: float) -> int:
        """Give leased recipients back, due at `now`, without counting an attempt."""

    async def recover_leases(self, owner_prefix: str, now: float) -> int:
        """Make recipients leased by a dead worker (its owner starts with `owner_prefix`)
        due at `now`. The owner stays, so the next claim records `lease_expired`."""

    async def cancel(self, message_id: str, now: float) -> int:
        """Cancel the message's active recipients; returns how many."""

    async def retry_now(self, message_id: str, now: float) -> int:
        """Make the message's active, unleased recipients due at `now`."""

    async def status_counts(self) -> dict[RecipientStatus, int]: ...

    async def wait_for_work(self, timeout: float) -> None:
        """Return when new work may be due (a NOTIFY, a local enqueue) or after timeout."""

    # API keys -------------------------------------------------------------
    async def add_key(self, key: ApiKey, secret_hash: str) -> None: ...

    async def get_key(self, key_id: str) -> tuple[ApiKey, str] | None: ...

    async def list_keys(self) -> list[ApiKey]: ...

    async def revoke_key(self, key_id: str, now: float) -> bool: ...


EVENT_FOR_STATUS: dict[RecipientStatus, EventKind] = {
    RecipientStatus.DELIVERED: EventKind.DELIVERED,
    RecipientStatus.DEFERRED: EventKind.DEFERRED,
    RecipientStatus.BOUNCED: EventKind.BOUNCED,
    RecipientStatus.EXPIRED: EventKind.EXPIRED,
    RecipientStatus.CANCELLED: EventKind.CANCELLED,
    RecipientStatus.SUPPRESSED: EventKind.SUPPRESSED,
}


def settle_params(s: Settlement, now: float, owner: str) -> tuple[Any, ...]:
    """The settle statement's parameters, in the order both backends' SQL takes them."""
    r = s.reply
    return (
        s.status.value,
        s.next_attempt_at if s.status is RecipientStatus.DEFERRED else None,
        r.code if r else None,
        r.enhanced if r else None,
        r.text if r else None,
        s.remote_host,
        now,
        s.recipient_id,
        owner,
    )


def settlement_details(s: Settlement) -> str:
    details: OutcomeDetails = {}
    if s.reply is not None:
        details = {"code": s.reply.code, "enhanced": s.reply.enhanced, "text": s.reply.text}
    if s.remote_host:
        details["remote_host"] = s.remote_host
    if s.next_attempt_at is not None:
        details["next_attempt_at"] = s.next_attempt_at
    return json.dumps(details)


_QUEUED = RecipientStatus.QUEUED.value
_ACCEPTED = EventKind.ACCEPTED.value
Rows = tuple[tuple[Any, ...], list[tuple[Any, ...]], tuple[Any, ...], list[tuple[str, str]]]


def message_rows(m: NewMessage) -> Rows:
    """(message row, recipient rows, accepted-event row, tag rows) for an enqueue.

    The accepted event's details are AcceptedDetails, written as text directly (this is
    the enqueue hot path: json.dumps of three fixed keys cost more than the format)."""
    due = m.scheduled_at if m.scheduled_at is not None else m.created_at
    mid, created = m.id, m.created_at
    msg = (
        mid,
        created,
        m.sender,
        str(m.source),
        m.api_key_id,
        json.dumps(list(m.tags)) if m.tags else "[]",
        json.dumps(m.metadata) if m.metadata else "{}",
        m.idempotency_key,
        m.message_id_header,
        m.subject,
        m.scheduled_at,
        len(m.raw),
        m.raw,
    )
    rcpts = [(mid, a, a.rpartition("@")[2].lower(), _QUEUED, due, created) for a in m.recipients]
    details = f'{{"recipients": {len(m.recipients)}, "size": {len(m.raw)}, "source": "{m.source}"}}'
    event = (mid, _ACCEPTED, created, details, m.api_key_id)
    return msg, rcpts, event, [(t, mid) for t in m.tags]


MESSAGE_COLUMNS = (
    "id, sender, source, api_key_id, tags, metadata, idempotency_key,"
    " message_id_header, subject, scheduled_at, created_at, size"
)
RECIPIENT_COLUMNS = (
    "id, message_id, address, domain, status, attempts, next_attempt_at, lease_owner,"
    " last_code, last_enhanced, last_text, remote_host, updated_at"
)
EVENT_COLUMNS = "id, message_id, recipient_id, kind, at, details, api_key_id"
KEY_COLUMNS = "id, name, scopes, sender_domains, created_at, revoked_at, secret_hash"


def message_from_row(r: Sequence[Any]) -> Message:
    return Message(
        id=r[0],
        sender=r[1],
        source=Source(r[2]),
        api_key_id=r[3],
        tags=tuple(json.loads(r[4])),
        metadata=json.loads(r[5]),
        idempotency_key=r[6],
        message_id_header=r[7],
        subject=r[8],
        scheduled_at=r[9],
        created_at=r[10],
        size=r[11],
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


def lease_expired_details(previous_owner: str) -> str:
    details: LeaseExpiredDetails = {"previous_owner": previous_owner}
    return json.dumps(details)


def key_from_row(r: Sequence[Any]) -> tuple[ApiKey, str]:
    key = ApiKey(
        id=r[0],
        name=r[1],
        scopes=frozenset(Scope(s) for s in r[2].split(",") if s),
        sender_domains=tuple(d for d in r[3].split(",") if d),
        created_at=r[4],
        revoked_at=r[5],
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
    )


def open_store(
    url: str,
    *,
    unsafe_no_fsync: bool = False,
    batch_max: int = 1000,
    pool_size: int = 8,
    exclusive: bool = False,
) -> Store:
    """The store named by `url` (sqlite:///path or postgresql://...), not yet opened.

    exclusive: this process is the server; a second server on the same SQLite file is
    refused. Short-lived commands (keys, queue) share the file through SQLite's locking.
    """
    if url.startswith(("postgresql://", "postgres://")):
        from mailgate.store.postgres import PostgresStore

        return PostgresStore(url, batch_max=batch_max, pool_size=pool_size)
    if url.startswith("sqlite:///"):
        from mailgate.store.sqlite import SqliteStore

        return SqliteStore(
            url[len("sqlite:///") :],
            unsafe_no_fsync=unsafe_no_fsync,
            batch_max=batch_max,
            exclusive=exclusive,
        )
    from mailgate.errors import ConfigError

    raise ConfigError(f"config: store.url: expected sqlite:///path or postgresql://…, got {url!r}")


def dsns_to_queue(dsns: Sequence[Dsn], settled: set[int]) -> list[NewMessage]:
    """The DSNs whose every recipient was settled by this transaction (see Dsn)."""
    return [d.message for d in dsns if settled.issuperset(d.recipient_ids)]
