"""Where to deliver a domain's mail: MX lookup (RFC 5321 5.1), implicit MX, null MX
(RFC 7505), address safety, and a cache that honours TTLs."""

from __future__ import annotations

import ipaddress
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.rdatatype
import dns.resolver

from mailgate.delivery.outcome import Outcome, permanent, temporary

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
NEGATIVE_TTL = 60.0  # how long a temporary DNS failure is remembered


@dataclass(frozen=True, slots=True)
class Target:
    host: str  # the MX name (for TLS SNI / verification and events)
    address: str  # the IP to connect to
    preference: int
    port: int | None = None  # None: the configured delivery port


def forbidden(
    address: IPAddress, allowed: list[ipaddress.IPv4Network | ipaddress.IPv6Network]
) -> bool:
    """Loopback, private, link-local, unspecified and the like, unless allowed by config."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if any(address in net for net in allowed):
        return False
    return (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_unspecified
        or address.is_multicast
        or address.is_reserved
    )


def order_mx(records: list[tuple[int, str]], rng: random.Random) -> list[tuple[int, str]]:
    """Lowest preference first; random order among equal preferences (RFC 5321 5.1)."""
    shuffled = records[:]
    rng.shuffle(shuffled)
    return sorted(shuffled, key=lambda r: r[0])


class MxResolver:
    def __init__(
        self,
        nameserver: str = "",
        allowed: list[str] | None = None,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        timeout: float = 5.0,
    ) -> None:
        if nameserver:
            self.resolver = dns.asyncresolver.Resolver(configure=False)
            host, _, port = nameserver.partition(":")
            self.resolver.nameservers = [host]
            self.resolver.port = int(port or 53)
        else:
            self.resolver = dns.asyncresolver.Resolver()
        self.resolver.lifetime = timeout
        self.allowed = [ipaddress.ip_network(n, strict=False) for n in allowed or []]
        self.clock = clock
        self.rng = rng or random.Random()
        self._cache: dict[str, tuple[float, list[Target] | Outcome]] = {}

    async def targets(self, domain: str) -> list[Target] | Outcome:
        now = self.clock()
        cached = self._cache.get(domain)
        if cached is not None and cached[0] > now:
            return cached[1]
        result, ttl = await self._lookup(domain)
        self._cache[domain] = (now + ttl, result)
        return result

    async def _lookup(self, domain: str) -> tuple[list[Target] | Outcome, float]:
        try:
            answer = await self.resolver.resolve(domain, "MX")
            records = [(r.preference, r.exchange.to_text(omit_final_dot=True)) for r in answer]
            ttl = float(answer.rrset.ttl) if answer.rrset is not None else 300.0
        except dns.resolver.NXDOMAIN:
            return permanent(f"Domain {domain} does not exist", "5.1.2", 550), 300.0
        except dns.resolver.NoAnswer:
            records, ttl = [(0, domain)], 300.0  # implicit MX: the domain's own A / AAAA
        except (dns.resolver.NoNameservers, dns.exception.Timeout, dns.resolver.LifetimeTimeout):
            return temporary(f"DNS lookup of {domain} failed, will retry", enhanced="4.4.3"), (
                NEGATIVE_TTL
            )
        if len(records) == 1 and records[0][1] in ("", "."):
            return permanent(f"Domain {domain} accepts no mail (null MX)", "5.1.10", 556), ttl
        targets: list[Target] = []
        refused = dns_trouble = 0
        for preference, host in order_mx(records, self.rng):
            addresses, trouble = await self._addresses(host)
            dns_trouble += trouble
            for address in addresses:
                if forbidden(ipaddress.ip_address(address), self.allowed):
                    refused += 1
                    continue
                targets.append(Target(host, address, preference))
        if targets:
            return targets, ttl
        if dns_trouble:
            return temporary(
                f"No address for the mail servers of {domain} yet", enhanced="4.4.3"
            ), NEGATIVE_TTL
        if refused:
            return permanent(
                f"Mail servers of {domain} are on private or loopback addresses", "5.4.4", 550
            ), ttl
        return permanent(f"No mail server address found for {domain}", "5.4.4", 550), ttl

    async def _addresses(self, host: str) -> tuple[list[str], int]:
        found: list[str] = []
        trouble = 0
        for rdtype in ("A", "AAAA"):
            try:
                answer = await self.resolver.resolve(host, rdtype)
                found.extend(r.to_text() for r in answer)
            except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
                continue
            except (dns.resolver.NoNameservers, dns.exception.Timeout):
                trouble += 1
        return found, trouble
