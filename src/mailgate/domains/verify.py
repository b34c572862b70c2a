"""Checking a domain's records in DNS (the I/O half; records.py judges)."""

from __future__ import annotations

import asyncio

import dns.asyncresolver
import dns.exception
import dns.resolver

from mailgate.domains.records import Policy, Record, checked, judge, records
from mailgate.models import Domain, RecordCheck, RecordStatus


async def lookup(resolver: dns.asyncresolver.Resolver, name: str, rtype: str) -> list[str] | None:
    """TXT texts (character-strings joined, RFC 6376 3.6.2.2) or MX `preference host`;
    [] when the name or the type is absent; None when DNS failed (nothing learned)."""
    try:
        answer = await resolver.resolve(name, rtype, search=False)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return []
    except dns.exception.DNSException:  # SERVFAIL, timeouts, refused, malformed answers
        return None
    if rtype == "MX":
        return [f"{r.preference} {r.exchange.to_text(omit_final_dot=True)}" for r in answer]
    return [b"".join(r.strings).decode("utf-8", "replace") for r in answer]


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
    return checked(previous, judge(record, found), found)
