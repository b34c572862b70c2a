"""GET /messages/outbound/{id}/details in Postmark's shape: a stored message, its
recipients and its events as the official SDK's MessageDetails model reads them (every
field it requires: MessageID, MessageStream, To, Recipients, ReceivedAt, From, Subject,
Status, TrackOpens, TrackLinks, Sandboxed). Pure: the route reads, this translates.

Postmark's words for mailgate's recipient states:

    queued     Queued (Scheduled while its scheduled time is ahead)
    deferred   Queued, with a Transient event per attempt
    delivered  Sent, with a Delivered event
    bounced    Sent, with a Bounced event (Postmark sent it; the receiver refused)
    expired    Failed, with a Bounced event
    cancelled  Blocked
    suppressed Blocked (Postmark blocks inactive recipients)

A message's Status is its most pending recipient's: Scheduled or Queued while any is
waiting, else Sent if any was delivered or bounced, else Failed if any expired, else
Blocked.
"""

from __future__ import annotations

from email.utils import getaddresses
from typing import Any

from mailgate.http.vendors.postmark_request import STREAM, submitted
from mailgate.models import SANDBOX_ROUTE, Event, EventKind, Message, Recipient, RecipientStatus

# Postmark's event Type for each mailgate event about a recipient; the rest have none.
EVENT_TYPES = {
    EventKind.DELIVERED: "Delivered",
    EventKind.DEFERRED: "Transient",
    EventKind.BOUNCED: "Bounced",
    EventKind.EXPIRED: "Bounced",
    EventKind.COMPLAINED: "Bounced",  # Postmark files a spam complaint as a bounce type
}
SUMMARIES = {EventKind.COMPLAINED: "The recipient reported the message as spam"}
WAITING = (RecipientStatus.QUEUED, RecipientStatus.DEFERRED)
HANDED_OVER = (RecipientStatus.DELIVERED, RecipientStatus.BOUNCED)


def message_status(message: Message, recipients: list[Recipient], now: float) -> str:
    statuses = {r.status for r in recipients}
    if not statuses or statuses & set(WAITING):
        scheduled = message.scheduled_at is not None and message.scheduled_at > now
        return "Scheduled" if scheduled else "Queued"
    if statuses & set(HANDED_OVER):
        return "Sent"
    if RecipientStatus.EXPIRED in statuses:
        return "Failed"
    return "Blocked"


def details(
    message: Message,
    recipients: list[Recipient],
    events: list[Event],
    view: dict[str, Any] | None,
    now: float,
) -> dict[str, Any]:
    """The details answer; `view` is the parsed message (mailgate.parsed.describe), None
    when its body was purged by retention or cannot be parsed."""
    to, cc = mailboxes((view or {}).get("to")), mailboxes((view or {}).get("cc"))
    shown = {m["Email"].lower() for m in (*to, *cc)}
    # Bcc: the envelope's recipients the headers do not show (unknown without the body)
    bcc = [r.address for r in recipients if r.address.lower() not in shown] if view else []
    view = view or {}
    by_id = {r.id: r.address for r in recipients}
    return {
        "MessageID": message.id,
        "MessageStream": STREAM,
        "Tag": message.tags[0] if message.tags else None,
        "To": to,
        "Cc": cc,
        "Bcc": [{"Email": a, "Name": None} for a in bcc],
        "Recipients": [r.address for r in recipients],
        "ReceivedAt": submitted(message.created_at),
        "From": view.get("from") or message.sender,
        "Subject": message.subject or "",
        "Attachments": [p["filename"] or "" for p in view.get("attachments", ())],
        "Status": message_status(message, recipients, now),
        "TrackOpens": False,
        "TrackLinks": "None",
        "Metadata": message.metadata,
        "Sandboxed": any(r.domain == SANDBOX_ROUTE for r in recipients),
        "TextBody": view.get("text"),
        "HtmlBody": view.get("html"),
        "MessageEvents": [
            event_dict(e, by_id[e.recipient_id])
            for e in events
            if e.kind in EVENT_TYPES and e.recipient_id in by_id
        ],
    }


def mailboxes(header: str | None) -> list[dict[str, Any]]:
    """A To or Cc header as Postmark's [{Email, Name}]."""
    if not header:
        return []
    return [{"Email": a, "Name": n or None} for n, a in getaddresses([header]) if a]


def event_dict(e: Event, recipient: str) -> dict[str, Any]:
    d = e.details
    reply = " ".join(str(p) for p in (d.get("code"), d.get("enhanced"), d.get("text")) if p)
    bounced = EVENT_TYPES[e.kind] == "Bounced"
    return {
        "Recipient": recipient,
        "Type": EVENT_TYPES[e.kind],
        "ReceivedAt": submitted(e.at),
        "Details": {
            "DeliveryMessage": reply or None,
            "DestinationServer": d.get("remote_host"),
            "DestinationIP": None,
            "Summary": (reply or SUMMARIES.get(e.kind, e.kind.value)) if bounced else None,
        },
    }
