"""The JSON shapes of the HTTP API, validated by pydantic.

Unknown fields are refused, and every string that ends up in a header (subject, custom
header values, display names, filenames) is refused with 422 naming the field when it
holds a control character (C0 but TAB, DEL, C1) or a Unicode line or paragraph separator:
header injection and the characters readers and relays mangle differently.

No text field (addresses, subject, bodies, headers, tags, metadata keys and values,
filenames) may hold a lone surrogate (U+D800-U+DFFF): a JSON `"\\ud800"` escape or a
Python str can carry one, UTF-8 cannot, so stored it would break every read that encodes
it. The JSON parsers (pydantic's) refuse them already; these types refuse them for the
doors that build a request from other input (the vendor surfaces' forms and JSON).
"""

from __future__ import annotations

import base64
import binascii
import datetime
import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
)

from mailgate.addresses import parse_mailbox
from mailgate.models import RecordStatus, Scope, SuppressionReason

_FIELD_NAME = re.compile(r"^[!-9;-~]{1,76}$")  # RFC 5322 ftext
_TOKEN = re.compile(r"^[A-Za-z0-9!#$&^_.+-]{1,64}/[A-Za-z0-9!#$&^_.+-]{1,64}$")
# type/subtype and parameters (RFC 2045 5.1: `; charset=iso-8859-1`, a value a token or a
# quoted-string without escapes); `name` is not one of them: mailgate writes it from the
# filename.
_PARAMETER = (
    r'[A-Za-z0-9!#$&^_.+-]{1,64}=(?:[A-Za-z0-9!#$%&\'*+.^_`{|}~-]{1,200}|"[ !#-\[\]-~]{0,200}")'
)
_CONTENT_TYPE = re.compile(rf"^{_TOKEN.pattern[1:-1]}(?:[ \t]*;[ \t]*{_PARAMETER})*$")
RESERVED_HEADERS = frozenset(
    h.lower()
    for h in (
        "From",
        "To",
        "Cc",
        "Bcc",
        "Subject",
        "Date",
        "Message-ID",
        "Reply-To",
        "Sender",
        "In-Reply-To",
        "References",
        "MIME-Version",
        "Content-Type",
        "Content-Transfer-Encoding",
        "Content-Disposition",
        "Received",
        "Return-Path",
        "DKIM-Signature",
    )
)


MAX_BODY_TEXT = 40 * 1024 * 1024  # characters of text or html: http.max_body_bytes' default
MAX_METADATA_KEY = 256  # characters of a metadata key (Resend's tag names are 256 at most)
MAX_REPLY_TO = 50  # Reply-To mailboxes: a header, not a recipient list

_SURROGATE = re.compile("[\ud800-\udfff]")
_LINE_BAD = re.compile("[\r\n\x00\ud800-\udfff]")
# C0 controls but TAB (RFC 5322 WSP), DEL, C1 controls (NEL among them), U+2028, U+2029,
# and lone surrogates (no UTF-8 for them).
_HEADER_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


def _surrogate(char: str) -> ValueError:
    return ValueError(
        f"must not contain a lone surrogate (U+{ord(char):04X}): it is not Unicode text"
    )


def _no_controls(value: str) -> str:
    found = _LINE_BAD.search(value)
    if found is not None:
        if found[0] in "\r\n\x00":
            raise ValueError("must not contain CR, LF or NUL")
        raise _surrogate(found[0])
    return value


def _header_text(value: str) -> str:
    found = _HEADER_CONTROL.search(value)
    if found is not None:
        if _SURROGATE.match(found[0]):
            raise _surrogate(found[0])
        raise ValueError(
            f"must not contain control characters or line separators (U+{ord(found[0]):04X})"
        )
    return value


def _body_text(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL")
    if not value.isascii() and (found := _SURROGATE.search(value)) is not None:
        raise _surrogate(found[0])
    return value


def _unicode(value: str) -> str:
    if not value.isascii() and (found := _SURROGATE.search(value)) is not None:
        raise _surrogate(found[0])
    return value


def _mailbox(value: str) -> str:
    _header_text(value)  # first: the address parser cannot take a lone surrogate
    parsed = parse_mailbox(value)
    if isinstance(parsed, str):
        raise ValueError(parsed)
    return value


def _text_keys(value: Any) -> Any:
    """The keys of a JSON object of text (headers, metadata) checked before the values,
    so that no error names a key that cannot be written back as UTF-8 (or a long one)."""
    if isinstance(value, dict):
        for key in value:
            if not isinstance(key, str):
                continue
            found = _LINE_BAD.search(key)
            if found is not None:
                what = "CR, LF or NUL" if found[0] in "\r\n\x00" else "a lone surrogate"
                raise ValueError(f"key {key[:40]!r} must not contain {what}")
            if len(key) > MAX_METADATA_KEY:
                raise ValueError(f"key {key[:40]!r}... is over {MAX_METADATA_KEY} characters")
    return value


def _content_type(value: str) -> str:
    params = value.split(";")[1:]
    if any(p.split("=")[0].strip().lower() == "name" for p in params):
        raise ValueError("must not carry a name parameter: mailgate writes it from the filename")
    return value


def _one_or_many(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


def _base64(value: str) -> str:
    try:
        base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("must be valid base64") from None
    return value


Line = Annotated[str, AfterValidator(_no_controls)]
HeaderText = Annotated[str, AfterValidator(_header_text)]
BodyText = Annotated[str, Field(max_length=MAX_BODY_TEXT), AfterValidator(_body_text)]
Base64 = Annotated[str, AfterValidator(_base64)]
Mailbox = Annotated[str, Field(max_length=320), AfterValidator(_mailbox)]
Mailboxes = Annotated[list[Mailbox], BeforeValidator(_one_or_many)]


class Attachment(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    filename: Annotated[HeaderText, Field(min_length=1, max_length=255)]
    content: Base64 = Field(description="The file, base64-encoded.")
    content_type: Annotated[
        str, Field(max_length=255, pattern=_CONTENT_TYPE.pattern), AfterValidator(_content_type)
    ] = "application/octet-stream"
    content_id: Annotated[str, Field(max_length=200, pattern=r"^[!-;=?-~]+$")] | None = None
    disposition: Literal["attachment", "inline"] | None = None

    def decoded(self) -> bytes:
        return base64.b64decode(self.content)

    @property
    def is_inline(self) -> bool:
        if self.disposition is not None:
            return self.disposition == "inline"
        return self.content_id is not None


class SendRequest(BaseModel):
    """POST /v1/messages."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    from_: Mailbox = Field(alias="from", description="`addr@example.org` or `Name <addr@…>`.")
    to: Mailboxes = Field(default_factory=list)
    cc: Mailboxes = Field(default_factory=list)
    bcc: Mailboxes = Field(default_factory=list)
    reply_to: Mailboxes = Field(default_factory=list, max_length=MAX_REPLY_TO)
    subject: Annotated[HeaderText, Field(max_length=998)] | None = None
    text: BodyText | None = None
    html: BodyText | None = None
    attachments: list[Attachment] = Field(default_factory=list, max_length=100)
    # At most 16384 characters a value: a header line, folded or encoded, not a body.
    headers: Annotated[
        dict[str, Annotated[HeaderText, Field(max_length=16384)]], BeforeValidator(_text_keys)
    ] = Field(default_factory=dict, max_length=50)
    tags: list[Annotated[Line, Field(min_length=1, max_length=100)]] = Field(
        default_factory=list, max_length=20
    )
    metadata: Annotated[
        dict[str, Annotated[Line, Field(max_length=1000)]], BeforeValidator(_text_keys)
    ] = Field(default_factory=dict, max_length=50)
    scheduled_at: datetime.datetime | None = None
    reply_to_message_id: Annotated[str, Field(pattern=r"^[0-9A-Z]{26}$")] | None = None

    @field_validator("headers")
    @classmethod
    def _headers(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not _FIELD_NAME.match(name):
                raise ValueError(f"header name {name[:40]!r} is not a valid field name")
            if name.lower() in RESERVED_HEADERS or name.lower().startswith("resent-"):
                raise ValueError(f"header {name} is set by mailgate; use the matching field")
        return value

    @field_validator("scheduled_at")
    @classmethod
    def _aware(cls, value: datetime.datetime | None) -> datetime.datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("must include a time zone, e.g. 2026-01-01T09:00:00Z")
        if value is not None:
            try:  # 0001-01-01T00:00+14:00 is before year 1 in UTC
                datetime.datetime.fromtimestamp(value.timestamp(), datetime.UTC)
            except (OverflowError, ValueError, OSError):
                raise ValueError("must be a time between the years 1 and 9999 UTC") from None
        return value


_SEND_DEFAULTS = {
    (f.alias or name): f.get_default(call_default_factory=True)
    for name, f in SendRequest.model_fields.items()
    if not f.is_required()
}
_ABSENT = object()


def without_defaults(fields: dict[str, Any]) -> dict[str, Any]:
    """A SendRequest input without the fields that hold their default (None, [], {}): a
    field left out is not validated, which for a plain message translated by a vendor
    surface is a third of the validation's time."""
    return {k: v for k, v in fields.items() if v != _SEND_DEFAULTS.get(k, _ABSENT)}


class BatchRequest(BaseModel):
    """POST /v1/messages/batch: each item is validated on its own."""

    model_config = ConfigDict(extra="forbid")

    messages: list[dict[str, Any]] = Field(min_length=1)


class ValidBatch(BaseModel):
    """A batch whose every item is valid, read in one pass (pydantic straight from the
    JSON bytes); when this fails, BatchRequest and each item on its own say which."""

    model_config = ConfigDict(extra="forbid")

    messages: list[SendRequest] = Field(min_length=1)


class RawRequest(BaseModel):
    """POST /v1/messages/raw with a JSON body."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    raw: Base64 = Field(description="The complete RFC 5322 message, base64-encoded.")
    from_: Annotated[str, Field(max_length=320), AfterValidator(_unicode)] = Field(
        alias="from", description="Envelope sender (MAIL FROM); empty for <>."
    )
    to: Annotated[list[Mailbox], BeforeValidator(_one_or_many)] = Field(min_length=1)
    tags: list[Annotated[Line, Field(min_length=1, max_length=100)]] = Field(
        default_factory=list, max_length=20
    )


class RecipientOut(BaseModel):
    address: str
    status: str
    reason: str | None = None  # suppressed: why (a suppression reason)
    attempts: int = 0
    last_reply: str | None = None
    remote_host: str | None = None
    next_attempt_at: datetime.datetime | None = None


class Accepted(BaseModel):
    id: str
    message_id: str | None
    recipients: list[RecipientOut]
    scheduled_at: datetime.datetime | None = None


class PartOut(BaseModel):
    index: int  # for GET /v1/messages/{id}/attachments/{index}
    filename: str | None
    content_type: str
    size: int
    content_id: str | None
    inline: bool


class HeaderOut(BaseModel):
    name: str
    value: str


class ParsedMessage(BaseModel):
    id: str
    subject: str | None
    from_: str | None = Field(None, alias="from")
    to: str | None
    cc: str | None
    reply_to: str | None
    date: str | None
    message_id: str | None
    headers: list[HeaderOut]
    text: str | None
    html: str | None
    attachments: list[PartOut]


class BatchItem(BaseModel):
    index: int
    id: str | None = None
    message_id: str | None = None
    recipients: list[RecipientOut] | None = None
    scheduled_at: datetime.datetime | None = None
    error: dict[str, Any] | None = None


class BatchResult(BaseModel):
    accepted: int
    rejected: int
    results: list[BatchItem]


class EventOut(BaseModel):
    at: datetime.datetime
    kind: str
    recipient: str | None
    details: dict[str, Any]


class MessageOut(BaseModel):
    id: str
    created_at: datetime.datetime
    source: str
    sender: str
    subject: str | None
    message_id: str | None
    tags: list[str]
    metadata: dict[str, str]
    size: int
    scheduled_at: datetime.datetime | None
    recipients: list[RecipientOut] = Field(default_factory=list)
    events: list[EventOut] | None = None


class MessageList(BaseModel):
    data: list[MessageOut]
    next_cursor: str | None


class ErrorBody(BaseModel):
    code: str
    message: str
    field: str | None = None


class ErrorOut(BaseModel):
    error: ErrorBody


class DomainRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(max_length=253, description="The domain mail is sent From, e.g. example.org")


class RecordOut(BaseModel):
    id: str = Field(description="dkim:<selector>, spf, dmarc, return_path_mx, return_path_spf")
    purpose: str
    type: str
    name: str
    value: str = Field(description="What to publish")
    status: RecordStatus
    found: list[str] = Field(description="What DNS answered at the last check")
    selector: str | None = None
    algorithm: str | None = None
    retired: bool = False
    signing: bool = Field(False, description="This key signs the domain's mail now")


class DomainOut(BaseModel):
    name: str
    status: str = Field(description="verified (a sending domain), pending (never checked), failed")
    sending: bool
    created_at: datetime.datetime
    checked_at: datetime.datetime | None
    records: list[RecordOut]


class DomainList(BaseModel):
    data: list[DomainOut]


class EventPayload(BaseModel):
    id: str = Field(description="evt_<n>: stable, de-duplicate on it")
    type: str = Field(description="message.accepted, message.delivered, ... domain.verified")
    timestamp: str = Field(description="When it happened (ISO 8601, UTC)")
    data: dict[str, Any]


class EventPage(BaseModel):
    data: list[EventPayload]
    next_cursor: str = Field(description="Pass as `after` for the next page")
    has_more: bool = Field(description="The page was full: ask again at once")


class WebhookRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str = Field(max_length=2048, description="https:// URL events are POSTed to")
    events: list[str] = Field(min_length=1, max_length=20, description="Event types to send")
    description: str = Field("", max_length=200)


class WebhookUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str | None = Field(None, max_length=2048)
    events: list[str] | None = Field(None, min_length=1, max_length=20)
    description: str | None = Field(None, max_length=200)
    enabled: bool | None = None


class WebhookOut(BaseModel):
    id: str
    url: str
    events: list[str]
    description: str
    enabled: bool
    disabled_reason: str | None
    created_at: datetime.datetime
    updated_at: datetime.datetime
    secret: str | None = Field(
        None, description="whsec_...: only when made or rotated; shown once, keep it"
    )


class WebhookList(BaseModel):
    data: list[WebhookOut]


class SuppressionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    address: str = Field(max_length=320)
    reason: SuppressionReason = SuppressionReason.MANUAL
    domain: str | None = Field(
        None, max_length=253, description="Only mail From this sending domain is stopped"
    )


class SuppressionsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    suppressions: list[SuppressionIn] = Field(min_length=1, max_length=1000)


class SuppressionOut(BaseModel):
    address: str
    reason: SuppressionReason
    domain: str | None  # the scope; null: every sender
    created_at: datetime.datetime
    message_id: str | None  # the message whose bounce or complaint added it


class SuppressionList(BaseModel):
    data: list[SuppressionOut]
    next_cursor: str | None


class KeyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100)
    scopes: list[Scope] = Field(default_factory=lambda: [Scope.SEND], min_length=1)
    sender_domains: list[Annotated[str, Field(max_length=253)]] = Field(
        default_factory=list, max_length=100
    )
    sandbox: bool = False


class KeyOut(BaseModel):
    id: str
    name: str
    scopes: list[Scope]
    sender_domains: list[str]
    sandbox: bool
    created_at: datetime.datetime
    revoked_at: datetime.datetime | None
    secret: str | None = None  # on create only: shown once


class KeyList(BaseModel):
    data: list[KeyOut]
