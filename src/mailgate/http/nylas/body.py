"""A Nylas send (or draft) body read as mailgate's send request, From the grant's
address; the sent message answered in Nylas' shape. Pure: no I/O."""

from __future__ import annotations

import datetime
from typing import Any

import pydantic
import pydantic_core

from mailgate.http import models as m
from mailgate.http.errors import ApiError, validation_error
from mailgate.http.send import mailbox
from mailgate.mailboxes.models import Grant, MailboxMessage
from mailgate.models import NewMessage

FIELDS = frozenset(
    {
        "to",
        "cc",
        "bcc",
        "reply_to",
        "from",
        "subject",
        "body",
        "is_plaintext",
        "attachments",
        "custom_headers",
        "metadata",
        "send_at",
        "reply_to_message_id",
        "tracking_options",  # accepted and ignored: mailgate does not rewrite links
        "use_draft",  # accepted and ignored: a sent copy is filed in Sent
        "thread_id",
        "starred",
        "unread",
        "folders",
    }
)


def bad(message: str, field: str | None) -> ApiError:
    return ApiError(400, "invalid_field", message, field)


def mailbox_text(p: Any, field: str) -> str:
    """One Nylas participant {"email", "name"?} as mailgate's "Name <addr>" text."""
    if not isinstance(p, dict) or not isinstance(p.get("email"), str):
        raise bad('must be {"email": ..., "name": ...}', field)
    name = p.get("name") or ""
    if not isinstance(name, str):
        raise bad("must be a string", f"{field}.name")
    if not name:
        return str(p["email"])
    quoted = name.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{quoted}" <{p["email"]}>'


def participants(fields: dict[str, Any], name: str) -> list[str]:
    value = fields.get(name)
    if value is None:
        return []
    if not isinstance(value, list):
        raise bad("must be a list of {email, name}", name)
    return [mailbox_text(p, f"{name}[{i}]") for i, p in enumerate(value)]


def send_request(fields: Any, grant: Grant) -> m.SendRequest:
    """A Nylas send (or draft) body as mailgate's send request, From the grant's address."""
    if not isinstance(fields, dict):
        raise bad("The body must be a JSON object", "body")
    for name in fields:
        if name not in FIELDS:
            raise bad("unknown field", str(name)[:40])
    sender_name = ""
    froms = fields.get("from") or []
    if not isinstance(froms, list):
        raise bad("must be a list of {email, name}", "from")
    for i, p in enumerate(froms):
        mailbox_text(p, f"from[{i}]")
        if str(p["email"]).lower() != grant.email.lower():
            raise bad(f"a grant sends as its own address, {grant.email}", f"from[{i}].email")
        sender_name = p.get("name") or sender_name
    body = fields.get("body")
    if body is not None and not isinstance(body, str):
        raise bad("must be a string", "body")
    plain = fields.get("is_plaintext") is True
    req: dict[str, Any] = {
        "from": mailbox_text({"email": grant.email, "name": sender_name}, "from"),
        "to": participants(fields, "to"),
        "cc": participants(fields, "cc"),
        "bcc": participants(fields, "bcc"),
        "reply_to": participants(fields, "reply_to"),
        ("text" if plain else "html"): body or "",
    }
    if fields.get("subject") is not None:
        req["subject"] = fields["subject"]
    attachments = fields.get("attachments") or []
    if not isinstance(attachments, list):
        raise bad("must be a list", "attachments")
    req["attachments"] = [attachment(a, f"attachments[{i}]") for i, a in enumerate(attachments)]
    headers = fields.get("custom_headers") or []
    if not isinstance(headers, list):
        raise bad('must be a list of {"name", "value"}', "custom_headers")
    req["headers"] = {}
    for i, h in enumerate(headers):
        if not isinstance(h, dict) or not isinstance(h.get("name"), str):
            raise bad('must be {"name": ..., "value": ...}', f"custom_headers[{i}]")
        req["headers"][h["name"]] = str(h.get("value", ""))
    metadata = fields.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise bad("must be an object", "metadata")
    req["metadata"] = {str(k): str(v) for k, v in metadata.items()}
    send_at = fields.get("send_at")
    if send_at is not None:
        if not isinstance(send_at, int) or isinstance(send_at, bool) or send_at < 0:
            raise bad("must be a unix time in seconds", "send_at")
        try:
            when = datetime.datetime.fromtimestamp(send_at, datetime.UTC)
        except (OverflowError, ValueError, OSError):
            raise bad("must be a unix time in seconds", "send_at") from None
        req["scheduled_at"] = when.isoformat()
    try:
        return m.SendRequest.model_validate(req)
    except pydantic.ValidationError as exc:
        err = validation_error(exc)
        if err.field in ("html", "text"):
            err.field = "body"
        raise bad(err.message, err.field) from None


def attachment(a: Any, field: str) -> dict[str, Any]:
    if not isinstance(a, dict):
        raise bad("must be an object", field)
    out: dict[str, Any] = {
        "filename": a.get("filename"),
        "content": a.get("content"),
        "content_type": a.get("content_type") or "application/octet-stream",
    }
    if a.get("content_id"):
        out["content_id"] = a["content_id"]
    inline = a.get("is_inline") or a.get("content_disposition") == "inline"
    out["disposition"] = "inline" if inline else "attachment"
    return out


def people(texts: list[str]) -> list[dict[str, str]]:
    return [{"name": n, "email": e} for n, e in map(mailbox, texts)]


def bracketed(ids: tuple[str, ...] | list[str]) -> list[str]:
    return [i if i.startswith("<") else f"<{i}>" for i in ids if i.strip("<>")]


def sent_json(
    grant: Grant, req: m.SendRequest, prepared: NewMessage, original: MailboxMessage | None
) -> dict[str, Any]:
    data: dict[str, Any] = {
        "object": "message",
        "id": prepared.id,
        "grant_id": grant.id,
        "thread_id": original.thread_id if original else None,
        "subject": prepared.subject or "",
        "from": people([req.from_]),
        "to": people(list(req.to)),
        "cc": people(list(req.cc)),
        "bcc": people(list(req.bcc)),
        "reply_to": people(list(req.reply_to)),
        "date": int(prepared.created_at),
        "created_at": int(prepared.created_at),
        "unread": False,
        "starred": False,
        "snippet": "",
        "body": req.html if req.html is not None else (req.text or ""),
        "attachments": [],
        "folders": [],
        "headers": [{"name": "Message-ID", "value": prepared.message_id_header or ""}],
    }
    if prepared.scheduled_at is not None:
        data["schedule_id"] = prepared.id
        data["send_at"] = int(prepared.scheduled_at)
    return data


def read_json(body: bytes) -> Any:
    try:
        return pydantic_core.from_json(body)
    except ValueError as exc:
        raise ApiError(400, "malformed_json", f"The body is not valid JSON: {exc}") from None


def without_headers(raw: bytes, names: tuple[bytes, ...]) -> bytes:
    """The message without the named header fields (lower case), continuations too."""
    end = raw.find(b"\r\n\r\n")
    if end < 0:
        return raw
    kept: list[bytes] = []
    skipping = False
    for line in raw[:end].split(b"\r\n"):
        if line[:1] in (b" ", b"\t"):
            if not skipping:
                kept.append(line)
            continue
        skipping = line.partition(b":")[0].strip().lower() in names
        if not skipping:
            kept.append(line)
    return b"\r\n".join(kept) + raw[end:]
