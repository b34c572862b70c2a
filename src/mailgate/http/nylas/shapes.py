"""Nylas v3's words: the JSON objects the `nylas` SDK decodes (grant, message, draft,
thread, folder), its envelope (`{"request_id", "data"}`, lists with `next_cursor`), its
errors (`{"request_id", "error": {"type", "message"}}`) and its query strings (`True` /
`False`, repeated keys). Pure: no I/O.

The SDK decodes single objects strictly: a message needs `grant_id`; a thread needs id,
grant_id, has_drafts, starred, unread, message_ids, folders and latest_draft_or_message
(with "object": "message" or "draft"). Dates are unix seconds (int), participants lists
of {"name", "email"}, folders lists of folder ids.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from starlette.datastructures import QueryParams
from starlette.responses import Response

from mailgate.http.errors import ApiError
from mailgate.mailboxes.models import Folder, Grant, MailboxMessage, Participant, Thread

# Nylas' error types by status (what the SDK shows as NylasApiError.type)
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_error",
    502: "provider_error",
    503: "api_error",
}
TRUE, FALSE = frozenset({"true", "1", "yes"}), frozenset({"false", "0", "no"})


def request_id() -> str:
    return str(uuid.uuid4())


def answer(data: Any, status: int = 200) -> Response:
    return json_response({"request_id": request_id(), "data": data}, status)


def page(items: Sequence[Any], next_cursor: str | None) -> Response:
    return json_response(
        {"request_id": request_id(), "data": list(items), "next_cursor": next_cursor}
    )


def deleted() -> Response:
    return json_response({"request_id": request_id()})


def error(err: ApiError) -> Response:
    """mailgate's error in Nylas' shape; a field error names its field in the message.
    mailgate's 422 (a field's value) is Nylas' 400."""
    status = 400 if err.status == 422 else err.status
    message = err.message
    if err.field and err.field not in message:
        message = f"{err.field}: {message}"
    body = {
        "request_id": request_id(),
        "error": {"type": ERROR_TYPES.get(status, "api_error"), "message": message},
    }
    return json_response(body, status, err.headers)


def json_response(
    body: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    return Response(json.dumps(body), status, dict(headers or {}), media_type="application/json")


# -- query strings -----------------------------------------------------------------------


def flag(params: QueryParams, name: str) -> bool | None:
    """A boolean query value: True/False as the SDK writes them, true/false, 1/0."""
    value = params.get(name)
    if value is None or value == "":
        return None
    if value.lower() in TRUE:
        return True
    if value.lower() in FALSE:
        return False
    raise ApiError(400, "invalid_field", f"must be true or false, not {value[:20]!r}", name)


def number(params: QueryParams, name: str, low: int, high: int) -> int | None:
    value = params.get(name)
    if value is None or value == "":
        return None
    if not value.isdigit() or not low <= int(value) <= high:
        raise ApiError(400, "invalid_field", f"must be a whole number from {low} to {high}", name)
    return int(value)


def texts(params: QueryParams, name: str) -> list[str]:
    """Every value of a repeated key (any_email=a&any_email=b); a comma-joined one too."""
    return [v.strip() for value in params.getlist(name) for v in value.split(",") if v.strip()]


# -- objects -------------------------------------------------------------------------------


def grant_json(g: Grant) -> dict[str, Any]:
    """A grant, without its credentials (never returned)."""
    return {
        "id": g.id,
        "provider": "imap",
        "grant_status": g.status.value,
        "email": g.email,
        "scope": [],
        "created_at": int(g.created_at),
        "updated_at": int(g.updated_at),
        "settings": {
            "username": g.username,
            "auth": g.auth.value,
            "imap_host": g.imap.host,
            "imap_port": g.imap.port,
            "imap_security": g.imap.tls.value,
            "smtp_host": g.smtp.host,
            "smtp_port": g.smtp.port,
            "smtp_security": g.smtp.tls.value,
            "server_files_sent": g.server_files_sent,
        },
        "error": g.error,
        "synced_at": int(g.synced_at) if g.synced_at is not None else None,
    }


def people(ps: Sequence[Participant]) -> list[dict[str, str]]:
    return [{"name": p.name, "email": p.email} for p in ps]


def message_json(
    m: MailboxMessage,
    body: str | None = None,
    attachments: Sequence[dict[str, Any]] = (),
    obj: str = "message",
) -> dict[str, Any]:
    return {
        "object": obj,
        "id": m.id,
        "grant_id": m.grant_id,
        "thread_id": m.thread_id,
        "subject": m.subject,
        "from": people(m.from_),
        "to": people(m.to),
        "cc": people(m.cc),
        "bcc": people(m.bcc),
        "reply_to": people(m.reply_to),
        "date": int(m.date),
        "created_at": int(m.date),
        "unread": m.unread,
        "starred": m.starred,
        "snippet": m.snippet,
        "body": body if body is not None else m.snippet,
        "folders": [m.folder_id],
        "attachments": list(attachments),
        "headers": [
            {"name": "Message-ID", "value": m.message_id_header},
            {"name": "In-Reply-To", "value": m.in_reply_to},
            {"name": "References", "value": " ".join(m.references)},
        ],
    }


def thread_json(
    t: Thread, latest: MailboxMessage | None, has_drafts: bool = False
) -> dict[str, Any]:
    latest_json: dict[str, Any] = (
        message_json(latest)
        if latest is not None
        else {
            "object": "message",
            "id": t.message_ids[-1] if t.message_ids else "",
            "grant_id": t.grant_id,
        }
    )
    return {
        "object": "thread",
        "id": t.id,
        "grant_id": t.grant_id,
        "subject": t.subject,
        "participants": people(t.participants),
        "message_ids": list(t.message_ids),
        "draft_ids": [],
        "folders": list(t.folder_ids),
        "earliest_message_date": int(t.earliest_message_date),
        "latest_message_received_date": int(t.latest_message_date),
        "latest_message_sent_date": int(t.latest_message_date),
        "snippet": t.snippet,
        "unread": t.unread,
        "starred": t.starred,
        "has_attachments": t.has_attachments,
        "has_drafts": has_drafts,
        "latest_draft_or_message": latest_json,
    }


def folder_json(f: Folder) -> dict[str, Any]:
    return {
        "object": "folder",
        "id": f.id,
        "grant_id": f.grant_id,
        "name": f.name,
        "attributes": [f"\\{f.role.value.capitalize()}"] if f.role else [],
        "system_folder": f.role is not None,
        "total_count": f.total,
        "unread_count": f.unread,
        "child_count": 0,
        "parent_id": None,
    }
