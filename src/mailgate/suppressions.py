"""The suppression list's rules, pure: which failures put an address on it, and which
entries stop which message. The door asks the store for the entries of a message's
recipients (one indexed read per message or batch) and applies `screen`; delivery asks
`hard_bounce` of each permanent failure. I/O lives in the store and the HTTP/CLI edges.

A hard bounce is a failure of the *address* (it does not exist, its domain takes no mail,
its mailbox is disabled); a 5xx for the *message* (content, size, policy, the sender)
says nothing about the address, and suppressing it would stop good mail later. Only a
reply to that recipient's own RCPT TO speaks about it: a refusal of MAIL FROM (an
unknown *sender*), of DATA or of the content is copied to every recipient of the
transaction and proves nothing about any of them. Of what delivery decides itself, only
a null MX (RFC 7505: the domain's owner published that it takes no mail) counts; an
NXDOMAIN may be a lapse or a spoofed answer.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence

from mailgate.addresses import address_problem, domain_problem
from mailgate.models import NewMessage, Reply, Suppression, SuppressionReason

# RFC 3463 / RFC 7505 codes that say the address itself is bad. X.1.x is "addressing
# status": 5.1.7 and 5.1.8 are about the *sender*, 5.1.4 (ambiguous), 5.1.5 (valid!) and
# 5.1.9 (relayed on) prove nothing, so they are left out.
ADDRESS_CODES = frozenset({"5.1.0", "5.1.1", "5.1.2", "5.1.3", "5.1.6", "5.1.10", "5.2.1"})
NULL_MX = "5.1.10"  # RFC 7505: the domain publishes that it takes no mail
# A receiver that gives no enhanced code: its text has to say the recipient is unknown.
_UNKNOWN_USER = re.compile(
    r"\b(no such (user|mailbox|recipient|address)"
    r"|(user|mailbox|recipient|address)( name)? (is )?(unknown|not found|does ?n[o']t exist"
    r"|invalid|disabled)"
    r"|unknown (user|mailbox|recipient)"
    r"|(user|mailbox|recipient) (doesn't|does not) exist)\b",
    re.IGNORECASE,
)


def hard_bounce(reply: Reply | None) -> bool:
    """Does this permanent reply *to RCPT TO* condemn the address (rather than the
    message)? ("mailbox unavailable", RFC 5321's stock 550 text, is also what servers
    without enhanced codes say for spam and policy: not enough.)"""
    if reply is None or not 500 <= reply.code < 600:
        return False
    if reply.enhanced is not None:
        return reply.enhanced in ADDRESS_CODES
    return reply.code in (550, 551, 553) and _UNKNOWN_USER.search(reply.text) is not None


def condemns(reply: Reply | None, at_rcpt: bool, local: bool) -> bool:
    """Does this permanent failure put the address on the list? A peer's reply only
    when it answered the recipient's RCPT TO; a failure decided here only for a null MX."""
    if local:
        return reply is not None and reply.enhanced == NULL_MX
    return at_rcpt and hard_bounce(reply)


def normalize(address: str) -> str:
    """How an address is kept and looked up: lower case (local parts are case-sensitive
    in theory and case-blind at every mailbox provider in practice)."""
    return address.strip().lower()


Found = Mapping[str, Sequence[tuple[str, str]]]  # address -> [(scope, reason)]


def screen(message: NewMessage, found: Found) -> dict[str, str]:
    """The message's suppressed recipients and why: an entry stops it when its scope is
    "" (every sender) or the message's From domain (or a parent of it). A DSN is
    screened too: its recipient is the original sender, which may itself be listed."""
    stopped: dict[str, str] = {}
    for address in message.recipients:
        reason = stopped_by(address, message.from_domain, found)
        if reason is not None:
            stopped[address] = reason
    return stopped


def stopped_by(address: str, from_domain: str | None, found: Found) -> str | None:
    """The reason an entry stops mail to `address` From `from_domain`, or None. The From
    domain is asked for (None: not known yet) only when a scoped entry needs it."""
    domains = None
    for scope, reason in found.get(normalize(address), ()):
        if not scope:
            return reason
        if domains is None:
            domains = _parents(from_domain or "")
        if scope in domains:
            return reason
    return None


def _parents(domain: str) -> set[str]:
    """mail.example.com -> {mail.example.com, example.com, com}"""
    labels = domain.lower().split(".") if domain else []
    return {".".join(labels[i:]) for i in range(len(labels))}


def addresses_of(messages: Iterable[NewMessage]) -> list[str]:
    """Every recipient to look up, normalised, once."""
    return list(dict.fromkeys(normalize(a) for m in messages for a in m.recipients))


def entry_problem(entry: Suppression) -> tuple[str, str] | None:
    """(field, why) an entry cannot be stored, or None."""
    problem = address_problem(entry.address)
    if problem is not None:
        return "address", problem
    if entry.scope:
        problem = domain_problem(entry.scope)
        if problem is not None or entry.scope.startswith("["):
            return "domain", problem or "An address literal is not a sending domain"
    return None


# -- CSV (the CLI's import and export) ---------------------------------------------------

CSV_FIELDS = ("address", "reason", "domain", "created_at", "message_id")


def entries_from_csv(
    lines: Iterable[str], default_reason: SuppressionReason, now: float
) -> Iterator[Suppression]:
    """Entries of a CSV with a header naming at least `address` (reason, domain,
    created_at and message_id optional, so an export imports as it was; other columns
    are ignored). Raises ValueError naming the line and the field of the first bad row."""
    reader = csv.DictReader(lines)
    try:
        fields = [f.strip() for f in reader.fieldnames or []]
        if "address" not in fields:
            raise ValueError("line 1: the header must name an address column")
        for row in reader:
            yield _entry(reader.line_num, row, default_reason, now)
    except csv.Error as exc:  # a field past the csv module's limit, a stray NUL
        raise ValueError(f"line {reader.line_num}: {exc}") from None


def _entry(
    line: int, row: dict[str | None, str | None], default_reason: SuppressionReason, now: float
) -> Suppression:
    cells = {k.strip(): (v or "").strip() for k, v in row.items() if isinstance(k, str)}
    reason_text = cells.get("reason") or default_reason.value
    try:
        reason = SuppressionReason(reason_text)
    except ValueError:
        raise ValueError(f"line {line}: reason: unknown reason {reason_text[:50]!r}") from None
    try:
        created_at = float(cells["created_at"]) if cells.get("created_at") else now
        if not math.isfinite(created_at):
            raise ValueError
    except ValueError:
        raise ValueError(f"line {line}: created_at: not a Unix time") from None
    entry = Suppression(
        normalize(cells.get("address", "")),
        reason,
        created_at,
        normalize(cells.get("domain", "")),
        cells.get("message_id") or None,
    )
    problem = entry_problem(entry)
    if problem is not None:
        raise ValueError(f"line {line}: {problem[0]}: {problem[1]}")
    if entry.message_id is not None and len(entry.message_id) > 64:
        raise ValueError(f"line {line}: message_id: too long")
    return entry


def csv_row(entry: Suppression) -> list[str]:
    return [
        entry.address,
        entry.reason.value,
        entry.scope,
        repr(entry.created_at),
        entry.message_id or "",
    ]
