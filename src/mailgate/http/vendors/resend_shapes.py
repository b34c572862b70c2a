"""Resend's JSON and mailgate's, both ways (pure): an email as mailgate's SendRequest
fields, pydantic's and mailgate's errors as Resend's `{"statusCode", "name", "message"}`,
and a stored message as Resend's email object with `last_event` from its recipients.

Field names in errors are Resend's: `to[0]`, `attachments[1].content`, `tags[0]`; a
batch item's start with its index in the array, `[2].to`.
"""

from __future__ import annotations

import base64
import mimetypes
import re
from email.utils import getaddresses
from typing import Any

import pydantic

from mailgate.http.errors import ApiError, field_path, invalid
from mailgate.models import Message, Recipient, RecipientStatus

# A required field is absent: Resend's `missing_required_field` (the SDK's
# MissingRequiredFieldsError), told apart from mailgate's invalid_field.
MISSING = "missing_field"

# What an email may carry; a key outside these (and NOT_SUPPORTED) is refused, never dropped.
FIELDS = frozenset(
    {
        "from",
        "to",
        "cc",
        "bcc",
        "reply_to",
        "subject",
        "html",
        "text",
        "headers",
        "attachments",
        "tags",
        "scheduled_at",
    }
)
NOT_SUPPORTED = {
    "template": "mailgate stores no Resend templates: render the email and send `html` and/or"
    " `text`",
    "react": "mailgate renders no React: render the email and send `html` and/or `text`",
}
ATTACHMENT_FIELDS = frozenset(
    {"content", "filename", "path", "content_type", "content_id", "inline_content_id"}
)
TAG_FIELDS = frozenset({"name", "value"})
# Resend's own rule for tag names and values: ASCII letters, digits, _ and -, 256 at most.
TAG_TEXT = re.compile(r"^[A-Za-z0-9_-]{1,256}$")


def missing(field: str, message: str | None = None) -> ApiError:
    return ApiError(422, MISSING, message or f"Missing `{field}` field", field)


def email_fields(item: Any) -> dict[str, Any]:
    """One Resend email as the fields of mailgate's SendRequest (validated by it next).
    A null is an optional field left empty; a field mailgate cannot honour is refused."""
    if not isinstance(item, dict):
        raise invalid("An email must be a JSON object", None)
    fields: dict[str, Any] = {}
    for name, value in item.items():
        if name in NOT_SUPPORTED:
            raise invalid(NOT_SUPPORTED[name], name)
        if name not in FIELDS:
            raise invalid("Unknown field: mailgate cannot honour it", name)
        if value is not None:
            fields[name] = value
    if not any(fields.get(name) is not None for name in ("to", "cc", "bcc")):
        raise missing("to")
    if "html" not in fields and "text" not in fields:
        raise missing("html", "Missing `html` or `text` field")
    if "attachments" in fields:
        fields["attachments"] = attachments(fields["attachments"])
    if "tags" in fields:
        fields["tags"], fields["metadata"] = tags(fields["tags"])
    return fields


def attachments(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        raise invalid("must be an array of attachments", "attachments")
    return [attachment(value[i], f"attachments[{i}]") for i in range(len(value))]


def attachment(value: Any, at: str) -> dict[str, Any]:
    """A Resend attachment as mailgate's: content as base64, the content type guessed
    from the filename as Resend does, inline when it has a content id."""
    if not isinstance(value, dict):
        raise invalid("must be an object", at)
    for name in value:
        if name not in ATTACHMENT_FIELDS:
            raise invalid("Unknown field: mailgate cannot honour it", f"{at}.{name}")
    if value.get("path") is not None:
        raise invalid(
            "mailgate does not fetch remote attachments: send the file's bytes as `content`",
            f"{at}.path",
        )
    if value.get("content") is None:
        raise missing(f"{at}.content")
    out: dict[str, Any] = {"content": content_base64(value["content"], f"{at}.content")}
    filename = value.get("filename")
    if filename is not None:
        out["filename"] = filename
    content_type = value.get("content_type")
    if content_type is None and isinstance(filename, str):
        content_type = mimetypes.guess_type(filename, strict=False)[0]
    if content_type is not None:
        out["content_type"] = content_type
    cid, inline_cid = value.get("content_id"), value.get("inline_content_id")
    if cid is not None and inline_cid is not None and cid != inline_cid:
        raise invalid("differs from content_id: give one", f"{at}.inline_content_id")
    if (cid if cid is not None else inline_cid) is not None:
        out["content_id"] = cid if cid is not None else inline_cid
    return out


def content_base64(content: Any, field: str) -> str:
    """An attachment's bytes, given as base64 text or as an array of byte values."""
    if isinstance(content, str):
        return "".join(content.split())  # line-wrapped base64 (encodebytes) is base64 too
    if isinstance(content, list) and all(type(b) is int and 0 <= b <= 255 for b in content):
        return base64.b64encode(bytes(content)).decode()
    raise invalid("must be base64 text or an array of byte values (0-255)", field)


def tags(value: Any) -> tuple[list[str], dict[str, str]]:
    """Resend's tags as mailgate tags `name:value` (or `name`; what GET /v1/messages?tag=
    filters on) and metadata {name: value} (what events and webhooks carry), one each
    in order: mailgate's errors about tags[i] name the same tag."""
    if not isinstance(value, list):
        raise invalid("must be an array of {name, value} objects", "tags")
    names: list[str] = []
    metadata: dict[str, str] = {}
    for i, tag in enumerate(value):
        at = f"tags[{i}]"
        if not isinstance(tag, dict):
            raise invalid("must be an object with `name` and `value`", at)
        for key in tag:
            if key not in TAG_FIELDS:
                raise invalid("Unknown field: mailgate cannot honour it", f"{at}.{key}")
        name, text = tag.get("name"), tag.get("value")
        if name is None:
            raise missing(f"{at}.name")
        for part, field in ((name, "name"), (text, "value")):
            if part is not None and (not isinstance(part, str) or not TAG_TEXT.match(part)):
                raise invalid(
                    "must be 1-256 ASCII letters, numbers, underscores or dashes", f"{at}.{field}"
                )
        if name in metadata:
            raise invalid(f"tag `{name}` is given twice", f"{at}.name")
        metadata[name] = text or ""
        names.append(f"{name}:{text}" if text else name)
    return names, metadata


def field_error(exc: pydantic.ValidationError) -> ApiError:
    """The first field mailgate's model refused, in Resend's field names."""
    first = exc.errors(include_url=False)[0]
    path = field_path(tuple(first["loc"])) or None
    if path is not None and path.startswith("metadata"):  # made from the tags
        path = "tags"
    if first["type"] == "missing" and path is not None:
        return missing(path)
    message = str(first["msg"]).removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "Unknown field: mailgate cannot honour it"
    if path == "scheduled_at" and first["type"].startswith("datetime"):
        message += " (an ISO 8601 time with its zone, e.g. 2030-01-01T09:00:00Z; mailgate"
        message += " does not read natural language such as 'in 1 min')"
    return invalid(message, path)


def under(err: ApiError, prefix: str) -> ApiError:
    """The error of a batch item, its field named from the array: `[2].to`."""
    field = f"{prefix}.{err.field}" if err.field else prefix
    message = err.message
    if err.code == MISSING and err.field:  # "Missing `to` field" -> "Missing `[2].to` field"
        message = message.replace(f"`{err.field}`", f"`{field}`", 1)
    return ApiError(err.status, err.code, message, field, err.headers)


# -- errors -----------------------------------------------------------------------------

# mailgate's code -> Resend's (status, name) where Resend has its own word for the case
_NAMED = {
    "forbidden": (401, "restricted_api_key"),  # the key lacks the route's scope
    "idempotency_conflict": (409, "invalid_idempotent_request"),
    MISSING: (422, "missing_required_field"),
    "sender_not_allowed": (403, "validation_error"),  # Resend's 403 for a From not allowed
    "domain_not_verified": (403, "validation_error"),
    "rate_limited": (429, "rate_limit_exceeded"),
    "too_many_auth_failures": (429, "rate_limit_exceeded"),
}
# otherwise by status: what Resend calls an error of that status
_BY_STATUS = {
    400: "validation_error",
    404: "not_found",
    405: "method_not_allowed",
    413: "validation_error",
    415: "validation_error",
    422: "validation_error",
}


def error_body(err: ApiError, key_given: bool) -> tuple[int, dict[str, Any]]:
    """(status, Resend's error JSON) for a mailgate error. `key_given`: the request
    carried a key, so a 401 is a wrong key (Resend: 403 invalid_api_key), not a missing one."""
    status, name = err.status, err.code
    if err.code == "unauthorized":
        status, name = (403, "invalid_api_key") if key_given else (401, "missing_api_key")
    elif err.field == "Idempotency-Key" and err.status == 422:
        status, name = 400, "invalid_idempotency_key"
    elif err.code in _NAMED:
        status, name = _NAMED[err.code]
    elif err.status in _BY_STATUS:
        name = _BY_STATUS[err.status]
    elif err.status >= 500:
        name = "application_error"
    message = err.message
    if err.field and err.code != MISSING and status in (400, 403, 422):  # a field at fault
        message = f"Invalid `{err.field}` field: {message}"
    return status, {"statusCode": status, "name": name, "message": message}


# -- reads ------------------------------------------------------------------------------


def last_event(statuses: list[RecipientStatus], scheduled: bool, complained: bool) -> str:
    """Resend's word for where the email stands, from its recipients' states: one still
    on its way says so first (delayed, scheduled, queued); then the most telling end."""
    seen = set(statuses)
    if RecipientStatus.DEFERRED in seen:
        return "delivery_delayed"
    if RecipientStatus.QUEUED in seen:
        return "scheduled" if scheduled else "queued"
    if complained:
        return "complained"
    for status, word in (
        (RecipientStatus.BOUNCED, "bounced"),
        (RecipientStatus.EXPIRED, "failed"),
        (RecipientStatus.DELIVERED, "delivered"),
        (RecipientStatus.CANCELLED, "canceled"),
        (RecipientStatus.SUPPRESSED, "suppressed"),
    ):
        if status in seen:
            return word
    return "queued"  # no recipient row (cannot happen for a stored message)


def mailboxes(header: str | None) -> list[str]:
    """A header's mailboxes as Resend lists them: `Name <addr>` or `addr`."""
    found = getaddresses([header]) if header else []
    return [f"{name} <{addr}>" if name else addr for name, addr in found if addr]


def email_object(
    message: Message,
    recipients: list[Recipient],
    view: dict[str, Any] | None,
    complained: bool,
    now: float,
    created_at: str,
    scheduled_at: str | None,
) -> dict[str, Any]:
    """Resend's email object. `view`: the parsed message (parsed.describe, or just its
    headers for a list), None once retention purged the body: then `to` is the envelope.
    Bcc is the envelope recipients the To and Cc headers do not show."""
    envelope = [r.address for r in recipients]
    view = view or {}
    to, cc = mailboxes(view.get("to")), mailboxes(view.get("cc"))
    shown = {addr.lower() for _, addr in getaddresses([view.get("to") or "", view.get("cc") or ""])}
    bcc = [a for a in envelope if a.lower() not in shown] if view else []
    waiting = [r for r in recipients if r.status is RecipientStatus.QUEUED]
    scheduled = bool(
        message.scheduled_at
        and message.scheduled_at > now
        and all(r.attempts == 0 for r in waiting)
    )
    return {
        "object": "email",
        "id": message.id,
        "message_id": message.message_id_header,
        "from": view.get("from") or message.sender,
        "to": to if view else envelope,
        "cc": cc or None,
        "bcc": bcc or None,
        "reply_to": mailboxes(view.get("reply_to")) or None,
        "subject": view.get("subject", message.subject),
        "html": lines(view.get("html")),
        "text": lines(view.get("text")),
        "created_at": created_at,
        "scheduled_at": scheduled_at,
        "last_event": last_event([r.status for r in recipients], scheduled, complained),
        "tags": [tag_object(t) for t in message.tags],
    }


def lines(body: str | None) -> str | None:
    """A body as JSON readers expect it: LF line ends (the stored message has CRLF)."""
    return body.replace("\r\n", "\n") if body is not None else None


def tag_object(tag: str) -> dict[str, str]:
    """A mailgate tag as a Resend tag: `name:value` split at the first colon."""
    name, colon, value = tag.partition(":")
    return {"name": name, "value": value} if colon else {"name": name}
