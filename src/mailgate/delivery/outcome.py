"""One outcome type at the edge: every SMTP reply or exception becomes an Outcome."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from mailgate.models import Reply

_ENHANCED = re.compile(r"^([245]\.\d{1,3}\.\d{1,3})\s+")


class Verdict(enum.Enum):
    """What a reply means for one recipient."""

    DELIVERED = "delivered"  # 2xx after DATA
    TEMPORARY = "temporary"  # 4xx, connection or TLS trouble: retry later
    PERMANENT = "permanent"  # 5xx, null MX, NXDOMAIN, policy: bounce


@dataclass(frozen=True, slots=True)
class Outcome:
    verdict: Verdict
    reply: Reply
    remote_host: str | None = None


def reply_from(code: int, text: str) -> Reply:
    """Split an RFC 3463 enhanced status code off the reply text, when present."""
    text = " ".join(text.split())
    m = _ENHANCED.match(text)
    if m:
        return Reply(code, m.group(1), text[m.end() :])
    return Reply(code, None, text)


def verdict_of(code: int) -> Verdict:
    if 200 <= code < 300:
        return Verdict.DELIVERED
    if 500 <= code < 600:
        return Verdict.PERMANENT
    return Verdict.TEMPORARY


def from_reply(code: int, text: str, host: str | None) -> Outcome:
    return Outcome(verdict_of(code), reply_from(code, text), host)


def temporary(text: str, host: str | None = None, enhanced: str = "4.4.1") -> Outcome:
    """A local temporary failure (connection refused, timeout, TLS) as an outcome."""
    return Outcome(Verdict.TEMPORARY, Reply(451, enhanced, text), host)


def permanent(text: str, enhanced: str, code: int = 550, host: str | None = None) -> Outcome:
    return Outcome(Verdict.PERMANENT, Reply(code, enhanced, text), host)
