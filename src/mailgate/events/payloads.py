"""The public shape of an outbox event: a closed set of types and one payload each, the
same for the events API and webhooks (Standard Webhooks' `{type, timestamp, data}`).

    message.accepted    data: message_id, recipients (count), size, source, tags, metadata
    message.delivered   data: message_id, recipient, status, reply, remote_host, attempt,
    message.deferred          next_attempt_at (deferred only), tags, metadata
    message.bounced
    message.expired
    message.cancelled   data: message_id, recipient, status, tags, metadata
    message.complained
    message.suppressed  data: as message.cancelled, and reason (a suppression reason)
    domain.verified     data: domain
    domain.unverified
    message.created     a connected mailbox's message (mailboxes/) synced, changed or gone;
    message.updated     data: message_id, grant_id, folder_id, thread_id (Nylas' names)
    message.deleted

`retry_now` and `lease_expired` are operational: they stay in a message's timeline and
are not published. Pure: events and what the store read around them in, dicts out."""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mailgate.models import Event, EventKind

PUBLIC_TYPES: dict[EventKind, str] = {
    EventKind.ACCEPTED: "message.accepted",
    EventKind.DELIVERED: "message.delivered",
    EventKind.DEFERRED: "message.deferred",
    EventKind.BOUNCED: "message.bounced",
    EventKind.EXPIRED: "message.expired",
    EventKind.CANCELLED: "message.cancelled",
    EventKind.SUPPRESSED: "message.suppressed",
    EventKind.COMPLAINED: "message.complained",
    EventKind.DOMAIN_VERIFIED: "domain.verified",
    EventKind.DOMAIN_UNVERIFIED: "domain.unverified",
    EventKind.MAILBOX_CREATED: "message.created",
    EventKind.MAILBOX_UPDATED: "message.updated",
    EventKind.MAILBOX_DELETED: "message.deleted",
}
_MAILBOX = {EventKind.MAILBOX_CREATED, EventKind.MAILBOX_UPDATED, EventKind.MAILBOX_DELETED}
KIND_OF_TYPE = {public: kind for kind, public in PUBLIC_TYPES.items()}
_OUTCOMES = {EventKind.DELIVERED, EventKind.DEFERRED, EventKind.BOUNCED, EventKind.EXPIRED}


@dataclass(frozen=True, slots=True)
class Context:
    """What an event's payload names beyond the event row, read for a page of events."""

    messages: Mapping[str, tuple[list[str], dict[str, str]]] = field(default_factory=dict)
    recipients: Mapping[int, str] = field(default_factory=dict)  # recipient id -> address


def event_id(event: Event) -> str:
    """Stable for the event's life: receivers de-duplicate on it."""
    return f"evt_{event.id}"


def timestamp(at: float) -> str:
    return datetime.datetime.fromtimestamp(at, datetime.UTC).isoformat(timespec="milliseconds")


def payload(event: Event, context: Context) -> dict[str, Any] | None:
    """The public payload, or None for an event that is not published."""
    public = PUBLIC_TYPES.get(event.kind)
    if public is None:
        return None
    d = event.details
    if public.startswith("domain."):
        data: dict[str, Any] = {"domain": d.get("domain")}
    elif event.kind in _MAILBOX:
        data = {"message_id": event.message_id}
        data.update({k: d.get(k) for k in ("grant_id", "folder_id", "thread_id")})
        at = timestamp(event.at)
        return {"id": event_id(event), "type": public, "timestamp": at, "data": data}
    elif event.kind is EventKind.ACCEPTED:
        data = {
            "message_id": event.message_id,
            "recipients": d.get("recipients"),
            "size": d.get("size"),
            "source": d.get("source"),
        }
    else:
        data = {
            "message_id": event.message_id,
            "recipient": context.recipients.get(event.recipient_id or -1),
            "status": event.kind.value,
        }
        if event.kind in _OUTCOMES:
            data["reply"] = (
                {"code": d["code"], "enhanced": d.get("enhanced"), "text": d.get("text", "")}
                if "code" in d
                else None
            )
            data["remote_host"] = d.get("remote_host")
            data["attempt"] = d.get("attempt")
            if event.kind is EventKind.DEFERRED and "next_attempt_at" in d:
                data["next_attempt_at"] = timestamp(d["next_attempt_at"])
        elif event.kind is EventKind.SUPPRESSED:
            data["reason"] = d.get("reason")
    if public.startswith("message."):
        tags, metadata = context.messages.get(event.message_id, ([], {}))
        data["tags"], data["metadata"] = tags, metadata
    return {"id": event_id(event), "type": public, "timestamp": timestamp(event.at), "data": data}
