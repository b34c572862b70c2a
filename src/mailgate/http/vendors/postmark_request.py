"""Postmark's request and error shapes, translated: an /email body (PascalCase fields,
comma-joined recipients, nulls for unset fields, Headers as [{Name, Value}]) as
mailgate's own SendRequest input, mailgate's field paths back in Postmark's names, and an
ApiError as Postmark's {"ErrorCode", "Message"} with its HTTP status. Pure: no I/O.

Errors are named the way the caller wrote the request ("Attachments[1].Content",
"Headers[0].Value", "To"), so the message the SDK raises points at the field to fix.
"""

from __future__ import annotations

import datetime
from typing import Any, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field

from mailgate.http.errors import ApiError, field_path, invalid
from mailgate.http.models import without_defaults

# Postmark's own fields of POST /email, exactly (unknown ones are refused, not dropped).
_STRICT = ConfigDict(strict=True, extra="forbid", populate_by_name=False)
TrackLinks = Literal["None", "HtmlAndText", "HtmlOnly", "TextOnly"]
STREAM = "outbound"  # the one message stream mailgate has


class PostmarkHeader(BaseModel):
    model_config = _STRICT
    name: str = Field(alias="Name")
    value: str = Field(alias="Value")


class PostmarkAttachment(BaseModel):
    model_config = _STRICT
    name: str = Field(alias="Name")
    content: str = Field(alias="Content")
    content_type: str | None = Field(None, alias="ContentType")
    content_id: str | None = Field(None, alias="ContentID")
    # the official SDK's model has it; the decoded Content says the same, so it is not used
    content_length: int | None = Field(None, alias="ContentLength")


class PostmarkEmail(BaseModel):
    """One message of POST /email or /email/batch, as Postmark's SDKs send it."""

    model_config = _STRICT
    sender: str = Field(alias="From")
    to: str | None = Field(None, alias="To")
    cc: str | None = Field(None, alias="Cc")
    bcc: str | None = Field(None, alias="Bcc")
    subject: str | None = Field(None, alias="Subject")
    tag: str | None = Field(None, alias="Tag")
    html_body: str | None = Field(None, alias="HtmlBody")
    text_body: str | None = Field(None, alias="TextBody")
    reply_to: str | None = Field(None, alias="ReplyTo")
    metadata: dict[str, str] | None = Field(None, alias="Metadata")
    headers: list[PostmarkHeader] | None = Field(None, alias="Headers")
    track_opens: bool | None = Field(None, alias="TrackOpens")
    track_links: TrackLinks | None = Field(None, alias="TrackLinks")
    attachments: list[PostmarkAttachment] | None = Field(None, alias="Attachments")
    message_stream: str | None = Field(None, alias="MessageStream")


# -- Postmark's words for mailgate's errors -----------------------------------------------

# mailgate's error code -> (HTTP status, Postmark ErrorCode). Postmark answers a request
# it cannot take with 422; the statuses that mean something else to a client (401, 403,
# 404, 409, 413, 429, 503) are kept. The official SDK picks its exception by ErrorCode
# first (10 InvalidAPIKey, 300 Validation, 406 InactiveRecipient), then by status (429
# RateLimit and 503 Server, both retried); postmarker raises ClientError for any.
ERROR_CODES: dict[str, tuple[int, int]] = {
    "unauthorized": (401, 10),  # Bad or missing API token
    "forbidden": (403, 10),  # the key lacks the scope
    "https_required": (403, 10),  # a key over plain HTTP from elsewhere
    "too_many_auth_failures": (429, 429),  # Rate limit exceeded
    "rate_limited": (429, 429),
    "unsupported_media_type": (422, 409),  # JSON required
    "malformed_json": (422, 402),  # Invalid JSON
    "too_large": (413, 300),
    "invalid_field": (422, 300),  # Invalid email request
    "idempotency_conflict": (409, 300),
    "client_disconnected": (400, 300),
    "sender_not_allowed": (422, 400),  # Sender signature not found (not this key's domain)
    "domain_not_verified": (422, 401),  # Sender signature not confirmed
    "inactive_recipient": (422, 406),  # Inactive recipient (the suppression list)
    "too_many_batch_messages": (422, 410),  # Too many batch messages
    "not_found": (404, 701),  # Message not found
    "unavailable": (503, 100),  # the store cannot commit: retry (the SDK does)
    "shutting_down": (503, 100),
    "internal": (500, 0),
}

# mailgate's top-level field names as Postmark names them
FIELD_NAMES = {
    "from": "From",
    "to": "To",
    "cc": "Cc",
    "bcc": "Bcc",
    "reply_to": "ReplyTo",
    "subject": "Subject",
    "text": "TextBody",
    "html": "HtmlBody",
    "tags": "Tag",
    "metadata": "Metadata",
    "headers": "Headers",
    "attachments": "Attachments",
}
ATTACHMENT_NAMES = {
    "filename": "Name",
    "content": "Content",
    "content_type": "ContentType",
    "content_id": "ContentID",
}
ADDRESS_LISTS = ("to", "cc", "bcc", "reply_to")


# mailgate's messages that name its own fields, in Postmark's names
MESSAGES = {
    "At least one of to, cc, bcc is required": "At least one of To, Cc, Bcc is required",
    "Give text, html or both": "Give TextBody, HtmlBody or both",
}


def postmark_codes(e: ApiError) -> tuple[int, int]:
    """(HTTP status, ErrorCode) of an error; one mailgate has no word for keeps its status."""
    return ERROR_CODES.get(e.code, (e.status, 300 if e.status < 500 else 0))


def error_body(e: ApiError) -> dict[str, Any]:
    """{"ErrorCode", "Message"}: the message is mailgate's, led by the field at fault."""
    field = FIELD_NAMES.get(e.field, e.field) if e.field else None
    message = MESSAGES.get(e.message, e.message)
    return {
        "ErrorCode": postmark_codes(e)[1],
        "Message": f"{field}: {message}" if field else message,
    }


def submitted(at: float) -> str:
    """SubmittedAt: ISO 8601 in UTC (both SDKs parse it)."""
    return datetime.datetime.fromtimestamp(at, datetime.UTC).isoformat().replace("+00:00", "Z")


def item_answer(to: str, at: float, message_id: str, code: int, message: str) -> dict[str, Any]:
    """The five fields every answer carries: the official SDK's model insists on all."""
    return {
        "To": to,
        "SubmittedAt": submitted(at),
        "MessageID": message_id,
        "ErrorCode": code,
        "Message": message,
    }


def item_error(to: str, at: float, e: ApiError) -> dict[str, Any]:
    body = error_body(e)
    return item_answer(to, at, "", body["ErrorCode"], body["Message"])


def to_text(item: Any) -> str:
    """The To the caller gave, echoed as Postmark does ("" when it was not a string)."""
    to = item.get("To") if isinstance(item, dict) else None
    return to if isinstance(to, str) else ""


# -- the suppression list in Postmark's words (its 406 "inactive recipient") ---------------


def inactive_error(suppressed: dict[str, str]) -> ApiError:
    """Every recipient is on the suppression list: Postmark's 406, worded as Postmark's
    so the official SDK reads the addresses off it (InactiveRecipientException)."""
    found = ", ".join(suppressed)
    reasons = "; ".join(f"{a}: {r}" for a, r in suppressed.items())
    return ApiError(
        422,
        "inactive_recipient",
        "You tried to send to recipient(s) that have been marked as inactive. Found inactive"
        f" addresses: {found}. Inactive recipients are on mailgate's suppression list"
        f" ({reasons}).",
    )


def ok_message(suppressed: dict[str, str]) -> str:
    """Postmark's Message for an accepted send, naming recipients it will not deliver to."""
    if not suppressed:
        return "OK"
    return f"Message OK, but will not deliver to these inactive addresses: {', '.join(suppressed)}."


# -- the request ---------------------------------------------------------------------------


def split_addresses(text: str | None) -> list[str]:
    """A Postmark recipient string ('a@x.org, "Doe, J" <j@y.org>') as its mailboxes:
    commas inside quotes, angle brackets or comments do not split; blanks are dropped."""
    if not text:
        return []
    if not any(c in text for c in '"<('):  # the common case, without a walk per character
        return [a.strip() for a in text.split(",") if a.strip()]
    parts, start, quoted, depth, escaped = [], 0, False, 0, False
    for i, c in enumerate(text):
        if escaped:
            escaped = False
        elif quoted:
            escaped, quoted = c == "\\", c != '"'
        elif c == '"':
            quoted = True
        elif c in "<(":
            depth += 1
        elif c in ">)":
            depth = max(0, depth - 1)
        elif c == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [a.strip() for a in parts if a.strip()]


def unsupported(email: PostmarkEmail) -> ApiError | None:
    """A field set to something mailgate cannot do: refused by name, never dropped. Both
    SDKs' defaults (TrackOpens null, TrackLinks "None", MessageStream "outbound") pass."""
    if email.track_opens:
        return invalid(
            "open tracking is not supported by mailgate; send false or omit it", "TrackOpens"
        )
    if email.track_links not in (None, "None"):
        return invalid(
            'link tracking is not supported by mailgate; send "None" or omit it', "TrackLinks"
        )
    if email.message_stream not in (None, STREAM):
        return invalid(f'mailgate has one message stream, "{STREAM}"', "MessageStream")
    seen: set[str] = set()
    for i, header in enumerate(email.headers or ()):
        if header.name.lower() in seen:  # mailgate keeps one value a name
            return invalid(f"header {header.name[:80]} is given twice", f"Headers[{i}].Name")
        seen.add(header.name.lower())
    return None


def send_fields(email: PostmarkEmail) -> dict[str, Any]:
    """The Postmark message as the input of mailgate's SendRequest (which validates it)."""
    fields = {
        "from": email.sender,
        "to": split_addresses(email.to),
        "cc": split_addresses(email.cc),
        "bcc": split_addresses(email.bcc),
        "reply_to": split_addresses(email.reply_to),
        "subject": email.subject,
        "text": email.text_body,
        "html": email.html_body,
        "headers": {h.name: h.value for h in email.headers or ()},
        "attachments": [attachment_fields(a) for a in email.attachments or ()],
        "tags": [email.tag] if email.tag else [],  # "" is no tag, as null is
        "metadata": email.metadata or {},
    }
    return without_defaults(fields)


def attachment_fields(a: PostmarkAttachment) -> dict[str, Any]:
    """Postmark's attachment: a ContentID makes it inline; Postmark writes it as
    "cid:logo.png" (the reference the HTML uses), the Content-ID is "logo.png"."""
    cid = a.content_id or None
    if cid is not None and cid.lower().startswith("cid:"):
        cid = cid[4:]
    fields: dict[str, Any] = {"filename": a.name, "content": a.content, "content_id": cid}
    if a.content_type:
        fields["content_type"] = a.content_type
    return fields


def postmark_error(exc: pydantic.ValidationError) -> ApiError:
    """The first problem pydantic found in Postmark's shape (paths are Postmark's)."""
    first = exc.errors(include_url=False)[0]
    message = "unknown field" if first["type"] == "extra_forbidden" else clean(first["msg"])
    return invalid(message, field_path(tuple(first["loc"])) or None)


def mailgate_error(exc: pydantic.ValidationError, fields: dict[str, Any]) -> ApiError:
    """The first problem mailgate's SendRequest found, named as the Postmark request
    names it (an address list's error quotes the address at fault)."""
    first = exc.errors(include_url=False)[0]
    loc, message = tuple(first["loc"]), clean(first["msg"])
    head, rest = (str(loc[0]), loc[1:]) if loc else ("", ())
    if head in ADDRESS_LISTS and rest and isinstance(rest[0], int):
        message = f"invalid address {fields[head][rest[0]][:200]!r}: {message}"
    return invalid(message, postmark_path(head, rest, fields))


def postmark_path(head: str, rest: tuple[Any, ...], fields: dict[str, Any]) -> str:
    """mailgate's path (head, rest...) as the Postmark field it came from."""
    if head == "from_":
        head = "from"
    name = FIELD_NAMES.get(head, head)
    if head == "attachments" and rest:
        sub = f".{ATTACHMENT_NAMES.get(str(rest[1]), rest[1])}" if len(rest) > 1 else ""
        return f"{name}[{rest[0]}]{sub}"
    if head == "headers" and rest and rest[0] in fields["headers"]:
        return f"{name}[{list(fields['headers']).index(rest[0])}].Value"
    if head == "metadata" and rest:
        return f"{name}.{rest[0]}"
    return name


def clean(message: str) -> str:
    """pydantic's message without its "Value error, " lead."""
    return message.removeprefix("Value error, ")
