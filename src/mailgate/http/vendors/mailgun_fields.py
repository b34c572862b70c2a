"""Mailgun's send parameters in mailgate's words (pure): a `Form` read into the fields of
mailgate's own SendRequest, one per message, and the `o:` options checked against what
mailgate can honour. A parameter mailgate cannot honour is refused with a `Refused`
naming it, never dropped.

    from, to, cc, bcc, subject, text, html     the same fields (addresses may be comma-joined)
    attachment, inline (files)                 attachments; an inline one's cid is its filename
                                               (percent-encoded past RFC 5322's atext)
    h:Reply-To, h:In-Reply-To, h:References    reply_to and the threading headers
    h:X-Mailgun-Variables (JSON), v:NAME       metadata (a name in both is refused)
    h:NAME                                     a custom header (names case-insensitive: once)
    o:tag (repeated)                           tags
    o:deliverytime (RFC 2822 date)             scheduled_at
    recipient-variables (JSON)                 one message per `to` recipient, %recipient.NAME%
                                               replaced in subject, text, html, h: and v: values;
                                               every copy counted while it is filled in
    o:testmode yes                             only with a sandbox key (its mail is simulated)
    o:dkim no, o:tracking* / o:require-tls / o:skip-verification yes, templates, amp-html,
    send-time optimisation, IP pools ...       refused: 400 naming the parameter
"""

from __future__ import annotations

import base64
import datetime
import json
import mimetypes
import re
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote

import pydantic_core

from mailgate.addresses import parse_mailbox
from mailgate.http.models import RESERVED_HEADERS, without_defaults
from mailgate.http.vendors.mailgun_form import File, Form


class Refused(Exception):
    """A request answered {"message": ...} with `status`."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


def bad(param: str, why: str) -> Refused:
    """400 naming the parameter, in Mailgun's phrasing ("'to' parameter is ...")."""
    return Refused(400, f"'{param}' parameter {why}")


MESSAGE_FIELDS = frozenset(
    {"from", "to", "cc", "bcc", "subject", "text", "html", "recipient-variables"}
)
MIME_FIELDS = frozenset({"to", "message"})
# a message of these alone skips the h:, o: and v: steps (they would find nothing)
PLAIN_FIELDS = MESSAGE_FIELDS - {"recipient-variables"}
REPEATABLE = frozenset({"to", "cc", "bcc", "o:tag"})
MAX_ADDRESS_TEXT = 1000 * 330  # Mailgun's 1000 recipients a message, each a long mailbox

_TRACKING = "mailgate does not track opens or clicks"
_TLS = "delivery TLS is the server's delivery.tls setting, not chosen per message"
# o: options mailgate can only honour turned off (what it does anyway)
OFF_ONLY = {
    "o:tracking": _TRACKING,
    "o:tracking-opens": _TRACKING,
    "o:tracking-clicks": _TRACKING,
    "o:tracking-pixel-location-top": _TRACKING,
    "o:require-tls": _TLS,
    "o:skip-verification": _TLS,
}
OPTIONS = frozenset({"o:tag", "o:deliverytime", "o:testmode", "o:dkim", *OFF_ONLY})

_TEMPLATES = "mailgate has no stored templates: send text or html"
_OPTIMIZE = "mailgate has no send-time optimisation: use o:deliverytime"
_IPS = "mailgate sends from its own addresses"
# Why a known Mailgun parameter is refused (any other unknown one: "not supported").
UNSUPPORTED = {
    "template": _TEMPLATES,
    "t:version": _TEMPLATES,
    "t:text": _TEMPLATES,
    "t:variables": _TEMPLATES,
    "amp-html": "mailgate sends text and HTML parts only",
    "o:deliverytime-optimize-period": _OPTIMIZE,
    "o:time-zone-localize": _OPTIMIZE,
    "o:sending-ip": _IPS,
    "o:sending-ip-pool": _IPS,
    "o:secondary-dkim": "mailgate signs with the From domain's own keys only",
    "o:secondary-dkim-public": "mailgate signs with the From domain's own keys only",
    "o:archive-to": "mailgate keeps every message itself (GET /v1/messages/{id}/raw)",
    "attachment": "must be a file: send it as multipart/form-data",
    "inline": "must be a file: send it as multipart/form-data",
    "message": "is only taken by /messages.mime",
}

_TRUE = frozenset({"yes", "true", "1", "on"})
_FALSE = frozenset({"no", "false", "0", "off", ""})
_PLACEHOLDER = re.compile(r"%recipient\.([^%\s]{1,100})%")
# "In-Reply-To: " and the id on one line of at most 998 octets (RFC 5322 2.1.1)
_MESSAGE_ID = re.compile(r"^<[!-;=?-~]{1,983}>$")
# what a Content-ID may hold as it is (RFC 5322 atext and specials but < > and %, which
# quote() encodes): an inline file's cid is its filename, percent-encoded past these
_CID_SAFE = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in "<>%")


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message to send: SendRequest's fields and what SendRequest has no field for."""

    request: dict[str, Any]
    in_reply_to: str | None = None
    references: tuple[str, ...] = ()
    files: tuple[str, ...] = ()  # each attachment's form key, to name a refused one


@dataclass(frozen=True, slots=True)
class Mime:
    """/messages.mime: the message as sent, its envelope recipients, the options."""

    raw: bytes
    to: list[str]
    options: dict[str, Any] = field(default_factory=dict)  # tags, metadata, scheduled_at


def read_message(form: Form, sandbox: bool, batch_max: int, max_bytes: int) -> list[Outgoing]:
    """POST /messages as one message, or one per `to` recipient with recipient-variables
    (at most `batch_max` of them, `max_bytes` in all: the largest body a request may be)."""
    values = grouped(form.fields, mime=False)
    attachments, sources = read_attachments(form.files)
    if "from" not in values:
        raise Refused(400, "'from' parameter is missing")
    to, cc, bcc = (addresses(k, values[k]) if k in values else [] for k in ("to", "cc", "bcc"))
    if not (to or cc or bcc):
        raise Refused(400, "'to' parameter is missing")
    if "text" not in values and "html" not in values:
        raise Refused(400, "Need at least one of 'text' or 'html' parameters specified")
    plain = values.keys() <= PLAIN_FIELDS  # no h:, o: nor v: parameters
    headers, reply_to, in_reply_to, references, variables = (
        ({}, [], None, (), {}) if plain else read_headers(values)
    )
    request: dict[str, Any] = {
        "from": values["from"][0],
        "to": to,
        "cc": cc,
        "bcc": bcc,
        "reply_to": reply_to,
        "subject": first(values, "subject"),
        "text": first(values, "text"),
        "html": first(values, "html"),
        "attachments": attachments,
        "headers": headers,
        **({} if plain else read_options(values, sandbox, variables)),
    }
    if "recipient-variables" not in values:
        return [Outgoing(without_defaults(request), in_reply_to, references, sources)]
    if cc or bcc:
        raise bad(
            "cc" if cc else "bcc",
            "cannot be used with recipient-variables: each 'to' recipient gets its own message",
        )
    if len(to) > batch_max:
        raise bad("to", f"holds more than {batch_max} recipients for recipient-variables")
    shared = (len(v) for k, v in form.fields if k not in ("to", "recipient-variables"))
    size = sum(shared) + sum(len(f.data) for f in form.files)
    if size * len(to) > max_bytes:  # each copy is composed and stored on its own
        raise bad(
            "recipient-variables",
            f"would make {len(to)} messages of about {size} bytes, over {max_bytes} in all",
        )
    per_recipient = recipient_variables(values["recipient-variables"][0])
    budget = Budget(max_bytes - size * len(to), len(to), max_bytes)
    return [
        Outgoing(
            personalized(request, one, per_recipient, budget), in_reply_to, references, sources
        )
        for one in to
    ]


class Budget:
    """The characters the values filled into recipient-variables copies may still add:
    counted as each placeholder is replaced, so a small request cannot fill memory
    (5 recipients x 2000 placeholders x a 10 KB value is 100 MB)."""

    def __init__(self, left: int, copies: int, limit: int) -> None:
        self.left, self.copies, self.limit = left, copies, limit

    def take(self, size: int) -> None:
        self.left -= size
        if self.left < 0:
            raise bad(
                "recipient-variables",
                f"would make {self.copies} messages of over {self.limit} characters in all"
                " once their %recipient.NAME% placeholders are filled in: send fewer"
                " recipients a request, or shorter values",
            )


def read_mime(form: Form, sandbox: bool) -> Mime:
    """POST /messages.mime: `to` and the `message` part (a file, or a plain field)."""
    values = grouped(form.fields, mime=True)
    to = addresses("to", values.get("to", []))
    if not to:
        raise Refused(400, "'to' parameter is missing")
    messages = [f.data for f in form.files if f.name == "message"]
    messages += [v.encode("utf-8") for v in values.get("message", [])]
    others = [f.name for f in form.files if f.name != "message"]
    if others:
        raise bad(others[0], "is not taken by /messages.mime: attach files inside the MIME")
    if not messages:
        raise Refused(400, "'message' parameter is missing")
    if len(messages) > 1:
        raise bad("message", "was given more than once")
    return Mime(messages[0], to, read_options(values, sandbox, {}))


def grouped(fields: list[tuple[str, str]], mime: bool) -> dict[str, list[str]]:
    """The fields by key, every key known and only REPEATABLE ones repeated."""
    values: dict[str, list[str]] = {}
    for key, value in fields:
        values.setdefault(key, []).append(value)
    names = MIME_FIELDS if mime else MESSAGE_FIELDS
    for key, given in values.items():
        known = key in names or key in OPTIONS or key.startswith("v:")
        if not (known or (not mime and key.startswith("h:"))):
            reason = UNSUPPORTED.get(key)
            if mime and (key in MESSAGE_FIELDS or key.startswith("h:")):
                reason = "/messages.mime takes the envelope in 'to', the rest in the MIME message"
            raise bad(key, f"is not supported: {reason}" if reason else "is not supported")
        if len(given) > 1 and key not in REPEATABLE:
            raise bad(key, "was given more than once")
    return values


def first(values: dict[str, list[str]], key: str) -> str | None:
    given = values.get(key)
    return given[0] if given else None


def addresses(param: str, values: list[str]) -> list[str]:
    """Every mailbox in the values, each of which may hold several, comma-separated."""
    if sum(map(len, values)) > MAX_ADDRESS_TEXT:
        raise bad(param, f"holds more than {MAX_ADDRESS_TEXT} characters of addresses")
    return [one for value in values for one in split_addresses(value)]


def split_addresses(text: str) -> list[str]:
    """`a@x, "Doe, Jane" <j@y>` -> ["a@x", '"Doe, Jane" <j@y>']: split at the commas that
    are outside quotes, angle brackets and comments; blanks dropped."""
    if not any(c in text for c in '"\\(<'):  # the common case, without a loop in Python
        return [p.strip() for p in text.split(",") if p.strip()]
    parts: list[str] = []
    start, quoted, escaped, angle, comment = 0, False, False, False, 0
    for i, c in enumerate(text):
        if escaped:
            escaped = False
        elif c == "\\":
            escaped = True
        elif quoted:
            quoted = c != '"'
        elif c == '"':
            quoted = True
        elif c == "(":
            comment += 1
        elif c == ")" and comment:
            comment -= 1
        elif c in "<>":
            angle = c == "<"
        elif c == "," and not angle and not comment:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def read_headers(
    values: dict[str, list[str]],
) -> tuple[dict[str, str], list[str], str | None, tuple[str, ...], dict[str, str]]:
    """h: parameters: (custom headers, Reply-To, In-Reply-To, References, variables)."""
    headers: dict[str, str] = {}
    reply_to: list[str] = []
    in_reply_to: str | None = None
    references: tuple[str, ...] = ()
    variables: dict[str, str] = {}
    seen: dict[str, str] = {}
    for key, (value, *_) in values.items():
        if not key.startswith("h:"):
            continue
        name = key[2:]
        lower = name.lower()
        if lower in seen:  # one header either way: which one would win is a guess
            raise bad(key, f"names the same header as '{seen[lower]}' (names ignore case)")
        seen[lower] = key
        if lower == "reply-to":
            reply_to = addresses(key, [value])
        elif lower == "in-reply-to":
            in_reply_to = one_message_id(key, value) if value.strip() else None
        elif lower == "references":
            references = message_ids(key, value)[-20:]
        elif lower == "x-mailgun-variables":
            variables = json_variables(key, value)
        elif lower in RESERVED_HEADERS or lower.startswith("resent-"):
            raise bad(key, f"cannot be set: mailgate writes the {name} header itself")
        else:
            headers[name] = value
    return headers, reply_to, in_reply_to, references, variables


def message_ids(key: str, value: str) -> tuple[str, ...]:
    ids = tuple(value.split())
    if not ids or not all(_MESSAGE_ID.match(i) for i in ids):
        raise bad(key, "must hold message ids like <id@example.org>, each at most 985 characters")
    return ids


def one_message_id(key: str, value: str) -> str:
    """In-Reply-To: the one message replied to (mailgate writes one id there)."""
    ids = message_ids(key, value)
    if len(ids) > 1:
        raise bad(key, "must hold one message id: put the thread's others in h:References")
    return ids[0]


def loads(param: str, value: str) -> Any:
    """JSON text as Python, or 400 naming the parameter. pydantic's parser, which refuses
    what UTF-8 cannot carry (a lone surrogate escape, "\\ud800"): json.loads keeps it,
    and stored it breaks every read that writes the message back as JSON."""
    try:
        return pydantic_core.from_json(value)
    except ValueError as exc:
        raise bad(param, f"is not valid JSON: {exc}") from None


def json_variables(param: str, value: str) -> dict[str, str]:
    """A JSON object of variables, its values as text (JSON for non-strings)."""
    parsed = loads(param, value)
    if not isinstance(parsed, dict):
        raise bad(param, "must be a JSON object")
    return {str(k): text_of(v) for k, v in parsed.items()}


def text_of(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def read_options(
    values: dict[str, list[str]], sandbox: bool, variables: dict[str, str]
) -> dict[str, Any]:
    """o: and v: parameters as SendRequest's tags, metadata and scheduled_at."""
    for key, reason in OFF_ONLY.items():
        if key in values and flag(key, values[key][0]):
            raise bad(key, f"is not supported turned on: {reason}")
    if "o:dkim" in values and not flag("o:dkim", values["o:dkim"][0]):
        raise bad(
            "o:dkim",
            "is not supported turned off: mailgate signs all mail From a verified sending domain",
        )
    if "o:testmode" in values and flag("o:testmode", values["o:testmode"][0]) and not sandbox:
        raise bad(
            "o:testmode",
            "is not supported with this key: mailgate would deliver the message; send with"
            " a sandbox key (mailgate keys create --sandbox) to have it simulated",
        )
    metadata = dict(variables)
    for key, (value, *_) in values.items():
        if key.startswith("v:"):
            if len(key) == 2:
                raise bad(key, "needs a variable name after v:")
            if key[2:] in variables:
                raise bad(key, "is also in h:X-Mailgun-Variables: give each variable once")
            metadata[key[2:]] = value
    options: dict[str, Any] = {"tags": values.get("o:tag", []), "metadata": metadata}
    if "o:deliverytime" in values:
        options["scheduled_at"] = delivery_time(values["o:deliverytime"][0])
    return options


def flag(key: str, value: str) -> bool:
    """A Mailgun yes/no option (htmlonly counts as on for o:tracking-clicks)."""
    word = value.strip().lower()
    if word in _TRUE or (word == "htmlonly" and key == "o:tracking-clicks"):
        return True
    if word in _FALSE:
        return False
    raise bad(key, "must be yes or no")


def delivery_time(value: str) -> str:
    """An RFC 2822 date as ISO 8601; no zone (-0000) is UTC."""
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        raise bad(
            "o:deliverytime", "is not an RFC 2822 date like Thu, 13 Oct 2030 18:02:00 +0000"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return when.isoformat()


def read_attachments(files: list[File]) -> tuple[list[dict[str, Any]], tuple[str, ...]]:
    """attachment and inline files as SendRequest attachments, with each one's form key."""
    attachments: list[dict[str, Any]] = []
    for f in files:
        if f.name not in ("attachment", "inline"):
            raise bad(f.name, "is not a file parameter of /messages (attachment, inline)")
        inline = f.name == "inline"
        guessed = mimetypes.guess_type(f.filename)[0] or "application/octet-stream"
        attachments.append(
            {
                "filename": f.filename,
                "content": base64.b64encode(f.data).decode("ascii"),
                "content_type": media_type(f.content_type or guessed),
                # html refers to cid:<filename>, as a URL: "my logo.png" is my%20logo.png
                "content_id": quote(f.filename, safe=_CID_SAFE) if inline else None,
                "disposition": "inline" if inline else "attachment",
            }
        )
    return attachments, tuple(f.name for f in files)


def media_type(content_type: str) -> str:
    """A part's Content-Type: type/subtype in lower case, its parameters (charset) kept."""
    main, _, params = content_type.partition(";")
    params = params.strip()
    return main.strip().lower() + (f"; {params}" if params else "")


def recipient_variables(value: str) -> dict[str, dict[str, Any]]:
    """{address: {name: value}}, the addresses in lower case."""
    parsed = loads("recipient-variables", value)
    if not isinstance(parsed, dict) or not all(isinstance(v, dict) for v in parsed.values()):
        raise bad("recipient-variables", "must be a JSON object of objects, one per address")
    return {str(k).strip().lower(): v for k, v in parsed.items()}


def personalized(
    request: dict[str, Any], to: str, per_recipient: dict[str, dict[str, Any]], budget: Budget
) -> dict[str, Any]:
    """The request for one `to` recipient, its %recipient.NAME% placeholders replaced,
    each value taken from the budget as it goes in."""
    parsed = parse_mailbox(to)
    if isinstance(parsed, str):
        raise bad("to", f"is not a valid address: {parsed}")
    address = parsed[1]
    variables = per_recipient.get(address.lower(), {})

    def value(match: re.Match[str]) -> str:
        if match[1] not in variables:
            raise bad(
                "recipient-variables",
                f"has no '{match[1]}' for {address} (used as %recipient.{match[1]}%)",
            )
        filled = text_of(variables[match[1]])
        budget.take(len(filled))
        return filled

    def fill(text: str | None) -> str | None:
        return None if text is None else _PLACEHOLDER.sub(value, text)

    return without_defaults(
        {
            **request,
            "to": [to],
            "subject": fill(request["subject"]),
            "text": fill(request["text"]),
            "html": fill(request["html"]),
            "headers": {k: fill(v) for k, v in request["headers"].items()},
            "metadata": {k: fill(v) for k, v in request["metadata"].items()},
        }
    )


def param_of(loc: tuple[int | str, ...], files: tuple[str, ...], sender: str = "from") -> str:
    """The Mailgun parameter behind a SendRequest field path (a pydantic error's loc)."""
    head = str(loc[0]) if loc else ""
    second = loc[1] if len(loc) > 1 else None
    if head in ("from", "from_"):
        return sender
    if head == "reply_to":
        return "h:Reply-To"
    if head == "headers":
        return f"h:{second}" if isinstance(second, str) else "h:"
    if head == "metadata":
        return f"v:{second}" if isinstance(second, str) else "v:"
    if head == "tags":
        return "o:tag"
    if head == "scheduled_at":
        return "o:deliverytime"
    if head == "attachments" and isinstance(second, int) and second < len(files):
        return files[second]
    return head or "body"
