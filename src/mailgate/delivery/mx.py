"""Where to deliver a domain's mail: MX lookup (RFC 5321 5.1), implicit MX, null MX
(RFC 7505), address literals, address safety, and a cache that honours TTLs.

Whatever a domain or its DNS holds becomes that domain's Outcome, never an exception: a
name the doors would refuse today (queued before they did) bounces, DNS trouble defers.
One domain costs a bounded amount of DNS work: at most MX_HOST_LIMIT MX names looked up
(their A and AAAA at the same time), MX_ADDRESS_LIMIT addresses tried, and the whole
lookup within two resolver timeouts (Postfix: smtp_mx_address_limit).
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver

from mailgate.addresses import ascii_domain, domain_problem
from mailgate.delivery.outcome import Outcome, permanent, temporary
from mailgate.reachable import IPAddress, Network, forbidden
from mailgate.resolver import make_resolver

NEGATIVE_TTL = 60.0  # how long a temporary DNS failure is remembered
MX_HOST_LIMIT = 5  # MX names whose addresses are looked up, best preference first
MX_ADDRESS_LIMIT = 10  # addresses tried per domain
CACHE_LIMIT = 10_000  # domains whose answers are kept
# Name errors: the domain cannot be written as a DNS name at all.
NAME_ERRORS = (dns.exception.DNSException, UnicodeError, ValueError)
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Target:
    host: str  # the MX name (for TLS SNI / verification and events)
    address: str  # the IP to connect to
    preference: int
    port: int | None = None  # None: the configured delivery port


def order_mx(records: list[tuple[int, T]], rng: random.Random) -> list[tuple[int, T]]:
    """Lowest preference first; random order among equal preferences (RFC 5321 5.1)."""
    shuffled = records[:]
    rng.shuffle(shuffled)
    return sorted(shuffled, key=lambda r: r[0])


def first_hosts(
    records: list[tuple[int, dns.name.Name]], limit: int
) -> list[tuple[int, dns.name.Name]]:
    """The first `limit` distinct MX names, in order."""
    seen: set[dns.name.Name] = set()
    hosts: list[tuple[int, dns.name.Name]] = []
    for preference, host in records:
        if host not in seen and len(hosts) < limit:
            seen.add(host)
            hosts.append((preference, host))
    return hosts


def shown(domain: str) -> str:
    """A domain as it may appear in a reply text: ASCII, escaped, not too long."""
    text = domain.encode("ascii", "backslashreplace").decode()
    return text if len(text) <= 80 else text[:77] + "..."


def bad_domain(domain: str, why: str) -> Outcome:
    return permanent(f"Bad destination domain {shown(domain)}: {why}", "5.1.2", 553)


def destination_name(domain: str) -> dns.name.Name | Outcome:
    """The DNS name to look up for a recipient domain (IDN by its A-labels), or why
    there is none."""
    try:
        problem = domain_problem(domain)
        if problem is not None:
            return bad_domain(domain, problem)
        return dns.name.from_text(ascii_domain(domain))
    except NAME_ERRORS as exc:
        return bad_domain(domain, str(exc) or type(exc).__name__)


def literal_targets(domain: str, allowed: list[Network]) -> list[Target] | Outcome:
    """`[192.0.2.1]` / `[IPv6:2001:db8::1]` (RFC 5321 4.1.3): that address, directly,
    under the same private-address rule as any MX."""
    text = domain[1:-1] if domain.endswith("]") else ""
    v6 = text[:5].lower() == "ipv6:"
    try:
        address = ipaddress.ip_address(text[5:] if v6 else text)
    except ValueError:
        return bad_domain(domain, "not an address literal")
    if address.version != (6 if v6 else 4):
        return bad_domain(domain, "not an address literal")
    if forbidden(address, allowed):
        return permanent(
            f"Destination {shown(domain)} is a private or loopback address", "5.4.4", 550
        )
    return [Target(str(address), str(address), 0)]


class MxResolver:
    def __init__(
        self,
        nameserver: str = "",
        allowed: list[str] | None = None,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        timeout: float = 5.0,
        cache_limit: int = CACHE_LIMIT,
    ) -> None:
        self.resolver = make_resolver(nameserver, timeout)
        self.timeout = timeout
        self.allowed: list[Network] = [ipaddress.ip_network(n, strict=False) for n in allowed or []]
        self.clock = clock
        self.rng = rng or random.Random()
        self.cache_limit = cache_limit
        self._cache: dict[str, tuple[float, list[Target] | Outcome]] = {}

    async def targets(self, domain: str) -> list[Target] | Outcome:
        now = self.clock()
        cached = self._cache.get(domain)
        if cached is not None and cached[0] > now:
            return cached[1]
        result, ttl = await self._lookup(domain)
        self._remember(domain, (now + ttl, result), now)
        return result

    def _remember(
        self, domain: str, entry: tuple[float, list[Target] | Outcome], now: float
    ) -> None:
        """Cache one answer, keeping at most cache_limit domains (without a bound the
        cache grows with every domain ever mailed). Past the limit the expired answers
        go, then the oldest down to nine tenths, so a full cache is swept once in a while,
        not at every lookup."""
        cache = self._cache
        cache.pop(domain, None)  # re-inserted last: the dict's order is the answers' age
        cache[domain] = entry
        if len(cache) <= self.cache_limit:
            return
        for name in [name for name, (expires, _) in cache.items() if expires <= now]:
            del cache[name]
        if len(cache) > self.cache_limit:
            for name in list(cache)[: len(cache) - self.cache_limit * 9 // 10]:
                del cache[name]

    async def _lookup(self, domain: str) -> tuple[list[Target] | Outcome, float]:
        if domain.startswith("["):
            return literal_targets(domain, self.allowed), 300.0
        name = destination_name(domain)
        if isinstance(name, Outcome):
            return name, 300.0
        try:
            # one MX query, then one round of A / AAAA queries side by side
            async with asyncio.timeout(2 * self.timeout):
                return await self._resolve(domain, name)
        except TimeoutError:
            return temporary(
                f"DNS lookup of {shown(domain)} took too long, will retry", enhanced="4.4.3"
            ), NEGATIVE_TTL

    async def _resolve(
        self, domain: str, name: dns.name.Name
    ) -> tuple[list[Target] | Outcome, float]:
        try:
            answer = await self.resolver.resolve(name, "MX")
            records = [(int(r.preference), r.exchange) for r in answer]
            ttl = float(answer.rrset.ttl) if answer.rrset is not None else 300.0
        except dns.resolver.NXDOMAIN:
            return permanent(f"Domain {shown(domain)} does not exist", "5.1.2", 550), 300.0
        except dns.resolver.NoAnswer:
            records, ttl = [(0, name)], 300.0  # implicit MX: the domain's own A / AAAA
        except dns.exception.DNSException:
            return temporary(
                f"DNS lookup of {shown(domain)} failed, will retry", enhanced="4.4.3"
            ), NEGATIVE_TTL
        if len(records) == 1 and records[0][1] == dns.name.root:
            return permanent(
                f"Domain {shown(domain)} accepts no mail (null MX)", "5.1.10", 556
            ), ttl
        hosts = first_hosts(order_mx(records, self.rng), MX_HOST_LIMIT)
        found = await asyncio.gather(*(self._addresses(host) for _, host in hosts))
        targets: list[Target] = []
        refused = dns_trouble = 0
        for (preference, host), (addresses, trouble) in zip(hosts, found, strict=True):
            dns_trouble += trouble
            for address in addresses:
                if forbidden(address, self.allowed):
                    refused += 1
                    continue
                targets.append(Target(host.to_text(omit_final_dot=True), str(address), preference))
        if targets:
            return targets[:MX_ADDRESS_LIMIT], ttl
        if dns_trouble:
            return temporary(
                f"No address for the mail servers of {shown(domain)} yet", enhanced="4.4.3"
            ), NEGATIVE_TTL
        if refused:
            return permanent(
                f"Mail servers of {shown(domain)} are on private or loopback addresses",
                "5.4.4",
                550,
            ), ttl
        return permanent(f"No mail server address found for {shown(domain)}", "5.4.4", 550), ttl

    async def _addresses(self, host: dns.name.Name) -> tuple[list[IPAddress], int]:
        """A host's addresses and how many of its two lookups hit DNS trouble."""
        found: list[IPAddress] = []
        if host == dns.name.root or domain_problem(host.to_text(omit_final_dot=True)):
            return found, 0  # not a host name (null MX among others, or a hostile name)
        answers = await asyncio.gather(*(self._query(host, t) for t in ("A", "AAAA")))
        for answer in answers:
            if answer is not None:
                found.extend(answer)
        return found, sum(answer is None for answer in answers)

    async def _query(self, host: dns.name.Name, rdtype: str) -> list[IPAddress] | None:
        """The addresses of one type, [] when there are none, None on DNS trouble."""
        try:
            answer = await self.resolver.resolve(host, rdtype)
            return [ipaddress.ip_address(r.to_text()) for r in answer]
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        except NAME_ERRORS:
            return None
