"""A stored message in the words of SendGrid's Email Activity API (GET /v3/messages/{id}):
its statuses and event names for mailgate's recipient states and events. Pure.

SendGrid describes one recipient per message; a mailgate message has several, so the
top-level `to_email` and `status` are its first recipient's and `recipients` (mailgate's
addition) lists each one.
"""

from __future__ import annotations

import datetime
import json
from typing import Any

from mailgate.http.vendors.sendgrid_body import BATCH_TAG
from mailgate.models import Event, EventKind, Message, Recipient, RecipientStatus

# Email Activity's three statuses for mailgate's recipient states.
ACTIVITY_STATUS = {
    RecipientStatus.QUEUED: "processed",  # accepted (or scheduled), not yet attempted
    RecipientStatus.DEFERRED: "processed",  # still being retried
    RecipientStatus.DELIVERED: "delivered",
    RecipientStatus.BOUNCED: "not_delivered",
    RecipientStatus.EXPIRED: "not_delivered",
    RecipientStatus.CANCELLED: "not_delivered",
    RecipientStatus.SUPPRESSED: "not_delivered",
}

# Email Activity's event names for mailgate's events; the kinds left out are mailgate's own
# bookkeeping (retry_now, lease_expired) or no message's (domain_*): not shown.
EVENT_NAMES = {
    EventKind.ACCEPTED: "processed",
    EventKind.DELIVERED: "delivered",
    EventKind.DEFERRED: "deferred",
    EventKind.BOUNCED: "bounced",
    EventKind.EXPIRED: "bounced",  # retried past the queue lifetime: a soft bounce
    EventKind.CANCELLED: "dropped",
    EventKind.SUPPRESSED: "dropped",
    EventKind.COMPLAINED: "spam_report",
}
BOUNCE_TYPES = {EventKind.BOUNCED: "hard", EventKind.EXPIRED: "soft"}


def iso(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def reason(event: Event) -> str:
    d = event.details
    if "code" in d:
        return " ".join(str(x) for x in (d["code"], d.get("enhanced"), d.get("text")) if x)
    return str(d.get("reason") or d.get("text") or "")


def activity_event(event: Event, address: str | None) -> dict[str, Any] | None:
    name = EVENT_NAMES.get(event.kind)
    if name is None:
        return None
    out: dict[str, Any] = {
        "event_name": name,
        "processed": iso(event.at),
        "reason": reason(event),
        "bounce_type": BOUNCE_TYPES.get(event.kind, ""),
        "http_user_agent": "",
        "mx_server": str(event.details.get("remote_host") or ""),
        "email": address or "",  # mailgate's: the recipient the event is about
    }
    if event.kind is EventKind.DEFERRED and "attempt" in event.details:
        out["attempt_num"] = event.details["attempt"]
    return out


def activity(message: Message, recipients: list[Recipient], events: list[Event]) -> dict[str, Any]:
    """The Email Activity "message" object of a stored message."""
    by_id = {r.id: r.address for r in recipients}
    shown = (activity_event(e, by_id.get(e.recipient_id or -1)) for e in events)
    first = recipients[0] if recipients else None
    return {
        "msg_id": message.id,
        "from_email": message.sender,
        "subject": message.subject or "",
        "to_email": first.address if first else "",
        "status": ACTIVITY_STATUS[first.status] if first else "processed",
        "template_id": "",
        "asm_group_id": None,
        "teammate": "",
        "api_key_id": message.api_key_id or "",
        "events": [e for e in shown if e is not None],
        "originating_ip": "",
        "categories": [t for t in message.tags if not t.startswith(BATCH_TAG)],
        "unique_args": json.dumps(message.metadata),
        "outbound_ip": "",
        "outbound_ip_type": "shared",
        "recipients": [  # mailgate's: every recipient, as SendGrid would list each
            {"to_email": r.address, "status": ACTIVITY_STATUS[r.status]} for r in recipients
        ],
    }
