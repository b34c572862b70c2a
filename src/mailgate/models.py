"""The nouns of mailgate: messages, recipients, events, API keys.

Plain frozen dataclasses and closed enums. Nothing here does I/O and nothing here
imports other mailgate modules.
"""

from __future__ import annotations

import enum
import operator
import os
import random
import time
from dataclasses import dataclass, field, fields
from typing import Any, TypedDict, TypeVar

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_PAIRS = [a + b for a in _CROCKFORD for b in _CROCKFORD]  # 10 bits -> two characters
_rng = random.Random(os.urandom(32))  # ids must be unique and sortable, not secret
# A forked child must not repeat its parent's sequence (two processes, the same ids).
os.register_at_fork(after_in_child=lambda: _rng.seed(os.urandom(32)))

_D = TypeVar("_D")


def pickled_by_fields(cls: type[_D]) -> type[_D]:
    """Pickle a frozen, slotted dataclass as its class and field values. By default it
    pickles through dataclasses' __getstate__/__setstate__, which call fields() for
    every object: ~3 us more per recipient claimed and settled through serve's writer
    process (store/sqlite/writer.py). Put it above @dataclass."""
    names = [f.name for f in fields(cls)]  # type: ignore[arg-type]
    get = operator.attrgetter(*names)

    def __reduce__(self: _D) -> tuple[type[_D], tuple[Any, ...]]:
        values = get(self)
        return cls, (values,) if len(names) == 1 else values

    cls.__reduce__ = __reduce__  # type: ignore[assignment, method-assign]
    return cls


MAX_ID_TIME = (2**48 - 1) / 1000  # the last millisecond an id can carry, in seconds


def new_id(now: float | None = None, *, floor: bool = False) -> str:
    """A 26-character ULID: 48-bit milliseconds + 80 random bits, Crockford base32.

    Sortable by creation time and URL-safe. With floor=True the random bits are zero:
    the smallest id of that millisecond, for time-range queries on the id index.
    """
    # clamped to what 48 bits of milliseconds hold: before 1970 is 0, far future the last
    ms = int(min(max(0.0, time.time() if now is None else now), MAX_ID_TIME) * 1000)
    rand = 0 if floor else _rng.getrandbits(80)
    pairs = _PAIRS
    head = (
        _CROCKFORD[(ms >> 45) & 31]
        + "".join([pairs[(ms >> s) & 1023] for s in (35, 25, 15, 5)])
        + _CROCKFORD[ms & 31]
    )
    tail = "".join([pairs[(rand >> s) & 1023] for s in (70, 60, 50, 40, 30, 20, 10, 0)])
    return head + tail


def id_time(ulid: str) -> float:
    """The creation time (seconds) a ULID carries in its first 10 characters."""
    ms = 0
    for char in ulid[:10]:
        ms = ms * 32 + _CROCKFORD.index(char)
    return ms / 1000


class Source(enum.StrEnum):
    """Which door a message came through."""

    HTTP = "http"  # POST /v1/messages and friends
    SMTP = "smtp"  # the SMTP relay / submission listener
    DSN = "dsn"  # a delivery status notification mailgate wrote itself


class RecipientStatus(enum.StrEnum):
    """Where one envelope recipient stands. Active statuses are claimable."""

    QUEUED = "queued"  # accepted, not yet attempted (or scheduled for later)
    DEFERRED = "deferred"  # attempted, got a temporary failure, will retry
    DELIVERED = "delivered"  # the remote server answered 2xx after DATA
    BOUNCED = "bounced"  # permanent failure (5xx, null MX, NXDOMAIN, policy)
    EXPIRED = "expired"  # kept failing temporarily past the queue lifetime
    CANCELLED = "cancelled"  # cancelled by a user before delivery
    SUPPRESSED = "suppressed"  # on a suppression list; never attempted


ACTIVE_STATUSES = (RecipientStatus.QUEUED, RecipientStatus.DEFERRED)


class EventKind(enum.StrEnum):
    """What happened. Events are append-only."""

    ACCEPTED = "accepted"  # message and recipients committed; ingress acknowledged
    DELIVERED = "delivered"  # recipient delivered
    DEFERRED = "deferred"  # temporary failure, retry scheduled
    BOUNCED = "bounced"  # permanent failure
    EXPIRED = "expired"  # gave up after the queue lifetime
    CANCELLED = "cancelled"  # cancelled by a user
    SUPPRESSED = "suppressed"  # skipped because the address is suppressed
    RETRY_NOW = "retry_now"  # an operator made a deferred recipient due immediately
    LEASE_EXPIRED = "lease_expired"  # a worker's claim ran out and was taken again
    # A domain's events carry no message (message_id is ""); details name the domain.
    DOMAIN_VERIFIED = "domain_verified"  # its DKIM records were found: it signs and sends
    DOMAIN_UNVERIFIED = "domain_unverified"  # a verified domain's DKIM records went missing
    COMPLAINED = "complained"  # the recipient reported the delivered message as spam
    # A connected mailbox's message (mailboxes/): message_id is the mailbox message's id,
    # details name its grant, folder and thread.
    MAILBOX_CREATED = "mailbox_created"  # a new message was synced from the mailbox
    MAILBOX_UPDATED = "mailbox_updated"  # its flags or folder changed
    MAILBOX_DELETED = "mailbox_deleted"  # it is gone from the mailbox


class SuppressionReason(enum.StrEnum):
    """Why mail to an address is stopped at the door."""

    HARD_BOUNCE = "hard_bounce"  # a permanent failure for the address (5.1.1 user unknown, ...)
    COMPLAINT = "complaint"  # its owner reported mail as spam
    UNSUBSCRIBE = "unsubscribe"  # its owner asked for no more mail
    MANUAL = "manual"  # added by a user


# The route (recipients.domain) of a sandbox key's recipients: not a domain any address can
# have, so they are claimed apart from real mail and handed to the simulator, never to MX.
SANDBOX_ROUTE = "(sandbox)"
# The route of mail sent from a connected mailbox (a grant): "(grant:<id>)". Its recipients
# are claimed apart and handed to that mailbox's own SMTP submission server, never to MX.
GRANT_ROUTE = "(grant:{})"


def grant_of_route(route: str) -> str | None:
    """The grant id a route names, or None for any other route."""
    if route.startswith("(grant:") and route.endswith(")"):
        return route[len("(grant:") : -1]
    return None


class RecordStatus(enum.StrEnum):
    """What a DNS check found for one record a sending domain publishes."""

    PENDING = "pending"  # not checked yet
    VERIFIED = "verified"  # found, with the value asked for
    MISSING = "missing"  # no such record (NXDOMAIN, or none of that kind)
    MISMATCHED = "mismatched"  # a record is there with another value (shown as found)
    UNKNOWN = "unknown"  # DNS failed (SERVFAIL, timeout): nothing learned, nothing changed


class DkimAlgorithm(enum.StrEnum):
    RSA = "rsa-sha256"  # RSA-2048, RFC 6376
    ED25519 = "ed25519-sha256"  # RFC 8463


class Scope(enum.StrEnum):
    """What an API key may do."""

    SEND = "send"  # submit mail over HTTP or SMTP AUTH
    READ = "read"  # read its own messages and events
    ADMIN = "admin"  # everything, including every key's messages


@pickled_by_fields
@dataclass(frozen=True, slots=True)
class Reply:
    """An SMTP reply, the one vocabulary for it: what the relay answers its clients,
    what a remote server answered delivery (kept as received, cleaned), what a DSN
    quotes. `enhanced` is the RFC 3463 status, None when a remote sent none.
    (smtp_client.Response is the raw multi-line answer before it is read as a Reply;
    delivery.outcome.Outcome is a verdict about a recipient that carries a Reply.)"""

    code: int
    enhanced: str | None
    text: str


@pickled_by_fields
@dataclass(frozen=True, slots=True)
class Idempotency:
    """A request fingerprint kept with the message it produced, for replays."""

    key: str
    request_hash: str
    response: str  # what the first request was answered (JSON text)
    expires_at: float


@pickled_by_fields
@dataclass(frozen=True, slots=True)
class NewMessage:
    """A message ready to be stored: bytes composed, envelope decided."""

    raw: bytes
    sender: str  # envelope MAIL FROM; "" for the null sender
    recipients: tuple[str, ...]
    source: Source
    api_key_id: str | None = None
    tags: tuple[str, ...] = ()
    metadata: dict[str, str] = field(default_factory=dict)
    idempotency: Idempotency | None = None
    message_id_header: str | None = None
    subject: str | None = None
    scheduled_at: float | None = None
    id: str = ""  # default: a new ULID of created_at
    created_at: float = field(default_factory=time.time)
    from_domain: str = ""  # of the first From address: what a suppression's scope names
    sandbox: bool = False  # a sandbox key's: recipients go to the simulator, never out
    suppressed: dict[str, str] = field(default_factory=dict)  # recipient -> reason (door)
    route: str | None = None  # every recipient's route (GRANT_ROUTE); None: its domain

    def __post_init__(self) -> None:
        if not self.id:
            object.__setattr__(self, "id", new_id(self.created_at))


@pickled_by_fields
@dataclass(frozen=True, slots=True)
class Message:
    """A stored message (without its bytes, which are fetched on demand)."""

    id: str
    sender: str
    source: Source
    api_key_id: str | None
    tags: tuple[str, ...]
    metadata: dict[str, str]
    message_id_header: str | None
    subject: str | None
    scheduled_at: float | None
    created_at: float
    size: int


@pickled_by_fields
@dataclass(frozen=True, slots=True)
class Recipient:
    """One envelope recipient of one message and its queue state."""

    id: int
    message_id: str
    address: str
    domain: str
    status: RecipientStatus
    attempts: int
    next_attempt_at: float | None
    lease_owner: str | None
    last_reply: Reply | None
    remote_host: str | None
    updated_at: float


class AcceptedDetails(TypedDict):
    """details of ACCEPTED."""

    recipients: int  # envelope recipients stored
    size: int  # octets of the stored message
    source: str  # a Source value


class OutcomeDetails(TypedDict, total=False):
    """details of DELIVERED, DEFERRED, BOUNCED and EXPIRED: what the attempt got."""

    code: int  # the SMTP reply code (absent when there was no reply)
    enhanced: str | None  # its RFC 3463 code
    text: str  # its text
    remote_host: str  # the host that answered
    next_attempt_at: float  # DEFERRED: when the next attempt is due
    attempt: int  # which attempt this was (1 for the first)
    reason: str  # SUPPRESSED at delivery (listed after it was accepted): the reason


class LeaseExpiredDetails(TypedDict):
    """details of LEASE_EXPIRED."""

    previous_owner: str  # the worker whose lease ran out


# details of CANCELLED and RETRY_NOW: {} (nothing beyond the event itself)
EventDetails = AcceptedDetails | OutcomeDetails | LeaseExpiredDetails


@pickled_by_fields
@dataclass(frozen=True, slots=True)
class Event:
    """One line of a message's append-only history (the outbox).

    details has the fixed keys of its kind's TypedDict above; the store writes them
    from those types and decodes them in one place (store.rows.event_from_row)."""

    id: int
    message_id: str
    recipient_id: int | None
    kind: EventKind
    at: float
    details: dict[str, Any]
    api_key_id: str | None = None  # the key that owns the message (None: no key, or a DSN)


@pickled_by_fields
@dataclass(frozen=True, slots=True)
class Claim:
    """Due recipients of one domain, leased to one worker until lease_until.

    Each recipient's lease_owner is the owner *before* this claim: None, unless a worker
    died holding it (the message may already have reached the remote)."""

    domain: str
    owner: str
    lease_until: float
    recipients: tuple[Recipient, ...]


@pickled_by_fields
@dataclass(frozen=True, slots=True)
class Settlement:
    """The result of one attempt for one recipient, to be recorded with its event."""

    recipient_id: int
    status: RecipientStatus  # DELIVERED, DEFERRED, BOUNCED or EXPIRED
    reply: Reply | None
    remote_host: str | None = None
    next_attempt_at: float | None = None  # for DEFERRED
    suppress: SuppressionReason | None = None  # add the address to the suppression list
    reason: str | None = None  # SUPPRESSED: the suppression reason that stopped it


@dataclass(frozen=True, slots=True)
class ApiKey:
    """An API key as stored: never the secret, only its hash."""

    id: str
    name: str
    scopes: frozenset[Scope]
    sender_domains: tuple[str, ...]  # empty: any sender domain
    created_at: float
    revoked_at: float | None
    sandbox: bool = False  # its mail goes to the simulator, never to the network

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def allows_sender(self, domain: str) -> bool:
        if not self.sender_domains:
            return True
        return domain.lower() in self.sender_domains

    def has(self, scope: Scope) -> bool:
        return scope in self.scopes or Scope.ADMIN in self.scopes


@dataclass(frozen=True, slots=True)
class Suppression:
    """An address mail is not sent to. `scope`: a sending domain, so only mail From that
    domain is stopped; "" stops mail from every sender."""

    address: str  # lower case
    reason: SuppressionReason
    created_at: float
    scope: str = ""
    message_id: str | None = None  # the message whose outcome added it (bounce, complaint)


@dataclass(frozen=True, slots=True)
class MessageQuery:
    """Filters for listing messages; cursor is the last id of the previous page."""

    status: RecipientStatus | None = None
    recipient: str | None = None
    tag: str | None = None
    since: float | None = None
    until: float | None = None
    api_key_id: str | None = None  # None: every key's messages (admin)
    cursor: str | None = None
    limit: int = 50
    sender: str | None = None  # the envelope sender, exactly
    subject: str | None = None  # a part of the subject, in any case


def domain_of(address: str) -> str:
    """The lowercased domain of an addr-spec (text after the last @)."""
    return address.rpartition("@")[2].lower()


@dataclass(frozen=True, slots=True)
class DkimKey:
    """One DKIM key of a domain. The private key is kept encrypted (secretbox.py) and is
    never part of this value: only sending.py decrypts it, to sign."""

    domain: str
    selector: str
    algorithm: DkimAlgorithm
    public_key: str  # the p= value published in DNS (base64)
    created_at: float
    retired_at: float | None = None


@dataclass(frozen=True, slots=True)
class RecordCheck:
    """The last DNS check of one record: its status, what was found, and whether it
    counts as verified (`ok` keeps the last definite answer while DNS fails)."""

    status: RecordStatus = RecordStatus.PENDING
    found: tuple[str, ...] = ()
    ok: bool = False


@dataclass(frozen=True, slots=True)
class Domain:
    """A domain mail is sent from. `sending`: its DKIM records were verified, so mail
    From it (or a subdomain) is signed, and allowed under domains.require_verified."""

    name: str
    created_at: float
    sending: bool = False
    checks: dict[str, RecordCheck] = field(default_factory=dict)  # by record id (records.py)
    checked_at: float | None = None
    keys: tuple[DkimKey, ...] = ()


@dataclass(frozen=True, slots=True)
class Webhook:
    """An endpoint that events are sent to. Its signing secrets are kept sealed and
    are not part of this value."""

    id: str
    api_key_id: str | None  # the owner; None: every event (made by an admin key)
    url: str
    events: tuple[str, ...]  # public event types (events/payloads.py)
    description: str
    enabled: bool
    disabled_reason: str | None
    created_at: float
    updated_at: float
    created_by: str | None = None  # the key that made it: revoking it disables the endpoint


@dataclass(frozen=True, slots=True)
class WebhookAttempt:
    """One POST of an event to an endpoint, and what it decided."""

    message_id: str  # the webhook_messages row
    endpoint_id: str
    event_id: str
    at: float
    status: str  # delivered | pending (retry at next_attempt_at) | failed
    status_code: int | None  # the HTTP status, None when no answer came
    latency: float  # seconds
    error: str | None = None
    next_attempt_at: float | None = None
    disable_reason: str | None = None  # 410 Gone: the endpoint is disabled
