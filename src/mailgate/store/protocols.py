"""What the rest of mailgate may ask of storage (Store), and what the queue logic asks
of a backend's transaction (Tx)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from mailgate.mailboxes.models import Grant, GrantStatus
from mailgate.models import (
    ApiKey,
    Claim,
    DkimKey,
    Domain,
    Event,
    Message,
    MessageQuery,
    NewMessage,
    Recipient,
    RecipientStatus,
    RecordCheck,
    Settlement,
    Suppression,
    Webhook,
    WebhookAttempt,
    pickled_by_fields,
)
from mailgate.store.rows import MessageRow

if TYPE_CHECKING:  # store/mailbox.py builds on this module's Tx
    from mailgate.mailboxes.models import (
        Folder,
        FolderState,
        MailboxMessage,
        MessageFilter,
        Thread,
        ThreadFilter,
    )
    from mailgate.store.mailbox import Applied, FolderChanges, Owner

Row = Sequence[Any]


@pickled_by_fields
@dataclass(frozen=True, slots=True)
class Dsn:
    """A delivery status notification to queue with the settlements it reports.

    It is queued in the settle's transaction only if every recipient it names was
    settled there: a recipient fenced out (its lease passed to another worker) is the
    new owner's to report, so a DSN naming it would report a fate this worker did not
    record."""

    message: NewMessage
    recipient_ids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Compaction:
    """What one compaction of SQLite's body segments did (store/sqlite/compaction.py)."""

    deleted: int = 0  # segments removed: no live body left in them (rewritten ones too)
    rewritten: int = 0  # mostly dead segments whose live bodies were copied out
    moved_bytes: int = 0  # live bytes copied into new segments
    freed_bytes: int = 0  # segment bytes given back to the file system
    busy: bool = False  # skipped: a backup (or another compaction) holds the lock


@dataclass(frozen=True, slots=True)
class MessagePage:
    """A page of a message search (Store.search_messages)."""

    messages: list[Message]
    next_cursor: str | None  # the next page's cursor; None: nothing older matches
    searched_to: str | None = None  # the page ran out of budget: looked back to this id


@dataclass(frozen=True, slots=True)
class RecipientGlimpse:
    """What a list shows of a message's recipients (Store.recipient_glimpses)."""

    first: list[Recipient]  # the first few, in order
    counts: dict[RecipientStatus, int]  # every recipient, by status

    @property
    def total(self) -> int:
        return sum(self.counts.values())


class BodyMoved(Exception):
    """Tx.body: the segment a row named is gone, because compaction moved the body and
    removed the segment between the row's read and the file's: read the row again."""


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

    async def get_raw(self, message_id: str) -> bytes | None:
        """The stored bytes; None when there is no such message or retention purged its
        body (the message row, recipients and events stay until their own cutoff)."""

    async def load(self, message_ids: Sequence[str]) -> dict[str, tuple[Message, bytes]]:
        """Messages with their bytes, in one round trip (what a delivery claim needs)."""

    async def recipients(self, message_id: str) -> list[Recipient]: ...

    async def recipient_glimpses(
        self, message_ids: Sequence[str], shown: int
    ) -> dict[str, RecipientGlimpse]:
        """Each message's first `shown` recipients and its recipients counted by status."""
        ...

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

    async def event_context(
        self, message_ids: Sequence[str], recipient_ids: Sequence[int]
    ) -> tuple[dict[str, tuple[list[str], dict[str, str]]], dict[int, str]]:
        """What event payloads name: each message's (tags, metadata), each recipient's
        address."""
        ...

    # webhook endpoints: with their sealed secrets (secretbox.py)
    async def get_webhook(self, hook_id: str) -> tuple[Webhook, str] | None: ...

    async def list_webhooks(self, api_key_id: str | None) -> list[Webhook]:
        """The key's endpoints; None: every endpoint."""
        ...

    async def add_webhook(self, hook: Webhook, sealed_secrets: str) -> None: ...

    async def update_webhook(self, hook: Webhook) -> bool: ...

    async def set_webhook_secrets(self, hook_id: str, sealed_secrets: str, now: float) -> bool: ...

    async def delete_webhook(self, hook_id: str) -> bool: ...

    # webhook deliveries (events/webhooks.py)
    async def queue_webhook_messages(self, rows: Sequence[Sequence[Any]]) -> None:
        """Delivery rows made outside the fan-out (a test event, a replay)."""
        ...

    async def event_by_id(self, event_id: int) -> Event | None: ...

    async def webhook_lease_owners(self) -> list[str]:
        """The senders holding leased webhook rows now."""
        ...

    async def release_webhook_owner(self, owner: str, now: float) -> int:
        """Make a dead sender's leased rows due now."""
        ...

    async def webhook_cursor(self, name: str) -> str | None: ...

    async def fan_out(
        self, name: str, old: str | None, new: str, rows: Sequence[Sequence[Any]]
    ) -> bool:
        """Move the cursor old -> new (compare and set) and write the rows; False: lost."""
        ...

    async def claim_webhook_messages(
        self, owner: str, now: float, lease_until: float, limit: int
    ) -> list[Any]:
        """Due rows (id, endpoint_id, event_id, body, attempts), leased to owner."""
        ...

    async def settle_webhook_messages(
        self, owner: str, attempts: Sequence[WebhookAttempt], disable_after: float
    ) -> int:
        """Record a batch of attempts in one transaction (each fenced by its lease)."""
        ...

    async def release_webhook_message(self, owner: str, message_id: str, at: float) -> None: ...

    async def webhook_attempts(self, endpoint_id: str, limit: int) -> list[Any]:
        """(message_id, event_id, at, status_code, latency, error, next_attempt_at), newest
        first."""
        ...

    # sending domains (domains/): keys are (DkimKey, sealed private key)
    async def get_domain(self, name: str) -> Domain | None: ...

    async def list_domains(self) -> list[Domain]: ...

    async def sending_keys(self) -> tuple[list[Domain], dict[str, str]]:
        """Sending domains with their keys not retired, and the sealed private keys by
        `domain/selector`."""
        ...

    async def add_domain(
        self, name: str, keys: Sequence[tuple[DkimKey, str]], now: float
    ) -> bool: ...

    async def add_domain_keys(self, name: str, keys: Sequence[tuple[DkimKey, str]]) -> bool: ...

    async def retire_domain_key(self, name: str, selector: str, now: float) -> bool: ...

    async def remove_domain(self, name: str) -> bool: ...

    async def record_domain_check(
        self, name: str, checks: dict[str, RecordCheck], sending: bool, now: float, next_at: float
    ) -> bool:
        """Store a check; a change of `sending` writes its event in the same transaction."""
        ...

    async def claim_domain_checks(self, now: float, next_at: float) -> list[str]:
        """Names of the domains due a check, each moved to next_at (one checker each)."""
        ...

    # -- the suppression list (suppressions.py has its rules) ----------------------------
    async def suppressed_among(self, addresses: Sequence[str]) -> dict[str, list[tuple[str, str]]]:
        """The entries of these lower-case addresses: address -> [(scope, reason)]."""
        ...

    async def list_suppressions(
        self, reason: str, prefix: str, cursor: tuple[str, str] | None, limit: int
    ) -> list[Suppression]:
        """A page in (address, scope) order after cursor; reason "" for any."""
        ...

    async def count_suppressions(self) -> int: ...

    point_reads_cheap: bool  # SQLite: a point read is local; PostgreSQL: a round trip

    async def any_suppression(self) -> bool:
        """Is the list empty? (a read of one row, whatever its size)"""
        ...

    async def put_suppressions(self, entries: Sequence[Suppression]) -> None:
        """Add or replace entries, in one transaction."""
        ...

    async def delete_suppression(self, address: str, scope: str | None) -> int:
        """Remove the address's entry of one scope, or of every scope (None)."""
        ...

    # -- retention (src/mailgate/retention.py; docs/retention.md) ------------------------
    # "Finished": every recipient in a final status; "older than cutoff": the recipients'
    # last change (updated_at) is. Each call is one small transaction.
    async def purge_bodies(
        self, cutoff: float, after: str, limit: int, now: float
    ) -> tuple[int, str]:
        """Purge the bodies of up to `limit` finished messages with ids after `after`
        (oldest first) older than `cutoff`, keeping their rows (get_raw answers None from
        now on); (how many, the last id: the next batch's `after`)."""
        ...

    async def purge_messages(self, cutoff: float, after: str, limit: int) -> tuple[int, str]:
        """Delete up to `limit` finished messages older than `cutoff` with their
        recipients, events and tags (and events of no message older than `cutoff`);
        (how many, the last id)."""
        ...

    async def purge_webhook_deliveries(self, cutoff: float, limit: int) -> int:
        """Delete up to `limit` settled webhook delivery rows and attempt log lines older
        than `cutoff`; how many."""
        ...

    async def purge_idempotency(self, now: float, limit: int) -> int:
        """Delete up to `limit` idempotency records expired before `now`; how many."""
        ...

    async def purge_finished(self, cutoff: float, after: str, limit: int) -> tuple[int, str, float]:
        """purge_messages, one statement per table for the whole batch (what retention
        runs); also the seconds its statements held the transaction (the write turn, on
        SQLite), which sizes the next batch."""
        ...

    async def purge_finished_bodies(
        self, cutoff: float, after: str, limit: int, now: float
    ) -> tuple[int, str, float]:
        """purge_bodies, one statement for the whole batch (what retention runs); also the
        seconds its statements took, as purge_finished."""
        ...

    async def purgeable_messages(self, cutoff: float, after: str, limit: int) -> tuple[int, str]:
        """Read only: how many of the batch purge_finished would delete, and its last id."""
        ...

    async def purgeable_bodies(
        self, cutoff: float, rows_cutoff: float, after: str, limit: int
    ) -> tuple[int, str]:
        """Read only: how many of the batch purge_finished_bodies would purge once the
        messages older than `rows_cutoff` are gone, and its last id."""
        ...

    async def purgeable_webhook_rows(self, cutoff: float) -> int:
        """Read only: settled webhook delivery rows and attempt lines older than `cutoff`."""
        ...

    async def expired_idempotency(self, now: float) -> int:
        """Read only: idempotency records expired before `now`."""
        ...

    async def compact_bodies(self, live_ratio: float, batch: int) -> Compaction:
        """SQLite: remove body segments with no live body; copy the live bodies of those
        below `live_ratio` live bytes into a new segment, repoint their rows (`batch` per
        transaction) and remove them. Other backends: nothing."""
        ...

    async def waiting_by_domain(self, limit: int) -> list[tuple[str, int, int, str]]:
        """(route, deferred, waiting in all, oldest waiting message id), most first."""
        ...

    async def nodes_seen(self) -> list[tuple[str, float]]: ...

    # the dashboard (src/mailgate/ui/) -----------------------------------------------
    async def search_messages(self, query: MessageQuery, budget: int) -> MessagePage:
        """list_messages for people: at most about `budget` candidates read per page
        (queries.search_messages), so every page is quick whatever the store holds."""
        ...

    async def waiting_routes(self, limit: int) -> list[tuple[str, int]]:
        """(route, recipients waiting), most first: waiting_by_domain without the counts
        that need each row read, so it stays quick with a big backlog."""
        ...

    async def waiting_at(self, route: str, limit: int) -> list[Recipient]:
        """One route's queued and deferred recipients, soonest due first."""
        ...

    async def event_ids_at(self, times: Sequence[float]) -> list[int]:
        """For each time (ascending), the id of the first event at or after it (a search
        of the events' primary key): the bounds of the overview's time buckets."""
        ...

    async def event_counts(self, ranges: Sequence[tuple[int, int]]) -> list[dict[str, int]]:
        """The events of each id range [first, end) counted by kind."""
        ...

    async def waiting_count(self) -> int:
        """Recipients waiting (queued or deferred), from the due index alone."""
        ...

    async def latest_deferrals(
        self, routes: Sequence[str]
    ) -> dict[str, tuple[int, str | None, str, float]]:
        """Each route's latest deferral (code, enhanced, text, time), where it has one."""
        ...

    # grants, the connected mailboxes (store/grants.py): `sealed` is the credentials'
    # secretbox token (mailboxes/grants.py); a Grant never carries it
    async def add_grant(self, grant: Grant, sealed: str) -> None: ...

    async def get_grant(self, grant_id: str) -> Grant | None: ...

    async def grants(self, api_key_id: str | None = None) -> list[Grant]:
        """The grants of one key; None: every grant (an admin's view)."""
        ...

    async def grant_credentials(self, grant_id: str) -> str | None:
        """The sealed credentials; None when the grant is gone."""
        ...

    async def grant_scheduled(self, grant_id: str, limit: int) -> list[Message]:
        """The grant's scheduled messages (sent from it with a send time), newest first."""
        ...

    async def update_grant(self, grant: Grant, sealed: str | None) -> bool:
        """Everything but id, owner and created_at; the credentials too unless None."""
        ...

    async def set_grant_status(
        self, grant_id: str, status: GrantStatus, error: str | None
    ) -> bool: ...

    async def delete_grant(self, grant_id: str) -> bool: ...

    # connected mailboxes' sync (store/mailbox.py): each change writes its events
    async def mailbox_folders(self, grant_id: str) -> list[FolderState]: ...

    async def put_mailbox_folders(
        self, grant_id: str, listed: Sequence[tuple[str, str | None]], now: float
    ) -> list[FolderState]:
        """The server's folders (name, role): new ones added, gone ones removed."""
        ...

    async def mailbox_folder_index(
        self, folder_id: str, uids: Sequence[int] | None = None
    ) -> dict[int, tuple[str, bool, bool]]:
        """The folder's stored messages (of `uids` only, when given): UID -> (id, unread,
        starred)."""
        ...

    async def mailbox_folder_count(self, folder_id: str, below: int) -> int:
        """How many of the folder's stored messages have a UID below `below`."""
        ...

    async def mailbox_folder_list(self, grant_id: str) -> list[Folder]: ...

    async def apply_mailbox_changes(self, owner: Owner, changes: FolderChanges) -> Applied:
        """One step of a folder's sync, with its events, in one transaction."""
        ...

    async def finish_mailbox_pass(self, owner: Owner, started: float, now: float) -> int:
        """Delete what vanished before the pass began and was not found since."""
        ...

    async def set_mailbox_flags(
        self, owner: Owner, message_id: str, unread: bool, starred: bool, now: float
    ) -> None: ...

    async def move_mailbox_message(
        self, owner: Owner, message_id: str, folder_id: str, uid: int, now: float
    ) -> None: ...

    async def delete_mailbox_message(self, owner: Owner, message_id: str, now: float) -> None: ...

    async def claim_mailbox_lease(
        self, grant_id: str, owner: str, now: float, until: float
    ) -> bool:
        """Take or renew the grant's sync lease (free, expired or owner's own): one
        process syncs a grant at a time."""
        ...

    async def release_mailbox_lease(self, grant_id: str, owner: str) -> None: ...

    async def mailbox_message(self, grant_id: str, message_id: str) -> MailboxMessage | None: ...

    async def mailbox_messages(
        self,
        grant_id: str,
        f: MessageFilter,
        folder_id: str | None,
        after: tuple[float, str] | None,
    ) -> tuple[list[MailboxMessage], str | None]:
        """Newest first, after the (date, id) of the previous page's last."""
        ...

    async def mailbox_threads(
        self,
        grant_id: str,
        f: ThreadFilter,
        folder_id: str | None,
        after: tuple[float, str] | None,
    ) -> tuple[list[Thread], str | None]: ...

    async def mailbox_thread(self, grant_id: str, thread_id: str) -> Thread | None: ...


class Tx(Protocol):
    """One transaction (or, for reads, one connection) of a backend, with statements
    named as in store/sql/. store/queue.py writes every state change against this once.

    The SQLite Tx's methods never suspend: its writer thread runs a queue coroutine to
    completion in one step (store.sqlite.tx.drive). The PostgreSQL Tx awaits asyncpg."""

    async def fetch(self, name: str, *args: Any) -> Sequence[Row]: ...

    async def fetchrow(self, name: str, *args: Any) -> Row | None: ...

    async def execute(self, name: str, *args: Any) -> None: ...

    async def executemany(self, name: str, rows: Sequence[Sequence[Any]]) -> None: ...

    async def query(self, sql: str, *args: Any) -> Sequence[Row]:
        """SQL built at run time (list filters), with `?` parameters."""

    async def script(self, text: str) -> None:
        """A migration file's statements."""

    async def insert_messages(self, rows: Sequence[MessageRow]) -> None:
        """Insert message rows; SQLite first puts large bodies in body files."""

    async def claim_due(
        self, now: float, limit: int, lease_until: float, owner: str
    ) -> Sequence[Row]:
        """Lease up to `limit` due recipients of the most overdue domain; their rows
        (RECIPIENT_COLUMNS), each with the lease_owner it had before this claim."""

    def body(self, raw: bytes, body_file: str | None, body_offset: int | None, size: int) -> bytes:
        """A message's bytes from what get_raw / load return; BodyMoved when the segment
        named is gone (compaction moved the body meanwhile: read the row again)."""

    def wake_workers(self) -> None:
        """Wake waiting delivery workers once this transaction commits."""
