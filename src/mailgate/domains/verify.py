"""Checking a domain's records in DNS (the I/O half; records.py judges)."""

from __future__ import annotations

import asyncio

import dns.asyncresolver
import dns.exception
import dns.resolver

from mailgate.domains.records import Policy, Record, checked, judge, records
from mailgate.models import Domain, RecordCheck, RecordStatus

MAX_FOUND = 10  # values kept of one answer, to show a mismatch (all of them are judged)
MAX_FOUND_CHARS = 2048  # characters kept of each (an RSA-4096 DKIM record is ~750)


async def lookup(resolver: dns.asyncresolver.Resolver, name: str, rtype: str) -> list[str] | None:
    """TXT texts (character-strings joined, RFC 6376 3.6.2.2) or MX `preference host`,
    as DNS gave them; [] when the name or the type is absent; None when DNS failed."""
    try:
        answer = await resolver.resolve(name, rtype, search=False)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return []
    except dns.exception.DNSException:  # SERVFAIL, timeouts, refused, malformed answers
        return None
    if rtype == "MX":
        texts = [f"{r.preference} {r.exchange.to_text(omit_final_dot=True)}" for r in answer]
    else:
        texts = [b"".join(r.strings).decode("utf-8", "replace") for r in answer]
    return texts


def shown(text: str) -> str:
    """A found value as kept and shown: DNS is not trusted, so no control characters
    (a terminal escape in a TXT record must not reach the CLI's terminal) and bounded."""
    cleaned = "".join(c if c.isprintable() else "\ufffd" for c in text[:MAX_FOUND_CHARS])
    return cleaned + ("…" if len(text) > MAX_FOUND_CHARS else "")


async def check(
    resolver: dns.asyncresolver.Resolver, domain: Domain, policy: Policy
) -> dict[str, RecordCheck]:
    """Every record of the domain looked up side by side (each name and type once)."""
    wanted = records(domain, policy)
    questions = sorted({(r.name, r.type) for r in wanted})
    answers = await asyncio.gather(*(lookup(resolver, n, t) for n, t in questions))
    found = dict(zip(questions, answers, strict=True))
    return {r.id: _checked(domain, r, found[r.name, r.type]) for r in wanted}


def _checked(domain: Domain, record: Record, found: list[str] | None) -> RecordCheck:
    previous = domain.checks.get(record.id)
    if found is None:
        return checked(previous, RecordStatus.UNKNOWN, ())
    kind = record.value.split(";")[0].split()[0].lower()  # v=spf1, v=DKIM1, v=DMARC1
    relevant_first = sorted(found, key=lambda t: not t.lower().startswith(kind))
    kept = [shown(t) for t in relevant_first[:MAX_FOUND]]  # judged whole, kept cleaned
    return checked(previous, judge(record, found), kept)
