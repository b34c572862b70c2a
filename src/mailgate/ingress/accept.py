"""The one door: every way in (SMTP, HTTP single, batch and raw; later DSNs, vendor APIs
and mailboxes) hands a `Submission` to `Door.accept` and renders the `Answer` in its
own protocol. An ingress parses its protocol; the door decides. Acknowledged means
`accept` returned `Accepted`, i.e. the message, its recipients and its `accepted`
event are committed in one transaction.

Each rule runs once, in this order (`Door.prepare` is the pure part, no I/O):

    authorise   the key may use the envelope sender and every originator header; with
                domains.require_verified, each From: domain is a sending domain
    cap         at most `max_recipients` envelope recipients (one setting)
    headers     Received (with the ingress's real client facts), Message-ID, Date
    sign        hooks; each gets the final bytes and returns them signed (DKIM, last)
    ---- Door.screen (one indexed read per message or batch, or for every send of one
         turn of the loop: ingress/lookups.py) ----
    suppress    recipients on the suppression list get status `suppressed` and an event
                instead of a place in the queue; the message is still accepted (even
                when every recipient is suppressed: the answer says so per recipient)
    ---- Door.commit ----
    commit      store.enqueue / enqueue_many, with the idempotency record built here
    count       one call per commit, whatever the source
    answer      Accepted(id, replayed) or Refusal(rule, field, reason)

StoreUnavailable becomes Refusal(Rule.UNAVAILABLE): a temporary refusal (451 / 503).
"""

from __future__ import annotations

import dataclasses
import enum
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from mailgate.compose import Draft, compose, header_date
from mailgate.errors import DuplicateIdempotencyKey, StoreUnavailable
from mailgate.ingress.lookups import JoinedLookups
from mailgate.ingress.smtp_rules import (
    HeaderFacts,
    drop_blank_message_id,
    foreign_originator,
    header_facts,
    missing_headers,
)
from mailgate.models import (
    ApiKey,
    Idempotency,
    NewMessage,
    Source,
    SuppressionReason,
    domain_of,
    new_id,
)
from mailgate.simulator import is_simulated_suppression
from mailgate.store import Store
from mailgate.suppressions import addresses_of, screen

# -- values ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Client:
    """What the ingress knows of who handed the message in (for Received)."""

    address: str  # the peer's IP address as the socket gives it; "" for mail made here
    protocol: str  # Received "with": SMTP, ESMTP, ESMTPSA, HTTP, ...
    helo: str | None = None  # SMTP: the HELO/EHLO name; None for every other way in


@dataclass(frozen=True, slots=True)
class IdempotencyRequest:
    """Fold a repeat of this request into the first message (the record is built here,
    in `Door.commit`; the response is what a repeat is answered)."""

    key: str  # unique per owner: "<key id>:<Idempotency-Key>" or "smtp-transaction:<hash>"
    request_hash: str  # "" when the key already names the whole request
    ttl: float  # seconds the record is kept


@dataclass(frozen=True, slots=True)
class Submission:
    """One message handed to the door: envelope, content and who sent it."""

    sender: str  # envelope MAIL FROM; "" for the null sender
    recipients: tuple[str, ...]  # envelope recipients, duplicates already removed
    content: bytes | Draft  # CRLF bytes as given (SMTP, raw), or a draft to compose
    source: Source
    client: Client
    key: ApiKey | None = None  # None: a trusted network relaying without AUTH
    idempotency: IdempotencyRequest | None = None
    tags: tuple[str, ...] = ()
    metadata: dict[str, str] = field(default_factory=dict)
    scheduled_at: float | None = None
    facts: HeaderFacts | None = None  # of `content`, when the ingress parsed them already
    sandbox: bool = False  # mail made here about sandbox mail (its DSNs) stays in the sandbox
    # sent from a connected mailbox (models.GRANT_ROUTE): the HTTP layer checked that the key
    # owns the grant and forced From to its address; its own server is the judge of the
    # sender, so the key's sender domains and domains.require_verified do not apply
    route: str | None = None


class Rule(enum.StrEnum):
    """Why the door refused (each ingress maps these to its own codes)."""

    SENDER = "sender_not_allowed"  # the key may not use this sender domain (permanent)
    DOMAIN = "domain_not_verified"  # From: is not a sending domain (permanent)
    RECIPIENTS = "too_many_recipients"  # more than max_recipients (permanent)
    UNAVAILABLE = "unavailable"  # the store cannot commit now (temporary: retry)


@dataclass(frozen=True, slots=True)
class Refusal:
    """The door's no: which rule, which part of the submission, and one line of reason
    that every ingress shows as it is (SMTP reply text, HTTP error message)."""

    rule: Rule
    field: str  # "sender" (envelope), an originator header name, or "recipients"
    reason: str

    @property
    def temporary(self) -> bool:
        return self.rule is Rule.UNAVAILABLE


@dataclass(frozen=True, slots=True)
class Accepted:
    message_id: str
    replayed: bool  # True: an earlier message with the same idempotency key answers
    suppressed: int = 0  # recipients of the (first) message stopped by the suppression list


Answer = Accepted | Refusal
LIST_EMPTY_SECONDS = 1.0  # an empty suppression list is looked at again after this
# returns the bytes signed (DKIM-Signature fields added), given the message's first From
Signer = Callable[[bytes, str | None], bytes]
IsSending = Callable[[str], bool]  # is this From address's domain a sending domain?
Count = Callable[[Source, int], None]
Timed = Callable[[float], None]  # seconds one commit was waited for


def _no_count(source: Source, n: int) -> None:
    return None


def _no_time(seconds: float) -> None:
    return None


# -- the rules, as plain functions --------------------------------------------------------

SENDER_NOT_ALLOWED = "Sender address not allowed for this key"


def facts_of(content: bytes | Draft) -> HeaderFacts:
    """Message-ID, Date, originators and Subject: parsed from bytes, read off a draft."""
    if isinstance(content, bytes):
        return header_facts(content)
    address = content.sender[1]
    return HeaderFacts(
        content.message_id or None,
        bool(content.date),
        (address,),
        content.subject,
        (("From", address),),
    )


def authorise_sender(key: ApiKey | None, sender: str) -> Refusal | None:
    """The envelope half of `authorise`; SMTP also asks it at MAIL FROM, to refuse early.
    The null sender <> names no domain and is always allowed."""
    if sender and key is not None and not key.allows_sender(domain_of(sender)):
        return Refusal(Rule.SENDER, "sender", SENDER_NOT_ALLOWED)
    return None


def authorise(sub: Submission, facts: HeaderFacts) -> Refusal | None:
    """The key may use the envelope sender's domain and every originator field's
    (From, Sender, Resent-From, Resent-Sender; a message without From is refused). Keys
    without sender_domains, and trusted relaying without a key, may use any."""
    key = sub.key
    if key is None or not key.sender_domains:
        return None
    refusal = authorise_sender(key, sub.sender)
    if refusal is not None:
        return refusal
    name = foreign_originator(facts, key.allows_sender)
    if name is not None:
        return Refusal(Rule.SENDER, name, f"{name}: address not allowed for this key")
    return None


def require_sending(sub: Submission, facts: HeaderFacts, is_sending: IsSending) -> Refusal | None:
    """Every From: address is in a sending domain (domains.require_verified). Mail made
    here (DSNs) is exempt: a bounce must go out whatever the From domain's state."""
    if sub.source is Source.DSN:
        return None
    for address in facts.from_addresses:
        if address.startswith("@") or not is_sending(address):
            reason = f"From domain {domain_of(address)} is not a verified sending domain"
            return Refusal(Rule.DOMAIN, "From", reason)
    if not facts.from_addresses:
        return Refusal(Rule.DOMAIN, "From", "A From address in a sending domain is required")
    return None


def cap_recipients(sub: Submission, max_recipients: int) -> Refusal | None:
    if len(sub.recipients) > max_recipients:
        reason = f"At most {max_recipients} recipients per message"
        return Refusal(Rule.RECIPIENTS, "recipients", reason)
    return None


def received_header(
    client: Client, hostname: str, queue_id: str, recipients: tuple[str, ...], now: float
) -> str:
    """Received (RFC 5321 4.4) with the facts the ingress has: the HELO name and IP for
    SMTP; for every other way in, the client's address and the way it came. `for` names
    a single recipient only (more would show Bcc recipients to the others)."""
    for_clause = f"\r\n\tfor <{recipients[0]}>" if len(recipients) == 1 else ""
    stamp = f" id {queue_id}{for_clause};\r\n\t{header_date(int(now))}\r\n"
    if not client.address:  # made here (a DSN): no peer to name, as Postfix's bounces
        return f"Received: by {hostname} (mailgate) with {client.protocol}{stamp}"
    if client.helo is not None:
        origin = f"{client.helo or 'unknown'} ([{client.address}])"
    else:
        origin = f"[{client.address}] (the {client.protocol} API)"
    return f"Received: from {origin}\r\n\tby {hostname} (mailgate) with {client.protocol}{stamp}"


# -- the door ------------------------------------------------------------------------------


@dataclass
class Door:
    """The rules' settings and hooks, and the store the door commits to."""

    store: Store
    hostname: str
    max_recipients: int
    count: Count = _no_count  # metrics: committed messages by source
    timed: Timed = field(default=_no_time, kw_only=True)  # metrics: each commit's wait
    signers: list[Signer] = field(default_factory=list)
    require_sending: IsSending | None = None  # set when domains.require_verified is on
    clock: Callable[[], float] = time.time

    _list_seen: tuple[float, bool] = (-1.0, False)  # (when, was it empty), monotonic
    _lookups: JoinedLookups = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._lookups = JoinedLookups(lambda addresses: self.store.suppressed_among(addresses))

    async def _list_empty(self) -> bool:
        if self.store.point_reads_cheap:  # SQLite: the lookup is a local read, no window
            return False
        now = time.monotonic()
        seen_at, empty = self._list_seen
        if now - seen_at >= LIST_EMPTY_SECONDS:
            empty = not await self.store.any_suppression()
            self._list_seen = (now, empty)
        return empty

    def prepare(self, sub: Submission) -> NewMessage | Refusal:
        """Every rule before commit, in order; pure (no I/O). A DSN path can use this."""
        facts = sub.facts or facts_of(sub.content)
        refusal = authorise(sub, facts) if sub.route is None else None
        if refusal is None and self.require_sending is not None and sub.route is None:
            refusal = require_sending(sub, facts, self.require_sending)
        refusal = refusal or cap_recipients(sub, self.max_recipients)
        if refusal is not None:
            return refusal
        now = self.clock()
        queue_id = new_id(now)
        raw = self._with_headers(sub, facts, queue_id, now)
        first_from = facts.from_addresses[0] if facts.from_addresses else None
        for sign in self.signers:
            raw = sign(raw, first_from)
        return NewMessage(
            raw=raw,
            sender=sub.sender,
            recipients=sub.recipients,
            source=sub.source,
            api_key_id=sub.key.id if sub.key else None,
            tags=sub.tags,
            metadata=sub.metadata,
            message_id_header=facts.message_id or f"<{queue_id}@{self.hostname}>",
            subject=facts.subject,
            scheduled_at=sub.scheduled_at,
            id=queue_id,
            created_at=now,
            from_domain=domain_of(first_from) if first_from else "",
            sandbox=sub.sandbox or (sub.key is not None and sub.key.sandbox),
            route=sub.route,
        )

    def _with_headers(self, sub: Submission, facts: HeaderFacts, qid: str, now: float) -> bytes:
        content = sub.content
        received = received_header(sub.client, self.hostname, qid, sub.recipients, now)
        if isinstance(content, Draft):  # the composer writes Message-ID and Date
            draft = dataclasses.replace(
                content,
                message_id=content.message_id or f"<{qid}@{self.hostname}>",
                date=content.date or now,
            )
            return received.encode("utf-8", "surrogateescape") + compose(draft)
        raw = drop_blank_message_id(content, facts)
        head = missing_headers(facts, hostname=self.hostname, queue_id=qid, now=now)
        return received.encode("utf-8", "surrogateescape") + head + raw

    async def screen(self, messages: Sequence[NewMessage]) -> list[NewMessage] | Refusal:
        """The messages with their suppressed recipients marked (one read for them all);
        a sandbox message's simulator address for suppression is marked as listed.

        On PostgreSQL, while the list is empty (looked at once a second, not once a
        message: there a read is a round trip) nothing is read. An entry added within that
        second may be answered `queued` here; delivery looks again before sending
        (worker._unlisted), so it is never sent."""
        try:
            if await self._list_empty():
                found: dict[str, list[tuple[str, str]]] = {}
            else:
                found = await self._lookups.among(addresses_of(messages))
        except StoreUnavailable:
            return Refusal(Rule.UNAVAILABLE, "", "Temporary storage failure, try again later")
        screened = []
        for m in messages:
            stopped = screen(m, found)
            if m.sandbox:
                for address in filter(is_simulated_suppression, m.recipients):
                    stopped.setdefault(address, SuppressionReason.HARD_BOUNCE.value)
            screened.append(dataclasses.replace(m, suppressed=stopped) if stopped else m)
        return screened

    async def commit(
        self,
        messages: Sequence[NewMessage],
        idempotency: IdempotencyRequest | None = None,
        response: str | None = None,
    ) -> Answer:
        """Commit (one transaction), then count. The idempotency record goes with the
        first message; it answers a repeat with `response` (default: the message id)."""
        if idempotency is not None and messages:
            first = messages[0]
            record = Idempotency(
                idempotency.key,
                idempotency.request_hash,
                first.id if response is None else response,
                first.created_at + idempotency.ttl,
            )
            messages = [dataclasses.replace(first, idempotency=record), *messages[1:]]
        started = time.perf_counter()
        try:
            if len(messages) == 1:
                message_id = await self.store.enqueue(messages[0])
            else:
                message_id = (await self.store.enqueue_many(list(messages)))[0]
        except DuplicateIdempotencyKey as dup:
            return Accepted(dup.message_id, replayed=True)
        except StoreUnavailable:
            return Refusal(Rule.UNAVAILABLE, "", "Temporary storage failure, try again later")
        self.timed(time.perf_counter() - started)
        self.count(messages[0].source, len(messages))
        return Accepted(message_id, replayed=False, suppressed=len(messages[0].suppressed))

    async def accept(self, sub: Submission) -> Answer:
        """prepare, screen, then commit: the whole door for one message. (An ingress
        whose idempotent answer quotes the prepared message calls the three itself.)"""
        prepared = self.prepare(sub)
        if isinstance(prepared, Refusal):
            return prepared
        screened = await self.screen([prepared])
        if isinstance(screened, Refusal):
            return screened
        return await self.commit(screened, sub.idempotency)
