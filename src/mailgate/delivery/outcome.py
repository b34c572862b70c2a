"""One outcome type at the edge: every SMTP reply or exception becomes an Outcome.

A reply means something only for the command it answers: each Step has the codes that
let the session go on, and only a 2xx after the final dot delivers. Any other code is
the step's own failure (4xx temporary, 5xx permanent) or, in any other class, a
protocol error: temporary, because a confused peer is no proof the mail cannot go.

Reply text is the peer's to choose, so it is made storable here: control characters
(which PostgreSQL text refuses, NUL first) become '?', and it is cut to REPLY_TEXT_LIMIT
characters, so a hostile receiver cannot put megabytes into every recipient's last reply.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from mailgate.models import Reply

_ENHANCED = re.compile(r"^([245]\.\d{1,3}\.\d{1,3})\s+")
# C0 controls, DEL and C1 controls: nothing a reply text needs, and NUL cannot be stored
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
REPLY_TEXT_LIMIT = 512  # characters of a peer's reply text kept (RFC 5321 4.5.3.1.5: a line)


class Verdict(enum.Enum):
    """What a reply means for one recipient."""

    DELIVERED = "delivered"  # 2xx after the final dot, and nothing else
    TEMPORARY = "temporary"  # 4xx, a protocol error, connection or TLS trouble: retry later
    PERMANENT = "permanent"  # 5xx, null MX, NXDOMAIN, policy: bounce


class Step(enum.Enum):
    """The command a reply answers, with the codes that let the session go on."""

    GREETING = ("greeting", frozenset({220}))
    EHLO = ("EHLO", frozenset({250}))
    HELO = ("HELO", frozenset({250}))
    STARTTLS = ("STARTTLS", frozenset({220}))
    AUTH = ("AUTH", frozenset({235}))
    MAIL = ("MAIL", frozenset({250}))
    RCPT = ("RCPT", frozenset({250, 251}))
    DATA = ("DATA", frozenset({354}))
    DOT = ("end of data", frozenset(range(200, 300)))  # the only step that delivers

    def __init__(self, label: str, expected: frozenset[int]) -> None:
        self.label, self.expected = label, expected

    def accepts(self, code: int) -> bool:
        return code in self.expected


@dataclass(frozen=True, slots=True)
class Outcome:
    verdict: Verdict
    reply: Reply
    remote_host: str | None = None
    step: Step | None = None  # the command a peer's reply answered; None: decided here


def clean_text(text: str, limit: int = REPLY_TEXT_LIMIT) -> str:
    """A peer's text as we keep it: whitespace runs as one space, other control
    characters as '?', at most `limit` characters."""
    text = _CONTROL.sub("?", " ".join(text.split()))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def reply_from(code: int, text: str) -> Reply:
    """Split an RFC 3463 enhanced status code off the reply text, when present."""
    text = clean_text(text)
    m = _ENHANCED.match(text)
    if m:
        return Reply(code, m.group(1), text[m.end() :])
    return Reply(code, None, text)


def is_failure(code: int) -> bool:
    """A 4xx or 5xx: the peer refused in the protocol's terms (not a protocol error)."""
    return 400 <= code < 600


def from_reply(code: int, text: str, host: str | None, step: Step = Step.DOT) -> Outcome:
    """The outcome of a reply that ends the transaction at `step`: delivered only for a
    2xx after the final dot; 4xx temporary; 5xx permanent; anything else (a 250 greeting,
    252 to MAIL, 250 instead of 354, 1xx, 3xx) a temporary protocol error."""
    if 400 <= code < 500:
        return Outcome(Verdict.TEMPORARY, reply_from(code, text), host, step)
    if 500 <= code < 600:
        return Outcome(Verdict.PERMANENT, reply_from(code, text), host, step)
    if step is Step.DOT and step.accepts(code):
        return Outcome(Verdict.DELIVERED, reply_from(code, text), host, step)
    return protocol_error(f"{step.label} answered {code} {clean_text(text)}", host)


def protocol_error(what: str, host: str | None = None) -> Outcome:
    """A peer that broke the protocol (a wrong reply, unsolicited data): try again later."""
    return temporary(f"protocol error: {what}", host, enhanced="4.5.0")


def temporary(text: str, host: str | None = None, enhanced: str = "4.4.1") -> Outcome:
    """A local temporary failure (connection refused, timeout, TLS) as an outcome. The
    text may quote the peer (a refused STARTTLS), so it is cleaned like a reply."""
    return Outcome(Verdict.TEMPORARY, Reply(451, enhanced, clean_text(text)), host)


def permanent(text: str, enhanced: str, code: int = 550, host: str | None = None) -> Outcome:
    return Outcome(Verdict.PERMANENT, Reply(code, enhanced, text), host)
