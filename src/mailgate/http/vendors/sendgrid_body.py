"""SendGrid's v3 mail/send body, read: its shape in SendGrid's names (pydantic), what
mailgate cannot honour (refused, naming the field), and each personalization as the
fields of a mailgate SendRequest, with the way back from mailgate's field names to
SendGrid's. Pure: no I/O, no door.

Each personalization is its own message: its to/cc/bcc, and its subject, from, headers,
custom_args and send_at over the top-level ones; content, attachments, reply_to and
categories are shared. What is shared is counted once a personalization (each message
gets its own copy: `multiplied_size`) and its addresses are checked once a request.
"""

from __future__ import annotations

import datetime
from typing import Annotated, Any

import pydantic
from pydantic import BaseModel, ConfigDict, Field, Strict, StrictBool

from mailgate.addresses import address_problem
from mailgate.http.errors import ApiError
from mailgate.http.models import MAX_REPLY_TO, without_defaults

BATCH_TAG = "sendgrid-batch:"  # + batch_id: the tag a scheduled-send cancel looks up
# personalizations a request at most: the largest http.batch_max the config takes (the
# configured one is checked next, naming it); recipients a personalization: the door's
# accept.max_recipients, checked before any address is parsed (sendgrid.py)
MAX_PERSONALIZATIONS = 10_000
MAX_SEND_AT = 253402300799  # 9999-12-31T23:59:59Z, the last second a datetime holds

StrictInt = Annotated[int, Strict()]


class _Shape(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class SgEmail(_Shape):
    email: str
    name: str | None = None


class SgContent(_Shape):
    type: str
    value: str


class SgAttachment(_Shape):
    content: str
    filename: str
    type: str | None = None
    disposition: str | None = None
    content_id: str | None = None


class Toggle(BaseModel):
    """One of mail_settings / tracking_settings: only `enable` matters here (the other
    keys configure what mailgate does not do, and mean nothing while it is off)."""

    model_config = ConfigDict(extra="allow", frozen=True)
    enable: StrictBool = False


class SgPersonalization(_Shape):
    to: list[SgEmail] = Field(default_factory=list)
    cc: list[SgEmail] = Field(default_factory=list)
    bcc: list[SgEmail] = Field(default_factory=list)
    from_: SgEmail | None = Field(None, alias="from")
    subject: str | None = None
    headers: dict[str, str] = Field(default_factory=dict, max_length=50)
    custom_args: dict[str, str] = Field(default_factory=dict, max_length=50)
    send_at: StrictInt | None = None
    substitutions: Any = None  # refused when set
    dynamic_template_data: Any = None  # refused when set


class SgMail(_Shape):
    """POST /v3/mail/send. Unknown keys are refused (never silently dropped)."""

    personalizations: list[SgPersonalization] = Field(min_length=1, max_length=MAX_PERSONALIZATIONS)
    from_: SgEmail = Field(alias="from")
    reply_to: SgEmail | None = None
    reply_to_list: list[SgEmail] = Field(default_factory=list, max_length=MAX_REPLY_TO)
    subject: str | None = None
    content: list[SgContent] = Field(default_factory=list, max_length=10)
    # mailgate's own caps, early: each is copied into every personalization's message
    attachments: list[SgAttachment] = Field(default_factory=list, max_length=100)
    headers: dict[str, str] = Field(default_factory=dict, max_length=50)
    categories: list[str] = Field(default_factory=list, max_length=10)
    custom_args: dict[str, str] = Field(default_factory=dict, max_length=50)
    send_at: StrictInt | None = None
    batch_id: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")] | None = None
    mail_settings: dict[str, Toggle] = Field(default_factory=dict)
    tracking_settings: dict[str, Toggle] = Field(default_factory=dict)
    template_id: Any = None  # the four below are refused when set
    sections: Any = None
    asm: Any = None
    ip_pool_name: Any = None


class Refused(ApiError):
    """The request is refused for these reasons; one SendGrid answer lists them all (an
    ApiError of the first, should it reach mailgate's own handler)."""

    def __init__(self, errors: list[ApiError]) -> None:
        first = errors[0]
        super().__init__(first.status, first.code, first.message, first.field, first.headers)
        self.errors = errors


def problem(message: str, field: str | None) -> ApiError:
    """A SendGrid 400 naming the field (SendGrid answers 400 where mailgate says 422)."""
    return ApiError(400, "invalid_field", message, field)


def dotted(loc: tuple[int | str, ...]) -> str | None:
    """("personalizations", 0, "to") -> "personalizations.0.to", SendGrid's spelling."""
    return ".".join(str(p) for p in loc) or None


def parse(body: bytes) -> SgMail:
    """The body in SendGrid's shape, or every field at fault (400, SendGrid's names)."""
    try:
        return SgMail.model_validate_json(body)
    except pydantic.ValidationError as exc:
        raise Refused(shape_problems(exc)) from None


def shape_problems(exc: pydantic.ValidationError, limit: int = 20) -> list[ApiError]:
    found: list[ApiError] = []
    for e in exc.errors(include_url=False)[:limit]:
        kind = e["type"]
        if kind in ("json_invalid", "json_type") or kind.startswith("recursion"):
            return [problem(f"The request body is not valid JSON: {e['msg']}", None)]
        field = dotted(tuple(e["loc"]))
        if kind == "extra_forbidden":
            found.append(problem(f"Unknown field {field}: mailgate cannot honour it", field))
        elif kind == "missing":
            found.append(problem(f"The {field} field is required", field))
        else:
            found.append(problem(e["msg"], field))
    return found


# -- what mailgate cannot honour: refused when set, with the reason ----------------------

UNSUPPORTED = {
    "template_id": "mailgate does not render SendGrid templates: send the rendered subject"
    " and content",
    "sections": "mailgate does not substitute sections: send each personalization's final content",
    "asm": "mailgate has no unsubscribe groups: its suppression list applies to all mail",
    "ip_pool_name": "mailgate has no IP pools",
}
UNSUPPORTED_PERSONAL = {
    "substitutions": "mailgate does not substitute tags: send the final content",
    "dynamic_template_data": "mailgate does not render SendGrid templates: send the"
    " rendered subject and content",
}
_SUPPRESSIONS = "mailgate always applies its suppression list (remove an address there)"
# enabled: refused with this reason; disabled: accepted (nothing to do)
MAIL_SETTINGS = {
    "bypass_list_management": _SUPPRESSIONS,
    "bypass_bounce_management": _SUPPRESSIONS,
    "bypass_unsubscribe_management": _SUPPRESSIONS,
    "bypass_spam_management": _SUPPRESSIONS,
    "footer": "mailgate adds no footers: put it in the content",
    "spam_check": "mailgate runs no spam check",
    "bcc": "mailgate has no account-wide Bcc: use personalizations[].bcc",
}
_TRACKING = "mailgate does not track opens or clicks nor rewrite links"
TRACKING_SETTINGS = {
    "click_tracking": _TRACKING,
    "open_tracking": _TRACKING,
    "subscription_tracking": "mailgate adds no unsubscribe links",
    "ganalytics": _TRACKING,
}
SANDBOX = "sandbox_mode"  # honoured: the messages are captured, never sent


def is_set(value: Any) -> bool:
    return value not in (None, "", {}, [])


# the fields that may hold something unsupported: a request setting none of them (the
# common send) skips the scan
_MAYBE_UNSUPPORTED = frozenset(
    {*UNSUPPORTED, "reply_to_list", "mail_settings", "tracking_settings"}
)


def unsupported(mail: SgMail) -> list[ApiError]:
    """Every field the caller set that mailgate cannot honour."""
    if not mail.model_fields_set & _MAYBE_UNSUPPORTED and not any(
        p.model_fields_set & UNSUPPORTED_PERSONAL.keys() for p in mail.personalizations
    ):
        return []
    found = [problem(why, name) for name, why in UNSUPPORTED.items() if is_set(getattr(mail, name))]
    if mail.reply_to is not None and mail.reply_to_list:
        found.append(problem("Give reply_to or reply_to_list, not both", "reply_to_list"))
    for n, p in enumerate(mail.personalizations):
        for name, why in UNSUPPORTED_PERSONAL.items():
            if is_set(getattr(p, name)):
                found.append(problem(why, f"personalizations.{n}.{name}"))
    for group, known, extra in (
        ("mail_settings", MAIL_SETTINGS, (SANDBOX,)),
        ("tracking_settings", TRACKING_SETTINGS, ()),
    ):
        for name, toggle in getattr(mail, group).items():
            if name not in known and name not in extra:
                found.append(
                    problem(
                        f"Unknown setting {group}.{name}: mailgate cannot honour it",
                        f"{group}.{name}",
                    )
                )
            elif name in known and toggle.enable:
                found.append(problem(known[name], f"{group}.{name}.enable"))
    return found


def multiplied_size(mail: SgMail) -> int:
    """The characters of every personalization's message: the shared fields (content,
    attachments, headers, custom_args, categories, subject, from, reply-to) once for
    each, as each message gets its own copy, so a small body can ask for a lot of
    memory; and each personalization's own fields."""
    shared = sum(len(c.value) for c in mail.content)
    shared += sum(len(a.content) + len(a.filename) for a in mail.attachments)
    shared += texts_size(mail.headers) + texts_size(mail.custom_args)
    shared += sum(map(len, mail.categories)) + len(mail.subject or "")
    shared += sum(map(email_size, (mail.from_, *filter(None, [mail.reply_to]))))
    shared += sum(map(email_size, mail.reply_to_list))
    own = 0
    for p in mail.personalizations:
        own += texts_size(p.headers) + texts_size(p.custom_args) + len(p.subject or "")
        own += sum(map(email_size, (*p.to, *p.cc, *p.bcc, *filter(None, [p.from_]))))
    return shared * len(mail.personalizations) + own


def texts_size(texts: dict[str, str]) -> int:
    return sum(len(k) + len(v) for k, v in texts.items())


def email_size(e: SgEmail) -> int:
    return len(e.email) + len(e.name or "")


def sandboxed(mail: SgMail) -> bool:
    """sandbox_mode on: validate and keep the messages (mailgate's capture), send none."""
    toggle = mail.mail_settings.get(SANDBOX)
    return toggle is not None and toggle.enable


# -- one personalization as a mailgate SendRequest --------------------------------------

ATTACHMENT_NAMES = {"content_type": "type"}  # mailgate's name -> SendGrid's
CONTENT_TYPES = {"text/plain": "text", "text/html": "html"}


def mailbox(e: SgEmail) -> str:
    """The mailgate mailbox text of a SendGrid email object (the name quoted)."""
    return mailbox_text(e.email, e.name)


def mailbox_text(email: str, name: str | None) -> str:
    if not name:
        return email
    quoted = name.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{quoted}" <{email}>'


def addresses(mail: SgMail, n: int) -> list[tuple[str, SgEmail]]:
    """(SendGrid field, email object) of every address of personalization n's own (the
    shared ones are `shared_addresses`)."""
    p = mail.personalizations[n]
    here = f"personalizations.{n}"
    found = [(f"{here}.from", p.from_)] if p.from_ else []
    for kind in ("to", "cc", "bcc"):
        found += [(f"{here}.{kind}.{i}", e) for i, e in enumerate(getattr(p, kind))]
    return found


def shared_addresses(mail: SgMail) -> list[tuple[str, SgEmail]]:
    """(SendGrid field, email object) of the addresses personalizations share: the
    top-level from (when one uses it), reply_to or reply_to_list."""
    found = [("from", mail.from_)] if any(not p.from_ for p in mail.personalizations) else []
    if mail.reply_to is not None:
        found.append(("reply_to", mail.reply_to))
    return found + [(f"reply_to_list.{i}", e) for i, e in enumerate(mail.reply_to_list)]


def address_problems(found: list[tuple[str, SgEmail]]) -> list[ApiError]:
    return [
        problem(f"Invalid email address {e.email[:80]!r}: {why}", f"{field}.email")
        for field, e in found
        if (why := address_problem(e.email)) is not None
    ]


def bodies(mail: SgMail) -> tuple[dict[str, str], list[ApiError]]:
    """{"text": ..., "html": ...} from content, or why not."""
    found: dict[str, str] = {}
    errors = []
    for i, c in enumerate(mail.content):
        kind = CONTENT_TYPES.get(c.type.split(";")[0].strip().lower())
        if kind is None:
            errors.append(
                problem(
                    f"Content type {c.type[:60]!r} is not supported: give text/plain"
                    " and/or text/html",
                    f"content.{i}.type",
                )
            )
        elif kind in found:
            errors.append(problem(f"Only one {c.type} content is allowed", f"content.{i}.type"))
        else:
            found[kind] = c.value
    return found, errors


def schedule(send_at: int | None, field: str) -> str | ApiError | None:
    """A unix time as the ISO 8601 mailgate's scheduled_at takes."""
    if send_at is None:
        return None
    if not 0 <= send_at <= MAX_SEND_AT:
        return problem("send_at must be a Unix time in seconds", field)
    return datetime.datetime.fromtimestamp(send_at, datetime.UTC).isoformat()


def over(shared: dict[str, str], own: dict[str, str]) -> dict[str, str]:
    """The shared headers with a personalization's own over them (names are
    case-insensitive: X-A replaces x-a)."""
    mine = {name.lower() for name in own}
    return {**{k: v for k, v in shared.items() if k.lower() not in mine}, **own}


def attachment(a: SgAttachment) -> dict[str, Any]:
    given = {"content_type": a.type, "content_id": a.content_id, "disposition": a.disposition}
    return {
        "filename": a.filename,
        "content": "".join(a.content.split()),  # base64 wrapped in lines is fine too
        **{k: v for k, v in given.items() if v is not None},
    }


def shared_fields(mail: SgMail, text: dict[str, str]) -> dict[str, Any]:
    """The SendRequest fields every personalization shares (made once a request)."""
    tags = list(mail.categories)
    if mail.batch_id is not None:
        tags.append(BATCH_TAG + mail.batch_id)
    replies = ([mail.reply_to] if mail.reply_to else []) + mail.reply_to_list
    fields = {
        "reply_to": [mailbox(e) for e in replies],
        "attachments": [attachment(a) for a in mail.attachments],
        "tags": tags,
        **text,
    }
    return without_defaults(fields)


def request_fields(
    mail: SgMail, n: int, shared: dict[str, Any]
) -> tuple[dict[str, Any], list[ApiError]]:
    """Personalization n as the fields of a mailgate SendRequest (validated by mailgate's
    model next), or the SendGrid fields at fault."""
    p = mail.personalizations[n]
    here = f"personalizations.{n}"
    errors = address_problems(addresses(mail, n))
    own = p.send_at is not None
    scheduled = schedule(
        p.send_at if own else mail.send_at, f"{here}.send_at" if own else "send_at"
    )
    if isinstance(scheduled, ApiError):
        errors.append(scheduled)
    fields: dict[str, Any] = {
        **shared,
        "from": mailbox(p.from_ or mail.from_),
        **without_defaults(
            {
                "to": [mailbox(e) for e in p.to],
                "cc": [mailbox(e) for e in p.cc],
                "bcc": [mailbox(e) for e in p.bcc],
                "headers": over(mail.headers, p.headers),
                "metadata": {**mail.custom_args, **p.custom_args},
            }
        ),
    }
    subject = p.subject if p.subject is not None else mail.subject
    if subject is not None:
        fields["subject"] = subject
    if isinstance(scheduled, str):
        fields["scheduled_at"] = scheduled
    return fields, errors


def vendor_field(loc: tuple[int | str, ...], mail: SgMail, n: int, message: str = "") -> str:
    """The SendGrid name of mailgate's field `loc` in personalization n's request."""
    p = mail.personalizations[n]
    here = f"personalizations.{n}"
    head, rest = (loc[0], loc[1:]) if loc else ("", ())
    key = str(rest[0]) if rest else None
    if head in ("from", "from_"):  # its address was checked: what is left is the name
        return f"{here}.from.name" if p.from_ else "from.name"
    if head in ("to", "cc", "bcc"):
        return f"{here}.{head}" + (f".{key}.name" if key is not None else "")
    if head == "reply_to":  # from reply_to or reply_to_list, never both
        if mail.reply_to is not None:
            return "reply_to" + (".name" if key is not None else "")
        return "reply_to_list" + (f".{key}.name" if key is not None else "")
    if head == "subject":
        return f"{here}.subject" if p.subject is not None else "subject"
    if head in ("text", "html"):
        kinds = [CONTENT_TYPES.get(c.type.split(";")[0].strip().lower()) for c in mail.content]
        return f"content.{kinds.index(head)}.value" if head in kinds else "content"
    if head == "attachments":
        sub = ".".join(ATTACHMENT_NAMES.get(str(x), str(x)) for x in rest)
        return f"attachments.{sub}" if sub else "attachments"
    if head == "headers":
        mine = key in p.headers if key else any(h in message for h in p.headers)
        return (f"{here}.headers" if mine else "headers") + (f".{key}" if key else "")
    if head == "tags":
        if key is not None and int(key) >= len(mail.categories):
            return "batch_id"
        return "categories" + (f".{key}" if key is not None else "")
    if head == "metadata":
        mine = key in p.custom_args if key else bool(p.custom_args)
        return (f"{here}.custom_args" if mine else "custom_args") + (f".{key}" if key else "")
    if head == "scheduled_at":
        return f"{here}.send_at" if p.send_at is not None else "send_at"
    return here


def model_problems(
    exc: pydantic.ValidationError, mail: SgMail, n: int, limit: int = 20
) -> list[ApiError]:
    """mailgate's SendRequest refusals in SendGrid's field names."""
    found = []
    for e in exc.errors(include_url=False)[:limit]:
        loc = tuple(e["loc"])
        found.append(problem(e["msg"], vendor_field(loc, mail, n, e["msg"])))
    return found


def door_field(field: str | None, mail: SgMail, n: int) -> str:
    """A refusal's field (mailgate's "to", "from", "text", raw.<Header>) in SendGrid's
    names for personalization n."""
    p = mail.personalizations[n]
    here = f"personalizations.{n}"
    if field in ("to", "cc", "bcc"):
        return f"{here}.to"
    if field == "text":
        return "content"
    if field is None:
        return here
    # the sender rules: "from", or the originator header they refused
    return f"{here}.from.email" if p.from_ else "from.email"
