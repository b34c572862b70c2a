"""The DNS resolver both delivery (MX) and domain verification ask: the one configured
(`delivery.resolver`, host or host:port) or the system's."""

from __future__ import annotations

import dns.asyncresolver


def make_resolver(nameserver: str, timeout: float) -> dns.asyncresolver.Resolver:
    if nameserver:
        resolver = dns.asyncresolver.Resolver(configure=False)
        host, _, port = nameserver.partition(":")
        resolver.nameservers = [host]
        resolver.port = int(port or 53)
    else:
        resolver = dns.asyncresolver.Resolver()
    resolver.lifetime = timeout
    return resolver
