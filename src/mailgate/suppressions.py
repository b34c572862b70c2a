"""The suppression list's rules, pure: which failures put an address on it, and which
entries stop which message. The door asks the store for the entries of a message's
recipients (one indexed read per message or batch) and applies `screen`; delivery asks
`hard_bounce` of each permanent failure. I/O lives in the store and the HTTP/CLI edges.

A hard bounce is a failure of the *address* (it does not exist, its domain takes no mail,
its mailbox is disabled); a 5xx for the *message* (content, size, policy, the sender)
says nothing about the address, and suppressing it would stop good mail later.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence

from mailgate.addresses import address_problem, domain_problem
from mailgate.models import NewMessage, Reply, Suppression, SuppressionReason

# RFC 3463 / RFC 7505 codes that say the address itself is bad. X.1.x is "addressing
# status": 5.1.7 and 5.1.8 are about the *sender*, 5.1.4 (ambiguous), 5.1.5 (valid!) and
# 5.1.9 (relayed on) prove nothing, so they are left out.
ADDRESS_CODES = frozenset({"5.1.0", "5.1.1", "5.1.2", "5.1.3", "5.1.6", "5.1.10", "5.2.1"})
# A receiver that gives no enhanced code: its text has to say the recipient is unknown.
_UNKNOWN_USER = re.compile(
    r"\b(no such (user|mailbox|recipient|address)"
    r"|(user|mailbox|recipient|address)( name)? (is )?(unknown|not found|does ?n[o']t exist"
    r"|invalid|disabled|unavailable)"
    r"|unknown (user|mailbox|recipient)"
    r"|(user|mailbox|recipient) (doesn't|does not) exist)\b",
    re.IGNORECASE,
)


def hard_bounce(reply: Reply | None) -> bool:
    """Does this permanent failure condemn the address (rather than the message)?"""
    if reply is None or not 500 <= reply.code < 600:
        return False
    if reply.enhanced is not None:
        return reply.enhanced in ADDRESS_CODES
    return reply.code in (550, 551, 553) and _UNKNOWN_USER.search(reply.text) is not None


def normalize(address: str) -> str:
    """How an address is kept and looked up: lower case (local parts are case-sensitive
    in theory and case-blind at every mailbox provider in practice)."""
    return address.strip().lower()


Found = Mapping[str, Sequence[tuple[str, str]]]  # address -> [(scope, reason)]


def screen(message: NewMessage, found: Found) -> dict[str, str]:
    """The message's suppressed recipients and why: an entry stops it when its scope is
    "" (every sender) or the message's From domain (or a parent of it). A DSN is
    screened too: its recipient is the original sender, which may itself be listed."""
    domains = _parents(message.from_domain)
    stopped: dict[str, str] = {}
    for address in message.recipients:
        for scope, reason in found.get(normalize(address), ()):
            if not scope or scope in domains:
                stopped[address] = reason
                break
    return stopped


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
    """Entries of a CSV with a header naming at least `address` (reason, domain optional;
    other columns, such as an export's created_at, are ignored). Raises ValueError naming
    the line and the field of the first bad row."""
    reader = csv.DictReader(lines)
    if reader.fieldnames is None or "address" not in [f.strip() for f in reader.fieldnames]:
        raise ValueError("line 1: the header must name an address column")
    for row in reader:
        line = reader.line_num
        row = {k.strip(): (v or "").strip() for k, v in row.items() if k is not None}
        reason_text = row.get("reason") or default_reason.value
        try:
            reason = SuppressionReason(reason_text)
        except ValueError:
            raise ValueError(f"line {line}: reason: unknown reason {reason_text!r}") from None
        entry = Suppression(
            normalize(row["address"]), reason, now, normalize(row.get("domain", ""))
        )
        problem = entry_problem(entry)
        if problem is not None:
            raise ValueError(f"line {line}: {problem[0]}: {problem[1]}")
        yield entry


def csv_row(entry: Suppression) -> list[str]:
    return [
        entry.address,
        entry.reason.value,
        entry.scope,
        repr(entry.created_at),
        entry.message_id or "",
    ]
